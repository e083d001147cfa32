"""``async def`` callbacks: answered in the reader when they need not wait, as asyncio tasks when they do.

Any callback may be a coroutine function.  Its call returns a coroutine object,
which the runtime drives:

1. **Eagerly, in the reader thread.**  The coroutine is stepped once right away,
   under the device's strand, with the server's loop set as the thread's running
   loop — possible because the owned loop is *parked* (``loop.py``): its thread is
   asleep in ``select`` and cannot run at the same time, so futures, queues, locks
   and timers created in this step are as safe as in the loop thread.  A
   coroutine that returns without suspending is answered right there, on the hot
   path (measured: a few tenths of a µs over the same sync callback).  Until its
   first suspension the coroutine runs outside any task: ``asyncio.current_task()``
   is None there, so ``asyncio.timeout()`` belongs after the first ``await``.
2. **As a task on the loop** once it suspends (or from the start when the loop is
   busy or borrowed): an ``asyncio.Task`` drives a :class:`_Step` wrapper, which
   runs every further step under the device's strand, so a device's code between
   two ``await``s never runs alongside another of its callbacks — other calls of
   the same device interleave only at an ``await``.  Before each step the call's
   own fields (``pid``, ``uid``, ``nonblock``...) are put back on ``ctx``.

Answers: the coroutine's return value is encoded like a sync callback's result;
raising works like raising in a sync callback (OSError -> its errno, anything else
-> EIO, logged once; SystemExit/KeyboardInterrupt -> EIO and the server stops).
An INTERRUPT cancels the task: ``CancelledError`` inside the callback, EINTR to
the caller unless the callback catches it and returns an answer (a partial
count).  A call made with O_NONBLOCK never waits: if its coroutine suspends it is
cancelled at once and the caller gets EAGAIN (unless it answers itself).
"""

from __future__ import annotations

import asyncio
import collections.abc
import errno
import inspect
from typing import TYPE_CHECKING, Any, Callable, List, Optional

from .device import DEFER, ReplyHandle
from .strand import LoopStrand, Strand, strand_of

if TYPE_CHECKING:  # pragma: no cover
    from .device import Context
    from .session import Session

_NOTHING = object()


class _DeviceExit(Exception):
    """Carries SystemExit/KeyboardInterrupt out of a device task (asyncio would let them kill the loop)."""


#: the callbacks whose being ``async def`` makes a device an asyncio device
CALLBACKS = ("open", "release", "flush", "fsync", "read", "write", "ioctl", "poll")


def is_asyncio_device(device: Any) -> bool:
    """True if the device's code must run under the event loop.

    That is: a callback is ``async def``, or the device says so (``uses_asyncio``).
    """
    flag = getattr(device, "uses_asyncio", None)
    if flag is not None:
        return bool(flag)
    for name in CALLBACKS:
        if inspect.iscoroutinefunction(getattr(device, name, None)):
            return True
    from .ioctl import ioctl_table  # declared ioctl handlers may be async too
    try:
        specs = ioctl_table(device).values()
    except Exception:  # a broken declaration is reported by check_ioctls, not here
        return False
    return any(spec.handler is not None and inspect.iscoroutinefunction(getattr(device, spec.handler, None))
               for spec in specs)


