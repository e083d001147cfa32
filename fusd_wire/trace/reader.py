"""Read a capture (our pcapng or an strace log) into ``Record`` objects, format auto-detected.

    cap = open_capture("trace.pcapng", on_problem=print)
    for rec in cap:            # Record(conn, direction, timestamp_ns, data, ...)
        ...
    cap.connections            # {conn id: Connection}, filled while reading

Replay and the decoder both start here.  Problems (damaged blocks, unparsable strace
lines) go to ``on_problem`` as located ``CaptureError``s and reading carries on; with no
handler the first problem is raised.
"""

from __future__ import annotations

import mmap
import os
import sys
from typing import IO, Dict, Iterator, Optional, Union

from .pcapng import BT_SHB, LINKTYPE_FUSE, BlockReader, CaptureError
from .records import Connection, ProblemHandler, Record

Source = Union[str, "os.PathLike[str]", bytes, IO[bytes]]


class Capture:
    """A readable capture: iterate it for records; ``connections`` describes each connection."""

    format = "?"

    def __init__(self, on_problem: Optional[ProblemHandler] = None) -> None:
        self.on_problem = on_problem
        self.connections: Dict[int, Connection] = {}

    def problem(self, err: CaptureError) -> None:
        """Report a damaged part of the capture: to ``on_problem`` if given, else raise ``err``."""
        if self.on_problem is None:
            raise err
        self.on_problem(err)

    def __iter__(self) -> Iterator[Record]:  # pragma: no cover - abstract
        """The capture's messages, in file order."""
        raise NotImplementedError


class PcapngCapture(Capture):
    """Records of a pcapng file; packets on non-FUSE link types are reported and skipped."""

    format = "pcapng"

    def __init__(self, data: Union[bytes, memoryview, mmap.mmap], on_problem: Optional[ProblemHandler] = None) -> None:
        super().__init__(on_problem)
        self.data = data

    def __iter__(self) -> Iterator[Record]:
        blocks = BlockReader(self.data, self.problem)
        warned = set()
        for pkt in blocks:
            iface = blocks.interfaces[pkt.interface]
            if pkt.interface not in self.connections:
                self.connections[pkt.interface] = Connection.from_description(
                    pkt.interface, iface.name, iface.description, iface.linktype)
            if iface.linktype != LINKTYPE_FUSE:
                if pkt.interface not in warned:
                    warned.add(pkt.interface)
                    self.problem(CaptureError(f"interface {pkt.interface} has link type {iface.linktype}, not "
                                              f"{LINKTYPE_FUSE} (FUSE); its packets are skipped",
                                              block=pkt.block, offset=pkt.offset))
                continue
            direction = pkt.direction
            if direction not in (1, 2):
                self.problem(CaptureError(f"packet has no direction in epb_flags ({pkt.flags:#x}); guessing from "
                                          "the header", block=pkt.block, offset=pkt.offset))
                direction = _guess_direction(pkt.data)
            if pkt.original_len != len(pkt.data):
                self.problem(CaptureError(f"packet was cut to {len(pkt.data)} of {pkt.original_len} bytes",
                                          block=pkt.block, offset=pkt.offset))
            yield Record(pkt.interface, direction, pkt.timestamp_ns, pkt.data, pkt.block, pkt.offset, "block",
                         "\n".join(pkt.comments))


def _guess_direction(data: bytes) -> int:
    """In headers start with len, opcode; out headers with len, error (<= 0 or a notify code)."""
    if len(data) >= 16 and len(data) < 40:
        return 2
    if len(data) >= 8:
        second = int.from_bytes(data[4:8], "little", signed=True)
        if second <= 0:
            return 2
    return 1


def _load(source: Source) -> Union[bytes, mmap.mmap]:
    if isinstance(source, (bytes, bytearray)):
        return bytes(source)
    if isinstance(source, (str, os.PathLike)):
        if os.fspath(source) == "-":
            return sys.stdin.buffer.read()
        with open(source, "rb") as f:
            try:
                return mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
            except (ValueError, OSError):  # empty file, or not mappable (a pipe)
                return f.read()
    return source.read()


def open_capture(source: Source, on_problem: Optional[ProblemHandler] = None, *,
                 format: Optional[str] = None) -> Capture:
    """Open a capture; ``format`` is ``"pcapng"``, ``"strace"`` or None (detect from the content)."""
    data = _load(source)
    if format is None:
        head = bytes(data[:4])
        format = "pcapng" if head == BT_SHB.to_bytes(4, "little") else "strace" if _looks_like_text(data) \
            else "pcapng"
    if format == "pcapng":
        return PcapngCapture(data, on_problem)
    if format == "strace":
        from .strace import StraceCapture
        return StraceCapture(bytes(data), on_problem)
    raise ValueError(f"unknown capture format {format!r}")


def _looks_like_text(data: Union[bytes, mmap.mmap]) -> bool:
    sample = bytes(data[:4096])
    if not sample:
        return False
    printable = sum(32 <= b < 127 or b in (9, 10, 13) for b in sample)
    return printable >= 0.95 * len(sample)
