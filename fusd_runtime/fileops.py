"""The system calls on a device file: OPEN, READ, WRITE, IOCTL, POLL, FLUSH, FSYNC, RELEASE.

Each handler is one request's whole path through the runtime, for both
transports: unpack the fixed request struct with a ``struct.Struct`` codec
derived from ``fusd_wire`` (never construct), find the open file, take the
device's strand (``strand.py``: if another of its callbacks is running, the
request is queued behind it and the reader goes back to the kernel), set the
call's fields on the context, call the device, and return the reply's parts —
the reader writes them with one ``writev`` after the strand is released.

Handlers are called as ``handler(chan, buf, n, unique, nodeid, uid, gid, pid)``:
``chan`` is where the answer goes (``replies.py``), ``buf`` holds the request's
``n`` bytes (the reader checked ``n`` against the header's ``len`` and the
opcode's fixed struct; handlers check their trailing data).  A handler answers
itself and returns None, or returns the parts.

The common answers are packed right here (the measured hot path: no extra call,
no exception on success); anything else — a coroutine, DEFER, an unusual value —
goes to ``Replies.other_result``.  The per-call context stores are spelled out in
each hot handler instead of calling a helper: a call costs ~60 ns per request.
"""

from __future__ import annotations

import errno
import itertools
import logging
from types import CoroutineType
from typing import Any, Callable, List, Optional

from fusd_wire import constants as C

from .device import DEFER, Context, Device, ReplyHandle
from .ioctl import call_declared, ioctl_table
from .replies import Replies
from .state import OP, RequestBuffer, pack_out
from .strand import Strand, strand_of

log = logging.getLogger("fusd")

_O_NONBLOCK = 0o4000
_IOCTL_UNRESTRICTED = int(C.IoctlFlags.FUSE_IOCTL_UNRESTRICTED)
_POLL_SCHEDULE_NOTIFY = int(C.PollFlags.FUSE_POLL_SCHEDULE_NOTIFY)
_FOPEN_SEEKABLE = int(C.FopenFlags.FOPEN_DIRECT_IO)
_FOPEN_STREAM = int(C.FopenFlags.FOPEN_DIRECT_IO | C.FopenFlags.FOPEN_NONSEEKABLE | C.FopenFlags.FOPEN_STREAM)
_FOPEN_NOFLUSH = int(C.FopenFlags.FOPEN_NOFLUSH)
_DEFAULT_FLUSH = Device.flush
_EBADF_REPLY = errno.EBADF


class _GoneDevice(Device):
    """Stands in for a device removed while files were open: every call answers ENODEV."""

    def _gone(self, *args: Any) -> Any:
        raise OSError(errno.ENODEV, "device was removed")

    read = write = ioctl = poll = _gone  # type: ignore[assignment]


GONE = _GoneDevice()


