"""One kernel channel: a mounted ``/dev/fuse`` or one ``/dev/cuse`` device.

A :class:`Session` is assembled from one module per concern, so that a reader
finds any system call's path in one place:

- ``reader.py``   reader threads: read, check, dispatch, write; the channel's end;
                  the supervisor that keeps a reader in the kernel
- ``fileops.py``  OPEN, READ, WRITE, IOCTL, POLL, FLUSH, FSYNC, RELEASE of device files
- ``deferred.py`` deferred answers, INTERRUPT, async calls, poll notifications
- ``replies.py``  encoding answers; failures and bad results (the device's bug)
- ``aio.py``      driving ``async def`` callbacks; ``strand.py`` per-device serialization

Transports add INIT and what is theirs: ``fusefs.FuseSession`` (a small
filesystem whose files are the devices) and ``cuse.CuseSession``.

**The serving model.**  Callbacks of one device never run concurrently (its
strand); different devices, and the runtime's own requests (LOOKUP, GETATTR,
READDIR, STATFS, OPEN routing, INTERRUPT), never wait for each other.  No
exception or return value of a callback leaves a request unanswered or kills a
reader.  The session ends when the kernel ends the channel; ``on_end(session,
reason, exc)`` tells the owner (the server), once.
"""

from __future__ import annotations

import os
import struct
import threading
from typing import Any, Callable, Dict, List, Optional, Set

from fusd_wire import OPS, Codec
from fusd_wire import constants as C

from .device import Context, Device, ReplyHandle
from .fileops import GONE, fh_counter
from .reader import ReaderLoop
from .state import IN_HEADER_SIZE, OP, OUT_HEADER, RequestBuffer

__all__ = ["GONE", "OP", "RequestBuffer", "Session", "default_readers"]

_OUT_HEADER = OUT_HEADER  # compatibility alias


def default_readers() -> int:
    """Reader threads when none are asked for: 2, or 1 if this process may only run on one CPU.

    A second reader pays off by already being awake on another CPU when a request
    arrives (a lone reader costs a cross-CPU wakeup per call, ~10x here).  Confined
    to one CPU it never can be, and when the client shares the server's scheduler
    group it costs a thread switch per request instead (~0.9 µs measured).  (A
    callback that never returns cannot starve a lone reader: the supervisor adds one.)
    """
    try:
        return 1 if len(os.sched_getaffinity(0)) == 1 else 2
    except (AttributeError, OSError):  # no affinity API: assume several CPUs
        return 2


