"""One kernel channel: reader threads, the request hot path, replies, deferred answers.

A Session serves one connection to the kernel: a mounted ``/dev/fuse`` (see
``fusefs.FuseSession``: a small filesystem whose files are the devices) or one
``/dev/cuse`` device (``cuse.CuseSession``).  Everything a device file does —
OPEN, READ, WRITE, RELEASE, FLUSH, FSYNC, IOCTL, POLL, INTERRUPT — is handled
here, once, for both transports; subclasses add INIT and what is particular to
their transport.

The hot path: each reader thread blocks in ``read(2)`` on its own fd into one
preallocated buffer, unpacks the header and the fixed request struct with
``struct.Struct`` codecs derived from ``fusd_wire`` (never construct), calls the
device under the session's callback lock and answers with one ``os.writev``.
No per-request allocation beyond the reply itself, no exception on success.
"""

from __future__ import annotations

import errno
import fcntl
import io
import logging
import os
import struct
import threading
import traceback
from typing import Any, Callable, Dict, List, Optional, Set

from fusd_wire import FAST, Codec
from fusd_wire import constants as C

from .device import DEFER, Context, Device, ReplyHandle
from .ioctl import IoctlRetry, call_declared, ioctl_table, restricted_decode, restricted_encoder

log = logging.getLogger("fusd")

_IN_HEADER = FAST.fuse_in_header.struct
_OUT_HEADER = FAST.fuse_out_header.struct
_IN_HEADER_SIZE = _IN_HEADER.size
_pack_out = _OUT_HEADER.pack
_O_NONBLOCK = os.O_NONBLOCK
_NOTIFY_POLL = int(C.fuse_notify_code.FUSE_NOTIFY_POLL)
_IOCTL_RETRY = int(C.IoctlFlags.FUSE_IOCTL_RETRY)
_IOCTL_UNRESTRICTED = int(C.IoctlFlags.FUSE_IOCTL_UNRESTRICTED)
_POLL_SCHEDULE_NOTIFY = int(C.PollFlags.FUSE_POLL_SCHEDULE_NOTIFY)
_FOPEN_SEEKABLE = int(C.FopenFlags.FOPEN_DIRECT_IO)
_FOPEN_STREAM = int(C.FopenFlags.FOPEN_DIRECT_IO | C.FopenFlags.FOPEN_NONSEEKABLE | C.FopenFlags.FOPEN_STREAM)
_FOPEN_NOFLUSH = int(C.FopenFlags.FOPEN_NOFLUSH)
_DEFAULT_FLUSH = Device.flush

# opcodes (ints, for the dispatch table)
OP = C.fuse_opcode


def default_readers() -> int:
    """Reader threads when none are asked for: 2, or 1 if this process may only run on one CPU.

    A second reader pays off by already being awake on another CPU when a request
    arrives (a lone reader costs a cross-CPU wakeup per call, ~10x here).  Confined
    to one CPU it never can be, and when the client shares the server's scheduler
    group it costs a thread switch per request instead (~0.9 µs measured).
    """
    try:
        return 1 if len(os.sched_getaffinity(0)) == 1 else 2
    except (AttributeError, OSError):  # no affinity API: assume several CPUs
        return 2


class RequestBuffer(bytearray):
    """A reader's request buffer, with a memoryview of itself made once.

    WRITE payloads are sliced from ``view`` (one copy, or none for ``write_view``
    devices) without creating a memoryview per request.
    """

    __slots__ = ("view",)

    def __init__(self, size: int) -> None:
        super().__init__(size)
        self.view = memoryview(self)


class _GoneDevice(Device):
    """Stands in for a device removed while files were open: every call answers ENODEV."""

    def _gone(self, *args: Any) -> Any:
        raise OSError(errno.ENODEV, "device was removed")

    read = write = ioctl = poll = _gone  # type: ignore[assignment]


GONE = _GoneDevice()


