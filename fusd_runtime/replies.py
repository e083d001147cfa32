"""Answers: how a callback's result (or failure) becomes the reply the kernel reads.

The hot handlers (``fileops.py``) pack the common answers themselves and return
the reply's parts, which the reader writes with one ``writev``.  Everything else
comes here: deferred and async answers (from any thread), errors, and results of
unexpected shape — which are the *device's* bug, reported once with the device's
name, the callback, what it returned and what was expected, and answered EIO.
Nothing a callback returns or raises leaves a request unanswered.

Replies go back on the channel the request came on (``chan``): on ``/dev/fuse``
the fd it was read from (a cloned fd only accepts answers to its own requests),
for io_uring the ring entry that carried it (an object with ``send(parts)``).
"""

from __future__ import annotations

import errno
import logging
import os
import traceback
from types import CoroutineType
from typing import Any, Callable, List, Optional

from fusd_wire import constants as C

from .aio import run_coroutine
from .checks import describe_result
from .device import DEFER, Context, ReplyHandle
from .ioctl import IoctlRetry
from .state import OP, SessionState, pack_out

log = logging.getLogger("fusd")

_IOCTL_RETRY = int(C.IoctlFlags.FUSE_IOCTL_RETRY)
_GONE_ERRNOS = (errno.ENOENT, errno.ENODEV, errno.EBADF, errno.EPIPE, errno.ECONNRESET, errno.ENOTCONN,
                errno.ECONNABORTED)

_OPCODE_CALLBACK = {int(OP.FUSE_READ): "read", int(OP.FUSE_WRITE): "write", int(OP.FUSE_IOCTL): "ioctl",
                    int(OP.FUSE_POLL): "poll", int(OP.FUSE_OPEN): "open", int(OP.FUSE_RELEASE): "release",
                    int(OP.FUSE_FLUSH): "flush", int(OP.FUSE_FSYNC): "fsync"}


class BadResult(Exception):
    """A callback returned something the runtime cannot answer with (the device's bug)."""

    def __init__(self, what: str, value: Any, detail: str = "") -> None:
        super().__init__(what, value, detail)
        self.what, self.value, self.detail = what, value, detail

    def describe(self, device: Any) -> str:
        return describe_result(device, self.what, self.value, self.detail) + ". Answering EIO"


