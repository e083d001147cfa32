"""The loopback kernel: the kernel's side of one FUSE or CUSE connection, played in Python.

    from fusd_runtime.loopback import LoopbackKernel

    with LoopbackKernel("cuse") as kernel:         # or "fuse"; no root, no /dev/fuse
        kernel.add(Mailbox(), "mailbox")
        kernel.start()
        f = kernel.open("mailbox", os.O_RDWR | os.O_NONBLOCK)
        f.write(b"hi"); assert f.read(10) == b"hi"
        f.close()

A real ``fusd_runtime`` session (``FuseSession``/``CuseSession``, unmodified)
serves the devices on one end of a SOCK_SEQPACKET socketpair
(``channel.Channel``); this class is the other end.  It does what ``fs/fuse``
does for a process's system calls, with the kernel's rules:

- **Connection set-up** (``fs/fuse/inode.c`` ``process_init_reply``,
  ``fs/fuse/cuse.c`` ``cuse_process_init_reply``): INIT (or CUSE_INIT) at the
  kernel minor asked for; the reply's minor, ``max_write``, ``max_pages`` and
  flags are adopted (``max_read``/``max_write`` at least 4096 on CUSE, a reply
  with another major, an error or a CUSE minor below 11 makes the connection
  fail: every later call gets ECONNREFUSED).
- **Requests**: uniques are even and grow by 2; an INTERRUPT for a request
  carries its unique with bit 0 set (``fs/fuse/dev.c``, ``FUSE_INT_REQ_BIT``).
- **Replies are checked as ``fuse_dev_do_write`` checks them**: ``len`` must be
  the message size, ``error`` in ``(-1000, 0]``, an error reply has no body, a
  body is exactly the size the request expects (``copy_out_args``: shorter only
  where the last argument is variable, never longer).  Where the kernel fails
  the daemon's ``write(2)`` with EINVAL the loopback cannot (a socket write
  succeeded), so it records a :class:`Violation` and, like the kernel, fails the
  request with EIO (a bad body) or leaves it waiting (a bad header).
- **Interrupts** (``request_wait_answer``/``fuse_read_interrupt``): an
  interrupted call sends FUSE_INTERRUPT once the request is out; an EAGAIN
  answer re-queues it while the request is still open; ENOSYS switches
  interrupts off for the connection (``no_interrupt``).
- **Notifications**: NOTIFY_POLL wakes the poll waiters of its ``kh`` (only
  files that polled with FUSE_POLL_SCHEDULE_NOTIFY are registered); a body of
  the wrong size or an unknown code is a violation (EINVAL in the kernel).
- **Teardown** is a server's stop: the session answers its pending calls
  ENODEV; whatever is still waiting then fails with ECONNABORTED, as after
  ``fuse_abort_conn``.  Files left open get no RELEASE (the connection is gone).

The per-file system calls (open, read, write, ioctl, poll, fsync, close) are
in ``file.py``; the ioctl protocol in ``ioctl.py``.  A blocking call that gets
no answer within ``timeout`` seconds is interrupted like a signal would, and
then abandoned with :class:`LoopbackTimeout` (a test must not hang).
"""

from __future__ import annotations

import errno
import itertools
import os
import stat
import threading
from typing import Any, Dict, List, Optional, Set, Tuple

from fusd_wire import FAST, Codec
from fusd_wire import constants as C

from ..device import Device
from ..loop import EventLoop
from . import sessions
from .channel import Channel
from .incoming import FUSE_INT_REQ_BIT, OWN_UNIQUE, Incoming
from .memory import Memory
from .requests import Credentials, LoopbackError, LoopbackTimeout, Pending, Violation

__all__ = ["Credentials", "LoopbackError", "LoopbackKernel", "LoopbackTimeout", "Pending", "Violation"]

