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


@dataclass
class Record:
    """One FUSE message as captured.

    Attributes:
        conn: connection id (pcapng interface number; strace: one per /dev/fuse session).
        direction: ``INBOUND`` (kernel -> daemon) or ``OUTBOUND`` (daemon -> kernel).
        timestamp_ns: nanoseconds since the epoch (or since an unknown origin for strace
            ``-r``); None when the capture has no times (strace without ``-t``).
        data: the raw message bytes.
        index: block number (pcapng) or line number (strace), for messages.
        offset: byte offset in the file where the record starts.
        where: ``"block"`` or ``"line"``: what ``index`` counts.
        comment: the packet comment, if any.
    """

    conn: int
    direction: int
    timestamp_ns: Optional[int]
    data: bytes
    index: int = 0
    offset: int = 0
    where: str = "block"
    comment: str = ""

    @property
    def inbound(self) -> bool:
        """True for kernel -> daemon messages (requests)."""
        return self.direction == INBOUND

    def location(self) -> str:
        """``block 7, offset 1234`` -- for messages about this record."""
        return f"{self.where} {self.index}, offset {self.offset}"


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
