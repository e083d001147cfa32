"""Per-device serialization: one device's code never runs twice at once, and nobody waits for it.

A :class:`Strand` is a device's right to run.  Every piece of device code — a
request's callback in a reader thread, a timer or ``call_soon`` callback, one step
of an ``async def`` callback on the event loop, an ``on_interrupt`` — first *tries*
to take its device's strand, without waiting.  If another thread holds it (a
callback of the same device is still running), the work is appended to the
strand's backlog and the thread goes back to its own job; the holder runs the
backlog, in order, before it lets go.  So:

- callbacks of one device never run concurrently (what keeps devices simple);
- a slow or stuck callback delays only its own device: no reader thread and no
  event loop ever blocks on another device's code, and the runtime's own
  filesystem requests (LOOKUP, GETATTR, READDIR, OPEN routing) take no strand;
- the uncontended case costs a ``list.pop()`` and a ``list.append()`` of its token
  (see :class:`Strand`): less than the single session lock it replaced.

A callback may call into the runtime (``handle.reply``, ``server.remove(self)``,
``self.call_soon``): what needs its own device's strand is queued and runs the
moment the callback returns.

Devices that do their own locking can opt out (``Device.concurrent = True``):
their strand is :data:`FREE`, which never refuses and never queues.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from typing import Any, Callable, Deque, Tuple

log = logging.getLogger("fusd")

Job = Tuple[Callable[..., Any], Tuple[Any, ...], bool]


class Strand:
    """The right to run one device's code (see the module docstring).

    The right itself is a *token*: a list holding one ``True``.  Taking it is
    ``token.pop()`` (IndexError: someone holds it), giving it back
    ``token.append(True)`` — both atomic under the GIL, and the cheapest calls
    CPython has (no argument parsing: ``RLock.acquire(False)`` plus ``release()``
    cost ~1,600 instructions per request, the token ~150).  The hot handlers use
    the token directly; everything else calls :meth:`acquire`/:meth:`release`.

    Not re-entrant: work a holder asks for on its own strand (``device.call_soon``
    from a callback, ``server.remove(self)``) is queued and runs the moment the
    holder lets go.
    """

    __slots__ = ("token", "backlog", "draining", "name", "__weakref__")

    def __init__(self, name: str = "") -> None:
        self.token: Any = [True]
        self.backlog: Deque[Job] = deque()
        #: True while a drain runs the backlog (a job's own drain must not recurse into it)
        self.draining = False
        self.name = name

    def acquire(self, blocking: bool = False) -> bool:
        """Take the strand if it is free (never waits); True if taken."""
        try:
            self.token.pop()
        except IndexError:
            return False
        return True

    def release(self) -> None:
        """Give the strand back (then call :meth:`drain` if ``backlog``)."""
        self.token.append(True)

    def run(self, fn: Callable[..., Any], *args: Any) -> None:
        """Run ``fn(*args)`` under the strand: now if it is free, else after the holder's current work."""
        self.backlog.append((fn, args, False))
        self.drain()

    def run_request(self, fn: Callable[..., Any], *args: Any) -> None:
        """Queue a request's handler, which takes the strand itself (a busy strand's READ, WRITE...)."""
        self.backlog.append((fn, args, True))
        self.drain()

    def drain(self) -> None:
        """Run the backlog if the strand is free; a no-op while someone else holds it (they will)."""
        if self.draining:
            return  # a drain is under way (this is one of its jobs, or another thread): it runs the rest
        token, backlog = self.token, self.backlog
        while backlog:
            try:
                token.pop()
            except IndexError:
                return  # the holder runs the backlog when it lets go
            self.draining = True
            holding = True
            try:
                while backlog:
                    fn, args, takes_it = backlog.popleft()
                    try:
                        if takes_it:  # a request's handler takes the strand itself: lend it
                            token.append(True)
                            holding = False
                            fn(*args)
                            try:
                                token.pop()
                                holding = True
                            except IndexError:
                                break  # another thread took it meanwhile: it drains the rest
                        else:
                            fn(*args)
                    except Exception:  # jobs report their own errors; this is the last line of defence
                        log.exception("fusd: a queued job of device %r raised", self.name)
            finally:
                self.draining = False
                if holding:
                    token.append(True)
            # re-check: work queued between our last look and the release is ours to run

    def __repr__(self) -> str:
        return f"<Strand {self.name!r} backlog={len(self.backlog)}>"