OP = C.fuse_opcode
_IN_HEADER = FAST.fuse_in_header.struct
_OUT_HEADER = FAST.fuse_out_header.struct
IN_HEADER_SIZE = _IN_HEADER.size
OUT_HEADER_SIZE = _OUT_HEADER.size
FUSE_REQ_ID_STEP = 2
PAGE_SIZE = 4096
#: ``FUSE_DEFAULT_MAX_PAGES_PER_REQ`` and the default ``fuse_max_pages_limit`` (fs/fuse/fuse_i.h, inode.c)
DEFAULT_MAX_PAGES = 32
MAX_PAGES_LIMIT = 256
#: The INIT flags this machine's 6.18 kernel (protocol 7.45) offered, captured in
#: tests/data/kernel-7.45-messages.json (flags | flags2 << 32).
KERNEL_INIT_FLAGS = 0x5FD73FFFFFB
#: ``fuse_init_in.max_readahead`` the captured kernel sent (VM_READAHEAD_PAGES pages).
KERNEL_MAX_READAHEAD = 131072
#: Bytes at most in a read(2)/write(2) (``MAX_RW_COUNT``: INT_MAX rounded down to a page).
MAX_RW_COUNT = 0x7FFFF000


class LoopbackKernel(Incoming):
    """The kernel's end of one connection to a real session (see the module doc).

    Args:
        transport: "fuse" (a mounted file system whose files are the devices,
            restricted ioctls) or "cuse" (one character device, unrestricted ioctls).
        minor: the protocol minor this kernel speaks (7.45 here, 7.38 in the CUSE guest;
            older ones shrink the structs, e.g. 7.8's 24-byte ``fuse_write_in``).
        creds: the default caller (uid/gid/pid) of every call.
        timeout: seconds a blocking call may wait for its answer before it is interrupted
            and abandoned (:class:`LoopbackTimeout`).
        recorder: a ``fusd_wire.trace.Recorder``: the session records every message.
        readers: reader threads of a CUSE session (FUSE sessions get one, see ``sessions``).
        allow_other: FUSE: other users may use the files (without it the kernel answers
            EACCES to anyone but the mounting user, ``fuse_allow_current_process``).
    """

    def __init__(self, transport: str = "fuse", *, minor: int = C.FUSE_KERNEL_MINOR_VERSION,
                 creds: Optional[Credentials] = None, timeout: float = 30.0, recorder: Any = None,
                 readers: int = 1, allow_other: bool = True) -> None:
        if transport not in ("fuse", "cuse"):
            raise ValueError(f"transport must be 'fuse' or 'cuse', not {transport!r}")
        if not 0 <= minor <= C.FUSE_KERNEL_MINOR_VERSION:
            raise ValueError(f"protocol minor {minor} is outside 0..{C.FUSE_KERNEL_MINOR_VERSION}")
        if transport == "cuse" and minor < 11:
            raise ValueError("CUSE exists from protocol 7.11 on")
        self.transport = transport
        self.kernel_minor = minor
        self.creds = creds or Credentials()
        self.timeout = timeout
        self.recorder = recorder
        self.readers = readers
        self.allow_other = allow_other
        self.memory = Memory()
        self.violations: List[Violation] = []
        self.session_errors: List[BaseException] = []
        self.late_replies: List[int] = []  # uniques answered after the kernel gave up on them
        self.notifications: List[Tuple[int, bytes]] = []  # (code, body) of every notification
        self.log: List[Tuple[str, bytes]] = []  # ("in" request | "out" reply/notification, message), in order
        self.reply_pos: Dict[int, int] = {}  # unique -> position in log of its first reply
        self.notes_count = 0
        self.stop_mark: Optional[int] = None  # log position where stopping began
        self.requeue_interrupts = True  # EAGAIN for an INTERRUPT sends it again (replay turns this off)
        self._cond = threading.Condition()
        self._own_replies: Set[int] = set()
        # negotiated state (INIT reply)
        self.minor = minor
        self.init_flags = 0
        self.max_write = 4096
        self.max_read = 4096
        self.max_pages = DEFAULT_MAX_PAGES
        self.unrestricted_ioctl = False
        self.devname: Optional[str] = None
        self.codec = Codec(minor)
        self.conn_error = False
        self.connected = False
        self.no_open = self.no_flush = self.no_fsync = self.no_poll = self.no_interrupt = False
        # devices
        self.devices: Dict[str, Device] = {}
        self.attrs: Dict[str, Dict[str, int]] = {}
        self.session: Any = None
        self.channel: Optional[Channel] = None
        self.events: Optional[EventLoop] = None
        self.end_reason: Optional[str] = None
        # requests
        self._lock = threading.Lock()
        self._pending: Dict[int, Pending] = {}
        self._answered: Set[int] = set()
        self._abandoned: Set[int] = set()
        self._uniques = itertools.count(FUSE_REQ_ID_STEP, FUSE_REQ_ID_STEP)
        self._own = itertools.count(OWN_UNIQUE, FUSE_REQ_ID_STEP)
        self._kh = itertools.count(1)
        self._polled: Dict[int, threading.Event] = {}  # kh -> woken (files registered for notifications)
        self._poll_cond = threading.Condition()
        self._poll_generation = 0
        self._stopping = False
        self.open_files: Set[Any] = set()
        #: thread id -> the request that thread waits for (what a signal to it would interrupt)
        self.in_flight: Dict[int, Pending] = {}

    # ------------------------------------------------------------------ devices
    def add(self, device: Device, name: Optional[str] = None, *, mode: Optional[int] = None,
            uid: Optional[int] = None, gid: Optional[int] = None) -> Device:
        """Serve ``device`` as ``name`` (before ``start``); CUSE serves exactly one device."""
        if self.session is not None:
            raise LoopbackError(errno.EBUSY, "add devices before start()")
        name = name or device.name or type(device).__name__.lower()
        if name in self.devices:
            raise ValueError(f"already registered: {name!r}")
        if self.transport == "cuse" and self.devices:
            raise ValueError("a CUSE connection serves one device (use one LoopbackKernel per device)")
        self.devices[name] = device
        self.attrs[name] = {
            "mode": stat.S_IMODE(device.mode if mode is None else mode),
            "uid": (os.geteuid() if device.uid is None else device.uid) if uid is None else uid,
            "gid": (os.getegid() if device.gid is None else device.gid) if gid is None else gid,
        }
        return device

    # ------------------------------------------------------------------ lifecycle
    def start(self, negotiate: bool = True) -> LoopbackKernel:
        """Start the session on a socketpair and negotiate INIT / CUSE_INIT.

        ``negotiate=False`` (replay): the session starts but no INIT is sent; the
        caller plays its own requests with :meth:`send_raw`, INIT first.
        """
        if self.session is not None:
            return self
        if not self.devices:
            raise LoopbackError(errno.ENODEV, "no device added")
        self.channel = Channel(self._on_message, self._on_eof)
        self.events = EventLoop()  # the session's timers and async callbacks run here, as in a server
        self.events.start_thread()
        try:
            if self.transport == "cuse":
                (name, device), = self.devices.items()
                self.session = sessions.cuse_session(self.channel.daemon_fd, device, name, wake=self._wake,
                                                     recorder=self.recorder, errors=self.session_errors,
                                                     readers=self.readers, loop=self.events, on_end=self._ended)
            else:
                self.session = sessions.fuse_session(self.channel.daemon_fd, self.devices, self.attrs,
                                                     wake=self._wake, recorder=self.recorder,
                                                     errors=self.session_errors, loop=self.events,
                                                     on_end=self._ended)
            self.session.start_readers()
            if negotiate:
                self._init()
            else:
                self.connected = True
        except BaseException:
            self.stop()
            raise
        return self

    def _init(self) -> None:
        if self.transport == "cuse":
            body = Codec(self.kernel_minor).fast("cuse_init_in").encode({
                "major": C.FUSE_KERNEL_VERSION, "minor": self.kernel_minor,
                "flags": int(C.CuseInitFlags.CUSE_UNRESTRICTED_IOCTL)})
            p = self.submit(OP.CUSE_INIT, 0, body, fixed=FAST.cuse_init_out.size, var_max=C.CUSE_INIT_INFO_MAX)
            err, payload = self.wait(p)
            self._cuse_init_reply(err, payload)
        else:
            init = Codec(self.kernel_minor).fast("fuse_init_in")
            flags = KERNEL_INIT_FLAGS if self.kernel_minor >= 36 else \
                KERNEL_INIT_FLAGS & 0xFFFFFFFF & ~int(C.InitFlags.FUSE_INIT_EXT)
            body = init.encode({"major": C.FUSE_KERNEL_VERSION, "minor": self.kernel_minor,
                                "max_readahead": KERNEL_MAX_READAHEAD, "flags": flags & 0xFFFFFFFF,
                                "flags2": flags >> 32} if init.size > 16 else
                               {"major": C.FUSE_KERNEL_VERSION, "minor": self.kernel_minor,
                                "max_readahead": KERNEL_MAX_READAHEAD, "flags": flags})
            out_size = Codec(self.kernel_minor).fast("fuse_init_out").size
            # fuse_init: one variable out argument (out_argvar): a shorter (older) init_out is fine
            p = self.submit(OP.FUSE_INIT, 0, body, fixed=0, var_max=out_size)
            err, payload = self.wait(p)
            self._fuse_init_reply(err, payload, flags)
        if self.conn_error:
            raise LoopbackError(errno.ECONNREFUSED, f"the session refused {self.transport.upper()} INIT "
                                                    f"(see kernel.violations: {self.violations})")
        self.connected = True

    def _fuse_init_reply(self, err: int, payload: bytes, offered: int) -> None:
        if err or len(payload) < 8:
            self.conn_error = True
            return
        major, minor = FAST.fuse_init_out.struct.unpack_from(payload.ljust(FAST.fuse_init_out.size, b"\0"))[:2]
        if major != C.FUSE_KERNEL_VERSION:
            self.conn_error = True
            return
        self.minor = min(minor, self.kernel_minor)
        out = Codec(self.minor).fast("fuse_init_out")
        rec = out.decode(payload.ljust(out.size, b"\0"))
        flags = getattr(rec, "flags", 0)
        if self.minor >= 36 and flags & C.InitFlags.FUSE_INIT_EXT:
            flags |= getattr(rec, "flags2", 0) << 32
        self.init_flags = flags & offered
        self.codec = Codec(self.minor, self.init_flags)
        self.max_write = max(getattr(rec, "max_write", 0), PAGE_SIZE)
        self.max_read = MAX_RW_COUNT  # the max_read mount option, unset
        if self.init_flags & C.InitFlags.FUSE_MAX_PAGES:
            self.max_pages = min(max(getattr(rec, "max_pages", 1), 1), MAX_PAGES_LIMIT)

    def _cuse_init_reply(self, err: int, payload: bytes) -> None:
        size = FAST.cuse_init_out.size
        if err or len(payload) < size:
            self.conn_error = True
            return
        rec = FAST.cuse_init_out.decode(payload)
        if rec.major != C.FUSE_KERNEL_VERSION or rec.minor < 11:
            self.conn_error = True  # cuse_process_init_reply: fuse_abort_conn
            return
        info = payload[size:]
        devname = None
        for item in info.split(b"\0"):
            key, _, value = item.partition(b"=")
            if key.strip() == b"DEVNAME":
                devname = value.strip().decode("utf-8", "surrogateescape")
        if info and not info.endswith(b"\0"):
            self._violation("CUSE_INIT info not properly terminated", errno.EINVAL, payload)
            self.conn_error = True
            return
        if not devname:
            self._violation("CUSE_INIT reply names no DEVNAME", errno.EINVAL, payload)
            self.conn_error = True
            return
        self.devname = devname
        self.minor = rec.minor
        self.codec = Codec(min(rec.minor, C.FUSE_KERNEL_MINOR_VERSION))
        self.max_read = max(rec.max_read, PAGE_SIZE)
        self.max_write = max(rec.max_write, PAGE_SIZE)
        self.unrestricted_ioctl = bool(rec.flags & C.CuseInitFlags.CUSE_UNRESTRICTED_IOCTL)

    def stop(self) -> None:
        """Stop like a server stops, then abort what is left; closes the channel.  Idempotent."""
        if self._stopping:
            return
        self._stopping = True
        with self._lock:
            self.stop_mark = len(self.log)
        session = self.session
        try:
            if session is not None and session.threads:
                session.stop_readers(timeout=max(1.0, min(self.timeout, 5.0)))
        finally:
            self.connected = False
            with self._poll_cond:
                self._poll_generation += 1
                self._poll_cond.notify_all()
            if self.channel is not None:
                self.channel.close()  # the receiver drains what the session wrote before it stopped
            self._abort_pending(errno.ECONNABORTED)
            if self.events is not None:
                self.events.stop()
            sessions.detach(list(self.devices.values()))

    def _ended(self, session: Any, reason: str, exc: Optional[BaseException]) -> None:
        """The session's ``on_end``: a callback raised SystemExit/KeyboardInterrupt, or the channel ended."""
        self.end_reason = reason
        if exc is not None:
            self.session_errors.append(exc)

    def __enter__(self) -> LoopbackKernel:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _wake(self) -> None:
        """A stopping session needs one more request to notice: send one of our own."""
        channel = self.channel
        if channel is None or channel.closed:
            return
        unique = next(self._own)
        try:
            channel.send(_IN_HEADER.pack(IN_HEADER_SIZE, sessions.WAKE_OPCODE, unique, C.FUSE_ROOT_ID,
                                         0, 0, 0, 0, 0))
        except OSError:
            pass

    # ------------------------------------------------------------------ requests
    def submit(self, opcode: int, nodeid: int, body: bytes, *, fixed: int = 0, var_max: Optional[int] = None,
               creds: Optional[Credentials] = None, describe: str = "", track: bool = False) -> Pending:
        """Queue one request (a kernel ``fuse_simple_request`` before it waits).

        ``track``: this thread will wait for it; a signal to the thread (``interrupt_thread``)
        interrupts it from the moment it is sent.
        """
        if self.channel is None or self.channel.closed or self._stopping:
            raise OSError(errno.ENOTCONN, "the loopback connection is not running")
        if self.conn_error and opcode not in (OP.FUSE_INIT, OP.CUSE_INIT):
            raise OSError(errno.ECONNREFUSED, "the connection failed at INIT")
        c = creds or self.creds
        unique = next(self._uniques)
        name = C.opcode_name(opcode)
        p = Pending(unique, opcode, fixed, var_max, describe or name)
        data = _IN_HEADER.pack(IN_HEADER_SIZE + len(body), opcode, unique, nodeid, c.uid, c.gid, c.pid, 0, 0) + body
        with self._lock:
            self._pending[unique] = p
            self.log.append(("in", data))
        if track:
            self.in_flight[threading.get_ident()] = p
        try:
            self.channel.send(data)
        except OSError as exc:
            with self._lock:
                self._pending.pop(unique, None)
            if track:
                self.in_flight.pop(threading.get_ident(), None)
            raise OSError(errno.ENOTCONN, f"cannot send {name}: {exc}") from None
        p.sent = True
        return p

    def wait(self, p: Pending, timeout: Optional[float] = None) -> Tuple[int, bytes]:
        """Wait for the answer to ``p`` (``request_wait_answer``): ``(error, body)``.

        If none comes within ``timeout`` (default: the kernel's), the call is
        interrupted as a signal would (FUSE_INTERRUPT), given a short grace, then
        abandoned: :class:`LoopbackTimeout`.
        """
        limit = self.timeout if timeout is None else timeout
        tid = threading.get_ident()
        self.in_flight[tid] = p
        try:
            if not p.event.wait(limit):
                self.interrupt(p)
                if not p.event.wait(min(1.0, max(limit, 0.1))):
                    with self._lock:
                        self._pending.pop(p.unique, None)
                        self._abandoned.add(p.unique)
                        p.abandoned = True
                    raise LoopbackTimeout(f"{p.describe}: no answer within {limit:g} s (interrupted, then "
                                          "abandoned)", p.describe)
        finally:
            self.in_flight.pop(tid, None)
        return p.error, p.payload

    def call(self, opcode: int, nodeid: int, body: bytes, **kw: Any) -> Tuple[int, bytes]:
        """``submit`` then ``wait``."""
        timeout = kw.pop("timeout", None)
        return self.wait(self.submit(opcode, nodeid, body, track=True, **kw), timeout)

    def interrupt_thread(self, ident: int) -> bool:
        """A signal to thread ``ident``: interrupt the request it waits for, if any."""
        return self.interrupt(self.in_flight.get(ident)) if ident in self.in_flight else False

    def interrupt(self, p: Optional[Pending] = None) -> bool:
        """Send FUSE_INTERRUPT for ``p`` (default: the request this thread waits for).

        False when nothing was sent: no such request, already answered, or the
        session said interrupts are not implemented (ENOSYS).
        """
        p = p if p is not None else self.in_flight.get(threading.get_ident())
        if p is None or p.event.is_set() or self.no_interrupt or p.internal:
            return False
        p.interrupted = True
        self._send_interrupt(p)
        return True

    def _send_interrupt(self, p: Pending) -> None:
        body = FAST.fuse_interrupt_in.struct.pack(p.unique)
        data = _IN_HEADER.pack(IN_HEADER_SIZE + len(body), OP.FUSE_INTERRUPT, p.unique | FUSE_INT_REQ_BIT,
                               0, 0, 0, 0, 0, 0) + body
        channel = self.channel
        if channel is not None and not channel.closed:
            with self._lock:
                self.log.append(("in", data))
            try:
                channel.send(data)
            except OSError:
                pass

    # ------------------------------------------------------------------ files
    def open(self, name: str = "", flags: int = os.O_RDWR, *, creds: Optional[Credentials] = None) -> Any:
        """Open a device (``open(2)``): a :class:`~fusd_runtime.loopback.file.LoopbackFile`."""
        from .opening import open_file
        if not self.connected:
            raise LoopbackError(errno.ENOTCONN, "start() the loopback kernel first")
        return open_file(self, name, flags, creds or self.creds)

    def poll(self, entries: List[Tuple[Any, int]], timeout: Optional[float] = None) -> List[int]:
        """``poll(2)`` on several loopback files: the revents of each (see ``LoopbackFile.poll``)."""
        from .file import poll_files
        return poll_files(self, entries, timeout)

    # ------------------------------------------------------------------ raw requests (replay)
    def send_raw(self, data: bytes, reply: bool = True) -> None:
        """Send a request as given (a captured one): its unique is kept; ``reply``: one is expected."""
        if self.channel is None or self.channel.closed:
            raise OSError(errno.ENOTCONN, "the loopback connection is not running")
        _, opcode, unique = _IN_HEADER.unpack_from(data)[:3]
        with self._lock:
            if reply and not unique & FUSE_INT_REQ_BIT and unique not in self._pending:
                self._pending[unique] = Pending(unique, opcode, 0, None, f"{C.opcode_name(opcode)} (raw)", raw=True)
            self.log.append(("in", data))
        self.channel.send(data)

    def wait_for(self, predicate: Any, timeout: float) -> bool:
        """Wait until ``predicate()`` holds (checked after every message from the session)."""
        with self._cond:
            return self._cond.wait_for(predicate, timeout)

    def barrier(self, timeout: float) -> bool:
        """Send a request of our own and wait for its answer: with one reader, every request sent
        before it has then been handled (its synchronous answers are in)."""
        unique = next(self._own)
        assert self.channel is not None
        self.channel.send(_IN_HEADER.pack(IN_HEADER_SIZE, sessions.WAKE_OPCODE, unique, C.FUSE_ROOT_ID,
                                          0, 0, 0, 0, 0))
        return self.wait_for(lambda: unique in self._own_replies, timeout)

    def sent(self) -> List[Tuple[bytes, Any]]:
        """Every request sent so far, raw and decoded (``fusd_wire.Request``), in order."""
        with self._lock:
            raws = [data for direction, data in self.log if direction == "in"]
        init = Codec(self.kernel_minor, strict=False)
        codec = Codec(min(self.minor, C.FUSE_KERNEL_MINOR_VERSION), self.init_flags, strict=False)
        out = []
        for raw in raws:
            opcode = _IN_HEADER.unpack_from(raw)[1]
            out.append((raw, (init if opcode in (OP.FUSE_INIT, OP.CUSE_INIT) else codec).decode_request(raw)))
        return out

    def check(self) -> None:
        """Raise AssertionError if the session broke the protocol or reported a channel error."""
        problems = [str(v) for v in self.violations] + [f"session error: {e!r}" for e in self.session_errors]
        if problems:
            raise AssertionError("the session broke the FUSE protocol:\n  " + "\n  ".join(problems))

