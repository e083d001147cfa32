"""Read a capture (our pcapng or an strace log) into ``Record`` objects, format auto-detected.

    cap = open_capture("trace.pcapng", on_problem=print)
    for rec in cap:            # Record(conn, direction, timestamp_ns, data, ...)
        ...
    cap.connections            # {conn id: Connection}, filled while reading

Replay and the decoder both start here.  Problems (damaged blocks, unparsable strace
lines) go to ``on_problem`` as located ``CaptureError``s and reading carries on; with no
handler the first problem is raised.

Files are read as a stream, a chunk at a time, and records are yielded as they are
complete: memory does not grow with the size of the capture (pcapng: a chunk plus the
largest block; strace: the longest line plus what is in flight in pipes).
"""

from __future__ import annotations

import io
import os
import sys
from typing import IO, Any, BinaryIO, Dict, Iterator, Optional, Union

from .pcapng import BT_SHB, LINKTYPE_FUSE, BlockReader, CaptureError
from .records import Connection, ProblemHandler, Record

Source = Union[str, "os.PathLike[str]", bytes, bytearray, memoryview, IO[bytes]]


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


class Input:
    """Where a capture's bytes come from: a path (opened per iteration), bytes, or an open binary file."""

    def __init__(self, source: Source) -> None:
        self.path: Optional[str] = None
        self.data: Optional[bytes] = None
        self.stream: Optional[BinaryIO] = None
        if isinstance(source, (bytes, bytearray, memoryview)):
            self.data = bytes(source)
        elif isinstance(source, (str, os.PathLike)):
            path = os.fspath(source)
            if path == "-":
                self.stream = sys.stdin.buffer
            else:
                self.path = path
                with open(path, "rb"):  # fail now (OSError) rather than at the first record
                    pass
        else:
            self.stream = source  # type: ignore[assignment]

    def head(self, n: int = 4096) -> bytes:
        """The first bytes, without consuming them (for format detection)."""
        if self.data is not None:
            return self.data[:n]
        if self.path is not None:
            with open(self.path, "rb") as f:
                return f.read(n)
        stream = self.stream
        assert stream is not None
        if stream.seekable():
            pos = stream.tell()
            data = stream.read(n)
            stream.seek(pos)
            return data
        data = stream.read(n)  # a pipe: read what detection needs, and put it back in front
        self.stream = io.BufferedReader(_Prefixed(data, stream), 1 << 16)  # type: ignore[assignment]
        return data

    def open(self) -> Union[bytes, BinaryIO]:
        """The bytes (for bytes input) or a binary stream positioned at the start."""
        if self.data is not None:
            return self.data
        if self.path is not None:
            return open(self.path, "rb", buffering=1 << 16)
        assert self.stream is not None
        return self.stream

    def close(self, f: Union[bytes, BinaryIO]) -> None:
        """Close what ``open`` opened (never a stream the caller gave)."""
        if self.path is not None and not isinstance(f, bytes):
            f.close()


class _Prefixed(io.RawIOBase):
    """A non-seekable stream whose first bytes were already read for detection."""

    def __init__(self, head: bytes, rest: IO[bytes]) -> None:
        super().__init__()
        self._head = head
        self._rest = rest

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        if self._head:
            n = min(len(b), len(self._head))
            b[:n] = self._head[:n]
            self._head = self._head[n:]
            return n
        data = self._rest.read(len(b))
        b[:len(data)] = data
        return len(data)


class PcapngCapture(Capture):
    """Records of a pcapng file; packets on non-FUSE link types are reported and skipped."""

    format = "pcapng"

    def __init__(self, source: Union[Input, Source], on_problem: Optional[ProblemHandler] = None) -> None:
        super().__init__(on_problem)
        self.input = source if isinstance(source, Input) else Input(source)

    def __iter__(self) -> Iterator[Record]:
        f = self.input.open()
        try:
            yield from self._records(f)
        finally:
            self.input.close(f)

    def _records(self, f: Union[bytes, BinaryIO]) -> Iterator[Record]:
        blocks = BlockReader(f, self.problem)
        interfaces = blocks.interfaces
        fuse: Dict[int, bool] = {}  # interface -> its packets are FUSE messages
        connections = self.connections
        for pkt in blocks:
            ifno = pkt.interface
            ok = fuse.get(ifno)
            if ok is None:
                iface = interfaces[ifno]
                if ifno not in connections:
                    connections[ifno] = Connection.from_description(ifno, iface.name, iface.description,
                                                                    iface.linktype)
                ok = fuse[ifno] = iface.linktype == LINKTYPE_FUSE
                if not ok:
                    self.problem(CaptureError(f"interface {ifno} has link type {iface.linktype}, not "
                                              f"{LINKTYPE_FUSE} (FUSE); its packets are skipped",
                                              block=pkt.block, offset=pkt.offset))
            if not ok:
                continue
            direction = pkt.flags & 3
            if direction != 1 and direction != 2:
                self.problem(CaptureError(f"packet has no direction in epb_flags ({pkt.flags:#x}); guessing from "
                                          "the header", block=pkt.block, offset=pkt.offset))
                direction = _guess_direction(pkt.data)
            data = pkt.data
            missing = pkt.original_len - len(data)
            yield Record(ifno, direction, pkt.timestamp_ns, data, pkt.block, pkt.offset, "block",
                         "\n".join(pkt.comments) if pkt.comments else "", missing if missing > 0 else 0,
                         "cut by the capture's snap length" if missing > 0 else "")


def _guess_direction(data: bytes) -> int:
    """In headers start with len, opcode; out headers with len, error (<= 0 or a notify code)."""
    if len(data) >= 16 and len(data) < 40:
        return 2
    if len(data) >= 8:
        second = int.from_bytes(data[4:8], "little", signed=True)
        if second <= 0:
            return 2
    return 1


def open_capture(source: Source, on_problem: Optional[ProblemHandler] = None, *,
                 format: Optional[str] = None) -> Capture:
    """Open a capture; ``format`` is ``"pcapng"``, ``"strace"`` or None (detect from the content).

    ``source``: a path (``"-"``: stdin), bytes, or a binary file object.  Nothing is read
    into memory as a whole: iterating the capture streams it.
    """
    inp = Input(source)
    if format is None:
        head = inp.head()
        format = "pcapng" if head[:4] == BT_SHB.to_bytes(4, "little") else "strace" if _looks_like_text(head) \
            else "pcapng"
    if format == "pcapng":
        return PcapngCapture(inp, on_problem)
    if format == "strace":
        from .strace import StraceCapture
        return StraceCapture(inp, on_problem)
    raise ValueError(f"unknown capture format {format!r}")


def _looks_like_text(sample: bytes) -> bool:
    if not sample:
        return False
    printable = sum(32 <= b < 127 or b in (9, 10, 13) for b in sample)
    return printable >= 0.95 * len(sample)


__all__ = ["Capture", "Input", "PcapngCapture", "Source", "open_capture"]
