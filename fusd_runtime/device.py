"""The device author's API: a Device class, the per-open Context and deferred replies.

A device is an object with callbacks; every system call a program makes on the
device file arrives in one of them::

    from fusd_runtime import Device

    class Hello(Device):
        def open(self, ctx):
            ctx.state = b"hello\\n"          # what this open file has left to read

        def read(self, ctx, size, offset):
            data, ctx.state = ctx.state[:size], ctx.state[size:]
            return data                      # b"": end of file (cat stops)

A device is a stream, like a character device: ``offset`` is always 0 and
``lseek`` fails, so a read that must end keeps its position per open file
(``ctx.state``).  ``seekable = True`` passes file offsets through instead
(``pread``/``pwrite`` work, ``read`` gets the position).

A callback answers by returning (data, a byte count, a poll mask, ...), by raising
``OSError(errno, ...)`` (the caller gets that errno), or by **deferring**:
``return ctx.defer()`` hands back a :class:`ReplyHandle` that can be answered
later from any thread (FUSD's ``-FUSD_NOREPLY`` + ``fusd_return``).  A blocking
read is a deferred reply.  Any other exception answers EIO, is logged once with
its traceback, and the server keeps serving.

Callbacks of one *device* never run concurrently, but different devices, and the
runtime's own filesystem requests, never wait for each other: a callback that
sleeps delays only its own device.  Device state therefore needs no locks unless
threads of yours touch it too — then use ``self.call_soon(...)`` from those threads,
which runs a function under the same rule.  ``concurrent = True`` opts out (the
device then locks its own state).  ``async def`` callbacks work too: see ``aio.py``;
between their ``await``s they count as running.
"""

from __future__ import annotations

import asyncio
import errno
import os
import threading
from typing import TYPE_CHECKING, Any, Callable, Optional, Union

if TYPE_CHECKING:  # pragma: no cover
    from .loop import Timer
    from .session import Session
    from .strand import Strand

#: poll(2) event bits, for ``Device.poll`` results.
POLLIN, POLLPRI, POLLOUT, POLLERR, POLLHUP, POLLNVAL = 0x001, 0x002, 0x004, 0x008, 0x010, 0x020
#: poll(2) normal/priority band bits (``POLLRDNORM``/``POLLWRNORM`` accompany POLLIN/POLLOUT).
POLLRDNORM, POLLRDBAND, POLLWRNORM, POLLWRBAND = 0x040, 0x080, 0x100, 0x200
#: What a device that does not implement poll reports (the kernel's DEFAULT_POLLMASK).
DEFAULT_POLLMASK = POLLIN | POLLOUT | POLLRDNORM | POLLWRNORM


class Context:
    """One open file of a device, as seen by its callbacks.

    The same object is passed to every callback for that open file, so the device
    can keep per-open state on it (``ctx.state``, or any attribute it likes).
    Per-call fields (``pid``, ``uid``, ``gid``, ``nonblock``, ``unique``) are those of
    the system call being served right now.

    Attributes:
        device: the Device this file was opened on.
        fh: the runtime's file handle number.
        flags: the ``open(2)`` flags (``os.O_RDONLY``, ``os.O_NONBLOCK``, ...).
        pid, uid, gid: the calling process and its credentials.
        nonblock: True when this call must not block (O_NONBLOCK): answer EAGAIN instead.
        state: free for the device (None until set).
    """

    __slots__ = ("device", "fh", "flags", "pid", "uid", "gid", "unique", "nonblock", "state", "session",
                 "fd", "poll_kh", "released", "opcode", "size", "ioctl_arg", "detached_from", "strand", "__dict__")

    def __init__(self, device: Device, fh: int, flags: int, session: Session, strand: Strand) -> None:
        self.device = device
        self.strand = strand  # the device's right to run (see strand.py)
        self.fh = fh
        self.flags = flags
        self.pid = self.uid = self.gid = 0
        self.unique = 0
        self.nonblock = bool(flags & os.O_NONBLOCK)
        self.state: Any = None
        self.session = session
        self.fd: Any = -1  # the channel the current request came on (a /dev/fuse fd): replies go back there
        self.poll_kh: Optional[int] = None  # the kernel's poll handle once it asked to be notified
        self.released = False
        self.opcode = 0  # the request being served (for defer)
        self.size = 0  # its size argument (READ: most bytes wanted; IOCTL: out_size)
        self.ioctl_arg = 0  # the caller's ioctl argument (a pointer, for unrestricted ioctls)
        self.detached_from: Optional[Device] = None  # the device, once it was removed while this file was open

    if TYPE_CHECKING:  # pragma: no cover
        # A device may keep any attribute it likes on the context (it has a __dict__);
        # tell type checkers so, without slowing down attribute access at run time.
        def __getattr__(self, name: str) -> Any: ...

        def __setattr__(self, name: str, value: Any) -> None: ...

    def defer(self, on_interrupt: Optional[Callable[[ReplyHandle], None]] = None) -> ReplyHandle:
        """Answer this call later: keep the returned handle, return it from the callback.

        ``on_interrupt(handle)`` is called (under the device's strand, like a callback)
        if the caller is interrupted by a signal before the answer.  It may answer the
        call itself (``handle.reply(partial_count)``); if it does not, the runtime
        answers EINTR after it returns.
        """
        return self.session.defer(self, on_interrupt)

    def __repr__(self) -> str:
        return f"<Context fh={self.fh} dev={getattr(self.device, 'name', '?')} pid={self.pid}>"


