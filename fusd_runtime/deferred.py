"""Answers that come later: deferred calls, interrupts, async calls, poll notifications, devices leaving.

A callback defers with ``ctx.defer()`` (a :class:`~fusd_runtime.device.ReplyHandle`,
FUSD's ``-FUSD_NOREPLY``), or by being an ``async def`` that has to wait
(``aio.py``).  Either way the call is in :attr:`deferred` by its ``unique`` until
answered, which is how an INTERRUPT finds it.

INTERRUPT (``fuse_interrupt_in``): the kernel sends it once a signal hits a caller
whose request the daemon already read.  It may arrive before the reader that got
the request has even called the device (several readers), or while the callback
still runs.  So an interrupt for a call not (yet) deferred is *remembered*
(:attr:`pending_interrupts`) and delivered the moment the call defers — never
answered EAGAIN, which would make the kernel re-queue it at once and spin a
reader for as long as the callback runs.  Delivering it runs the handle's
``on_interrupt`` under the device's strand; the callback may answer the call
itself there (``handle.reply(partial_count)``), else the runtime answers EINTR.
An async call's task is cancelled instead (``CancelledError`` at its ``await``).
"""

from __future__ import annotations

import errno
import logging
import time
from typing import Any, Callable, Optional

from fusd_wire import constants as C

from . import aio
from .device import Context, Device, ReplyHandle
from .fileops import GONE, FileOps
from .state import pack_out
from .strand import Strand, strand_of

log = logging.getLogger("fusd")

_NOTIFY_POLL = int(C.fuse_notify_code.FUSE_NOTIFY_POLL)
#: seconds an interrupt for an unknown call is remembered (its call then completed unseen)
INTERRUPT_MEMORY = 30.0


