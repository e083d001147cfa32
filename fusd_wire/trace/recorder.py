"""Recorder: append FUSE messages to a pcapng capture, from any thread, cheaply.

The runtime calls ``record()`` once per message on its hot path, so the method does
the minimum: one ``time.time_ns()`` (unless given), one precomputed-struct pack, and
buffered writes under a lock.  A list of buffers (what ``os.writev`` gets) is written
piecewise, never joined.  Nothing is decoded here; decoding happens offline.
"""

from __future__ import annotations

import os
import struct
import threading
import time
from typing import IO, Any, Optional, Sequence, Union

from .pcapng import _PADS, INBOUND, OUTBOUND, enhanced_packet_parts, interface_description, section_header

_EPB_HEAD = struct.Struct("<IIIIIII")
_TAIL = struct.Struct("<HHIHHI")  # epb_flags option, end of options, trailing total

Data = Union[bytes, bytearray, memoryview, Sequence[Union[bytes, bytearray, memoryview]]]


def connection_description(minor: Optional[int] = None, flags: Optional[int] = None, kind: str = "fuse") -> str:
    """The IDB description we write: ``fuse minor=45 flags=0x...`` (read back by ``Capture``).

    Recording a connection whose INIT is not in the capture (started mid-session) needs
    the negotiated protocol to decode it; this is where it lives.
    """
    parts = [kind]
    if minor is not None:
        parts.append(f"minor={minor}")
    if flags is not None:
        parts.append(f"flags={flags:#x}")
    return " ".join(parts)


class Recorder:
    """Write a pcapng capture of FUSE traffic: one interface per connection, one packet per message.

    ``Recorder(path_or_file)``: a path is opened (truncated) and closed by ``close()``; a
    binary file object is written to and only flushed.  Thread-safe: ``record()`` may be
    called from any number of threads; each message is one contiguous block.
    """

    INBOUND = INBOUND
    OUTBOUND = OUTBOUND

    def __init__(self, target: Union[str, os.PathLike, IO[bytes]], *, application: str = "fusd") -> None:
        if isinstance(target, (str, bytes, os.PathLike)):
            self._file: Any = open(target, "wb", buffering=1 << 16)  # closed by close()
            self._owns = True
        else:
            self._file = target
            self._owns = False
        self._lock = threading.Lock()
        self._names: list = []
        self._write = self._file.write
        self.closed = False
        self._write(section_header(application))

    def connection(self, name: str, *, minor: Optional[int] = None, flags: Optional[int] = None,
                   kind: str = "fuse") -> int:
        """Declare a connection (an IDB); returns its id for ``record()``.

        ``minor``/``flags``: the negotiated protocol, when recording starts after INIT.
        """
        with self._lock:
            self._check()
            conn = len(self._names)
            self._names.append(name)
            self._write(interface_description(name, connection_description(minor, flags, kind)))
            return conn

    def record(self, conn_id: int, direction: int, data: Data, timestamp_ns: Optional[int] = None,
               comment: Optional[str] = None) -> None:
        """Append one message.  ``direction``: ``INBOUND`` (kernel -> daemon) or ``OUTBOUND``.

        ``data``: the message as bytes, or the list of buffers handed to ``os.writev``.
        """
        if timestamp_ns is None:
            timestamp_ns = time.time_ns()
        if isinstance(data, (bytes, bytearray, memoryview)):
            n = len(data)
            bufs = None
        else:
            bufs = data
            n = 0
            for b in bufs:
                n += len(b)
        if comment is None:
            total = 44 + n + (-n & 3)
            head = _EPB_HEAD.pack(6, total, conn_id, timestamp_ns >> 32 & 0xFFFFFFFF, timestamp_ns & 0xFFFFFFFF, n, n)
            tail = _PADS[n & 3] + _TAIL.pack(2, 4, direction, 0, 0, total)
        else:
            head, tail = enhanced_packet_parts(conn_id, direction, timestamp_ns, n, comment)
        with self._lock:
            if self.closed:
                raise ValueError("record() on a closed Recorder")
            if conn_id >= len(self._names) or conn_id < 0:
                raise ValueError(f"unknown connection id {conn_id}")
            w = self._write
            w(head)
            if bufs is None:
                w(data)
            else:
                for b in bufs:
                    w(b)
            w(tail)

    def flush(self) -> None:
        """Push buffered packets to the file (e.g. before reading a live capture)."""
        with self._lock:
            if not self.closed:
                self._file.flush()

    def close(self) -> None:
        """Flush, and close the file if we opened it.  Idempotent."""
        with self._lock:
            if self.closed:
                return
            self.closed = True
            try:
                self._file.flush()
            finally:
                if self._owns:
                    self._file.close()

    def _check(self) -> None:
        if self.closed:
            raise ValueError("operation on a closed Recorder")

    def __enter__(self) -> Recorder:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


__all__ = ["Recorder", "connection_description"]