def run_coroutine(session: Session, chan: Any, unique: int, pid: int, uid: int, gid: int, nonblock: Any,
                  ctx: Context, opcode: int, size: int, coro: Any) -> Optional[List[Any]]:
    """Drive the coroutine a callback returned for request ``unique`` (see the module docstring).

    Returns the reply's parts when it finished at once (the reader writes them), else None.
    """
    loop: Any = session.loop
    strand = ctx.strand
    if loop is not None and loop.loop is not None and strand.__class__ is LoopStrand and strand.acquire(False):
        try:
            outcome = _eager(session, loop.loop, chan, unique, pid, uid, gid, nonblock, ctx, opcode, size, coro)
        finally:
            strand.release()
        if outcome is not None:
            kind, value = outcome
            if kind:
                if value is not DEFER and value.__class__ is not ReplyHandle:  # else: it deferred itself
                    return session.result_parts(chan, unique, opcode, value, size, ctx)
            else:
                session.failed_call(chan, unique, value, ctx, _callback_name(opcode))
        return None
    # The loop is busy or borrowed (or the device's code is not the loop's): start as a task.
    handle = session.async_handle(chan, unique, pid, uid, gid, nonblock, ctx, opcode, size)
    if loop is None or loop.loop is None:
        handle.error(errno.ENODEV)
        return None
    loop.call_soon(_spawn, loop.loop, handle, coro, _NOTHING)
    return None


def _eager(session: Session, loop: Any, chan: Any, unique: int, pid: int, uid: int, gid: int,
           nonblock: Any, ctx: Context, opcode: int, size: int, coro: Any) -> Optional[tuple]:
    """The first step, as the loop (LoopStrand held): (True, value) / (False, exc) if done, None if it waits."""
    ctx.fd, ctx.unique, ctx.pid, ctx.uid, ctx.gid, ctx.nonblock = chan, unique, pid, uid, gid, nonblock
    ctx.opcode, ctx.size = opcode, size
    try:
        yielded = coro.send(None)
        if nonblock:  # a nonblocking call must not wait: cancel it at its first await
            yielded = coro.throw(asyncio.CancelledError())
    except StopIteration as stop:
        return True, stop.value
    except asyncio.CancelledError as exc:
        if nonblock:
            return False, BlockingIOError(errno.EAGAIN, "a nonblocking call would have to wait")
        return False, exc
    except BaseException as exc:  # noqa: B036 - every exception becomes the caller's answer
        return False, exc
    # It waits: a task takes over (safe here: we are the loop, or stand in for it).
    handle = session.async_handle(chan, unique, pid, uid, gid, nonblock, ctx, opcode, size)
    _spawn(loop, handle, coro, yielded)
    return None


def _spawn(loop: Any, handle: ReplyHandle, coro: Any, first: Any) -> None:
    if handle.done:  # answered meanwhile (the server stopped)
        coro.close()
        return
    task = loop.create_task(_Step(handle.session, handle.ctx.strand, coro, first, handle))
    handle.task = task
    task.add_done_callback(lambda t: _finished(handle, t))
    if handle.interrupted:  # the INTERRUPT came before the task existed
        task.cancel()


def _finished(handle: ReplyHandle, task: asyncio.Task) -> None:
    """The task of an async call ended: answer the call (loop thread)."""
    session = handle.session
    if handle.done:
        return
    if task.cancelled():
        handle.error(handle.cancel_errno)
        return
    exc = task.exception()
    if exc is None:
        result = task.result()
        if result is DEFER or result.__class__ is ReplyHandle:  # it deferred itself: that handle answers
            handle.done = True
            session.forget_deferred(handle)
        else:
            handle.reply(result)
        return
    if isinstance(exc, _DeviceExit) and handle.fatal is not None:
        exc = handle.fatal
    if handle._claim():
        session.failed_call(handle.chan, handle.unique, exc, handle.ctx, _callback_name(handle.opcode))


def interrupt(handle: ReplyHandle) -> None:
    """INTERRUPT for an async call: cancel its task (CancelledError at its ``await``)."""
    handle.interrupted = True
    handle.cancel_errno = errno.EINTR
    task = handle.task
    if task is not None:  # else _spawn cancels it as soon as it exists
        loop = handle.session.loop
        if loop is not None:
            loop.call_soon(task.cancel)


def start_device_task(session: Session, device: Any, coro: Any) -> asyncio.Task:
    """Run ``coro`` as the device's own code (every step under its strand); loop thread only."""
    loop: Any = session.loop.loop  # type: ignore[union-attr]
    return loop.create_task(_Step(session, strand_of(device), coro, _NOTHING, None))