class _FreeStrand(Strand):
    """The strand of a ``concurrent`` device: always free, never queues.

    Its token list holds more tokens than there can be threads, so ``pop`` never fails.
    """

    __slots__ = ()

    def __init__(self) -> None:
        super().__init__("(concurrent)")
        self.token = [True] * 4096

    def run(self, fn: Callable[..., Any], *args: Any) -> None:
        fn(*args)

    def drain(self) -> None:
        pass


#: The strand of every device with ``concurrent = True``.
FREE = _FreeStrand()


class _LoopToken:
    """A LoopStrand's token: ``pop``/``append`` take and give the loop's park lock (see LoopStrand)."""

    __slots__ = ("strand",)

    def __init__(self, strand: LoopStrand) -> None:
        self.strand = strand

    def pop(self) -> bool:
        if not self.strand.acquire(False):
            raise IndexError("the event loop is running")
        return True

    def append(self, _: Any) -> None:
        self.strand.release()


class LoopStrand(Strand):
    """The strand of an *asyncio device* (one with ``async def`` callbacks): the event loop itself.

    Such a device's code uses asyncio objects (queues, events, futures), which
    are not thread-safe, so all of it runs where asyncio code may run: on the
    loop's thread, or in a reader thread that *stands in* for the owned loop while
    it is parked (``loop.py``: asleep in ``select``, so it cannot run).  Holding
    this strand means holding the loop's ``park`` lock (re-entrant); the loop
    thread holds it whenever it runs.  Work that cannot get it is posted to the
    loop, which runs it in order with the device's tasks: suspended coroutines
    resume in the order asyncio wakes them (an ``asyncio.Queue``'s waiters are
    served first come, first served), never reordered by a busy strand.  A reader
    that stood in runs, before it lets go, what its work made ready (a woken read's
    task) and wakes the loop for the rest.  A borrowed loop (``async with
    Server()``) is never parked: everything is posted to it.
    """

    __slots__ = ("events",)

    def __init__(self, events: Any, name: str = "") -> None:
        super().__init__(name)
        self.events = events  # the server's loop.EventLoop
        self.token = _LoopToken(self)

    def acquire(self, blocking: bool = False) -> bool:
        events = self.events
        if not events.park.acquire(False):
            return False
        if events.depth == 0 and threading.get_ident() != events.thread_id:
            events.begin_stand_in()
        events.depth += 1
        return True

    def release(self) -> None:
        events = self.events
        events.depth -= 1
        try:
            if events.depth == 0 and threading.get_ident() != events.thread_id:
                events.end_stand_in()
        finally:
            events.park.release()

    def run(self, fn: Callable[..., Any], *args: Any) -> None:
        if self.acquire(False):
            try:
                fn(*args)
            finally:
                self.release()
        else:
            self.events.call_soon(fn, *args)

    def run_request(self, fn: Callable[..., Any], *args: Any) -> None:
        self.events.call_soon(fn, *args)  # on the loop thread the handler takes the strand at once

    def drain(self) -> None:
        pass  # no backlog: what could not run here was posted to the loop


def strand_of(device: Any) -> Strand:
    """The device's strand, made on first use (``Device`` subclasses need not call ``super().__init__``).

    ``setdefault`` makes the first use atomic: two threads opening a fresh device
    at once still share one strand.
    """
    try:
        return device.__dict__["_fusd_strand"]
    except KeyError:
        pass
    strand = FREE if getattr(device, "concurrent", False) else Strand(getattr(device, "name", "") or
                                                                      type(device).__name__)
    return device.__dict__.setdefault("_fusd_strand", strand)


def give_loop_strand(device: Any, events: Any) -> Strand:
    """Make ``device`` an asyncio device: its code runs on (or in the place of) the loop; see LoopStrand."""
    strand = LoopStrand(events, getattr(device, "name", "") or type(device).__name__)
    device.__dict__["_fusd_strand"] = strand
    return strand