class Replies(SessionState):
    """Reply encoding and sending, shared by every handler and by deferred/async answers."""

    # ------------------------------------------------------------------ sending
    def send(self, chan: Any, parts: List[Any]) -> Any:
        """Write one reply on ``chan`` (an fd, or a transport's channel object)."""
        if chan.__class__ is int:
            return self.writev(chan, parts)
        return chan.send(parts)

    def _recording_writev(self, fd: int, parts: List[Any]) -> int:
        self.recorder.record(self.conn_id, 2, parts)  # OUTBOUND: daemon -> kernel
        return os.writev(fd, parts)

    def send_error(self, chan: Any, unique: int, err: int) -> None:
        """Answer ``unique`` with ``-err``."""
        if self.ioctl_encoders:
            self.ioctl_encoders.pop(unique, None)
        self.send(chan, [pack_out(16, -err, unique)])

    def answer_error(self, chan: Any, unique: int, err: int) -> None:
        """``send_error`` for paths where the caller may already be gone: never raises for that."""
        try:
            self.send_error(chan, unique, err)
        except OSError as exc:
            if exc.errno not in _GONE_ERRNOS:
                self._report(exc)

    def send_result(self, chan: Any, unique: int, opcode: int, result: Any, size: int, ctx: Context) -> None:
        """Answer a deferred or async call with what its callback would have returned (any thread)."""
        parts = self.result_parts(chan, unique, opcode, result, size, ctx)
        if parts is not None:
            try:
                self.send(chan, parts)
            except OSError as exc:
                if exc.errno not in _GONE_ERRNOS:
                    self._report(exc)

    def result_parts(self, chan: Any, unique: int, opcode: int, result: Any, size: int,
                     ctx: Context) -> Optional[List[Any]]:
        """The reply's parts for what a callback returned; None if it was bad (then EIO was answered)."""
        try:
            if opcode == OP.FUSE_READ:
                return self._read_parts(unique, result, size, ctx)
            if opcode == OP.FUSE_WRITE:
                return [self._pack_write_reply(24, 0, unique, self._written(result, size), 0)]
            if opcode == OP.FUSE_IOCTL:
                encode = self.ioctl_encoders.pop(unique, None)
                return self._ioctl_parts(unique, result if encode is None else encode(result), size)
            if opcode == OP.FUSE_POLL:
                return [self._pack_poll_reply(24, 0, unique, self._mask(result), 0)]
            if opcode == OP.FUSE_OPEN:
                return [self._pack_open_reply(32, 0, unique, ctx.fh, self.open_flags(ctx.device), 0)]
            return [pack_out(16, 0, unique)]
        except BadResult as bad:
            self._log_once(f"{ctx.device.name}.{bad.what}.result", "fusd: %s", bad.describe(ctx.device), None)
        except Exception as exc:  # e.g. a declared ioctl's encoder failing on the value: the device's data
            what = _OPCODE_CALLBACK.get(opcode, str(opcode))
            self._log_once(f"{ctx.device.name}.{what}.encode", f"device {ctx.device.name!r}: the answer of {what}() "
                           f"could not be encoded; answering EIO", exc)
        self.answer_error(chan, unique, errno.EIO)
        return None

    # ------------------------------------------------------------------ encoding results
    def _read_parts(self, unique: int, data: Any, size: int, ctx: Context) -> List[Any]:
        cls = data.__class__
        if cls is not bytes and cls is not bytearray and cls is not memoryview:
            if isinstance(data, (bytes, bytearray, memoryview)):
                data = bytes(data)
            else:
                raise BadResult("read", data)
        n = len(data)
        if n > size:  # a device bug: the caller has room for ``size`` bytes only
            self._log_once(f"{ctx.device.name}.read.size", "fusd: device %r: read() returned %d bytes for a "
                           "%d-byte read; the rest is dropped", ctx.device.name, n, size, None)
            data, n = data[:size], size
        return [pack_out(16 + n, 0, unique), data]

    def _written(self, result: Any, size: int) -> int:
        if result is None:
            return size
        if result.__class__ is not int:
            if isinstance(result, bool) or not isinstance(result, int):
                raise BadResult("write", result)
            result = int(result)
        if not 0 <= result <= size:
            raise BadResult("write", result, f"the write was {size} bytes")
        return result

    def _mask(self, result: Any) -> int:
        if result.__class__ is int:
            return result & 0xFFFFFFFF
        try:
            return int(result) & 0xFFFFFFFF  # an IntFlag, a numpy int...
        except (TypeError, ValueError):
            raise BadResult("poll", result) from None

    def _ioctl_parts(self, unique: int, result: Any, out_size: int) -> List[Any]:
        if result is None:
            result = 0
        if result.__class__ is int:
            return [self._pack_ioctl_reply(32, 0, unique, result, 0, 0, 0)]
        if result.__class__ is IoctlRetry:
            self.ioctl_retries += 1  # every round, the planner's and a raw device's own
            iovs = [self._pack_ioctl_iovec(base, n) for base, n in result.in_iovs + result.out_iovs]
            return [self._pack_ioctl_reply(32 + 16 * len(iovs), 0, unique, 0, _IOCTL_RETRY,
                                           len(result.in_iovs), len(result.out_iovs)), *iovs]
        if isinstance(result, tuple):
            if len(result) != 2 or not isinstance(result[0], int):
                raise BadResult("ioctl", result)
            res, data = result
        else:
            res, data = 0, result
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise BadResult("ioctl", result)
        if len(data) > out_size:
            raise BadResult("ioctl", result, f"{len(data)} bytes, but only {out_size} can be copied out")
        return [self._pack_ioctl_reply(32 + len(data), 0, unique, res, 0, 0, 0), data]

    def open_flags(self, device: Any) -> int:
        raise NotImplementedError

    # ------------------------------------------------------------------ unusual results of the hot handlers
    def other_result(self, chan: Any, unique: int, opcode: int, result: Any, size: int, ctx: Context,
                     fields: tuple) -> Optional[List[Any]]:
        """A hot handler's result it does not pack itself: a coroutine, a bad value, an oversized read...

        Returns the reply's parts for the reader to write, or None (answered already, or later).
        """
        if result.__class__ is CoroutineType:
            pid, uid, gid, nonblock = fields
            session: Any = self
            return run_coroutine(session, chan, unique, pid, uid, gid, nonblock, ctx, opcode, size, result)
        if result is DEFER or result.__class__ is ReplyHandle:
            return None
        return self.result_parts(chan, unique, opcode, result, size, ctx)

    # ------------------------------------------------------------------ callback failures
    def failed_call(self, chan: Any, unique: int, exc: BaseException, ctx: Optional[Context], what: str) -> None:
        """A callback raised: OSError answers its errno, anything else EIO (logged once).

        SystemExit/KeyboardInterrupt raised by a callback answer EIO too, and stop
        the server: ``serve_forever()`` (or leaving the ``with`` block) re-raises it.
        No reader thread ever dies of it.
        """
        if what == "open" and ctx is not None:
            self.open_failed(ctx)  # refused: the kernel will never RELEASE it
        if isinstance(exc, OSError) and exc.errno:
            self.answer_error(chan, unique, exc.errno)
            return
        name = ctx.device.name if ctx is not None else "?"
        self._log_once(f"{name}.{what}.{type(exc).__name__}", "fusd: %s() of device %r raised; answering EIO",
                       what, name, exc)
        self.answer_error(chan, unique, errno.EIO)
        if not isinstance(exc, Exception):
            self.fatal(exc)

    def fatal(self, exc: BaseException) -> None:
        raise NotImplementedError

    def open_failed(self, ctx: Context) -> None:
        raise NotImplementedError

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
        on_error: Optional[Callable[[BaseException], None]] = self.on_error
        if on_error is not None:
            on_error(exc)
        else:
            log.error("fusd: %s channel error: %s", self.kind, exc)