_CLAIM = threading.Lock()  # one for all handles: claiming is a flag flip, and handles are many


class ReplyHandle:
    """A deferred answer to one system call; answer it once, from any thread.

    ``reply(data_or_count_or_mask)`` answers success, ``error(errno)`` an error.  Both
    return False if the call was already answered (e.g. interrupted by a signal:
    the runtime answered EINTR), True otherwise.  The handle remembers the call's
    own fields (``pid``, ``uid``, ``gid``, ``nonblock``, ``size``): the context's
    change with every later call on the same open file.
    """

    __slots__ = ("session", "ctx", "unique", "opcode", "chan", "size", "pid", "uid", "gid", "nonblock",
                 "on_interrupt", "done", "interrupted", "task", "cancel_errno", "fatal", "is_async", "__weakref__")

    def __init__(self, session: Session, ctx: Context, opcode: int, size: int,
                 on_interrupt: Optional[Callable[[ReplyHandle], None]]) -> None:
        self.session = session
        self.ctx = ctx
        self.unique = ctx.unique
        self.pid, self.uid, self.gid, self.nonblock = ctx.pid, ctx.uid, ctx.gid, ctx.nonblock
        self.opcode = opcode
        self.chan = ctx.fd
        self.size = size  # for READ: the most bytes the caller asked for; for IOCTL: out_size
        self.on_interrupt = on_interrupt
        self.done = False
        self.interrupted = False
        #: the asyncio Task of an ``async def`` callback that had to wait (None otherwise)
        self.task: Optional[asyncio.Task] = None
        self.cancel_errno = errno.EINTR  # what a cancelled task answers
        self.fatal: Optional[BaseException] = None  # SystemExit/KeyboardInterrupt raised by an async callback
        self.is_async = False  # an ``async def`` call (its task answers; see aio.py)

    @property
    def fd(self) -> Any:
        """The channel the request came on (kept for compatibility: ``chan``)."""
        return self.chan

    def _claim(self) -> bool:
        with _CLAIM:
            if self.done:
                return False
            self.done = True
        self.session.forget_deferred(self)
        return True

    def reply(self, result: Any = b"") -> bool:
        """Answer success with what the callback would have returned."""
        if not self._claim():
            return False
        self.session.send_result(self.chan, self.unique, self.opcode, result, self.size, self.ctx)
        return True

    def error(self, err: Union[int, OSError]) -> bool:
        """Answer an error: an errno number (``errno.EIO``) or an OSError."""
        if not self._claim():
            return False
        code = err.errno if isinstance(err, OSError) else int(err)
        if self.opcode == 14:  # a refused open: the kernel will never RELEASE it
            self.session.open_failed(self.ctx)
        self.session.answer_error(self.chan, self.unique, abs(code or errno.EIO))
        return True

    def restore(self) -> None:
        """Put this call's own fields back on its context (before its code runs again)."""
        ctx = self.ctx
        ctx.fd, ctx.unique, ctx.pid, ctx.uid, ctx.gid = self.chan, self.unique, self.pid, self.uid, self.gid
        ctx.nonblock, ctx.opcode, ctx.size = self.nonblock, self.opcode, self.size

    def __repr__(self) -> str:
        return f"<ReplyHandle unique={self.unique} opcode={self.opcode} done={self.done}>"


