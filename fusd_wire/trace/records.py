"""What every capture reader yields: ``Record`` (one message) and ``Connection`` (one session).

Readers of different formats (our pcapng, strace logs) produce the same records, so the
decoder, the stats, and replay never care where a capture came from.  A record knows
where it was found (block/line number and byte offset) so every complaint can say so.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable, Optional

from .pcapng import INBOUND, OUTBOUND, CaptureError

__all__ = ["INBOUND", "OUTBOUND", "CaptureError", "Connection", "Record", "ProblemHandler"]

ProblemHandler = Callable[[CaptureError], None]


class Record:
    """One FUSE message as captured.

    Attributes:
        conn: connection id (pcapng interface number; strace: one per /dev/fuse session).
        direction: ``INBOUND`` (kernel -> daemon) or ``OUTBOUND`` (daemon -> kernel).
        timestamp_ns: nanoseconds since the epoch (or since an unknown origin for strace
            ``-r``); None when the capture has no times (strace without ``-t``).
        data: the raw message bytes the capture holds (all of them unless ``missing``).
        index: block number (pcapng) or line number (strace), for messages.
        offset: byte offset in the file where the record starts.
        where: ``"block"`` or ``"line"``: what ``index`` counts.
        comment: the packet comment, if any (strace: ``= -1 ENOENT`` for a write that failed).
        missing: bytes of the message that are not in the capture (it is ``len(data) +
            missing`` long): a packet cut by a snap length, a string cut by ``strace -s``,
            a body that went through a pipe with ``splice(2)``.  0: complete.
        why: for an incomplete message, why its bytes are missing (shown by the decoder).
    """

    __slots__ = ("conn", "direction", "timestamp_ns", "data", "index", "offset", "where", "comment", "missing", "why")

    def __init__(self, conn: int, direction: int, timestamp_ns: Optional[int], data: bytes, index: int = 0,
                 offset: int = 0, where: str = "block", comment: str = "", missing: int = 0, why: str = "") -> None:
        self.conn = conn
        self.direction = direction
        self.timestamp_ns = timestamp_ns
        self.data = data
        self.index = index
        self.offset = offset
        self.where = where
        self.comment = comment
        self.missing = missing
        self.why = why

    @property
    def inbound(self) -> bool:
        """True for kernel -> daemon messages (requests)."""
        return self.direction == INBOUND

    @property
    def size(self) -> int:
        """The message's length on the wire (``len(data) + missing``)."""
        return len(self.data) + self.missing

    def location(self) -> str:
        """``block 7, offset 1234`` -- for messages about this record."""
        return f"{self.where} {self.index}, offset {self.offset}"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Record):
            return NotImplemented
        return all(getattr(self, k) == getattr(other, k) for k in self.__slots__)

    __hash__ = None  # type: ignore[assignment]  # mutable, like the dataclass it was

    def __repr__(self) -> str:
        extra = f", missing={self.missing}, why={self.why!r}" if self.missing else ""
        return (f"Record(conn={self.conn}, direction={self.direction}, timestamp_ns={self.timestamp_ns}, "
                f"{len(self.data)} bytes, {self.location()}{extra})")


_KV = re.compile(r"(\w+)=(\S+)")


@dataclass
class Connection:
    """One FUSE/CUSE connection in a capture, and the protocol it was recorded with, if known.

    ``minor``/``flags`` come from the IDB description (``fuse minor=45 flags=0x...``);
    the decoder starts from them and follows INIT if the capture has it.
    """

    id: int
    name: str
    kind: str = "fuse"
    minor: Optional[int] = None
    flags: Optional[int] = None
    linktype: Optional[int] = None

    @classmethod
    def from_description(cls, conn_id: int, name: str, description: str,
                         linktype: Optional[int] = None) -> Connection:
        """Parse an interface description such as ``fuse minor=45 flags=0x...`` (unknown parts: None)."""
        words = description.split()
        kind = words[0] if words and "=" not in words[0] else "fuse"
        kv = dict(_KV.findall(description))
        minor = int(kv["minor"]) if kv.get("minor", "").isdigit() else None
        try:
            flags = int(kv["flags"], 0) if "flags" in kv else None
        except ValueError:
            flags = None
        return cls(conn_id, name, kind, minor, flags, linktype)
