"""The wire between the loopback kernel and a real fusd session: a SOCK_SEQPACKET socketpair.

A session only ``read(2)``\\s and ``writev(2)``\\s its channel fd.  One end of an
``AF_UNIX``/``SOCK_SEQPACKET`` socketpair behaves like ``/dev/fuse`` for that:
each read returns exactly one whole message and each write is one message
(record boundaries are kept, as the kernel keeps them).  So the session under
test is the unmodified runtime code, byte for byte; only the other end is
played by Python (``kernel.LoopbackKernel``, ``fusd_runtime.replay``).

No root and no ``/dev/fuse`` are needed: this is what makes a device testable
in an unprivileged container.
"""

from __future__ import annotations

import socket
import threading
from typing import Callable, Optional

#: Socket buffer asked for on both ends: big enough for one maximal request or reply.
BUFSIZE = 4 << 20


class Channel:
    """The kernel's end of the socketpair; ``daemon_fd`` is what the session serves.

    ``on_message(data)`` is called in the receiver thread for every message the
    session writes, in order; ``on_eof()`` once when the daemon end is gone.
    """

    def __init__(self, on_message: Callable[[bytes], None], on_eof: Optional[Callable[[], None]] = None,
                 name: str = "fusd-loopback-kernel") -> None:
        self.kernel, self.daemon = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        for s in (self.kernel, self.daemon):
            try:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, BUFSIZE)
                s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, BUFSIZE)
            except OSError:  # pragma: no cover - capped by net.core.wmem_max, still big enough
                pass
        self._on_message = on_message
        self._on_eof = on_eof
        self._send_lock = threading.Lock()
        self.closed = False
        self.thread = threading.Thread(target=self._receive, name=name, daemon=True)
        self.thread.start()

    @property
    def daemon_fd(self) -> int:
        """The session's end (blocking, as ``Session.start_readers`` requires)."""
        return self.daemon.fileno()

    def _receive(self) -> None:
        buf = bytearray(BUFSIZE)
        try:
            while True:
                try:
                    n = self.kernel.recv_into(buf)
                except OSError:
                    break
                if n == 0:
                    break  # the daemon end was closed
                self._on_message(bytes(buf[:n]))
        finally:
            if self._on_eof is not None:
                self._on_eof()

    def send(self, data: bytes) -> None:
        """Queue one message for the session (a request, as the kernel queues it)."""
        with self._send_lock:
            self.kernel.send(data)

    def close(self) -> None:
        """Close both ends; the receiver sees end of file and exits.  Idempotent."""
        if self.closed:
            return
        self.closed = True
        try:
            self.daemon.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.daemon.close()
        if self.thread is not threading.current_thread():
            self.thread.join(10)
        self.kernel.close()