class Device:
    """Base class of a device: override the callbacks you need.

    Unimplemented callbacks behave like a simple character device: ``open``,
    ``release``, ``flush`` and ``fsync`` succeed, ``read``/``write`` answer EINVAL,
    ``ioctl`` ENOTTY, and ``poll`` reports always readable and writable.

    Class attributes (or constructor arguments to ``Server.add``) set the device
    file's ``mode`` (permission bits), ``uid`` and ``gid``; ``seekable`` = True
    passes file offsets through (pread/pwrite work) instead of a stream.
    """

    #: permission bits of the device file
    mode: int = 0o666
    uid: Optional[int] = None  # None: the server's uid
    gid: Optional[int] = None
    #: False: a stream like a char device (offsets are 0, no lseek); True: offsets pass through
    seekable: bool = False
    #: True: ``write`` gets a memoryview of the request buffer instead of a bytes copy.  It
    #: saves a copy per write (64 KiB writes), but the view is released when ``write``
    #: returns (the buffer is reused), so copy what you keep.  Default False: safe bytes.
    write_view: bool = False
    #: True: callbacks of this device may run at the same time (several reader threads);
    #: the device then protects its own state.  Default False: one at a time (see strand.py).
    concurrent: bool = False
    #: True: the device's code uses asyncio objects and must run under the event loop (the
    #: default, None, decides by itself: True when a callback is ``async def``; see aio.py)
    uses_asyncio: Optional[bool] = None
    #: the size a seekable device reports (``st_size``; mmap and io_uring/libaio reads use it).
    #: None: a stream reports the largest size (the kernel must never cut an asynchronous
    #: read short at it), a seekable device 0.
    size: Optional[int] = None
    #: the name the device is registered under (set by the server)
    name: str = ""
    #: the session serving this device (set by the server; None while not served)
    session: Optional[Session] = None

    # --- callbacks -------------------------------------------------------------------------
    def open(self, ctx: Context) -> Any:
        """A process opened the device.  Raise OSError (e.g. EACCES, EBUSY) to refuse."""

    def release(self, ctx: Context) -> Any:
        """The last reference to an open file went away (after close/exit).  Cannot fail.

        On CUSE the last ``close(2)`` waits for this answer: a device that must drain
        (a sound card) may ``return ctx.defer()`` and answer when done.
        """

    def flush(self, ctx: Context) -> Any:
        """``close(2)`` of one file descriptor of this open file."""

    def fsync(self, ctx: Context, datasync: bool) -> Any:
        """``fsync(2)``/``fdatasync(2)``."""

    def read(self, ctx: Context, size: int, offset: int) -> Any:
        """Return up to ``size`` bytes (b"" is end of file), or ``ctx.defer()`` to block."""
        raise OSError(errno.EINVAL, "device does not read")

    def write(self, ctx: Context, data: Any, offset: int) -> Any:
        """Consume ``data``; return how many bytes were taken (None: all), or defer."""
        raise OSError(errno.EINVAL, "device does not write")

    def ioctl(self, ctx: Context, cmd: int, arg: bytes, out_size: int) -> Any:
        """An ioctl.  ``arg`` holds the ``_IOC_SIZE`` bytes copied in (``_IOW``/``_IOWR``).

        Return an int result, bytes to copy out (``_IOR``/``_IOWR``; at most
        ``out_size``), or a ``(result, bytes)`` pair.  Unknown commands: raise
        ``OSError(errno.ENOTTY)`` (the default).
        """
        raise OSError(errno.ENOTTY, "unknown ioctl")

    def poll(self, ctx: Context, events: int) -> int:
        """Return the current readiness mask (POLLIN, POLLOUT, POLLPRI, POLLHUP, ...).

        When readiness changes later, call :meth:`notify_poll` and waiting
        ``poll``/``select``/``epoll`` callers wake up and ask again.
        """
        return DEFAULT_POLLMASK

    # --- services for the device ---------------------------------------------------------
    def notify_poll(self) -> None:
        """Readiness changed: wake every poll/select/epoll waiting on this device.  Any thread."""
        session = self.session
        if session is not None:
            session.notify_poll(self)

    @property
    def open_count(self) -> int:
        """How many open files of this device are alive right now."""
        session = self.session
        return session.open_count(self) if session is not None else 0

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        """The server's asyncio event loop (to start tasks of the device's own: a 1 Hz sensor)."""
        return self._served().loop.loop  # type: ignore[return-value]

    def call_soon(self, callback: Callable[..., Any], *args: Any) -> None:
        """Run ``callback(*args)`` as this device's code (never alongside its callbacks); any thread.

        For threads of your own that touch device state.  A coroutine function's
        result is run like an ``async def`` callback's.
        """
        session = self._served()
        session.loop.call_soon(session.run_device_code, self, callback, args)

    def call_later(self, delay: float, callback: Callable[..., Any], *args: Any) -> Timer:
        """Run ``callback(*args)`` as this device's code after ``delay`` seconds; ``.cancel()`` the result to undo."""
        session = self._served()
        return session.loop.call_later(delay, session.run_device_code, self, callback, args)

    def _served(self) -> Any:
        session = self.session
        if session is None or session.loop is None:
            raise RuntimeError(f"device {self.name or type(self).__name__!r} is not being served "
                               "(add it to a started server first)")
        return session


#: Return this from a callback after storing ``ctx.defer()``'s handle elsewhere: no reply now.
DEFER = object()