class Deferrals(FileOps):
    """Deferred and async answers, interrupts, poll notifications, detaching devices."""

    # ------------------------------------------------------------------ deferring
    def defer(self, ctx: Context, on_interrupt: Optional[Callable[[ReplyHandle], None]] = None) -> ReplyHandle:
        """Create the handle for the call being served on ``ctx`` (see ``Context.defer``)."""
        handle = ReplyHandle(self, ctx, ctx.opcode, ctx.size, on_interrupt)  # type: ignore[arg-type]
        self._register(handle)
        return handle

    def async_handle(self, chan: Any, unique: int, pid: int, uid: int, gid: int, nonblock: Any, ctx: Context,
                     opcode: int, size: int) -> ReplyHandle:
        """The handle of an ``async def`` call that has to wait (``aio.py``)."""
        handle = ReplyHandle.__new__(ReplyHandle)
        handle.session = self  # type: ignore[assignment]
        handle.ctx, handle.unique, handle.opcode, handle.chan = ctx, unique, opcode, chan
        handle.size, handle.pid, handle.uid, handle.gid, handle.nonblock = size, pid, uid, gid, nonblock
        handle.on_interrupt, handle.done, handle.interrupted, handle.task = None, False, False, None
        handle.cancel_errno, handle.fatal, handle.is_async = errno.EINTR, None, True
        self._register(handle)
        return handle

    def _register(self, handle: ReplyHandle) -> None:
        self.deferred[handle.unique] = handle
        if self.pending_interrupts and self.pending_interrupts.pop(handle.unique, None) is not None:
            self._interrupt(handle)  # the signal came first: deliver it now (after the callback)

    def forget_deferred(self, handle: ReplyHandle) -> None:
        if self.deferred.get(handle.unique) is handle:
            self.deferred.pop(handle.unique, None)

    def open_failed(self, ctx: Context) -> None:
        """A deferred or async OPEN was answered with an error: the file never existed for the kernel."""
        self._drop(ctx)

    # ------------------------------------------------------------------ INTERRUPT
    def _op_interrupt(self, chan: Any, buf: Any, n: int, unique: int, nodeid: int, uid: int, gid: int,
                      pid: int) -> None:
        target = self._unpack_interrupt_in(buf, 40)[0]
        handle = self.deferred.get(target)
        if handle is None:
            # Not deferred (yet): remember it for when the call defers (see the module docstring).
            self.pending_interrupts[target] = time.monotonic()
            return None
        self._interrupt(handle)
        return None

    def _interrupt(self, handle: ReplyHandle) -> None:
        if handle.is_async:
            aio.interrupt(handle)  # cancels its task: the coroutine answers, or EINTR when it ends
        else:
            handle.ctx.strand.run(self._deliver_interrupt, handle)

    def _deliver_interrupt(self, handle: ReplyHandle) -> None:
        """Under the device's strand: let ``on_interrupt`` answer, else answer EINTR."""
        if handle.done:
            return
        handle.interrupted = True
        callback = handle.on_interrupt
        if callback is not None:
            try:
                callback(handle)
            except BaseException as exc:  # noqa: B036 - the interrupt is still answered
                self._log_once(f"{handle.ctx.device.name}.on_interrupt", "fusd: on_interrupt of device %r raised",
                               handle.ctx.device.name, exc)
                if not isinstance(exc, Exception):
                    self.fatal(exc)
        handle.error(errno.EINTR)  # a no-op if on_interrupt answered

    def prune_interrupts(self) -> None:
        """Forget interrupts whose calls completed without deferring (the supervisor's tick)."""
        if self.pending_interrupts:
            old = time.monotonic() - INTERRUPT_MEMORY
            for unique, when in list(self.pending_interrupts.items()):
                if when < old:
                    self.pending_interrupts.pop(unique, None)

    # ------------------------------------------------------------------ device code outside requests
    def run_device_code(self, device: Device, callback: Callable[..., Any], args: tuple) -> None:
        """Run ``callback(*args)`` as ``device``'s code (timers, ``call_soon``): under its strand.

        On the event loop's thread only this job runs here: requests queued behind
        a busy strand are served elsewhere (they may hold slow sync callbacks).
        """
        strand = strand_of(device)
        loop = self.loop
        if strand.__class__ is not Strand or loop is None or not loop.in_loop_thread():
            strand.run(self._device_job, device, callback, args)
            return
        if strand.acquire(False):
            try:
                self._device_job(device, callback, args)
            finally:
                strand.release()
        else:
            strand.backlog.append((self._device_job, (device, callback, args), False))  # the holder runs it
        if strand.backlog:
            self.drain_elsewhere(strand)

    def _device_job(self, device: Device, callback: Callable[..., Any], args: tuple) -> None:
        try:
            result = callback(*args)
        except (SystemExit, KeyboardInterrupt) as exc:
            self.fatal(exc)
            return
        except Exception as exc:
            self._log_once(f"{device.name}.job.{getattr(callback, '__name__', '?')}",
                           "fusd: %r of device %r raised", callback, device.name, exc)
            return
        if hasattr(result, "send") and hasattr(result, "throw") and hasattr(result, "__await__"):
            self.loop.call_soon(aio.start_device_task, self, device, result)  # type: ignore[union-attr]

    def drain_elsewhere(self, strand: Strand) -> None:
        """Run a strand's backlog, but never on the event loop thread (it may hold slow sync callbacks)."""
        loop = self.loop
        if loop is not None and loop.in_loop_thread() and loop.loop is not None:
            loop.loop.run_in_executor(None, strand.drain)
        else:
            strand.drain()

    # ------------------------------------------------------------------ poll notifications
    def notify_poll(self, device: Device) -> None:
        """Write FUSE_NOTIFY_POLL for every open file of ``device`` the kernel polls."""
        for ctx in tuple(self.by_device.get(device, ())):
            kh = ctx.poll_kh
            if kh is not None:
                try:
                    self.send(self.fd, [pack_out(24, _NOTIFY_POLL, 0), self._pack_poll_wakeup(kh)])
                except OSError as exc:
                    if exc.errno not in (errno.ENOENT, errno.ENODEV, errno.EBADF, errno.EPIPE, errno.ENOTCONN):
                        raise

    def open_count(self, device: Device) -> int:
        return len(self.by_device.get(device, ()))

    # ------------------------------------------------------------------ devices leaving, shutdown
    def detach_device(self, device: Device) -> None:
        """``device`` is no longer served: its open files now answer ENODEV (run under its strand)."""
        for ctx in tuple(self.by_device.get(device, ())):
            ctx.detached_from = device
            ctx.device = GONE
            self.by_device.setdefault(GONE, set()).add(ctx)
        self.by_device.pop(device, None)
        self.ioctl_tables.pop(device, None)
        for handle in tuple(self.deferred.values()):
            if handle.ctx.device is GONE:
                self._cancel_task(handle)
                handle.error(errno.ENODEV)

    def fail_pending(self, err: int = errno.ENODEV) -> None:
        """Answer every deferred or async call with ``err`` (shutdown)."""
        for handle in tuple(self.deferred.values()):
            self._cancel_task(handle)
            handle.error(err)

    def _cancel_task(self, handle: ReplyHandle) -> None:
        task, loop = handle.task, self.loop
        if task is not None and loop is not None and loop.loop is not None and not loop.loop.is_closed():
            try:
                loop.call_soon(task.cancel)
            except RuntimeError:
                pass
