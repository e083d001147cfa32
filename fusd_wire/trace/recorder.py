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
import weakref
from typing import IO, Any, Optional, Sequence, Union

from .pcapng import INBOUND, OUTBOUND, enhanced_packet_parts, interface_description, section_header

_EPB_HEAD_PACK = struct.Struct("<IIIIIII").pack  # type, total, interface, ts high, ts low, caplen, origlen
# per pad length: pad bytes, epb_flags option, end of options, trailing total
_TAIL_PACK = [struct.Struct(f"<{pad}xHHIHHI").pack for pad in range(4)]
_time_ns = time.time_ns

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

    ``flush_interval``: seconds after which buffered packets are written even when fewer
    than ``FLUSH_AT`` bytes came, so a capture can be read while it is being recorded (a
    background thread does it: ``record()`` itself never looks at the clock for this).
    None: only when the buffer fills, on ``flush()`` and on ``close()``.
    """

    INBOUND = INBOUND
    OUTBOUND = OUTBOUND
    FLUSH_AT = 1 << 16
    """Bytes buffered before one write(2) to the file."""

    def __init__(self, target: Union[str, os.PathLike, IO[bytes]], *, application: str = "fusd",
                 flush_interval: Optional[float] = 0.2) -> None:
        if isinstance(target, (str, bytes, os.PathLike)):
            self._file: Any = open(target, "wb", buffering=0)  # closed by close(); we buffer ourselves
            self._owns = True
        else:
            self._file = target
            self._owns = False
        self._lock = threading.Lock()
        self._names: list = []
        self._nconn = 0  # record() checks ids against this; 0 once closed
        self._buf = bytearray(section_header(application))
        self.closed = False
        self._closing = threading.Event()
        if flush_interval is not None:
            if flush_interval <= 0:
                raise ValueError(f"flush_interval must be > 0 seconds (or None), not {flush_interval!r}")
            threading.Thread(target=_flush_periodically, args=(weakref.ref(self), self._closing, flush_interval),
                             name="fusd-recorder-flush", daemon=True).start()

    def connection(self, name: str, *, minor: Optional[int] = None, flags: Optional[int] = None,
                   kind: str = "fuse") -> int:
        """Declare a connection (an IDB); returns its id for ``record()``.

        ``minor``/``flags``: the negotiated protocol, when recording starts after INIT.
        """
        with self._lock:
            self._check()
            conn = len(self._names)
            self._names.append(name)
            self._buf += interface_description(name, connection_description(minor, flags, kind))
            self._nconn = conn + 1
            return conn

    def record(self, conn_id: int, direction: int, data: Data, timestamp_ns: Optional[int] = None,
               comment: Optional[str] = None) -> None:
        """Append one message.  ``direction``: ``INBOUND`` (kernel -> daemon) or ``OUTBOUND``.

        ``data``: the message as bytes, or the list of buffers handed to ``os.writev``.
        ``timestamp_ns``: nanoseconds since the epoch; default now (``time.time_ns()``).
        """
        if timestamp_ns is None:
            timestamp_ns = _time_ns()
        bufs: Optional[Sequence[Union[bytes, bytearray, memoryview]]]
        if type(data) is bytes or isinstance(data, (bytearray, memoryview)):
            n = len(data)
            bufs = None
        else:
            seq: Sequence[Union[bytes, bytearray, memoryview]] = data  # type: ignore[assignment]  # not bytes
            bufs = seq
            n = 0
            for b in seq:
                n += len(b)
        if comment is None:
            pad = -n & 3
            total = 44 + n + pad
            head = _EPB_HEAD_PACK(6, total, conn_id, timestamp_ns >> 32 & 0xFFFFFFFF, timestamp_ns & 0xFFFFFFFF, n, n)
            tail = _TAIL_PACK[pad](2, 4, direction, 0, 0, total)
        else:
            head, tail = enhanced_packet_parts(conn_id, direction, timestamp_ns, n, comment)
        with self._lock:
            if not 0 <= conn_id < self._nconn:
                raise ValueError(f"unknown connection id {conn_id}" if not self.closed
                                 else "record() on a closed Recorder")
            buf = self._buf
            buf += head
            if bufs is None:
                buf += data  # type: ignore[arg-type]  # one buffer here (not a list)
            else:
                for b in bufs:
                    buf += b
            buf += tail
            if len(buf) >= self.FLUSH_AT:
                self._write(buf)
                buf.clear()

    def flush(self) -> None:
        """Push buffered packets to the file (e.g. before reading a live capture)."""
        with self._lock:
            if not self.closed:
                self._drain()

    def close(self) -> None:
        """Flush, and close the file if we opened it.  Idempotent."""
        with self._lock:
            if self.closed:
                return
            self.closed = True
            self._nconn = 0
            self._closing.set()
            try:
                self._drain()
            finally:
                if self._owns:
                    self._file.close()

    def _write(self, data: bytearray) -> None:
        """Write all of ``data`` (an unbuffered file may take less than everything)."""
        view = memoryview(data)
        while view:
            n = self._file.write(view)
            if n is None:  # a non-blocking raw file that took nothing: wait, keep order
                time.sleep(0.001)
                continue
            view = view[n:]
        view.release()

    def _drain(self) -> None:
        if self._buf:
            self._write(self._buf)
            self._buf.clear()
        flush = getattr(self._file, "flush", None)
        if flush is not None:
            flush()

    def _check(self) -> None:
        if self.closed:
            raise ValueError("operation on a closed Recorder")

    def __enter__(self) -> Recorder:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def _flush_periodically(ref: weakref.ReferenceType[Recorder], closing: threading.Event, interval: float) -> None:
    """Write what a recorder buffered, every ``interval`` s, until it closes (or is collected).

    A failing write (disk full) ends the periodic flushing; the data stays buffered and the
    next ``record()``/``flush()``/``close()`` that writes raises the error to its caller.
    """
    while not closing.wait(interval):
        rec = ref()
        if rec is None:
            return
        try:
            with rec._lock:
                if rec._buf and not rec.closed:
                    rec._drain()
        except OSError:
            return
        finally:
            del rec


__all__ = ["Recorder", "connection_description"]
