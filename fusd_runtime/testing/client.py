"""One client API over a real device file and a loopback one, so a test body runs on both.

``ServedDevice.open()`` returns a :class:`DeviceFile`: the system calls a test
makes (read, write, pread, pwrite, lseek, ioctl, poll, fsync, close, O_NONBLOCK)
with the same arguments, results and OSErrors whether the device is a file of a
real FUSE mount, a real CUSE node, or served on the loopback kernel.

- :class:`OsFile`: a real file descriptor: ``os``, ``fcntl``, ``select``.  An
  ioctl whose argument is a :class:`Buffer` passes the buffer's address
  (``ctypes``): ``fcntl.ioctl`` takes a C ``int`` and cannot carry a pointer.
- :class:`LoopFile`: a :class:`~fusd_runtime.loopback.LoopbackFile`.

``alloc()`` (on the served device) gives memory whose address can go into a
struct for an ioctl that follows pointers (CUSE): a ``ctypes`` buffer on a real
device, a loopback ``Region`` there; both have ``addr``, ``read()``, ``write()``.

``start_read(n)`` runs a blocking read in a helper thread (a "client process")
and returns a :class:`Call`; ``call.interrupt()`` is a signal to that thread:
on a real device SIGUSR1 (a no-op handler; the read is made with ``libc.read``
through ctypes, which returns EINTR instead of retrying as ``os.read`` does,
PEP 475), on the loopback a FUSE_INTERRUPT for its request.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import os
import select
import signal
import threading
from typing import Any, Callable, Optional, Union

from ..loopback import LoopbackFile, Region

_libc = ctypes.CDLL(None, use_errno=True)
_libc.read.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_size_t]
_libc.read.restype = ctypes.c_ssize_t
_libc.ioctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_void_p]
_libc.ioctl.restype = ctypes.c_int

BytesLike = Union[bytes, bytearray, memoryview]


class Buffer:
    """Memory of this process for an ioctl argument on a real device (a ctypes buffer)."""

    def __init__(self, size_or_data: Union[int, BytesLike]) -> None:
        data = bytes(size_or_data) if not isinstance(size_or_data, int) else bytes(size_or_data)
        self._buf = ctypes.create_string_buffer(data, len(data) or 1)
        self.size = len(data)

    @property
    def addr(self) -> int:
        """The address to put in a pointer field."""
        return ctypes.addressof(self._buf)

    def __len__(self) -> int:
        """The buffer's size."""
        return self.size

    def read(self) -> bytes:
        """The buffer's current contents."""
        return self._buf.raw[:self.size]

    def write(self, data: BytesLike, offset: int = 0) -> None:
        """Overwrite part of the buffer."""
        if offset < 0 or offset + len(data) > self.size:
            raise ValueError(f"{len(data)} bytes at offset {offset} do not fit a {self.size}-byte buffer")
        ctypes.memmove(self.addr + offset, bytes(data), len(data))


class Call:
    """A blocking system call running in a helper thread: ``result()``, ``interrupt()``."""

    def __init__(self, fn: Callable[[], Any], interrupt: Callable[[int], bool], what: str) -> None:
        self._fn = fn
        self._interrupt = interrupt
        self.what = what
        self._done = threading.Event()
        self._result: Any = None
        self._error: Optional[BaseException] = None
        self._started = threading.Event()
        self.thread = threading.Thread(target=self._run, name=f"fusd-test-call-{what}", daemon=True)
        self.thread.start()
        self._started.wait(10)

    def _run(self) -> None:
        self._started.set()
        try:
            self._result = self._fn()
        except BaseException as exc:  # handed to result()
            self._error = exc
        finally:
            self._done.set()

    @property
    def done(self) -> bool:
        """Whether the call returned (or failed)."""
        return self._done.is_set()

    def result(self, timeout: Optional[float] = 30.0) -> Any:
        """The call's return value; its OSError is raised; TimeoutError if it is still blocked."""
        if not self._done.wait(timeout):
            raise TimeoutError(f"{self.what} still blocked after {timeout} s")
        if self._error is not None:
            raise self._error
        return self._result

    def interrupt(self) -> bool:
        """Deliver a signal to the calling thread (see the module doc); False if it had returned."""
        if self.done or self.thread.ident is None:
            return False
        return self._interrupt(self.thread.ident)


class DeviceFile:
    """The client API both backends provide (see the module doc); a context manager."""

    name = ""

    def read(self, size: int) -> bytes:
        """``read(2)``: at most ``size`` bytes."""
        raise NotImplementedError

    def write(self, data: BytesLike) -> int:
        """``write(2)``: the bytes taken."""
        raise NotImplementedError

    def pread(self, size: int, offset: int) -> bytes:
        """``pread(2)``."""
        raise NotImplementedError

    def pwrite(self, data: BytesLike, offset: int) -> int:
        """``pwrite(2)``."""
        raise NotImplementedError

    def lseek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        """``lseek(2)``: the new position."""
        raise NotImplementedError

    def ioctl(self, cmd: int, arg: Any = 0, mutate_flag: bool = True) -> Any:
        """``fcntl.ioctl`` rules; a Buffer/Region argument passes its address."""
        raise NotImplementedError

    def poll(self, events: int = select.POLLIN | select.POLLOUT, timeout: Optional[float] = None) -> int:
        """``poll(2)`` on this file: the revents (0 after ``timeout`` seconds; None waits)."""
        raise NotImplementedError

    def fsync(self) -> None:
        """``fsync(2)``."""
        raise NotImplementedError

    def set_blocking(self, blocking: bool) -> None:
        """Clear or set O_NONBLOCK (``fcntl(F_SETFL)``)."""
        raise NotImplementedError

    def close(self) -> None:
        """``close(2)``; EBADF if already closed."""
        raise NotImplementedError

    def start_read(self, size: int) -> Call:
        """A blocking read in a helper thread: a :class:`Call` to interrupt or wait for."""
        raise NotImplementedError

    @property
    def closed(self) -> bool:
        """Whether ``close()`` was called."""
        raise NotImplementedError

    def __enter__(self) -> DeviceFile:
        return self

    def __exit__(self, *exc: object) -> None:
        if not self.closed:
            self.close()


