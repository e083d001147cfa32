"""The server's event loop: asyncio's own, owned by the server or borrowed from the caller.

The loop runs what is not a request: timers (``call_later``), ``call_soon``
callbacks, the user's fds (``add_reader``), the steps of ``async def`` callbacks
that had to wait, and the runtime's own housekeeping (the reader supervisor, stop).
Requests themselves are served by reader threads blocked on the kernel channel
(``reader.py``); they reach the loop only through the thread-safe calls here.

Two ways to have a loop:

- **owned** (``Server.start()``, ``with Server()``, ``serve_forever()``): a
  ``SelectorEventLoop`` of ours, run in a ``fusd-loop`` thread or in the thread
  that called ``serve_forever``.  Its selector *parks*: the loop thread holds the
  ``park`` lock whenever it runs Python code and lets go of it only while it waits
  in ``select``.  A reader thread that takes ``park`` without waiting therefore
  knows the loop thread is asleep, and may for that moment *stand in* for it: use
  the loop as the loop thread would, and even run what became ready (the task of a
  read that a write just woke).  That is how an ``async def`` callback that need not
  wait is answered in the reader, and a woken one too, with no hop to the loop
  thread (``strand.LoopStrand``, ``aio.py``).
- **borrowed** (``async with Server()``, ``await server.serve()``): the caller's
  running loop.  Everything works the same, except that ``async def`` callbacks
  always start as tasks on that loop (we cannot park a loop we do not own).
"""

from __future__ import annotations

import asyncio
import selectors
import threading
from typing import Any, Callable, Optional, Tuple


class ParkingSelector(selectors.DefaultSelector):  # type: ignore[misc,valid-type]
    """The owned loop's selector: lets go of ``park`` exactly while it waits for events."""

    def __init__(self, park: Any) -> None:
        super().__init__()
        self.park = park

    def select(self, timeout: Optional[float] = None) -> Any:
        self.park.release()
        try:
            return super().select(timeout)
        finally:
            self.park.acquire()


class Timer:
    """A pending ``call_later``, cancellable from any thread."""

    __slots__ = ("when", "_handle", "cancelled", "_loop")

    def __init__(self, loop: asyncio.AbstractEventLoop, when: float) -> None:
        self.when = when
        self._handle: Optional[asyncio.TimerHandle] = None
        self.cancelled = False
        self._loop = loop

    def cancel(self) -> None:
        """Do not run the callback (no effect once it ran)."""
        self.cancelled = True
        handle = self._handle
        if handle is not None:
            try:
                self._loop.call_soon_threadsafe(handle.cancel)
            except RuntimeError:  # the loop is closed: nothing will run anyway
                pass

    def __repr__(self) -> str:
        return f"<Timer when={self.when:.3f} cancelled={self.cancelled}>"


#: ready callbacks a reader standing in for the parked loop runs before it lets go
STEAL_LIMIT = 16
_set_running_loop = asyncio.events._set_running_loop
_get_running_loop = asyncio.events._get_running_loop


