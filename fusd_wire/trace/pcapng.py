"""pcapng blocks: the bytes of the few blocks we write, and a tolerant block reader.

Why pcapng: every capture tool (tshark, capinfos, Wireshark, editcap) already reads it,
it has per-interface link types (one interface = one FUSE connection), nanosecond
timestamps, per-packet flags (direction) and comments.  We write only what we need:

- Section Header Block (SHB), little-endian, version 1.0, section length -1 (unknown);
- one Interface Description Block (IDB) per connection: link type ``LINKTYPE_FUSE``
  (= LINKTYPE_USER0, 147: a private link type, so no tool misdissects the payload),
  snaplen 0 (no limit), ``if_name`` = connection name, ``if_tsresol`` = 9 (ns);
- one Enhanced Packet Block (EPB) per FUSE message, payload = the raw message, direction
  in ``epb_flags`` bits 0-1 (1 = inbound = kernel -> daemon, 2 = outbound = daemon ->
  kernel), optionally ``opt_comment``.

Spec: https://www.ietf.org/archive/id/draft-ietf-opsawg-pcapng-02.html (read for facts).
The reader accepts either byte order, several sections, any ``if_tsresol``, and skips
block types it does not need; damaged input becomes ``CaptureError`` reports and the
reader resynchronises on the next plausible block.
"""

from __future__ import annotations

import mmap
import struct
from dataclasses import dataclass, field
from typing import Any, BinaryIO, Callable, Dict, Iterator, List, Optional, Tuple, Union

LINKTYPE_USER0 = 147
LINKTYPE_FUSE = LINKTYPE_USER0
"""Our link type: LINKTYPE_USER0.  Payload = one raw FUSE/CUSE message (in or out header first)."""

BT_SHB = 0x0A0D0D0A
BT_IDB = 0x00000001
BT_SPB = 0x00000003
BT_EPB = 0x00000006
BYTE_ORDER_MAGIC = 0x1A2B3C4D

OPT_ENDOFOPT = 0
OPT_COMMENT = 1
SHB_HARDWARE, SHB_OS, SHB_USERAPPL = 2, 3, 4
IF_NAME, IF_DESCRIPTION, IF_TSRESOL = 2, 3, 9
EPB_FLAGS = 2

INBOUND = 1
"""epb_flags direction 1: kernel -> daemon (requests)."""
OUTBOUND = 2
"""epb_flags direction 2: daemon -> kernel (replies and notifications)."""

_KNOWN_BLOCKS = (BT_SHB, BT_IDB, BT_EPB, BT_SPB, 0x5, 0x4, 0xA, 0xBAD, 0x40000BAD)


class CaptureError(ValueError):
    """Damaged capture input, located: block (or line) number and byte offset in the file."""

    def __init__(self, message: str, *, block: Optional[int] = None, offset: Optional[int] = None,
                 where: str = "block") -> None:
        self.block = block
        self.offset = offset
        self.where = where
        self.detail = message
        super().__init__(message)

    def __str__(self) -> str:
        loc = []
        if self.block is not None:
            loc.append(f"{self.where} {self.block}")
        if self.offset is not None:
            loc.append(f"offset {self.offset}")
        return f"{', '.join(loc)}: {self.detail}" if loc else self.detail


# ---------------------------------------------------------------------------------- writing
def option(code: int, value: bytes) -> bytes:
    """One option TLV, value padded to 32 bits."""
    return struct.pack("<HH", code, len(value)) + value + b"\0" * (-len(value) % 4)


def _block(block_type: int, body: bytes) -> bytes:
    total = 12 + len(body)
    return struct.pack("<II", block_type, total) + body + struct.pack("<I", total)


def section_header(application: str = "fusd", os_name: str = "Linux") -> bytes:
    """A little-endian SHB, version 1.0, section length unknown (-1)."""
    opts = option(SHB_OS, os_name.encode()) + option(SHB_USERAPPL, application.encode()) + option(0, b"")
    return _block(BT_SHB, struct.pack("<IHHq", BYTE_ORDER_MAGIC, 1, 0, -1) + opts)


def interface_description(name: str, description: str = "", linktype: int = LINKTYPE_FUSE) -> bytes:
    """An IDB for one connection: our link type, no snaplen limit, nanosecond timestamps."""
    opts = option(IF_NAME, name.encode())
    if description:
        opts += option(IF_DESCRIPTION, description.encode())
    opts += option(IF_TSRESOL, b"\x09") + option(0, b"")
    return _block(BT_IDB, struct.pack("<HHI", linktype, 0, 0) + opts)