class OsFile(DeviceFile):
    """A real file descriptor on the device file."""

    def __init__(self, path: str, flags: int) -> None:
        self.name = path
        self.fd = os.open(path, flags | os.O_CLOEXEC)
        self._closed = False

    @property
    def closed(self) -> bool:
        return self._closed

    def fileno(self) -> int:
        """The descriptor (for select, or for a client that wants it)."""
        return self.fd

    def read(self, size: int) -> bytes:
        return os.read(self.fd, size)

    def write(self, data: BytesLike) -> int:
        return os.write(self.fd, data)

    def pread(self, size: int, offset: int) -> bytes:
        return os.pread(self.fd, size, offset)

    def pwrite(self, data: BytesLike, offset: int) -> int:
        return os.pwrite(self.fd, data, offset)

    def lseek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        return os.lseek(self.fd, offset, whence)

    def ioctl(self, cmd: int, arg: Any = 0, mutate_flag: bool = True) -> Any:
        if isinstance(arg, Buffer) or (isinstance(arg, int) and not -(1 << 31) <= arg < (1 << 31)):
            addr = arg.addr if isinstance(arg, Buffer) else arg
            ret = _libc.ioctl(self.fd, cmd & 0xFFFFFFFF, ctypes.c_void_p(addr))
            if ret < 0:
                err = ctypes.get_errno()
                raise OSError(err, os.strerror(err))
            return ret
        return fcntl.ioctl(self.fd, cmd, arg, mutate_flag) if not isinstance(arg, int) else \
            fcntl.ioctl(self.fd, cmd, arg)

    def poll(self, events: int = select.POLLIN | select.POLLOUT, timeout: Optional[float] = None) -> int:
        p = select.poll()
        p.register(self.fd, events)
        got = p.poll(None if timeout is None else max(0, int(timeout * 1000)))
        return got[0][1] if got else 0

    def fsync(self) -> None:
        os.fsync(self.fd)

    def set_blocking(self, blocking: bool) -> None:
        os.set_blocking(self.fd, blocking)

    def close(self) -> None:
        if self._closed:
            raise OSError(errno.EBADF, "file is already closed")
        self._closed = True
        os.close(self.fd)

    def start_read(self, size: int) -> Call:
        _install_sigusr1()
        buf = ctypes.create_string_buffer(max(size, 1))

        def read() -> bytes:
            n = _libc.read(self.fd, buf, size)
            if n < 0:
                err = ctypes.get_errno()
                raise OSError(err, os.strerror(err))
            return buf.raw[:n]

        def interrupt(ident: int) -> bool:
            signal.pthread_kill(ident, signal.SIGUSR1)
            return True

        return Call(read, interrupt, f"read({size})")

    def __repr__(self) -> str:
        return f"<OsFile {self.name} fd={self.fd}{' closed' if self._closed else ''}>"


class LoopFile(DeviceFile):
    """A file of the loopback kernel, with the same API as :class:`OsFile`."""

    def __init__(self, file: LoopbackFile) -> None:
        self.file = file
        self.name = file.name

    @property
    def closed(self) -> bool:
        return self.file.closed

    def read(self, size: int) -> bytes:
        return self.file.read(size)

    def write(self, data: BytesLike) -> int:
        return self.file.write(data)

    def pread(self, size: int, offset: int) -> bytes:
        return self.file.pread(size, offset)

    def pwrite(self, data: BytesLike, offset: int) -> int:
        return self.file.pwrite(data, offset)

    def lseek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        return self.file.lseek(offset, whence)

    def ioctl(self, cmd: int, arg: Any = 0, mutate_flag: bool = True) -> Any:
        if isinstance(arg, Region):
            return self.file.ioctl(cmd, arg)
        return self.file.ioctl(cmd, arg, mutate_flag)

    def poll(self, events: int = select.POLLIN | select.POLLOUT, timeout: Optional[float] = None) -> int:
        return self.file.poll(events, timeout)

    def fsync(self) -> None:
        self.file.fsync()

    def set_blocking(self, blocking: bool) -> None:
        self.file.set_blocking(blocking)

    def close(self) -> None:
        self.file.close()

    def start_read(self, size: int) -> Call:
        return Call(lambda: self.file.read(size), self.file.kernel.interrupt_thread, f"read({size})")

    def __repr__(self) -> str:
        return f"<LoopFile {self.file!r}>"


_sigusr1_installed = False


def _install_sigusr1() -> None:
    """A no-op SIGUSR1 handler (main thread only), so the signal interrupts instead of killing."""
    global _sigusr1_installed
    if _sigusr1_installed:
        return
    if threading.current_thread() is not threading.main_thread():
        raise RuntimeError("start_read() on a real device must first be called from the main thread "
                           "(it installs the SIGUSR1 handler that interrupts the call)")
    if signal.getsignal(signal.SIGUSR1) in (signal.SIG_DFL, None):
        signal.signal(signal.SIGUSR1, lambda *_: None)
    signal.siginterrupt(signal.SIGUSR1, True)
    _sigusr1_installed = True