class Session(ReaderLoop):
    """Serves one kernel channel; subclasses add INIT and transport specific requests.

    Args:
        fd: the channel (``/dev/fuse`` after mount, or ``/dev/cuse``; a SEQPACKET
            socket for loopback and replay).
        readers: reader threads; more than one keeps a reader blocked in the kernel
            while another runs Python code (a lone reader costs a cross-CPU wakeup).
        clone: give each extra reader its own fd with FUSE_DEV_IOC_CLONE (FUSE);
            otherwise readers share ``fd`` (CUSE, sockets).
        max_write: largest WRITE payload accepted (sets the read buffer size).
        recorder: a ``fusd_wire.trace`` Recorder, or None.
        on_error: called with channel errors that are not the channel's end.
        loop: the server's ``loop.EventLoop`` (timers, async callbacks); None: none.
        on_end: ``on_end(session, reason, exc)``, once, when the channel ends or a
            callback raised SystemExit/KeyboardInterrupt (``exc``).
    """

    #: how the kernel device is called, for messages
    kind = "fuse"

    def __init__(self, fd: int, *, readers: int = 2, clone: bool = True, max_write: int = 128 * 1024,
                 recorder: Any = None, on_error: Optional[Callable[[BaseException], None]] = None,
                 loop: Any = None, on_end: Any = None) -> None:
        self.fd = fd
        self.nreaders = max(1, readers)
        self.clone = clone
        self.max_write = max_write
        self.bufsize = max_write + 4096
        self.loop = loop
        self.on_end = on_end
        self.files: Dict[int, Context] = {}
        self.by_device: Dict[Device, Set[Context]] = {}
        self.deferred: Dict[int, ReplyHandle] = {}
        self.pending_interrupts: Dict[int, float] = {}
        self.ioctl_encoders: Dict[int, Callable[[Any], Any]] = {}  # unique -> encoder of a deferred declared ioctl
        self.ioctl_tables: Dict[Device, Dict[int, Any]] = {}  # device -> its declared ioctls (looked up once)
        self.ioctl_retries = 0  # FUSE_IOCTL_RETRY replies sent, every round (observability; tests count rounds)
        self._fh_counter = fh_counter()
        self.minor = C.FUSE_KERNEL_MINOR_VERSION
        self.init_flags = 0
        self.codec = Codec()
        self.initialized = threading.Event()
        self.stopping = False
        self.state_lock = threading.Lock()
        self._ended = False
        self._fatal: Optional[BaseException] = None
        self.end_reason: Optional[str] = None
        self.readers = []
        self.on_error = on_error
        self._logged: Set[str] = set()
        self.recorder = recorder
        self.conn_id = recorder.connection(f"{self.kind}:{fd}", kind=self.kind) if recorder is not None else 0
        self.writev: Callable[[int, List[Any]], int] = os.writev if recorder is None else self._recording_writev
        self.handlers: Dict[int, Callable[..., Optional[List[Any]]]] = {
            OP.FUSE_OPEN: self._op_open,
            OP.FUSE_READ: self._op_read,
            OP.FUSE_WRITE: self._op_write,
            OP.FUSE_RELEASE: self._op_release,
            OP.FUSE_FLUSH: self._op_flush,
            OP.FUSE_FSYNC: self._op_fsync,
            OP.FUSE_IOCTL: self._op_ioctl,
            OP.FUSE_POLL: self._op_poll,
            OP.FUSE_INTERRUPT: self._op_interrupt,
            OP.FUSE_DESTROY: self._op_destroy,
            OP.FUSE_FORGET: _no_reply,
            OP.FUSE_BATCH_FORGET: _no_reply,
            OP.FUSE_NOTIFY_REPLY: _no_reply,
        }
        self.min_length: List[int] = [IN_HEADER_SIZE] * 4096
        self.dispatch: List[Any] = []  # built from ``handlers`` when the readers start
        self._set_minor(C.FUSE_KERNEL_MINOR_VERSION)

    @property
    def fatal_error(self) -> Optional[BaseException]:
        """The SystemExit/KeyboardInterrupt a callback raised, if one did."""
        return self._fatal

    # ------------------------------------------------------------------ protocol version
    def _set_minor(self, minor: int, flags: int = 0) -> None:
        """Adopt the negotiated protocol: derive the fast codecs for its layouts."""
        self.minor, self.init_flags = minor, flags
        self.codec = Codec(minor, flags)
        fast = self.codec.fast
        self._unpack_read_in = fast("fuse_read_in").unpack_from
        self._write_in_size = fast("fuse_write_in").size
        self._unpack_write_in = fast("fuse_write_in").unpack_from
        if len(fast("fuse_write_in").fields) < 7:  # < 7.9: the 24-byte compat struct, no lock_owner/flags
            self._unpack_write_in = lambda buf, off, _u=self._unpack_write_in: _u(buf, off) + (0, 0, 0)
        self._unpack_open_in = fast("fuse_open_in").unpack_from
        self._unpack_release_in = fast("fuse_release_in").unpack_from
        self._unpack_flush_in = fast("fuse_flush_in").unpack_from
        self._unpack_fsync_in = fast("fuse_fsync_in").unpack_from
        self._unpack_ioctl_in = fast("fuse_ioctl_in").unpack_from
        self._unpack_poll_in = fast("fuse_poll_in").unpack_from
        self._unpack_interrupt_in = fast("fuse_interrupt_in").unpack_from
        self._pack_open_out = fast("fuse_open_out").pack
        self._pack_write_out = fast("fuse_write_out").pack
        self._pack_poll_out = fast("fuse_poll_out").pack
        self._pack_ioctl_out = fast("fuse_ioctl_out").pack
        self._pack_ioctl_iovec = fast("fuse_ioctl_iovec").pack
        self._pack_poll_wakeup = fast("fuse_notify_poll_wakeup_out").pack
        # Header and fixed reply struct packed in one call: one object and one iovec per reply.
        hdr = OUT_HEADER.format
        self._pack_write_reply = struct.Struct(hdr + fast("fuse_write_out").struct.format[1:]).pack
        self._pack_poll_reply = struct.Struct(hdr + fast("fuse_poll_out").struct.format[1:]).pack
        self._pack_ioctl_reply = struct.Struct(hdr + fast("fuse_ioctl_out").struct.format[1:]).pack
        self._pack_open_reply = struct.Struct(hdr + fast("fuse_open_out").struct.format[1:]).pack
        self._write_data = 40 + self._write_in_size  # where a WRITE's payload starts in the request
        # The smallest message of each opcode: header + its fixed request struct (the
        # layout of the negotiated minor); names and payloads are the handlers' to check.
        for opcode, spec in OPS.items():
            name = spec.fixed_request
            need = IN_HEADER_SIZE + (fast(name).size if name else 0)
            self.min_length[opcode & 4095] = need
        # INIT comes before any minor is known: the pre-7.36 fuse_init_in (16 bytes) is enough
        self.min_length[OP.FUSE_INIT] = IN_HEADER_SIZE + 16

    def _op_destroy(self, chan: Any, buf: Any, n: int, unique: int, nodeid: int, uid: int, gid: int,
                    pid: int) -> None:
        self.answer_error(chan, unique, 0)


def _no_reply(*args: Any) -> None:
    """FORGET, BATCH_FORGET, NOTIFY_REPLY: the kernel expects no answer."""
    return None
