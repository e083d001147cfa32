"""umockdev's recordings as a :class:`Recording`: ``*.ioctl`` files and ``*.script`` files.

Formats (umockdev 0.17, ``src/ioctl_tree.c`` and ``docs/script-format.txt``):

- **ioctl files** (``umockdev-record --ioctl DEV=FILE``): one ioctl per line,
  ``[indent]NAME[(offset)] RET HEXDATA``: NAME from umockdev's table of known
  ioctls (``EVIOCGBIT``, ``EVIOCGNAME``, ``HIDIOCGRAWINFO``, ...), ``offset`` the
  ``_IOC_NR`` distance from the table's base number (``EVIOCGBIT(1)`` is EV_KEY's
  bits), RET the return value, HEXDATA the bytes the ioctl wrote to the caller
  (their length is the size).  ``@`` lines are metadata (``@DEV /dev/input/event5
  (evdev)``), ``#`` comments.  The indentation builds umockdev's tree for USB
  URB sequences (SUBMIT/REAP); those are not supported here: a clear error.
- **script files** (``umockdev-record --script DEV=FILE``): ``r MS DATA`` (the
  client read DATA, MS milliseconds after the previous operation), ``w MS DATA``
  (it wrote DATA), ``f PCT -`` (fuzz for later writes), ``d 0 PATH`` (the
  device, written by umockdev-record 0.17 though not in the format document),
  ``Q`` (stop), ``#``.
  DATA escapes bytes <= 32 and ``^`` as ``^`` + chr(b + 64) (``^@`` is 0, ``^J``
  newline, ``^``` is ``^``).

Both describe one open of one device: the result is a Recording with one
OpenScript (every emulated open plays it from its start).  As umockdev does
(``I_NOSTATE``), EVIOCGRAB succeeds whether it was recorded or not.
"""

from __future__ import annotations

import os
import re
from typing import Dict, List, Optional, Tuple

from ..ioctl import IOC_READ, IOC_WRITE
from .capture import RecordingError
from .script import IOCTL, READ, WRITE, Op, OpenScript, Recording

_E, _H = ord("E"), ord("H")
R, W, RW = IOC_READ, IOC_WRITE, IOC_READ | IOC_WRITE
#: umockdev's ioctl names: (direction, type, base nr) (sizes come from the recorded data)
NAMES: Dict[str, Tuple[int, int, int]] = {
    "EVIOCGVERSION": (R, _E, 0x01), "EVIOCGID": (R, _E, 0x02), "EVIOCGREP": (R, _E, 0x03),
    "EVIOCGKEYCODE": (R, _E, 0x04), "EVIOCGKEYCODE_V2": (R, _E, 0x04), "EVIOCGNAME": (R, _E, 0x06),
    "EVIOCGPHYS": (R, _E, 0x07), "EVIOCGUNIQ": (R, _E, 0x08), "EVIOCGPROP": (R, _E, 0x09),
    "EVIOCGMTSLOTS": (R, _E, 0x0A), "EVIOCGKEY": (R, _E, 0x18), "EVIOCGLED": (R, _E, 0x19),
    "EVIOCGSND": (R, _E, 0x1A), "EVIOCGSW": (R, _E, 0x1B), "EVIOCGBIT": (R, _E, 0x20), "EVIOCGABS": (R, _E, 0x40),
    "EVIOCGEFFECTS": (R, _E, 0x84), "EVIOCGRAB": (W, _E, 0x90),
    "HIDIOCGRDESCSIZE": (R, _H, 0x01), "HIDIOCGRDESC": (R, _H, 0x02), "HIDIOCGRAWINFO": (R, _H, 0x03),
    "HIDIOCGRAWNAME": (R, _H, 0x04), "HIDIOCGRAWPHYS": (R, _H, 0x05), "HIDIOCSFEATURE": (RW, _H, 0x06),
    "HIDIOCGFEATURE": (RW, _H, 0x07), "HIDIOCGRAWUNIQ": (R, _H, 0x08), "HIDIOCSINPUT": (RW, _H, 0x09),
    "HIDIOCGINPUT": (RW, _H, 0x0A), "HIDIOCSOUTPUT": (RW, _H, 0x0B), "HIDIOCGOUTPUT": (RW, _H, 0x0C),
}
_LINE = re.compile(r"^( *)([A-Z0-9_]+)(?:\((\d+)\))? (-?\d+) ?([0-9A-Fa-f]*)\s*$")


def _ioc(direction: int, type_: int, nr: int, size: int) -> int:
    return (direction << 30) | (size << 16) | (type_ << 8) | nr


