"""Live debug: decode each message as it is served and hand its text to a callback.

``DebugSink`` has the recorder's interface (``connection()``, ``record()``, ``flush()``,
``close()``), so the runtime needs no debug code of its own: a session that records
calls ``record(conn_id, direction, parts)`` once per message anyway, and a server with
``debug=True`` simply gives it a ``DebugSink`` (wrapping the pcapng ``Recorder`` when it
records too).  A server without debug keeps ``recorder = None`` and its hot path has no
extra work at all.

The text is the ``decode`` command's (``render.text_lines``: libfuse ``-d`` header lines,
decoded fields indented), one ``emit`` call per message, in the order messages were
served.
"""

from __future__ import annotations

import threading
import time
from typing import Any, Callable, Dict, Iterator, Optional, Sequence, Union

from .decode import Decoder
from .pcapng import CaptureError
from .records import Connection, Record
from .render import text_lines

Data = Union[bytes, bytearray, memoryview, Sequence[Union[bytes, bytearray, memoryview]]]


class DebugSink:
    """A recorder-like sink that decodes every message and passes its text form to ``emit``.

    Args:
        emit: called with one message's text (several lines joined by newlines).
        inner: a ``Recorder`` (or another sink) that gets every call first; its
            connection ids are the ones returned.
        close_inner: ``close()`` also closes ``inner`` (False when the caller owns it).
        enabled: called before decoding a message; False skips the work (e.g. a
            logger's ``isEnabledFor`` so the level can change while serving).
        limit: bytes of each data field shown (as ``decode --max-bytes``).
    """

    def __init__(self, emit: Callable[[str], Any], inner: Any = None, *, close_inner: bool = True,
                 enabled: Optional[Callable[[], bool]] = None, limit: int = 64) -> None:
        self.emit = emit
        self.inner = inner
        self.close_inner = close_inner
        self.enabled = enabled
        self.limit = limit
        self.connections: Dict[int, Connection] = {}
        self._lock = threading.Lock()
        self._next: Optional[Record] = None
        # The Decoder pulls records lazily and yields one Event per record: feed it one at a time.
        self._events = iter(Decoder(self._pushed(), self._problem, self.connections))
        self.closed = False

    def _pushed(self) -> Iterator[Record]:
        while True:
            rec, self._next = self._next, None
            assert rec is not None, "DebugSink: the decoder asked for a record nobody pushed"
            yield rec

    def _problem(self, err: CaptureError) -> None:
        pass  # shown under the message itself ("   !! ..."), nothing more to say

    def connection(self, name: str, *, minor: Optional[int] = None, flags: Optional[int] = None,
                   kind: str = "fuse") -> int:
        """Declare a connection; returns its id for ``record()`` (the inner recorder's, if any)."""
        with self._lock:
            if self.inner is not None:
                conn = self.inner.connection(name, minor=minor, flags=flags, kind=kind)
            else:
                conn = len(self.connections)
            self.connections[conn] = Connection(conn, name, kind, minor, flags)
            return conn

    def record(self, conn_id: int, direction: int, data: Data, timestamp_ns: Optional[int] = None,
               comment: Optional[str] = None) -> None:
        """Pass the message on to ``inner``, decode it and emit its text."""
        if self.inner is not None:
            self.inner.record(conn_id, direction, data, timestamp_ns, comment)
        if self.enabled is not None and not self.enabled():
            return
        raw = bytes(data) if isinstance(data, (bytes, bytearray, memoryview)) else b"".join(data)
        ts = time.time_ns() if timestamp_ns is None else timestamp_ns
        with self._lock:
            self._next = Record(conn_id, direction, ts, raw, comment=comment or "")
            ev = next(self._events)
            self.emit("\n".join(text_lines(ev, limit=self.limit)))

    def flush(self) -> None:
        """Flush the inner recorder."""
        if self.inner is not None:
            self.inner.flush()

    def close(self) -> None:
        """Close the inner recorder when we own it.  Idempotent."""
        if self.closed:
            return
        self.closed = True
        if self.inner is not None and self.close_inner:
            self.inner.close()


__all__ = ["DebugSink"]