class FileOps(Replies):
    """The device file operations (see the module docstring)."""

    _fh_counter: Any

    def device_for_open(self, nodeid: int) -> Device:
        """The device an OPEN of ``nodeid`` is for (transport subclasses)."""
        raise OSError(errno.ENOENT, "no such device")

    def open_flags(self, device: Device) -> int:
        # Plain ints computed once: IntFlag arithmetic per OPEN costs microseconds.
        flags = _FOPEN_SEEKABLE if device.seekable else _FOPEN_STREAM
        if self.minor >= 35 and type(device).flush is _DEFAULT_FLUSH:
            flags |= _FOPEN_NOFLUSH  # no flush callback: close(2) need not wait for a FLUSH round trip
        return flags

    # ------------------------------------------------------------------ contention
    def queued(self, strand: Strand, handler: Callable[..., Optional[List[Any]]], chan: Any, buf: Any, n: int,
               unique: int, nodeid: int, uid: int, gid: int, pid: int) -> Optional[List[Any]]:
        """Another callback of the device is running: serve this request after it, from a copy."""
        strand.run_request(self._run_queued, handler, chan, bytes(buf[:n]), n, unique, nodeid, uid, gid, pid)
        return None

    def _run_queued(self, handler: Callable[..., Optional[List[Any]]], chan: Any, data: bytes, n: int,
                    unique: int, nodeid: int, uid: int, gid: int, pid: int) -> None:
        try:
            parts = handler(chan, data, n, unique, nodeid, uid, gid, pid)
            if parts is not None:
                self.send(chan, parts)
        except OSError as exc:  # the answer: the caller may be gone meanwhile
            if exc.errno not in (errno.ENOENT, errno.EINTR, errno.ENODEV, errno.EBADF):
                self._report(exc)
        except Exception as exc:
            self._log_once(f"runtime.{handler.__name__}", "fusd: internal error in %s", handler.__name__, exc)
            self.answer_error(chan, unique, errno.EIO)

    def answer_then_drain(self, chan: Any, parts: Optional[List[Any]], strand: Strand) -> Optional[List[Any]]:
        """Write this request's answer (if any), then serve what queued behind it: answers stay in order."""
        try:
            if parts is not None:
                self.send(chan, parts)
        except OSError as exc:
            if exc.errno not in (errno.ENOENT, errno.EINTR, errno.ENODEV, errno.EBADF):
                self._report(exc)
        strand.drain()
        return None

    def bad_body(self, chan: Any, unique: int, opcode: int, what: str) -> List[Any]:
        """A request whose trailing data lies about its size: answer EIO, never call the device."""
        self._log_once(f"malformed.{opcode}.{what}", "fusd: malformed %s request (unique %d): %s; answering EIO",
                       _opname(opcode), unique, what, None)
        return [pack_out(16, -errno.EIO, unique)]

    # ------------------------------------------------------------------ OPEN / RELEASE
    def _op_open(self, chan: Any, buf: Any, n: int, unique: int, nodeid: int, uid: int, gid: int,
                 pid: int) -> Optional[List[Any]]:
        flags, _ = self._unpack_open_in(buf, 40)
        try:
            device = self.device_for_open(nodeid)
        except OSError as exc:
            return [pack_out(16, -(exc.errno or errno.ENOENT), unique)]
        strand = strand_of(device)
        token = strand.token
        try:
            token.pop()  # take the device's strand (IndexError: busy)
        except IndexError:
            return self.queued(strand, self._op_open, chan, buf, n, unique, nodeid, uid, gid, pid)
        fh = next(self._fh_counter)
        ctx = Context(device, fh, flags, self, strand)  # type: ignore[arg-type]
        ctx.fd, ctx.unique, ctx.pid, ctx.uid, ctx.gid = chan, unique, pid, uid, gid
        ctx.opcode = 14  # FUSE_OPEN
        self.files[fh] = ctx
        ctxs = self.by_device.get(device)
        if ctxs is None:
            self.by_device[device] = ctxs = set()
        ctxs.add(ctx)
        try:
            result = device.open(ctx)
        except BaseException as exc:  # noqa: B036 - any failure refuses the open
            token.append(True)
            self.failed_call(chan, unique, exc, ctx, "open")
            if strand.backlog:
                strand.drain()
            return None
        token.append(True)
        if result is None:
            opened = [self._pack_open_reply(32, 0, unique, fh, self.open_flags(device), 0)]
            return self.answer_then_drain(chan, opened, strand) if strand.backlog else opened
        parts = self.other_result(chan, unique, 14, result, 0, ctx, (pid, uid, gid, flags & _O_NONBLOCK))
        return self.answer_then_drain(chan, parts, strand) if strand.backlog else parts

    def _drop(self, ctx: Context) -> None:
        self.files.pop(ctx.fh, None)
        ctxs = self.by_device.get(ctx.device)
        if ctxs is not None:
            ctxs.discard(ctx)
            if not ctxs:
                self.by_device.pop(ctx.device, None)
        ctx.released = True

    def _op_release(self, chan: Any, buf: Any, n: int, unique: int, nodeid: int, uid: int, gid: int,
                    pid: int) -> Optional[List[Any]]:
        fh = self._unpack_release_in(buf, 40)[0]
        ctx = self.files.get(fh)
        if ctx is None:
            return [pack_out(16, 0, unique)]
        strand = ctx.strand
        token = strand.token
        try:
            token.pop()  # take the device's strand (IndexError: busy)
        except IndexError:
            return self.queued(strand, self._op_release, chan, buf, n, unique, nodeid, uid, gid, pid)
        self._drop(ctx)
        ctx.fd, ctx.unique, ctx.pid, ctx.uid, ctx.gid = chan, unique, pid, uid, gid
        ctx.opcode = 18  # FUSE_RELEASE
        device = ctx.detached_from if ctx.device is GONE and ctx.detached_from else ctx.device
        try:  # cleanup still reaches a removed device
            result = device.release(ctx)
        except BaseException as exc:  # noqa: B036
            token.append(True)
            self.failed_call(chan, unique, exc, ctx, "release")
            if strand.backlog:
                strand.drain()
            return None
        token.append(True)
        if result is None:
            if strand.backlog:
                return self.answer_then_drain(chan, [pack_out(16, 0, unique)], strand)
            return [pack_out(16, 0, unique)]
        parts = self.other_result(chan, unique, 18, result, 0, ctx, (pid, uid, gid, 0))
        return self.answer_then_drain(chan, parts, strand) if strand.backlog else parts

    # ------------------------------------------------------------------ READ / WRITE
    def _op_read(self, chan: Any, buf: Any, n: int, unique: int, nodeid: int, uid: int, gid: int,
                 pid: int) -> Optional[List[Any]]:
        fh, offset, size, _, _, flags, _ = self._unpack_read_in(buf, 40)
        ctx = self.files.get(fh)
        if ctx is None:
            return [pack_out(16, -_EBADF_REPLY, unique)]
        strand = ctx.strand
        token = strand.token
        try:
            token.pop()  # take the device's strand (IndexError: busy)
        except IndexError:
            return self.queued(strand, self._op_read, chan, buf, n, unique, nodeid, uid, gid, pid)
        try:
            # Separate stores: a 5-target tuple assignment would build and unpack a tuple.
            ctx.fd = chan
            ctx.unique = unique
            ctx.pid = pid
            ctx.uid = uid
            ctx.gid = gid
            ctx.nonblock = nonblock = flags & _O_NONBLOCK
            ctx.opcode = 15  # FUSE_READ
            ctx.size = size
            result = ctx.device.read(ctx, size, offset)
        except BaseException as exc:  # noqa: B036 - any failure is the caller's answer
            token.append(True)
            self.failed_call(chan, unique, exc, ctx, "read")
            if strand.backlog:
                strand.drain()
            return None
        token.append(True)
        cls = result.__class__
        if cls is bytes or cls is bytearray or cls is memoryview:
            rn = len(result)
            if rn <= size:
                if strand.backlog:  # requests queued behind this one: answer first, then serve them
                    return self.answer_then_drain(chan, [pack_out(16 + rn, 0, unique), result], strand)
                return [pack_out(16 + rn, 0, unique), result]
        parts = self.other_result(chan, unique, 15, result, size, ctx, (pid, uid, gid, nonblock))
        return self.answer_then_drain(chan, parts, strand) if strand.backlog else parts

    def _op_write(self, chan: Any, buf: Any, n: int, unique: int, nodeid: int, uid: int, gid: int,
                  pid: int) -> Optional[List[Any]]:
        fh, offset, size, _, _, flags, _ = self._unpack_write_in(buf, 40)
        start = self._write_data
        if start + size != n:  # the payload must be exactly what the header and fuse_write_in say
            return self.bad_body(chan, unique, 16, f"fuse_write_in.size {size} but {n - start} payload bytes")
        ctx = self.files.get(fh)
        if ctx is None:
            return [pack_out(16, -_EBADF_REPLY, unique)]
        strand = ctx.strand
        token = strand.token
        try:
            token.pop()  # take the device's strand (IndexError: busy)
        except IndexError:
            return self.queued(strand, self._op_write, chan, buf, n, unique, nodeid, uid, gid, pid)
        try:
            ctx.fd = chan
            ctx.unique = unique
            ctx.pid = pid
            ctx.uid = uid
            ctx.gid = gid
            ctx.nonblock = nonblock = flags & _O_NONBLOCK
            ctx.opcode = 16  # FUSE_WRITE
            ctx.size = size
            device = ctx.device
            # One copy straight out of the request buffer (a bytearray slice would copy twice);
            # a device with ``write_view`` gets the view itself, valid during the call only.
            data = buf.view[start:n] if buf.__class__ is RequestBuffer else memoryview(buf)[start:n]
            if device.write_view:
                try:
                    result = device.write(ctx, data, offset)
                finally:
                    data.release()  # the buffer is reused by the next request: no use after the call
            else:
                result = device.write(ctx, bytes(data), offset)
        except BaseException as exc:  # noqa: B036
            token.append(True)
            self.failed_call(chan, unique, exc, ctx, "write")
            if strand.backlog:
                strand.drain()
            return None
        token.append(True)
        if result is None:
            result = size
        elif result.__class__ is not int or not 0 <= result <= size:
            parts = self.other_result(chan, unique, 16, result, size, ctx, (pid, uid, gid, nonblock))
            return self.answer_then_drain(chan, parts, strand) if strand.backlog else parts
        if strand.backlog:
            return self.answer_then_drain(chan, [self._pack_write_reply(24, 0, unique, result, 0)], strand)
        return [self._pack_write_reply(24, 0, unique, result, 0)]

    # ------------------------------------------------------------------ FLUSH / FSYNC
    def _op_flush(self, chan: Any, buf: Any, n: int, unique: int, nodeid: int, uid: int, gid: int,
                  pid: int) -> Optional[List[Any]]:
        # Every close(2) of a device with a flush callback sends one: spelled out like READ.
        ctx = self.files.get(self._unpack_flush_in(buf, 40)[0])
        if ctx is None:
            return [pack_out(16, -_EBADF_REPLY, unique)]
        strand = ctx.strand
        token = strand.token
        try:
            token.pop()  # take the device's strand (IndexError: busy)
        except IndexError:
            return self.queued(strand, self._op_flush, chan, buf, n, unique, nodeid, uid, gid, pid)
        try:
            ctx.fd = chan
            ctx.unique = unique
            ctx.pid = pid
            ctx.uid = uid
            ctx.gid = gid
            ctx.opcode = 25  # FUSE_FLUSH
            result = ctx.device.flush(ctx)
        except BaseException as exc:  # noqa: B036
            token.append(True)
            self.failed_call(chan, unique, exc, ctx, "flush")
            if strand.backlog:
                strand.drain()
            return None
        token.append(True)
        if result is None:
            if strand.backlog:
                return self.answer_then_drain(chan, [pack_out(16, 0, unique)], strand)
            return [pack_out(16, 0, unique)]
        parts = self.other_result(chan, unique, 25, result, 0, ctx, (pid, uid, gid, 0))
        return self.answer_then_drain(chan, parts, strand) if strand.backlog else parts

    def _op_fsync(self, chan: Any, buf: Any, n: int, unique: int, nodeid: int, uid: int, gid: int,
                  pid: int) -> Optional[List[Any]]:
        fh, fsync_flags, _ = self._unpack_fsync_in(buf, 40)
        ctx = self.files.get(fh)
        if ctx is None:
            return [pack_out(16, -_EBADF_REPLY, unique)]
        strand = ctx.strand
        token = strand.token
        try:
            token.pop()  # take the device's strand (IndexError: busy)
        except IndexError:
            return self.queued(strand, self._op_fsync, chan, buf, n, unique, nodeid, uid, gid, pid)
        try:
            ctx.fd, ctx.unique, ctx.pid, ctx.uid, ctx.gid = chan, unique, pid, uid, gid
            ctx.opcode = 20  # FUSE_FSYNC
            result = ctx.device.fsync(ctx, bool(fsync_flags & C.FsyncFlags.FUSE_FSYNC_FDATASYNC))
        except BaseException as exc:  # noqa: B036
            token.append(True)
            self.failed_call(chan, unique, exc, ctx, "fsync")
            if strand.backlog:
                strand.drain()
            return None
        token.append(True)
        if result is None:
            if strand.backlog:
                return self.answer_then_drain(chan, [pack_out(16, 0, unique)], strand)
            return [pack_out(16, 0, unique)]
        parts = self.other_result(chan, unique, 20, result, 0, ctx, (pid, uid, gid, 0))
        return self.answer_then_drain(chan, parts, strand) if strand.backlog else parts

    # ------------------------------------------------------------------ IOCTL
    def _op_ioctl(self, chan: Any, buf: Any, n: int, unique: int, nodeid: int, uid: int, gid: int,
                  pid: int) -> Optional[List[Any]]:
        fh, flags, cmd, arg, in_size, out_size = self._unpack_ioctl_in(buf, 40)
        if 72 + in_size != n:  # fuse_ioctl_in.in_size must be the data that follows it
            return self.bad_body(chan, unique, 39, f"fuse_ioctl_in.in_size {in_size} but {n - 72} data bytes")
        ctx = self.files.get(fh)
        if ctx is None:
            return [pack_out(16, -_EBADF_REPLY, unique)]
        strand = ctx.strand
        token = strand.token
        try:
            token.pop()  # take the device's strand (IndexError: busy)
        except IndexError:
            return self.queued(strand, self._op_ioctl, chan, buf, n, unique, nodeid, uid, gid, pid)
        try:
            ctx.fd = chan
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
            data = bytes(buf[72:n]) if in_size else b""
            if flags & _IOCTL_UNRESTRICTED:  # CUSE's retry protocol
                result = self.call_ioctl(ctx, flags, cmd, arg, data, out_size)
            elif declared:  # restricted: a declared argument is decoded, handled and encoded in one call
                spec = declared.get(cmd)
                result = device.ioctl(ctx, cmd, data, out_size) if spec is None else \
                    spec.call_restricted(ctx, data, out_size, self.ioctl_encoders)
            else:  # a plain restricted ioctl: straight to the device
                result = device.ioctl(ctx, cmd, data, out_size)
        except BaseException as exc:  # noqa: B036
            token.append(True)
            self.failed_call(chan, unique, exc, ctx, "ioctl")
            if strand.backlog:
                strand.drain()
            return None
        token.append(True)
        cls = result.__class__
        if strand.backlog:  # requests queued behind this one: answer first (in order), then serve them
            return self.answer_then_drain(chan, self.other_result(chan, unique, 39, result, out_size, ctx,
                                                                  (pid, uid, gid, 0)), strand)
        if cls is bytes and len(result) <= out_size:  # the common _IOR/_IOWR answer
            return [self._pack_ioctl_reply(32 + len(result), 0, unique, 0, 0, 0, 0), result]
        if cls is int:
            return [self._pack_ioctl_reply(32, 0, unique, result, 0, 0, 0)]
        return self.other_result(chan, unique, 39, result, out_size, ctx, (pid, uid, gid, 0))

    def call_ioctl(self, ctx: Context, flags: int, cmd: int, arg: int, data: bytes, out_size: int) -> Any:
        """Hand an ioctl to the device (the CUSE session adds the unrestricted protocol).

        Here the kernel already copied ``_IOC_SIZE(cmd)`` bytes in (restricted
        ioctls); a command the device declared (``ioctl.Arg``) is decoded with its
        schema and the handler's result encoded back.
        """
        declared = self.ioctl_tables.get(ctx.device)
        if declared is None:
            declared = ioctl_table(ctx.device)
        spec = declared.get(cmd)
        if spec is None:
            return ctx.device.ioctl(ctx, cmd, data, out_size)
        # decode, handler, encode in one precompiled function; a deferred call leaves its encoder here
        return spec.call_restricted(ctx, data, out_size, self.ioctl_encoders)

    def finish_declared(self, ctx: Context, spec: Any, value: Any, out_size: int,
                        encode: Callable[[Any], Any]) -> Any:
        """Call a declared ioctl's handler; encode its result now or, if it defers, when answered."""
        result = call_declared(spec, ctx, value, out_size)
        if result is DEFER or result.__class__ is ReplyHandle or result.__class__ is CoroutineType:
            self.ioctl_encoders[ctx.unique] = encode  # an async handler's value is encoded when it returns
            return result
        return encode(result)

    # ------------------------------------------------------------------ POLL
    def _op_poll(self, chan: Any, buf: Any, n: int, unique: int, nodeid: int, uid: int, gid: int,
                 pid: int) -> Optional[List[Any]]:
        fh, kh, flags, events = self._unpack_poll_in(buf, 40)
        ctx = self.files.get(fh)
        if ctx is None:
            return [pack_out(16, -_EBADF_REPLY, unique)]
        strand = ctx.strand
        token = strand.token
        try:
            token.pop()  # take the device's strand (IndexError: busy)
        except IndexError:
            return self.queued(strand, self._op_poll, chan, buf, n, unique, nodeid, uid, gid, pid)
        try:
            ctx.fd = chan
            ctx.unique = unique
            ctx.pid = pid
            ctx.uid = uid
            ctx.gid = gid
            ctx.opcode = 40  # FUSE_POLL
            if flags & _POLL_SCHEDULE_NOTIFY:
                ctx.poll_kh = kh
            mask = ctx.device.poll(ctx, events)
        except BaseException as exc:  # noqa: B036
            token.append(True)
            self.failed_call(chan, unique, exc, ctx, "poll")
            if strand.backlog:
                strand.drain()
            return None
        token.append(True)
        if mask.__class__ is int:
            if strand.backlog:
                return self.answer_then_drain(chan, [self._pack_poll_reply(24, 0, unique, mask, 0)], strand)
            return [self._pack_poll_reply(24, 0, unique, mask, 0)]
        parts = self.other_result(chan, unique, 40, mask, 0, ctx, (pid, uid, gid, 0))
        return self.answer_then_drain(chan, parts, strand) if strand.backlog else parts


def _opname(opcode: int) -> str:
    try:
        return OP(opcode).name
    except ValueError:
        return f"opcode {opcode}"


def fh_counter() -> Any:
    """File handle numbers: ``next()`` of a C counter is atomic (OPENs run in several readers at once)."""
    return itertools.count(1)