class _Step(collections.abc.Coroutine):
    """What the asyncio Task drives: the device's coroutine, one step at a time under its strand.

    ``first`` is what the eager step already got from the coroutine (the future it
    waits on): the Task's first ``send`` returns it without running device code.
    When the strand is busy, a step waits for it on a future instead of blocking
    the loop, and runs as soon as the holder lets go.  ``handle`` is the call being
    answered (None for a device's own task: a timer's coroutine, ``start_task``).
    """

    __slots__ = ("session", "strand", "handle", "coro", "first", "pending", "started")

    def __init__(self, session: Session, strand: Strand, coro: Any, first: Any,
                 handle: Optional[ReplyHandle]) -> None:
        self.session = session
        self.strand = strand
        self.handle = handle
        self.coro = coro
        self.first = first
        self.pending: Optional[tuple] = None
        self.started = first is not _NOTHING

    def send(self, value: Any) -> Any:
        first = self.first
        if first is not _NOTHING:
            self.first = _NOTHING
            return first
        pending = self.pending
        if pending is not None:  # we waited for the strand: now run what the Task gave us then
            self.pending = None
            return self._step(*pending)
        return self._step(self.coro.send, value)

    def throw(self, typ: Any, val: Any = None, tb: Any = None) -> Any:
        self.first = _NOTHING
        self.pending = None
        if val is None:
            exc = typ if isinstance(typ, BaseException) else typ()
        else:
            exc = val if tb is None else val.with_traceback(tb)
        return self._step(self.coro.throw, exc)

    def close(self) -> None:
        self.coro.close()

    def __await__(self) -> Any:  # pragma: no cover - only a Task drives us
        raise TypeError("_Step is driven by its Task only")

    def _step(self, fn: Callable[[Any], Any], arg: Any) -> Any:
        strand = self.strand
        if not strand.acquire(False):
            self.pending = (fn, arg)
            loop: Any = self.session.loop.loop  # type: ignore[union-attr]
            fut = loop.create_future()
            fut._asyncio_future_blocking = True  # what Future.__await__ sets: the Task waits on it
            strand.run(_wake, loop, fut)  # the holder wakes us when it lets go
            return fut
        handle = self.handle
        answer: Any = _NOTHING
        try:
            if handle is not None:
                handle.restore()
            try:
                out = fn(arg)
                if not self.started:
                    self.started = True
                    if handle is not None and handle.nonblock:  # must not wait: cancel at the first await
                        handle.cancel_errno = errno.EAGAIN
                        out = self.coro.throw(asyncio.CancelledError())
                return out
            except StopIteration as stop:
                answer = stop.value  # answered below, right now: no done-callback round through the loop
                raise
            except (SystemExit, KeyboardInterrupt) as exc:
                if handle is not None:
                    handle.fatal = exc
                else:
                    self.session.fatal(exc)
                raise _DeviceExit(str(exc)) from exc
        finally:
            strand.release()
            if handle is not None and answer is not _NOTHING and not handle.done:
                if answer is DEFER or answer.__class__ is ReplyHandle:  # it deferred itself: that handle answers
                    handle.done = True
                    self.session.forget_deferred(handle)
                else:
                    handle.reply(answer)
            if strand.backlog:
                self.session.drain_elsewhere(strand)


def _wake(loop: Any, fut: asyncio.Future) -> None:
    loop.call_soon_threadsafe(_set_if_pending, fut)


def _set_if_pending(fut: asyncio.Future) -> None:
    if not fut.done():
        fut.set_result(None)


_NAMES = {14: "open", 15: "read", 16: "write", 18: "release", 20: "fsync", 25: "flush", 39: "ioctl", 40: "poll"}


def _callback_name(opcode: int) -> str:
    return _NAMES.get(opcode, f"opcode {opcode}")
