"""What travels between a loopback process and its kernel: callers, pending requests, refusals, errors.

``kernel.LoopbackKernel`` makes :class:`Pending` requests for :class:`Credentials`;
``incoming.Incoming`` checks what the session answers and records a
:class:`Violation` where ``fs/fuse/dev.c`` would refuse it.
"""

from __future__ import annotations

import errno
import os
import threading
from dataclasses import dataclass, field
from typing import Optional, Tuple

from fusd_wire import FAST

OUT_HEADER_SIZE = FAST.fuse_out_header.struct.size


class LoopbackError(OSError):
    """A loopback set-up problem (no such device, connection not started, INIT refused)."""


class LoopbackTimeout(TimeoutError):
    """A call got no answer in time; it was interrupted, then abandoned.  ``request`` says which."""

    def __init__(self, message: str, request: str = "") -> None:
        super().__init__(message)
        self.request = request


@dataclass
class Violation:
    """Something the session sent that the kernel refuses (``fuse_dev_do_write`` would fail with ``errno``)."""

    what: str
    errno: int
    message: bytes = b""

    def __str__(self) -> str:
        head = self.message[:OUT_HEADER_SIZE].hex()
        return f"{self.what} (the kernel answers the daemon's write with {errno.errorcode.get(self.errno, '?')}" \
               + (f"; header {head})" if head else ")")


@dataclass
class Credentials:
    """Who makes a call: ``fuse_in_header`` uid, gid and pid, plus groups for permission checks."""

    uid: int = field(default_factory=os.geteuid)
    gid: int = field(default_factory=os.getegid)
    pid: int = field(default_factory=os.getpid)
    groups: Tuple[int, ...] = ()


class Pending:
    """One request on its way: what reply shape it expects, and its answer once it came.

    ``fixed`` is the size of the reply's fixed part; ``var_max`` the most bytes of
    its variable last argument (None: the reply is exactly ``fixed``;
    ``copy_out_args`` allows a shorter variable part, never a longer one).
    """

    __slots__ = ("unique", "opcode", "fixed", "var_max", "event", "error", "payload", "interrupted",
                 "describe", "internal", "abandoned", "sent", "raw")

    def __init__(self, unique: int, opcode: int, fixed: int, var_max: Optional[int], describe: str,
                 internal: bool = False, raw: bool = False) -> None:
        self.unique = unique
        self.opcode = opcode
        self.fixed = fixed
        self.var_max = var_max
        self.event = threading.Event()
        self.error = 0
        self.payload = b""
        self.interrupted = False
        self.describe = describe
        self.internal = internal
        self.abandoned = False
        self.sent = False
        self.raw = raw  # sent by send_raw: its answer is taken as it comes (no shape check)

    def fits(self, n: int) -> bool:
        """Whether a successful reply body of ``n`` bytes is one ``copy_out_args`` accepts."""
        if self.var_max is None:
            return n == self.fixed
        return self.fixed <= n <= self.fixed + self.var_max

    def finish(self, error: int, payload: bytes = b"") -> None:
        self.error, self.payload = error, payload
        self.event.set()