_EPB_HEAD = struct.Struct("<IIIIIII")  # type, total, ifid, ts_hi, ts_lo, caplen, origlen
_PADS = (b"", b"\0\0\0", b"\0\0", b"\0")
# epb_flags option + end of options, per direction (precomputed: the recorder's hot path)
_FLAG_OPTS = {d: struct.pack("<HHIHH", EPB_FLAGS, 4, d, 0, 0) for d in (0, 1, 2, 3)}


def enhanced_packet_parts(interface: int, direction: int, timestamp_ns: int, data_len: int,
                          comment: Optional[str] = None) -> Tuple[bytes, bytes]:
    """(head, tail) of an EPB; the packet data (``data_len`` bytes) goes between them.

    Split so the recorder can write a list of buffers without joining them first.
    """
    opts = _FLAG_OPTS[direction]
    if comment:
        opts = option(OPT_COMMENT, comment.encode()) + opts
    pad = _PADS[data_len & 3]
    total = 28 + data_len + len(pad) + len(opts) + 4
    head = _EPB_HEAD.pack(BT_EPB, total, interface, (timestamp_ns >> 32) & 0xFFFFFFFF,
                          timestamp_ns & 0xFFFFFFFF, data_len, data_len)
    return head, pad + opts + struct.pack("<I", total)


# ---------------------------------------------------------------------------------- reading
MAX_BLOCK = 64 << 20
"""Blocks longer than this are taken for damage (a FUSE message is at most a few MiB; a
length this big is a corrupt field, and believing it would hold the rest of the file)."""

CHUNK = 1 << 20
"""Bytes read from the file at a time: memory is bounded by this plus the largest block."""


@dataclass
class Interface:
    """One IDB as read: link type, name, description, timestamp units per second."""

    linktype: int
    name: str = ""
    description: str = ""
    units_per_sec: int = 1_000_000  # pcapng default if_tsresol = 6
    options: Dict[int, List[bytes]] = field(default_factory=dict)


class Packet:
    """One EPB (or SPB) as read; ``interface`` is numbered across sections."""

    __slots__ = ("interface", "timestamp_ns", "data", "original_len", "flags", "comments", "block", "offset")

    def __init__(self, interface: int, timestamp_ns: Optional[int], data: bytes, original_len: int, flags: int,
                 comments: List[str], block: int, offset: int) -> None:
        self.interface = interface
        self.timestamp_ns = timestamp_ns
        self.data = data
        self.original_len = original_len
        self.flags = flags
        self.comments = comments
        self.block = block
        self.offset = offset

    @property
    def direction(self) -> int:
        return self.flags & 3

    def __repr__(self) -> str:
        return (f"Packet(interface={self.interface}, timestamp_ns={self.timestamp_ns}, {len(self.data)} bytes, "
                f"flags={self.flags:#x}, block={self.block}, offset={self.offset})")


Problem = Callable[[CaptureError], None]
Source = Union[bytes, bytearray, memoryview, mmap.mmap, BinaryIO]


def _parse_options(buf: Any, pos: int, end: int, e: str) -> Dict[int, List[bytes]]:
    """Options TLVs from ``pos`` to ``end``; raises ValueError on overrun."""
    opts: Dict[int, List[bytes]] = {}
    while pos + 4 <= end:
        code, length = struct.unpack_from(e + "HH", buf, pos)
        pos += 4
        if code == OPT_ENDOFOPT:
            break
        if pos + length > end:
            raise ValueError(f"option {code} of {length} bytes overruns the block")
        opts.setdefault(code, []).append(bytes(buf[pos:pos + length]))
        pos += length + (-length % 4)
    return opts


def _tsresol(value: bytes) -> int:
    if not value:
        return 1_000_000
    v = value[0]
    return 2 ** (v & 0x7F) if v & 0x80 else 10 ** v