def parse_ioctl_file(text: str, source: str = "") -> Tuple[List[Op], Optional[str]]:
    """The ioctls of a umockdev ioctl file, and the device path of its ``@DEV`` line."""
    ops: List[Op] = []
    dev = None
    for no, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.startswith("#"):
            continue
        if line.startswith("@"):
            if line.startswith("@DEV "):
                dev = line[5:].split()[0]
            continue
        m = _LINE.match(line)
        if m is None:
            raise RecordingError(f"{source}:{no}: not an umockdev ioctl line: {line[:80]!r}")
        indent, name, offset, ret, hexdata = m.groups()
        if name.startswith("USBDEVFS_"):
            raise RecordingError(f"{source}:{no}: {name}: umockdev's USB URB trees are not supported")
        if name not in NAMES:
            raise RecordingError(f"{source}:{no}: unknown umockdev ioctl name {name!r}")
        if len(hexdata) % 2:
            raise RecordingError(f"{source}:{no}: odd number of hex digits")
        data = bytes.fromhex(hexdata)
        direction, type_, nr = NAMES[name]
        cmd = _ioc(direction, type_, nr + int(offset or 0), len(data))
        ops.append(Op(IOCTL, cmd=cmd, data=data if direction & R else b"", in_data=data if not direction & R else b"",
                      result=int(ret)))
    return ops, dev


def unescape(data: bytes) -> bytes:
    """A script line's DATA: ``^`` + chr(b + 64) for bytes <= 32, ``^``` for ``^`` itself."""
    out = bytearray()
    i = 0
    while i < len(data):
        c = data[i]
        if c == 0x5E and i + 1 < len(data):  # '^'
            nxt = data[i + 1]
            out.append(0x5E if nxt == 0x60 else nxt - 64)
            i += 2
        else:
            out.append(c)
            i += 1
    return bytes(out)


def parse_script_file(raw: bytes, source: str = "") -> List[Op]:
    """The reads and writes of a umockdev script file, with their times (seconds from the start)."""
    ops: List[Op] = []
    t = 0.0
    for no, line in enumerate(raw.split(b"\n"), 1):
        if not line or line.startswith(b"#"):
            continue
        kind, _, rest = line.partition(b" ")
        if kind == b"Q":
            break
        value, _, data = rest.partition(b" ")
        if kind in (b"f", b"d"):  # fuzz; the device's path (umockdev-record writes "d 0 /dev/...")
            continue
        if kind not in (b"r", b"w"):
            raise RecordingError(f"{source}:{no}: unknown umockdev script operation {kind[:10]!r}")
        try:
            t += int(value) / 1000.0
        except ValueError:
            raise RecordingError(f"{source}:{no}: {value[:20]!r} is not a delay in ms") from None
        payload = unescape(data)
        ops.append(Op(READ if kind == b"r" else WRITE, t=t, data=payload, size=len(payload)))
    return ops


def from_umockdev(paths: List[str], name: Optional[str] = None) -> Recording:
    """A Recording from umockdev ioctl and/or script files (one open that plays them all)."""
    script = OpenScript(flags=os.O_RDWR)
    dev = None
    for path in paths:
        with open(path, "rb") as f:
            raw = f.read()
        if is_ioctl_file(raw):
            ops, found = parse_ioctl_file(raw.decode("ascii", "replace"), path)
            dev = dev or found
        else:
            ops = parse_script_file(raw, path)
        script.ops.extend(ops)
    grab = _ioc(W, _E, 0x90, 4)
    if not any(op.kind == IOCTL and op.cmd == grab for op in script.ops):
        script.ops.append(Op(IOCTL, cmd=grab))  # umockdev answers EVIOCGRAB success, recorded or not (I_NOSTATE)
    default = os.path.basename(dev) if dev else os.path.splitext(os.path.basename(paths[0]))[0]
    return Recording(name=name or default, opens=[script], transport="cuse", source=", ".join(paths))


def is_ioctl_file(raw: bytes) -> bool:
    """Whether ``raw`` looks like an umockdev ioctl file (first data line)."""
    for line in raw.decode("ascii", "replace").splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        return line.startswith("@") or _LINE.match(line) is not None
    return False


def is_script_file(raw: bytes) -> bool:
    """Whether ``raw`` looks like an umockdev script file."""
    for line in raw.split(b"\n"):
        if not line or line.startswith(b"#"):
            continue
        return re.match(rb"^[rwfd] -?\d+ ", line) is not None or line.startswith(b"Q")
    return False


__all__ = ["NAMES", "from_umockdev", "is_ioctl_file", "is_script_file", "parse_ioctl_file", "parse_script_file",
           "unescape"]
