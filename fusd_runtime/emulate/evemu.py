"""evemu files as a :class:`Recording`: an evdev device's description and its events.

Format (evemu's README, "Device Description Format" and "Event Data Format";
versions 1.0-1.3): ``# EVEMU 1.3`` first, ``#`` comments anywhere (not in ``N:``),

    N: <name>                                  I: <bustype> <vendor> <product> <version> (hex)
    P: <8 property bytes, hex>                 (repeated: the property bitmap)
    B: <ev type> <8 bytes, hex>                (repeated per type: its code bitmap; 00: EV_SYN's codes)
    A: <abs code> <min> <max> <fuzz> <flat> [<resolution>]
    L: <led> <state>                           S: <switch> <state>
    E: <sec>.<usec> <type (hex)> <code (hex)> <value>

``evemu-record`` writes the description then the events; ``umockdev-record
--evemu-events`` writes events only.  The description becomes the ioctl
answers an evdev client asks for on open (EVIOCGVERSION, EVIOCGID, EVIOCGNAME,
EVIOCGPROP, EVIOCGBIT, EVIOCGABS, EVIOCGKEY/LED/SW/SND state, EVIOCGREP,
EVIOCGEFFECTS, EVIOCGRAB, EVIOCSCLOCKID); evemu records no phys/uniq, so those
answer ENOENT as evdev does when a device has none, and a device with EV_REP
gets the kernel's default repeat (250 ms, 33 ms).  The events become reads of
64-bit ``struct input_event``\\s (16-byte timeval, type, code, value), one read
per SYN_REPORT-terminated report, at its time since the first event
(``fusd emulate --timing`` keeps the gaps).
"""

from __future__ import annotations

import errno
import os
import struct
from typing import Dict, List, Optional, Tuple

from ..ioctl import IOC_READ, IOC_WRITE
from .capture import RecordingError
from .script import IOCTL, READ, Op, OpenScript, Recording

INPUT_EVENT = struct.Struct("<qqHHi")  # struct input_event on 64-bit Linux
INPUT_ABSINFO = struct.Struct("<6i")
EV_SYN, EV_KEY, EV_LED, EV_SND, EV_SW, EV_REP = 0x00, 0x01, 0x11, 0x12, 0x05, 0x14
EV_VERSION = 0x010001
_E = ord("E")
#: bytes of the state bitmaps (KEY_MAX 0x2ff, LED_MAX 0x0f, SND_MAX 0x07, SW_MAX 0x10, rounded to longs)
_STATE_BYTES = {0x18: 96, 0x19: 8, 0x1A: 8, 0x1B: 8}


def _ioc(direction: int, nr: int, size: int) -> int:
    return (direction << 30) | (size << 16) | (_E << 8) | nr


