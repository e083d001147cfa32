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
  knows the loop thread is asleep, and may for that moment use the loop as the
  loop thread would — which is how an ``async def`` callback that does not need to
  wait is answered in the reader, with no hop to the loop (``aio.py``).
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

    def __init__(self, park: threading.Lock) -> None:
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


class EventLoop:
    """The server's loop and the thread-safe ways into it."""

    def __init__(self) -> None:
        self.loop: Optional[asyncio.AbstractEventLoop] = None
        #: held by the owned loop's thread except while it waits (None: a borrowed loop)
        self.park: Optional[threading.Lock] = None
        self.thread_id: Optional[int] = None
        self._thread: Optional[threading.Thread] = None
        self._running = threading.Event()

    # ------------------------------------------------------------------ having a loop
    def new_owned(self) -> asyncio.AbstractEventLoop:
        """Make our own parking loop (not running yet)."""
        park = threading.Lock()
        self.loop = asyncio.SelectorEventLoop(ParkingSelector(park))
        self.park = park
        return self.loop

    def run_owned(self, main: Optional[Any] = None) -> Any:
        """Run the owned loop in this thread: until ``main`` (a coroutine) finishes, or until stopped."""
        loop, park = self.loop, self.park
        assert loop is not None and park is not None
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
        """Borrow the caller's running loop (we are in its thread)."""
        self.loop, self.park = loop, None
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
        if thread is not None and thread is not threading.current_thread():
            thread.join(10)
        if thread is not None and not thread.is_alive() and not loop.is_closed():
            loop.close()

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