class _Window:
    """The bytes of the input from absolute offset ``base`` on; grows by reading, forgets what is behind.

    A bytes-like input is one window that never grows; a file is read ``CHUNK`` at a time.
    """

    __slots__ = ("f", "buf", "base", "eof")

    def __init__(self, source: Source) -> None:
        if isinstance(source, (bytes, bytearray, memoryview, mmap.mmap)):
            self.f: Optional[BinaryIO] = None
            self.buf: Any = source
            self.eof = True
        else:
            self.f = source
            self.buf = b""
            self.eof = False
        self.base = 0

    @property
    def end(self) -> int:
        """Absolute offset just past the bytes read so far."""
        return self.base + len(self.buf)

    def ensure(self, keep: int, end: int) -> bool:
        """Hold at least [keep, end) if the input has it; bytes before ``keep`` may be dropped."""
        if self.base + len(self.buf) >= end:
            return True
        if self.f is None or self.eof:
            return False
        parts = [bytes(self.buf[keep - self.base:])] if keep < self.end else []
        have = sum(len(p) for p in parts)
        new_base = min(keep, self.end)
        while new_base + have < end:
            chunk = self.f.read(max(CHUNK, end - new_base - have))
            if not chunk:
                self.eof = True
                break
            parts.append(chunk)
            have += len(chunk)
        self.buf = parts[0] if len(parts) == 1 else b"".join(parts)
        self.base = new_base
        return self.base + len(self.buf) >= end


_LE_II = struct.Struct("<II")
_LE_EPB = struct.Struct("<IIIII")  # interface id, ts high, ts low, captured length, original length
_LE_U32 = struct.Struct("<I")
_FLAGS_OPT_LE = struct.pack("<HH", EPB_FLAGS, 4)