class Description:
    """The parsed ``N/I/P/B/A/L/S`` lines of an evemu file."""

    def __init__(self) -> None:
        self.name: Optional[str] = None
        self.ident = (0, 0, 0, 0)
        self.props = b""
        self.bits: Dict[int, bytearray] = {}
        self.absinfo: Dict[int, Tuple[int, ...]] = {}
        self.leds: Dict[int, int] = {}
        self.switches: Dict[int, int] = {}

    def ioctls(self) -> List[Op]:
        """What an evdev client's open-time ioctls get from this description."""
        ops = [Op(IOCTL, cmd=_ioc(IOC_READ, 0x01, 4), data=struct.pack("<i", EV_VERSION)),
               Op(IOCTL, cmd=_ioc(IOC_READ, 0x02, 8), data=struct.pack("<4H", *self.ident)),
               Op(IOCTL, cmd=_ioc(IOC_READ, 0x07, 256), error=errno.ENOENT),  # EVIOCGPHYS
               Op(IOCTL, cmd=_ioc(IOC_READ, 0x08, 256), error=errno.ENOENT),  # EVIOCGUNIQ
               Op(IOCTL, cmd=_ioc(IOC_READ, 0x84, 4), data=struct.pack("<i", 0)),  # EVIOCGEFFECTS
               Op(IOCTL, cmd=_ioc(IOC_WRITE, 0x90, 4)),  # EVIOCGRAB
               Op(IOCTL, cmd=_ioc(IOC_WRITE, 0xA0, 4))]  # EVIOCSCLOCKID
        if self.name is not None:
            raw = self.name.encode("utf-8", "surrogateescape") + b"\0"
            ops.append(Op(IOCTL, cmd=_ioc(IOC_READ, 0x06, len(raw)), data=raw, result=len(raw)))
        ops.append(Op(IOCTL, cmd=_ioc(IOC_READ, 0x09, max(len(self.props), 8)), data=self.props,
                      result=len(self.props)))
        # "B: 00" lists EV_SYN's codes (evemu's write_mask); EVIOCGBIT(0) is the types: those with a code
        types = bytearray(8)
        for ev, bits in self.bits.items():
            if any(bits) and ev // 8 < len(types):
                types[ev // 8] |= 1 << (ev % 8)
        ops.append(Op(IOCTL, cmd=_ioc(IOC_READ, 0x20, len(types)), data=bytes(types), result=len(types)))
        for ev, bits in sorted(self.bits.items()):
            if ev:
                ops.append(Op(IOCTL, cmd=_ioc(IOC_READ, 0x20 + ev, len(bits)), data=bytes(bits), result=len(bits)))
        for code, info in sorted(self.absinfo.items()):
            ops.append(Op(IOCTL, cmd=_ioc(IOC_READ, 0x40 + code, INPUT_ABSINFO.size),
                          data=INPUT_ABSINFO.pack(0, *info)))
        for nr, states in ((0x18, {}), (0x19, self.leds), (0x1A, {}), (0x1B, self.switches)):
            bitmap = bytearray(_STATE_BYTES[nr])
            for code, on in states.items():
                if on and code // 8 < len(bitmap):
                    bitmap[code // 8] |= 1 << (code % 8)
            ops.append(Op(IOCTL, cmd=_ioc(IOC_READ, nr, len(bitmap)), data=bytes(bitmap), result=len(bitmap)))
        if types[EV_REP // 8] & (1 << (EV_REP % 8)):
            ops.append(Op(IOCTL, cmd=_ioc(IOC_READ, 0x03, 8), data=struct.pack("<2I", 250, 33)))
        return ops


def _hex(field: str, where: str) -> int:
    try:
        return int(field, 16)
    except ValueError:
        raise RecordingError(f"{where}: {field!r} is not hex") from None


def parse(text: str, source: str = "") -> Tuple[Description, List[Tuple[float, int, int, int]]]:
    """An evemu file's description and its events ``(time, type, code, value)``."""
    desc = Description()
    events: List[Tuple[float, int, int, int]] = []
    for no, line in enumerate(text.splitlines(), 1):
        where = f"{source}:{no}"
        if line.startswith("N:"):
            desc.name = line[2:].strip()  # no comments in the name line
            continue
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        tag, _, rest = line.partition(":")
        fields = rest.split()
        try:
            if tag == "I":
                desc.ident = tuple(_hex(f, where) for f in fields[:4])  # type: ignore[assignment]
            elif tag == "P":
                desc.props += bytes(_hex(f, where) for f in fields)
            elif tag == "B":
                desc.bits.setdefault(_hex(fields[0], where), bytearray()).extend(_hex(f, where) for f in fields[1:])
            elif tag == "A":
                nums = [int(f) for f in fields[1:]] + [0] * 5
                desc.absinfo[_hex(fields[0], where)] = tuple(nums[:5])
            elif tag == "L":
                desc.leds[_hex(fields[0], where)] = int(fields[1])
            elif tag == "S":
                desc.switches[_hex(fields[0], where)] = int(fields[1])
            elif tag == "E":
                events.append((float(fields[0]), _hex(fields[1], where), _hex(fields[2], where), int(fields[3])))
            else:
                raise RecordingError(f"{where}: unknown evemu line {line[:60]!r}")
        except (IndexError, ValueError) as exc:
            raise RecordingError(f"{where}: malformed evemu line {line[:60]!r}: {exc}") from None
    return desc, events


def event_reads(events: List[Tuple[float, int, int, int]]) -> List[Op]:
    """The events as reads: one per report (up to and including its SYN_REPORT)."""
    if not events:
        return []
    t0 = events[0][0]
    ops: List[Op] = []
    chunk = bytearray()
    start: Optional[float] = None
    for t, type_, code, value in events:
        if start is None:
            start = t
        sec = int(t)
        chunk += INPUT_EVENT.pack(sec, round((t - sec) * 1e6), type_, code, value)
        if type_ == EV_SYN and code == 0:
            ops.append(Op(READ, t=start - t0, data=bytes(chunk), size=len(chunk)))
            chunk, start = bytearray(), None
    if chunk:
        ops.append(Op(READ, t=(start or t0) - t0, data=bytes(chunk), size=len(chunk)))
    return ops


def from_evemu(paths: List[str], name: Optional[str] = None) -> Recording:
    """A Recording from evemu files: descriptions give the ioctls, events the reads."""
    desc: Optional[Description] = None
    events: List[Tuple[float, int, int, int]] = []
    for path in paths:
        with open(path, encoding="utf-8", errors="surrogateescape") as f:
            d, e = parse(f.read(), path)
        if d.name is not None or d.bits:
            desc = d
        events += e
    script = OpenScript(flags=os.O_RDONLY)
    if desc is not None:
        script.ops += desc.ioctls()
    script.ops += event_reads(events)
    default = (desc.name if desc is not None and desc.name else None) or \
        os.path.splitext(os.path.basename(paths[0]))[0]
    safe = "".join(c if c.isalnum() or c in "-_." else "-" for c in (name or default))
    return Recording(name=safe, opens=[script], transport="cuse", source=", ".join(paths))


def is_evemu(text: str) -> bool:
    """Whether ``text`` looks like an evemu file."""
    for line in text.splitlines():
        if line.startswith("# EVEMU"):
            return True
        if line.strip() and not line.startswith("#"):
            return line[:2] in ("N:", "I:", "E:", "P:", "B:", "A:")
    return False


__all__ = ["Description", "event_reads", "from_evemu", "is_evemu", "parse"]
