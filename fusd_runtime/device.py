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

Callbacks of one server never run concurrently (the runtime serializes them), so
device state needs no locks unless other threads of yours touch it too; use
``Server.call_soon_threadsafe`` for that.
"""

from __future__ import annotations

import errno
import os
import threading
from typing import TYPE_CHECKING, Any, Callable, Optional, Union

if TYPE_CHECKING:  # pragma: no cover
    from .session import Session

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
                 "fd", "poll_kh", "released", "opcode", "size", "ioctl_arg", "detached_from", "__dict__")

    def __init__(self, device: Device, fh: int, flags: int, session: Session) -> None:
        self.device = device
        self.fh = fh
        self.flags = flags
        self.pid = self.uid = self.gid = 0
        self.unique = 0
        self.nonblock = bool(flags & os.O_NONBLOCK)
        self.state: Any = None
        self.session = session
        self.fd = -1  # the /dev/fuse fd the current request came in on (replies go back there)
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

        ``on_interrupt`` is called (in the runtime, under its callback lock) if the
        caller is interrupted by a signal before the answer; the runtime has then
        already answered EINTR.
        """
        return self.session.defer(self, on_interrupt)

    def __repr__(self) -> str:
        return f"<Context fh={self.fh} dev={getattr(self.device, 'name', '?')} pid={self.pid}>"


class ReplyHandle:
    """A deferred answer to one system call; answer it once, from any thread.

    ``reply(data_or_count_or_mask)`` answers success, ``error(errno)`` an error.  Both
    return False if the call was already answered (e.g. interrupted by a signal:
    the runtime answered EINTR), True otherwise.
    """

    __slots__ = ("session", "ctx", "unique", "opcode", "fd", "size", "on_interrupt", "done", "_lock", "pid")

    def __init__(self, session: Session, ctx: Context, opcode: int, size: int,
                 on_interrupt: Optional[Callable[[ReplyHandle], None]]) -> None:
        self.session = session
        self.ctx = ctx
        self.unique = ctx.unique
        self.pid = ctx.pid
        self.opcode = opcode
        self.fd = ctx.fd
        self.size = size  # for READ: the most bytes the caller asked for
        self.on_interrupt = on_interrupt
        self.done = False
        self._lock = threading.Lock()

    def _claim(self) -> bool:
        with self._lock:
            if self.done:
                return False
            self.done = True
        self.session.forget_deferred(self)
        return True

    def reply(self, result: Any = b"") -> bool:
        """Answer success with what the callback would have returned."""
        if not self._claim():
            return False
        self.session.send_result(self.fd, self.unique, self.opcode, result, self.size, self.ctx)
        return True

    def error(self, err: Union[int, OSError]) -> bool:
        """Answer an error: an errno number (``errno.EIO``) or an OSError."""
        if not self._claim():
            return False
        code = err.errno if isinstance(err, OSError) else int(err)
        self.session.send_error(self.fd, self.unique, abs(code or errno.EIO))
        return True

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
    #: the name the device is registered under (set by the server)
    name: str = ""
    #: the session serving this device (set by the server; None while not served)
    session: Optional[Session] = None

    # --- callbacks -------------------------------------------------------------------------
    def open(self, ctx: Context) -> Any:
        """A process opened the device.  Raise OSError (e.g. EACCES, EBUSY) to refuse."""

    def release(self, ctx: Context) -> None:
        """The last reference to an open file went away (after close/exit). Cannot fail."""

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


#: Return this from a callback after storing ``ctx.defer()``'s handle elsewhere: no reply now.
DEFER = object()