class Session:
    """Serves one kernel channel; subclasses add INIT and transport specific requests.

    Args:
        fd: the channel (``/dev/fuse`` after mount, or ``/dev/cuse``).
        readers: reader threads; more than one keeps a reader blocked in the kernel
            while another runs Python code (a lone reader costs a cross-CPU wakeup).
        clone: give each extra reader its own fd with FUSE_DEV_IOC_CLONE (FUSE);
            otherwise readers share ``fd`` (CUSE).
        max_write: largest WRITE payload accepted (sets the read buffer size).
        recorder: a ``fusd_wire.trace`` Recorder, or None.
    """

    #: how the kernel device is called, for messages
    kind = "fuse"

    def __init__(self, fd: int, *, readers: int = 2, clone: bool = True, max_write: int = 128 * 1024,
                 recorder: Any = None, on_error: Optional[Callable[[BaseException], None]] = None) -> None:
        self.fd = fd
        self.nreaders = max(1, readers)
        self.clone = clone
        self.max_write = max_write
        self.bufsize = max_write + 4096
        self.lock = threading.RLock()  # callbacks never run concurrently (re-entrant: remove() from one)
        self.files: Dict[int, Context] = {}
        self.by_device: Dict[Device, Set[Context]] = {}
        self.deferred: Dict[int, ReplyHandle] = {}
        self.ioctl_encoders: Dict[int, Callable[[Any], Any]] = {}  # unique -> encoder of a deferred declared ioctl
        self.ioctl_tables: Dict[Device, Dict[int, Any]] = {}  # device -> its declared ioctls (looked up once)
        self._next_fh = 1
        self.minor = C.FUSE_KERNEL_MINOR_VERSION
        self.init_flags = 0
        self.codec = Codec()
        self.initialized = threading.Event()
        self.stopping = False
        self.threads: List[threading.Thread] = []
        self.fds: List[int] = []
        self.on_error = on_error
        self._logged: Set[str] = set()
        self.recorder = recorder
        self.conn_id = recorder.connection(f"{self.kind}:{fd}") if recorder is not None else 0
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
        }
        self._set_minor(C.FUSE_KERNEL_MINOR_VERSION)

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
        hdr = _OUT_HEADER.format
        self._pack_write_reply = struct.Struct(hdr + fast("fuse_write_out").struct.format[1:]).pack
        self._pack_poll_reply = struct.Struct(hdr + fast("fuse_poll_out").struct.format[1:]).pack
        self._pack_ioctl_reply = struct.Struct(hdr + fast("fuse_ioctl_out").struct.format[1:]).pack
        self._pack_open_reply = struct.Struct(hdr + fast("fuse_open_out").struct.format[1:]).pack
        self._write_data = 40 + self._write_in_size  # where a WRITE's payload starts in the request

    # ------------------------------------------------------------------ readers
    def start_readers(self) -> None:
        """Start the reader threads (cloning fds for all but the first when ``clone``)."""
        if not os.get_blocking(self.fd):  # readinto() would return None instead of waiting
            raise ValueError(f"{self.kind}: the channel fd {self.fd} must be blocking (readers wait in read(2))")
        for i in range(self.nreaders):
            fd = self.fd
            if i and self.clone:
                fd = self._clone_fd()
            self.fds.append(fd)
            t = threading.Thread(target=self._reader, args=(fd,), name=f"fusd-{self.kind}-reader-{i}", daemon=True)
            self.threads.append(t)
            t.start()

    def _clone_fd(self) -> int:
        fd = os.open("/dev/fuse", os.O_RDWR | os.O_CLOEXEC)
        try:
            fcntl.ioctl(fd, C.FUSE_DEV_IOC_CLONE, self.fd.to_bytes(4, "little"))
        except OSError:
            os.close(fd)
            raise
        return fd

    def _reader(self, fd: int) -> None:
        buf = RequestBuffer(self.bufsize)
        # FileIO.readinto: one read(2) into the buffer, ~0.1 µs per request cheaper than
        # os.readv (no iovec list to convert); closefd=False: the fd stays ours to close.
        readinto = io.FileIO(fd, "r", closefd=False).readinto
        unpack_header = _IN_HEADER.unpack_from
        handlers = self.handlers
        # acquire/release instead of ``with``: half the cost (~55 ns) on every request
        acquire = self.lock.acquire
        release = self.lock.release
        rec = self.recorder
        writev = self.writev
        while True:
            try:
                n = readinto(buf)
            except OSError as exc:
                if exc.errno in (errno.EINTR, errno.EAGAIN, errno.ENOENT):
                    continue  # ENOENT: the request was interrupted before we got it
                if exc.errno in (errno.ENODEV, errno.EBADF, errno.ECONNABORTED):
                    break  # unmounted / aborted / closed
                self._report(exc)
                break
            if rec is not None:
                rec.record(self.conn_id, 1, memoryview(buf)[:n])  # INBOUND: kernel -> daemon
            _, opcode, unique, nodeid, uid, gid, pid, _, _ = unpack_header(buf)
            # Stopping empties ``handlers``, so the hot path needs no check of its own.
            handler = handlers.get(opcode)
            try:
                # A handler either answers itself and returns None, or returns the reply's
                # parts: those are written after the lock is released, so a second reader
                # woken by the next request never blocks on a lock held across a syscall.
                acquire()
                try:
                    if handler is not None:
                        parts = handler(fd, buf, unique, nodeid, uid, gid, pid)
                    elif self.stopping:
                        self._answer_while_stopping(fd, opcode, unique)
                        break
                    else:
                        parts = None
                        if opcode not in (OP.FUSE_FORGET, OP.FUSE_BATCH_FORGET, OP.FUSE_NOTIFY_REPLY):
                            self.send_error(fd, unique, errno.ENOSYS)
                finally:
                    release()
                if parts is not None:
                    writev(fd, parts)
            except OSError as exc:
                if exc.errno in (errno.ENOENT, errno.EINTR):
                    continue  # our answer came too late: the caller was interrupted or died
                if exc.errno in (errno.ENODEV, errno.EBADF):
                    break
                self._report(exc)
            except Exception as exc:  # a bug in the runtime itself: keep serving, say it once
                self._log_once("runtime", "fusd: internal error while serving opcode %s", opcode, exc)
                try:
                    self.send_error(fd, unique, errno.EIO)
                except OSError:
                    pass

    def _answer_while_stopping(self, fd: int, opcode: int, unique: int) -> None:
        if opcode not in (OP.FUSE_FORGET, OP.FUSE_BATCH_FORGET, OP.FUSE_NOTIFY_REPLY, OP.FUSE_INTERRUPT):
            try:
                self.send_error(fd, unique, errno.ENODEV if opcode == OP.FUSE_OPEN else errno.ENOENT)
            except OSError:
                pass

    # ------------------------------------------------------------------ replies
    def _recording_writev(self, fd: int, parts: List[Any]) -> int:
        self.recorder.record(self.conn_id, 2, parts)  # OUTBOUND: daemon -> kernel
        return os.writev(fd, parts)

    def send_error(self, fd: int, unique: int, err: int) -> None:
        """Answer ``unique`` with ``-err``."""
        if self.ioctl_encoders:
            self.ioctl_encoders.pop(unique, None)
        self.writev(fd, [_pack_out(16, -err, unique)])

    def send_result(self, fd: int, unique: int, opcode: int, result: Any, size: int, ctx: Context) -> None:
        """Answer a deferred call with what its callback would have returned (any thread)."""
        try:
            if opcode == OP.FUSE_READ:
                self._reply_read(fd, unique, result, size, ctx)
            elif opcode == OP.FUSE_WRITE:
                self.writev(fd, [_pack_out(24, 0, unique), self._pack_write_out(size if result is None else result, 0)])
            elif opcode == OP.FUSE_IOCTL:
                encode = self.ioctl_encoders.pop(unique, None)
                self._reply_ioctl(fd, unique, result if encode is None else encode(result), size)
            elif opcode == OP.FUSE_POLL:
                self.writev(fd, [_pack_out(24, 0, unique), self._pack_poll_out(result, 0)])
            elif opcode == OP.FUSE_OPEN:
                self._reply_open(fd, unique, ctx)
            else:
                self.writev(fd, [_pack_out(16, 0, unique)])
        except OSError as exc:
            if exc.errno not in (errno.ENOENT, errno.ENODEV, errno.EBADF):
                self._report(exc)
        except Exception as exc:
            self._log_once(f"result-{opcode}", "fusd: bad result %r from a deferred call", result, exc)
            try:
                self.send_error(fd, unique, errno.EIO)
            except OSError:
                pass

    def _reply_read(self, fd: int, unique: int, data: Any, size: int, ctx: Context) -> None:
        n = len(data)
        if n > size:  # a device bug: the caller has room for ``size`` bytes only
            self._log_once(f"{ctx.device.name}.read.size", "fusd: read() of device %r returned %d bytes for a "
                           "%d-byte read; the rest is dropped", ctx.device.name, n, size, None)
            data, n = data[:size], size
        self.writev(fd, [_pack_out(16 + n, 0, unique), data])

    def _reply_ioctl(self, fd: int, unique: int, result: Any, out_size: int) -> None:
        if result is None:
            result = 0
        if result.__class__ is int:
            self.writev(fd, [_pack_out(32, 0, unique), self._pack_ioctl_out(result, 0, 0, 0)])
            return
        if result.__class__ is IoctlRetry:
            iovs = [self._pack_ioctl_iovec(base, n) for base, n in result.in_iovs + result.out_iovs]
            self.writev(fd, [_pack_out(32 + 16 * len(iovs), 0, unique),
                             self._pack_ioctl_out(0, _IOCTL_RETRY, len(result.in_iovs), len(result.out_iovs)), *iovs])
            return
        if isinstance(result, tuple):
            res, data = result
        else:
            res, data = 0, result
        if len(data) > out_size:
            raise ValueError(f"ioctl returned {len(data)} bytes, only {out_size} can be copied out")
        self.writev(fd, [_pack_out(32 + len(data), 0, unique), self._pack_ioctl_out(res, 0, 0, 0), data])

    def _open_flags(self, device: Device) -> int:
        # Plain ints computed once: IntFlag arithmetic per OPEN costs microseconds.
        flags = _FOPEN_SEEKABLE if device.seekable else _FOPEN_STREAM
        if self.minor >= 35 and type(device).flush is _DEFAULT_FLUSH:
            flags |= _FOPEN_NOFLUSH  # no flush callback: close(2) need not wait for a FLUSH round trip
        return flags

    def _reply_open(self, fd: int, unique: int, ctx: Context) -> None:
        self.writev(fd, [_pack_out(32, 0, unique), self._pack_open_out(ctx.fh, self._open_flags(ctx.device), 0)])

    # ------------------------------------------------------------------ callback failures
    def _failed(self, fd: int, unique: int, exc: BaseException, ctx: Optional[Context], what: str) -> None:
        """A callback raised: OSError answers its errno, anything else EIO (logged once)."""
        if isinstance(exc, OSError) and exc.errno:
            self.send_error(fd, unique, exc.errno)
            return
        name = ctx.device.name if ctx is not None else "?"
        self._log_once(f"{name}.{what}.{type(exc).__name__}", "fusd: %s() of device %r raised; answering EIO",
                       what, name, exc)
        if not isinstance(exc, Exception):
            self.send_error(fd, unique, errno.EIO)
            raise exc  # KeyboardInterrupt/SystemExit in a callback: answer, then let it through
        self.send_error(fd, unique, errno.EIO)

    def _log_once(self, key: str, msg: str, *args: Any) -> None:
        exc = args[-1]
        args = args[:-1]
        if key in self._logged:
            return
        self._logged.add(key)
        if exc is None:
            log.warning(msg, *args)
            return
        log.error(msg + "\n%s", *args, "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)))

    def _report(self, exc: BaseException) -> None:
        if self.on_error is not None:
            self.on_error(exc)
        else:
            log.error("fusd: %s channel error: %s", self.kind, exc)

    # ------------------------------------------------------------------ device file ops
    def device_for_open(self, nodeid: int) -> Device:
        """The device an OPEN of ``nodeid`` is for (subclasses)."""
        raise OSError(errno.ENOENT, "no such device")

    def _op_open(self, fd: int, buf: bytearray, unique: int, nodeid: int, uid: int, gid: int,
                 pid: int) -> Optional[List[Any]]:
        flags, _ = self._unpack_open_in(buf, 40)
        try:
            device = self.device_for_open(nodeid)
        except OSError as exc:
            self.send_error(fd, unique, exc.errno or errno.ENOENT)
            return None
        fh = self._next_fh
        self._next_fh = fh + 1
        ctx = Context(device, fh, flags, self)
        ctx.fd, ctx.unique, ctx.pid, ctx.uid, ctx.gid = fd, unique, pid, uid, gid
        ctx.opcode = 14  # FUSE_OPEN
        self.files[fh] = ctx
        ctxs = self.by_device.get(device)
        if ctxs is None:
            self.by_device[device] = ctxs = set()
        ctxs.add(ctx)
        try:
            result = device.open(ctx)
        except BaseException as exc:
            self._drop(ctx)
            self._failed(fd, unique, exc, ctx, "open")
            return None
        if result is DEFER or result.__class__ is ReplyHandle:
            return None
        return [self._pack_open_reply(32, 0, unique, fh, self._open_flags(device), 0)]

    def _drop(self, ctx: Context) -> None:
        self.files.pop(ctx.fh, None)
        ctxs = self.by_device.get(ctx.device)
        if ctxs is not None:
            ctxs.discard(ctx)
            if not ctxs:
                del self.by_device[ctx.device]
        ctx.released = True

    def _op_read(self, fd: int, buf: bytearray, unique: int, nodeid: int, uid: int, gid: int,
                 pid: int) -> Optional[List[Any]]:
        fh, offset, size, _, _, flags, _ = self._unpack_read_in(buf, 40)
        ctx = self.files.get(fh)
        if ctx is None:
            self.send_error(fd, unique, errno.EBADF)
            return None
        # Separate stores: a 5-target tuple assignment would build and unpack a tuple.
        ctx.fd = fd
        ctx.unique = unique
        ctx.pid = pid
        ctx.uid = uid
        ctx.gid = gid
        ctx.nonblock = flags & _O_NONBLOCK
        ctx.opcode = 15  # FUSE_READ
        ctx.size = size
        try:
            result = ctx.device.read(ctx, size, offset)
        except BaseException as exc:
            self._failed(fd, unique, exc, ctx, "read")
            return None
        cls = result.__class__
        if cls is bytes or cls is bytearray or cls is memoryview:
            n = len(result)
            if n <= size:
                return [_pack_out(16 + n, 0, unique), result]
        if result is DEFER or cls is ReplyHandle:
            return None
        try:
            self._reply_read(fd, unique, result, size, ctx)
        except (TypeError, ValueError) as exc:
            self._failed(fd, unique, exc, ctx, "read")
        return None

    def _op_write(self, fd: int, buf: bytearray, unique: int, nodeid: int, uid: int, gid: int,
                  pid: int) -> Optional[List[Any]]:
        fh, offset, size, _, _, flags, _ = self._unpack_write_in(buf, 40)
        ctx = self.files.get(fh)
        if ctx is None:
            self.send_error(fd, unique, errno.EBADF)
            return None
        ctx.fd = fd
        ctx.unique = unique
        ctx.pid = pid
        ctx.uid = uid
        ctx.gid = gid
        ctx.nonblock = flags & _O_NONBLOCK
        ctx.opcode = 16  # FUSE_WRITE
        ctx.size = size
        device = ctx.device
        start = self._write_data
        # One copy straight out of the request buffer (a bytearray slice would copy twice);
        # a device with ``write_view`` gets the view itself, valid during the call only.
        data = buf.view[start:start + size] if buf.__class__ is RequestBuffer else memoryview(buf)[start:start + size]
        try:
            if device.write_view:
                try:
                    result = device.write(ctx, data, offset)
                finally:
                    data.release()  # the buffer is reused by the next request: no use after the call
            else:
                result = device.write(ctx, bytes(data), offset)
        except BaseException as exc:
            self._failed(fd, unique, exc, ctx, "write")
            return None
        if result is None:
            result = size
        elif result is DEFER or result.__class__ is ReplyHandle:
            return None
        return [self._pack_write_reply(24, 0, unique, result, 0)]

    def _op_release(self, fd: int, buf: bytearray, unique: int, nodeid: int, uid: int, gid: int,
                    pid: int) -> Optional[List[Any]]:
        fh = self._unpack_release_in(buf, 40)[0]
        ctx = self.files.get(fh)
        if ctx is not None:
            self._drop(ctx)
            ctx.fd, ctx.unique = fd, unique
            device = ctx.detached_from if ctx.device is GONE and ctx.detached_from else ctx.device
            try:  # cleanup still reaches a removed device
                device.release(ctx)
            except BaseException as exc:
                self._failed(fd, unique, exc, ctx, "release")
                return None
        return [_pack_out(16, 0, unique)]

    def enter(self, fd: int, unique: int, fh: int, pid: int, uid: int, gid: int, opcode: int, size: int = 0,
              flags: Optional[int] = None) -> Optional[Context]:
        """The open file ``fh``, set up for the call being served; None (EBADF answered) if unknown.

        The measured hot handlers (READ, WRITE, IOCTL, POLL, FLUSH) spell this out
        instead: a call costs ~60 ns per request there.
        """
        ctx = self.files.get(fh)
        if ctx is None:
            self.send_error(fd, unique, errno.EBADF)
            return None
        ctx.fd, ctx.unique, ctx.pid, ctx.uid, ctx.gid = fd, unique, pid, uid, gid
        ctx.opcode, ctx.size = opcode, size
        if flags is not None:
            ctx.nonblock = bool(flags & _O_NONBLOCK)
        return ctx

    def _simple(self, fd: int, unique: int, opcode: int, fh: int, pid: int, uid: int, gid: int, what: str,
                *args: Any) -> Optional[List[Any]]:
        ctx = self.enter(fd, unique, fh, pid, uid, gid, opcode)
        if ctx is None:
            return None
        try:
            result = getattr(ctx.device, what)(ctx, *args)
        except BaseException as exc:
            self._failed(fd, unique, exc, ctx, what)
            return None
        if result is DEFER or result.__class__ is ReplyHandle:
            return None
        return [_pack_out(16, 0, unique)]

    def _op_flush(self, fd: int, buf: bytearray, unique: int, nodeid: int, uid: int, gid: int,
                  pid: int) -> Optional[List[Any]]:
        # Every close(2) sends one: spelled out instead of ``_simple`` (no getattr, no *args).
        ctx = self.files.get(self._unpack_flush_in(buf, 40)[0])
        if ctx is None:
            self.send_error(fd, unique, errno.EBADF)
            return None
        ctx.fd = fd
        ctx.unique = unique
        ctx.pid = pid
        ctx.uid = uid
        ctx.gid = gid
        ctx.opcode = 25  # FUSE_FLUSH
        try:
            result = ctx.device.flush(ctx)
        except BaseException as exc:
            self._failed(fd, unique, exc, ctx, "flush")
            return None
        if result is DEFER or result.__class__ is ReplyHandle:
            return None
        return [_pack_out(16, 0, unique)]

    def _op_fsync(self, fd: int, buf: bytearray, unique: int, nodeid: int, uid: int, gid: int,
                  pid: int) -> Optional[List[Any]]:
        fh, fsync_flags, _ = self._unpack_fsync_in(buf, 40)
        datasync = bool(fsync_flags & C.FsyncFlags.FUSE_FSYNC_FDATASYNC)
        return self._simple(fd, unique, OP.FUSE_FSYNC, fh, pid, uid, gid, "fsync", datasync)

    def _op_ioctl(self, fd: int, buf: bytearray, unique: int, nodeid: int, uid: int, gid: int,
                  pid: int) -> Optional[List[Any]]:
        fh, flags, cmd, arg, in_size, out_size = self._unpack_ioctl_in(buf, 40)
        ctx = self.files.get(fh)
        if ctx is None:
            self.send_error(fd, unique, errno.EBADF)
            return None
        ctx.fd = fd
        ctx.unique = unique
        ctx.pid = pid
        ctx.uid = uid
        ctx.gid = gid
        ctx.opcode = 39  # FUSE_IOCTL
        ctx.size = out_size
        ctx.ioctl_arg = arg
        device = ctx.device
        declared = self.ioctl_tables.get(device)
        if declared is None:
            self.ioctl_tables[device] = declared = ioctl_table(device)
        data = bytes(buf[72:72 + in_size]) if in_size else b""
        try:
            if declared or flags & _IOCTL_UNRESTRICTED:  # declared arguments, or CUSE's retry protocol
                result = self.call_ioctl(ctx, flags, cmd, arg, data, out_size)
            else:  # a plain restricted ioctl: straight to the device
                result = device.ioctl(ctx, cmd, data, out_size)
        except BaseException as exc:
            self._failed(fd, unique, exc, ctx, "ioctl")
            return None
        cls = result.__class__
        if cls is bytes and len(result) <= out_size:  # the common _IOR/_IOWR answer
            return [self._pack_ioctl_reply(32 + len(result), 0, unique, 0, 0, 0, 0), result]
        if cls is int:
            return [self._pack_ioctl_reply(32, 0, unique, result, 0, 0, 0)]
        if result is DEFER or cls is ReplyHandle:
            return None
        try:
            self._reply_ioctl(fd, unique, result, out_size)
        except (TypeError, ValueError) as exc:
            self._failed(fd, unique, exc, ctx, "ioctl")
        return None

    def call_ioctl(self, ctx: Context, flags: int, cmd: int, arg: int, data: bytes, out_size: int) -> Any:
        """Hand an ioctl to the device (the CUSE session adds the unrestricted protocol).

        Here the kernel already copied ``_IOC_SIZE(cmd)`` bytes in (restricted
        ioctls); a command the device declared (``ioctl.Arg``) is decoded with its
        schema and the handler's result encoded back.
        """
        spec = ioctl_table(ctx.device).get(cmd)
        if spec is None:
            return ctx.device.ioctl(ctx, cmd, data, out_size)
        value = restricted_decode(spec, data)
        return self.finish_declared(ctx, spec, value, out_size, restricted_encoder(spec, value))

    def finish_declared(self, ctx: Context, spec: Any, value: Any, out_size: int,
                        encode: Callable[[Any], Any]) -> Any:
        """Call a declared ioctl's handler; encode its result now or, if it defers, when answered."""
        result = call_declared(spec, ctx, value, out_size)
        if result is DEFER or result.__class__ is ReplyHandle:
            self.ioctl_encoders[ctx.unique] = encode
            return result
        return encode(result)

    def _op_poll(self, fd: int, buf: bytearray, unique: int, nodeid: int, uid: int, gid: int,
                 pid: int) -> Optional[List[Any]]:
        fh, kh, flags, events = self._unpack_poll_in(buf, 40)
        ctx = self.files.get(fh)
        if ctx is None:
            self.send_error(fd, unique, errno.EBADF)
            return None
        ctx.fd = fd
        ctx.unique = unique
        ctx.pid = pid
        ctx.uid = uid
        ctx.gid = gid
        ctx.opcode = 40  # FUSE_POLL
        if flags & _POLL_SCHEDULE_NOTIFY:
            ctx.poll_kh = kh
        try:
            mask = ctx.device.poll(ctx, events)
        except BaseException as exc:
            self._failed(fd, unique, exc, ctx, "poll")
            return None
        if mask.__class__ is not int:
            if mask is DEFER or mask.__class__ is ReplyHandle:
                return None
            mask = int(mask)
        return [self._pack_poll_reply(24, 0, unique, mask, 0)]

    def _op_interrupt(self, fd: int, buf: bytearray, unique: int, nodeid: int, uid: int, gid: int,
                      pid: int) -> None:
        target = self._unpack_interrupt_in(buf, 40)[0]
        handle = self.deferred.get(target)
        if handle is None:
            # Not deferred (yet): the kernel will resend the interrupt if the request is still open.
            self.send_error(fd, unique, errno.EAGAIN)
            return
        if handle._claim():
            self.send_error(handle.fd, target, errno.EINTR)
            if handle.on_interrupt is not None:
                try:
                    handle.on_interrupt(handle)
                except Exception as exc:
                    self._log_once("on_interrupt", "fusd: on_interrupt callback raised", exc)

    def _op_destroy(self, fd: int, buf: bytearray, unique: int, nodeid: int, uid: int, gid: int, pid: int) -> None:
        self.writev(fd, [_pack_out(16, 0, unique)])

    # ------------------------------------------------------------------ deferred replies
    def defer(self, ctx: Context, on_interrupt: Optional[Callable[[ReplyHandle], None]] = None) -> ReplyHandle:
        """Create the handle for the call being served on ``ctx`` (see ``Context.defer``)."""
        handle = ReplyHandle(self, ctx, ctx.opcode, ctx.size, on_interrupt)
        self.deferred[ctx.unique] = handle
        return handle

    def forget_deferred(self, handle: ReplyHandle) -> None:
        self.deferred.pop(handle.unique, None)

    # ------------------------------------------------------------------ poll notifications
    def notify_poll(self, device: Device) -> None:
        """Write FUSE_NOTIFY_POLL for every open file of ``device`` the kernel polls."""
        for ctx in tuple(self.by_device.get(device, ())):
            kh = ctx.poll_kh
            if kh is not None:
                try:
                    self.writev(self.fd, [_pack_out(24, _NOTIFY_POLL, 0), self._pack_poll_wakeup(kh)])
                except OSError as exc:
                    if exc.errno not in (errno.ENOENT, errno.ENODEV, errno.EBADF):
                        raise

    def open_count(self, device: Device) -> int:
        return len(self.by_device.get(device, ()))

    # ------------------------------------------------------------------ devices leaving
    def detach_device(self, device: Device) -> None:
        """``device`` is no longer served: its open files now answer ENODEV."""
        for ctx in tuple(self.by_device.get(device, ())):
            ctx.detached_from = device
            ctx.device = GONE
            self.by_device.setdefault(GONE, set()).add(ctx)
        self.by_device.pop(device, None)
        self.ioctl_tables.pop(device, None)
        for handle in tuple(self.deferred.values()):
            if handle.ctx.device is GONE:
                handle.error(errno.ENODEV)

    # ------------------------------------------------------------------ shutdown
    def fail_pending(self, err: int = errno.ENODEV) -> None:
        """Answer every deferred call with ``err`` (shutdown)."""
        for handle in tuple(self.deferred.values()):
            handle.error(err)

    def wake_reader(self) -> None:
        """Make the kernel send one request so one blocked reader notices ``stopping``."""
        raise NotImplementedError

    def stop_readers(self, timeout: float = 5.0) -> None:
        """Stop every reader thread: each exits on the next request it reads."""
        self.stopping = True
        self.handlers.clear()  # every request now takes the readers' slow path, which sees ``stopping``
        self.fail_pending()
        import time
        deadline = time.monotonic() + timeout
        while any(t.is_alive() for t in self.threads) and time.monotonic() < deadline:
            waker = threading.Thread(target=self._wake_quietly, daemon=True)
            waker.start()
            waker.join(0.5)
            for t in self.threads:
                t.join(0.01)

    def _wake_quietly(self) -> None:
        try:
            self.wake_reader()
        except OSError:
            pass

    def close_fds(self) -> None:
        """Close the cloned fds (the main fd belongs to the transport)."""
        for fd in self.fds:
            if fd != self.fd:
                try:
                    os.close(fd)
                except OSError:
                    pass
        self.fds = []