class EventLoop:
    """The server's loop and the thread-safe ways into it."""

    def __init__(self) -> None:
        self.loop: Optional[asyncio.AbstractEventLoop] = None
        #: held by the loop's thread except while its owned loop waits in select (re-entrant:
        #: the holder — the loop thread, or a reader standing in — may take it again)
        self.park = threading.RLock()
        self.owned = False
        self.thread_id: Optional[int] = None
        self._thread: Optional[threading.Thread] = None
        self._running = threading.Event()
        # the holder's bookkeeping (only the holder of ``park`` touches these)
        self.depth = 0
        self._prev_loop: Any = None
        self._scheduled_before = 0

    # ------------------------------------------------------------------ having a loop
    def new_owned(self) -> asyncio.AbstractEventLoop:
        """Make our own parking loop (not running yet)."""
        self.loop = asyncio.SelectorEventLoop(ParkingSelector(self.park))
        self.owned = True
        return self.loop

    def run_owned(self, main: Optional[Any] = None) -> Any:
        """Run the owned loop in this thread: until ``main`` (a coroutine) finishes, or until stopped."""
        loop, park = self.loop, self.park
        assert loop is not None
        park.acquire()
        self.thread_id = threading.get_ident()
        asyncio.set_event_loop(loop)
        loop.call_soon(self._running.set)
        try:
            if main is not None:
                return loop.run_until_complete(main)
            loop.run_forever()
            return None
        finally:
            self._running.clear()
            asyncio.set_event_loop(None)
            park.release()

    def start_thread(self) -> None:
        """Run a new owned loop in a background ``fusd-loop`` thread."""
        if self._thread is not None:
            return
        self.new_owned()
        self._thread = threading.Thread(target=self.run_owned, name="fusd-loop", daemon=True)
        self._thread.start()
        self._running.wait(10)

    def adopt(self, loop: asyncio.AbstractEventLoop) -> None:
        """Borrow the caller's running loop (we are in its thread): it keeps ``park`` for good.

        A loop we do not own cannot be parked, so no reader may ever stand in for it.
        """
        self.park.acquire()
        self.loop, self.owned = loop, False
        self.thread_id = threading.get_ident()
        self._running.set()

    @property
    def owned_thread(self) -> Optional[threading.Thread]:
        return self._thread

    def stop(self) -> None:
        """Stop the owned loop of our ``fusd-loop`` thread and close it (any thread but that one).

        A loop run by ``run_owned`` in the caller's thread ends with its ``main``;
        a borrowed loop is the caller's: neither is touched here.
        """
        loop, thread = self.loop, self._thread
        if loop is None or thread is None:
            return
        if not loop.is_closed():
            try:
                loop.call_soon_threadsafe(loop.stop)
            except RuntimeError:
                pass
        if thread is not threading.current_thread():
            thread.join(10)
        if not thread.is_alive() and not loop.is_closed():
            loop.close()

    # ------------------------------------------------------------------ a reader standing in
    def begin_stand_in(self) -> None:
        """A reader took ``park`` from the sleeping loop: it is the loop's thread for now."""
        loop: Any = self.loop
        self._prev_loop = _get_running_loop()
        if loop is not None:
            _set_running_loop(loop)
            self._scheduled_before = len(loop._scheduled)

    def end_stand_in(self) -> None:
        """Before giving ``park`` back: run what became ready here, and wake the loop if it must look."""
        loop: Any = self.loop
        if loop is not None:
            ready = loop._ready
            if ready:
                # E.g. the task of a read a write just woke: answering it here spares a thread hop.
                # What runs now runs inside this stand-in: its own holds must not end it (depth).
                self.depth += 1
                try:
                    for _ in range(STEAL_LIMIT):
                        try:
                            handle = ready.popleft()
                        except IndexError:
                            break
                        if not handle._cancelled:
                            handle._run()
                finally:
                    self.depth -= 1
            if ready or len(loop._scheduled) != self._scheduled_before:
                loop._write_to_self()  # the parked loop must see what is left, and new timers
        _set_running_loop(self._prev_loop)

    # ------------------------------------------------------------------ thread-safe calls
    def in_loop_thread(self) -> bool:
        return threading.get_ident() == self.thread_id

    def call_soon(self, callback: Callable[..., Any], *args: Any) -> None:
        """Run ``callback(*args)`` on the loop, soon; from any thread."""
        loop = self.loop
        if loop is None:
            raise RuntimeError("the server's event loop is not running")
        if self.in_loop_thread():
            loop.call_soon(callback, *args)
        else:
            loop.call_soon_threadsafe(callback, *args)

    def call_later(self, delay: float, callback: Callable[..., Any], *args: Any) -> Timer:
        """Run ``callback(*args)`` on the loop after ``delay`` seconds; from any thread."""
        loop = self.loop
        if loop is None:
            raise RuntimeError("the server's event loop is not running")
        timer = Timer(loop, loop.time() + max(0.0, delay))
        if self.in_loop_thread():
            self._arm(timer, callback, args)
        else:
            loop.call_soon_threadsafe(self._arm, timer, callback, args)
        return timer

    def _arm(self, timer: Timer, callback: Callable[..., Any], args: Tuple[Any, ...]) -> None:
        if not timer.cancelled:
            assert self.loop is not None
            timer._handle = self.loop.call_at(timer.when, _fire, timer, callback, args)


def _fire(timer: Timer, callback: Callable[..., Any], args: Tuple[Any, ...]) -> None:
    if not timer.cancelled:
        timer.cancelled = True  # ran: a later cancel() is a no-op
        callback(*args)
