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
from typing import Callable, Dict, Iterator, List, Optional, Tuple, Union

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
@dataclass
class Interface:
    """One IDB as read: link type, name, description, timestamp units per second."""

    linktype: int
    name: str = ""
    description: str = ""
    units_per_sec: int = 1_000_000  # pcapng default if_tsresol = 6
    options: Dict[int, List[bytes]] = field(default_factory=dict)


@dataclass
class Packet:
    """One EPB (or SPB) as read; ``interface`` is numbered across sections."""

    interface: int
    timestamp_ns: Optional[int]
    data: bytes
    original_len: int
    flags: int
    comments: List[str]
    block: int
    offset: int

    @property
    def direction(self) -> int:
        return self.flags & 3


Problem = Callable[[CaptureError], None]
Source = Union[bytes, bytearray, memoryview, mmap.mmap]


def _parse_options(buf: Source, pos: int, end: int, e: str) -> Dict[int, List[bytes]]:
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


class BlockReader:
    """Iterate the packets of a pcapng byte buffer, reporting damage and carrying on.

    ``on_problem`` receives every ``CaptureError`` (located by block number and file
    offset); without it the first problem is raised.  After a damaged block the reader
    scans forward (4-byte aligned) for the next block whose leading and trailing length
    agree, so one bad block costs one block, not the rest of the file.
    """

    def __init__(self, buf: Source, on_problem: Optional[Problem] = None) -> None:
        self.buf = buf
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
        """Endianness of a believable block header at ``pos``, or None."""
        buf, size = self.buf, len(self.buf)
        if pos + 12 > size:
            return None
        for e in ((self._e, "<" if self._e == ">" else ">")):
            btype, total = struct.unpack_from(e + "II", buf, pos)
            if btype == BT_SHB:
                magic = struct.unpack_from(e + "I", buf, pos + 8)[0]
                if magic != BYTE_ORDER_MAGIC:
                    continue
            elif btype not in _KNOWN_BLOCKS:
                continue
            if total < 12 or total % 4 or pos + total > size:
                continue
            if struct.unpack_from(e + "I", buf, pos + total - 4)[0] == total:
                return e
        return None

    def _resync(self, pos: int) -> int:
        """Next plausible block start after ``pos`` (or end of buffer)."""
        p = pos + 4
        while p + 12 <= len(self.buf):
            if self._plausible(p):
                return p
            p += 4
        return len(self.buf)

    def __iter__(self) -> Iterator[Packet]:
        buf, size = self.buf, len(self.buf)
        pos = 0
        if size == 0:
            self._problem("empty file: not a pcapng capture", 0)
            return
        if size < 12 or struct.unpack_from("<I", buf, 0)[0] != BT_SHB:
            self._problem(f"not a pcapng file (first block type {bytes(buf[:4]).hex()}, expected 0a0d0d0a)", 0)
            pos = self._resync(0)
        while pos < size:
            if size - pos < 12:
                self._problem(f"truncated: {size - pos} stray bytes at the end (a block needs at least 12)", pos)
                return
            btype_le = struct.unpack_from("<I", buf, pos)[0]
            if btype_le == BT_SHB and size - pos >= 12:
                magic = bytes(buf[pos + 8:pos + 12])
                if magic == b"\x4d\x3c\x2b\x1a":
                    self._e = "<"
                elif magic == b"\x1a\x2b\x3c\x4d":
                    self._e = ">"
                else:
                    self._problem(f"section header with bad byte-order magic {magic.hex()}", pos)
                    pos = self._resync(pos)
                    self.block += 1
                    continue
            e = self._e
            btype, total = struct.unpack_from(e + "II", buf, pos)
            if total < 12 or total % 4:
                self._problem(f"block type {btype:#x} has impossible length {total}", pos)
                pos = self._resync(pos)
                self.block += 1
                continue
            if pos + total > size:
                self._problem(f"truncated: block type {btype:#x} says {total} bytes, only {size - pos} remain "
                              "(capture cut mid-block)", pos)
                return
            trailer = struct.unpack_from(e + "I", buf, pos + total - 4)[0]
            if trailer != total:
                self._problem(f"block type {btype:#x}: trailing length {trailer} != leading length {total}", pos)
                pos = self._resync(pos)
                self.block += 1
                continue
            try:
                pkt = self._block(btype, pos, total)
            except (ValueError, struct.error) as exc:
                self._problem(f"block type {btype:#x}: {exc}", pos)
                pkt = None
            if pkt is not None:
                yield pkt
            pos += total
            self.block += 1

    def _block(self, btype: int, pos: int, total: int) -> Optional[Packet]:
        buf, e, end = self.buf, self._e, pos + total - 4
        if btype == BT_SHB:
            if total < 28:
                raise ValueError("section header shorter than 28 bytes")
            major = struct.unpack_from(e + "H", buf, pos + 12)[0]
            if major != 1:
                raise ValueError(f"unsupported pcapng major version {major}")
            self._section_base = len(self.interfaces)
            return None
        if btype == BT_IDB:
            if total < 20:
                raise ValueError("interface description shorter than 20 bytes")
            linktype = struct.unpack_from(e + "H", buf, pos + 8)[0]
            opts = _parse_options(buf, pos + 16, end, e)
            iface = Interface(linktype, options=opts)
            iface.name = opts.get(IF_NAME, [b""])[0].decode("utf-8", "replace")
            iface.description = opts.get(IF_DESCRIPTION, [b""])[0].decode("utf-8", "replace")
            iface.units_per_sec = _tsresol(opts.get(IF_TSRESOL, [b""])[0])
            self.interfaces.append(iface)
            return None
        if btype == BT_EPB:
            if total < 32:
                raise ValueError("enhanced packet shorter than 32 bytes")
            ifid, hi, lo, caplen, origlen = struct.unpack_from(e + "IIIII", buf, pos + 8)
            data_end = pos + 28 + caplen
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
            return Packet(iface_no, ts, bytes(buf[pos + 28:data_end]), origlen, flags, comments, self.block, pos)
        if btype == BT_SPB:
            origlen = struct.unpack_from(e + "I", buf, pos + 8)[0]
            iface_no = self._section_base
            if iface_no >= len(self.interfaces):
                raise ValueError("simple packet before any interface block")
            data = bytes(buf[pos + 12:min(pos + 12 + origlen, end)])
            return Packet(iface_no, None, data, origlen, 0, [], self.block, pos)
        return None  # name resolution, statistics, custom, ...: nothing for us