class BlockReader:
    """Iterate the packets of a pcapng input (bytes or a binary file), reporting damage and carrying on.

    ``on_problem`` receives every ``CaptureError`` (located by block number and file
    offset); without it the first problem is raised.  After a damaged block -- a bad
    length, a trailer that disagrees, a length past the end of the file or above
    ``MAX_BLOCK`` -- the reader scans forward (4-byte aligned) for the next block that
    is believable (known type, lengths that agree, a packet on a described interface),
    reports the skipped region with its offsets, and goes on from there: one bad block
    costs that block, not the rest of the file.  Memory: ``CHUNK`` plus the largest block.
    """

    def __init__(self, buf: Source, on_problem: Optional[Problem] = None) -> None:
        self.win = _Window(buf)
        self.on_problem = on_problem
        self.interfaces: List[Interface] = []
        self._section_base = 0  # interface number of this section's interface 0
        self._e = "<"
        self.block = 0

    def _problem(self, msg: str, offset: int) -> None:
        err = CaptureError(msg, block=self.block, offset=offset)
        if self.on_problem is None:
            raise err
        self.on_problem(err)

    def _plausible(self, pos: int) -> Optional[str]:
        """Endianness of a believable block at absolute ``pos``, or None (reads ahead as needed)."""
        win = self.win
        if not win.ensure(pos, pos + 12):
            return None
        for e in ((self._e, "<" if self._e == ">" else ">")):
            buf, p = win.buf, pos - win.base
            btype, total = struct.unpack_from(e + "II", buf, p)
            if btype == BT_SHB:
                if struct.unpack_from(e + "I", buf, p + 8)[0] != BYTE_ORDER_MAGIC:
                    continue
            elif e != self._e or btype not in _KNOWN_BLOCKS:
                continue  # only a section header may switch the byte order
            if total < 12 or total % 4 or total > MAX_BLOCK or not win.ensure(pos, pos + total):
                continue
            buf, p = win.buf, pos - win.base
            if struct.unpack_from(e + "I", buf, p + total - 4)[0] != total:
                continue
            if btype == BT_EPB:
                if total < 32:
                    continue
                ifid, _, _, caplen = struct.unpack_from(e + "IIII", buf, p + 8)
                if self._section_base + ifid >= len(self.interfaces) or 28 + caplen > total - 4:
                    continue
            return e
        return None

    def _resync(self, pos: int, why: str) -> int:
        """Report the damage at ``pos`` and return the next believable block (or the end of the input)."""
        p = pos + 4
        while True:
            if self._plausible(p):
                self._problem(f"{why}; skipped {p - pos} bytes to the next valid block at offset {p}", pos)
                return p
            if not self.win.ensure(p, p + 16):  # nothing believable before the end
                end = max(self.win.end, pos)
                self._problem(f"{why}; no valid block in the {end - pos} bytes after it (to the end of the file)",
                              pos)
                return end
            p += 4

    def __iter__(self) -> Iterator[Packet]:
        win = self.win
        pos = 0
        if not win.ensure(0, 12):
            size = win.end
            if size == 0:
                self._problem("empty file: not a pcapng capture", 0)
            elif bytes(win.buf[:4]) == _LE_U32.pack(BT_SHB) or bytes(win.buf[:4]) == struct.pack(">I", BT_SHB):
                self._problem(f"file of {size} bytes starts like a pcapng section header but is too short for one "
                              "(28 bytes at least)", 0)
            else:
                self._problem(f"not a pcapng file (it starts with {bytes(win.buf[:4]).hex()}; a pcapng file "
                              "starts with the section header type 0a0d0d0a)", 0)
            return
        if bytes(win.buf[:4]) not in (b"\x0a\x0d\x0d\x0a",):
            pos = self._resync(0, f"not a pcapng file (it starts with {bytes(win.buf[:4]).hex()}; a pcapng file "
                                  "starts with the section header type 0a0d0d0a)")
            self.block += 1
        le = _LE_II.unpack_from
        epb = _LE_EPB.unpack_from
        u32 = _LE_U32.unpack_from
        while True:
            buf, base = win.buf, win.base
            p = pos - base
            if len(buf) - p < 12:
                if not win.ensure(pos, pos + 12):
                    left = win.end - pos
                    if left > 0:
                        self._problem(f"truncated: {left} stray bytes at the end (a block needs at least 12)", pos)
                    return
                continue
            e = self._e
            if e == "<":
                btype, total = le(buf, p)
                if btype == BT_EPB:
                    # The common case, kept tight: little-endian EPBs that carry only epb_flags,
                    # wholly in the window.  Anything else leaves for the general path below.
                    interfaces = self.interfaces
                    nif = len(interfaces)
                    sbase = self._section_base
                    n = len(buf)
                    while (btype == BT_EPB and 32 <= total <= MAX_BLOCK and p + total <= n and not total & 3
                           and u32(buf, p + total - 4)[0] == total):
                        ifid, hi, lo, caplen, origlen = epb(buf, p + 8)
                        dend = p + 28 + caplen
                        opos = dend + (-caplen & 3)
                        ifno = sbase + ifid
                        if (p + total - 4 - opos != 12 or ifno >= nif or buf[opos:opos + 4] != _FLAGS_OPT_LE
                                or u32(buf, opos + 8)[0]):
                            break
                        units = interfaces[ifno].units_per_sec
                        ticks = (hi << 32) | lo
                        yield Packet(ifno, ticks if units == 1_000_000_000 else ticks * 1_000_000_000 // units,
                                     buf[p + 28:dend], origlen, u32(buf, opos + 4)[0], [], self.block, pos)
                        pos += total
                        p += total
                        self.block += 1
                        if n - p < 12:
                            break
                        btype, total = le(buf, p)
                    if n - p < 12:
                        continue  # the window is used up: refill it
            else:
                btype, total = struct.unpack_from(">II", buf, p)
            if btype == BT_SHB:
                magic = bytes(buf[p + 8:p + 12])
                if magic == b"\x4d\x3c\x2b\x1a":
                    self._e = e = "<"
                elif magic == b"\x1a\x2b\x3c\x4d":
                    self._e = e = ">"
                else:
                    pos = self._resync(pos, f"section header with bad byte-order magic {magic.hex()}")
                    self.block += 1
                    continue
                btype, total = struct.unpack_from(e + "II", buf, p)
            if total < 12 or total % 4 or total > MAX_BLOCK:
                why = "impossible" if total < 12 or total % 4 else f"implausible (over {MAX_BLOCK >> 20} MiB)"
                pos = self._resync(pos, f"block type {btype:#x} has {why} length {total}")
                self.block += 1
                continue
            if len(buf) - p < total:
                if not win.ensure(pos, pos + total):
                    left = win.end - pos
                    nxt = self._next_block(pos)
                    if nxt is None:
                        self._problem(f"truncated: block type {btype:#x} says {total} bytes, only {left} remain "
                                      "(capture cut mid-block)", pos)
                        return
                    self._problem(f"block type {btype:#x} says {total} bytes, only {left} remain (a damaged length, "
                                  f"since a valid block follows); skipped {nxt - pos} bytes to the next valid block "
                                  f"at offset {nxt}", pos)
                    pos = nxt
                    self.block += 1
                    continue
                continue  # the window moved
            trailer = u32(buf, p + total - 4)[0] if e == "<" else struct.unpack_from(">I", buf, p + total - 4)[0]
            if trailer != total:
                pos = self._resync(pos, f"block type {btype:#x}: trailing length {trailer} != leading length {total}")
                self.block += 1
                continue
            if btype == BT_EPB and e == "<" and total >= 32:
                ifid, hi, lo, caplen, origlen = epb(buf, p + 8)
                dend = p + 28 + caplen
                oend = p + total - 4
                iface_no = self._section_base + ifid
                if dend <= oend and iface_no < len(self.interfaces):
                    opos = dend + (-caplen & 3)
                    if oend - opos == 12 and buf[opos:opos + 4] == _FLAGS_OPT_LE and not u32(buf, opos + 8)[0]:
                        flags, comments = u32(buf, opos + 4)[0], []
                    else:
                        try:
                            opts = _parse_options(buf, opos, oend, e)
                        except ValueError as exc:
                            self._problem(f"block type {btype:#x}: {exc}", pos)
                            pos += total
                            self.block += 1
                            continue
                        flags = u32(opts[EPB_FLAGS][0])[0] if len(opts.get(EPB_FLAGS, [b""])[0]) == 4 else 0
                        comments = [c.decode("utf-8", "replace") for c in opts.get(OPT_COMMENT, [])]
                    units = self.interfaces[iface_no].units_per_sec
                    ticks = (hi << 32) | lo
                    yield Packet(iface_no, ticks if units == 1_000_000_000 else ticks * 1_000_000_000 // units,
                                 bytes(buf[p + 28:dend]), origlen, flags, comments, self.block, pos)
                    pos += total
                    self.block += 1
                    continue
            try:
                pkt = self._block(btype, p, total, pos)
            except (ValueError, struct.error) as exc:
                self._problem(f"block type {btype:#x}: {exc}", pos)
                pkt = None
            if pkt is not None:
                yield pkt
            pos += total
            self.block += 1

    def _next_block(self, pos: int) -> Optional[int]:
        """The next believable block after ``pos`` (within what the input still has), or None."""
        p = pos + 4
        while self.win.ensure(p, p + 16):
            if self._plausible(p):
                return p
            p += 4
        return None

    def _block(self, btype: int, p: int, total: int, pos: int) -> Optional[Packet]:
        """Decode one block at window offset ``p`` (absolute ``pos``); ValueError if it is malformed."""
        buf, e, end = self.win.buf, self._e, p + total - 4
        if btype == BT_SHB:
            if total < 28:
                raise ValueError("section header shorter than 28 bytes")
            major = struct.unpack_from(e + "H", buf, p + 12)[0]
            if major != 1:
                raise ValueError(f"unsupported pcapng major version {major}")
            self._section_base = len(self.interfaces)
            return None
        if btype == BT_IDB:
            if total < 20:
                raise ValueError("interface description shorter than 20 bytes")
            linktype = struct.unpack_from(e + "H", buf, p + 8)[0]
            opts = _parse_options(buf, p + 16, end, e)
            iface = Interface(linktype, options=opts)
            iface.name = opts.get(IF_NAME, [b""])[0].decode("utf-8", "replace")
            iface.description = opts.get(IF_DESCRIPTION, [b""])[0].decode("utf-8", "replace")
            iface.units_per_sec = _tsresol(opts.get(IF_TSRESOL, [b""])[0])
            self.interfaces.append(iface)
            return None
        if btype == BT_EPB:
            if total < 32:
                raise ValueError("enhanced packet shorter than 32 bytes")
            ifid, hi, lo, caplen, origlen = struct.unpack_from(e + "IIIII", buf, p + 8)
            data_end = p + 28 + caplen
            if data_end > end:
                raise ValueError(f"captured length {caplen} overruns the block")
            iface_no = self._section_base + ifid
            if iface_no >= len(self.interfaces):
                raise ValueError(f"packet on interface {ifid}, which no interface block described")
            opts = _parse_options(buf, data_end + (-caplen % 4), end, e)
            flags = struct.unpack_from(e + "I", opts[EPB_FLAGS][0])[0] if len(opts.get(EPB_FLAGS, [b""])[0]) == 4 \
                else 0
            comments = [c.decode("utf-8", "replace") for c in opts.get(OPT_COMMENT, [])]
            units = self.interfaces[iface_no].units_per_sec
            ticks = (hi << 32) | lo
            ts = ticks if units == 1_000_000_000 else ticks * 1_000_000_000 // units
            return Packet(iface_no, ts, bytes(buf[p + 28:data_end]), origlen, flags, comments, self.block, pos)
        if btype == BT_SPB:
            if total < 16:
                raise ValueError("simple packet shorter than 16 bytes")
            origlen = struct.unpack_from(e + "I", buf, p + 8)[0]
            iface_no = self._section_base
            if iface_no >= len(self.interfaces):
                raise ValueError("simple packet before any interface block")
            data = bytes(buf[p + 12:min(p + 12 + origlen, end)])
            return Packet(iface_no, None, data, origlen, 0, [], self.block, pos)
        return None  # name resolution, statistics, custom, ...: nothing for us
