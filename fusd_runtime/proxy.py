"""A pass-through device: every call forwarded to a real device file (``fusd record --proxy``).

    server.add(ProxyDevice("/dev/ttyUSB0"), "ttyUSB0")     # serve it with Server(record=...)

Each open of the proxy opens the real device (same access mode and flags, plus
O_NONBLOCK so no call can block the runtime's reader thread) and every
read/write/ioctl/poll goes to that descriptor; the server's recorder captures
the session, which ``fusd emulate`` answers new clients from later.

- **Blocking calls** are deferred: a read (or write) that would block waits in
  the proxy's watcher thread (``selectors``) until the real device is ready,
  then answers.  An interrupted caller's pending call is dropped; O_NONBLOCK
  callers get EAGAIN as the real device gave it.
- **poll** asks the real device (``poll`` with timeout 0) and, when the kernel
  will wait, watches the real fd for the events asked: readiness there becomes
  a ``notify_poll`` here, and the kernel asks again.
- **ioctls**: a number that encodes its size is forwarded with those bytes
  (``fcntl.ioctl`` on a buffer of ``max(in, out)`` bytes) on both transports.  A
  number without size (tty style) needs its argument's size: ``TTY_IOCTLS``
  knows the common tty and FIONREAD ones, ``sizes=`` adds others; on CUSE the
  proxy asks the kernel for those bytes itself (FUSE_IOCTL_RETRY, libfuse
  style).  Numbers whose argument is a value (TCFLSH, TCSBRK) pass
  ``ctx.ioctl_arg`` as is, and so does any other unsized number whose argument
  is below ``MMAP_MIN_ADDR`` (no user pointer can be: ``_IO`` numbers like
  RTC_UIE_ON).  Anything else (pointers inside arguments, unknown unsized
  numbers with an address) is ENOTTY: forwarding a caller's address would hand
  the real driver memory of the wrong process.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import select
import selectors
import termios
import threading
from typing import Any, Dict, List, Optional, Tuple

from .device import Context, Device, ReplyHandle
from .ioctl import IOC_READ, IoctlRetry, ioc_dir, ioc_size

log = logging.getLogger("fusd.proxy")

#: ``struct termios`` as the kernel's TCGETS copies it (c_iflag..c_line + NCCS=19 c_cc): 36 bytes.
KERNEL_TERMIOS = 36
#: tty-style numbers (no size encoded): (bytes copied in, bytes copied out); None: the argument is a value.
TTY_IOCTLS: Dict[int, Optional[Tuple[int, int]]] = {
    termios.TCGETS: (0, KERNEL_TERMIOS), termios.TCSETS: (KERNEL_TERMIOS, 0), termios.TCSETSW: (KERNEL_TERMIOS, 0),
    termios.TCSETSF: (KERNEL_TERMIOS, 0), termios.TIOCMGET: (0, 4), termios.TIOCMSET: (4, 0),
    termios.TIOCMBIS: (4, 0), termios.TIOCMBIC: (4, 0), termios.FIONREAD: (0, 4), termios.TIOCOUTQ: (0, 4),
    termios.TIOCGWINSZ: (0, 8), termios.TIOCSWINSZ: (8, 0), termios.TIOCEXCL: (0, 0), termios.TIOCNXCL: (0, 0),
    0x5427: (0, 0), 0x5428: (0, 0), termios.TCFLSH: None, termios.TCSBRK: None,  # TIOCSBRK, TIOCCBRK
    termios.TCSBRKP: None, termios.TCXONC: None,
}
#: the lowest address a process can map (vm.mmap_min_addr's default): a smaller argument is no pointer
MMAP_MIN_ADDR = 65536
_POLL_BITS = select.POLLIN | select.POLLOUT | select.POLLPRI | select.POLLERR | select.POLLHUP


class _Open:
    """One open of the proxy: the real fd and the calls waiting for it."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.readers: List[Tuple[ReplyHandle, int]] = []
        self.writers: List[Tuple[ReplyHandle, bytes]] = []
        self.poll_events = 0


class ProxyDevice(Device):
    """Forwards every call to the device file ``target`` (see the module doc).

    Args:
        target: the real device (``/dev/ttyUSB0``, ``/dev/rtc0``, another fusd device...).
        sizes: more unsized ioctl numbers: ``{cmd: (in_bytes, out_bytes)}`` or ``{cmd: None}`` (a value).
    """

    def __init__(self, target: str, *, sizes: Optional[Dict[int, Optional[Tuple[int, int]]]] = None) -> None:
        self.target = target
        self.sizes: Dict[int, Optional[Tuple[int, int]]] = {**TTY_IOCTLS, **(sizes or {})}
        self._lock = threading.Lock()
        self._selector = selectors.DefaultSelector()
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._selector.register(self._wake_r, selectors.EVENT_READ, None)
        self._opens: Dict[int, _Open] = {}
        self._stopping = False
        self._thread = threading.Thread(target=self._watch, name="fusd-proxy-watcher", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------ open / release
    def open(self, ctx: Context) -> None:
        flags = ctx.flags & (os.O_ACCMODE | os.O_APPEND | os.O_SYNC | os.O_DSYNC)
        fd = os.open(self.target, flags | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)  # its OSError is the answer
        ctx.state = _Open(fd)
        with self._lock:
            self._opens[fd] = ctx.state

    def release(self, ctx: Context) -> None:
        st: _Open = ctx.state
        with self._lock:
            self._opens.pop(st.fd, None)
            waiting = [h for h, _ in st.readers] + [h for h, _ in st.writers]
            st.readers.clear()
            st.writers.clear()
        for h in waiting:
            h.error(errno.EBADF)
        self._update(st)
        try:
            os.close(st.fd)
        except OSError:
            pass

    # ------------------------------------------------------------------ read / write
    def read(self, ctx: Context, size: int, offset: int) -> Any:
        st: _Open = ctx.state
        try:
            return os.read(st.fd, size)
        except BlockingIOError:
            if ctx.nonblock:
                raise
        handle = ctx.defer(on_interrupt=lambda h: self._drop(st, h))
        with self._lock:
            st.readers.append((handle, size))
        self._update(st)
        return handle

    def write(self, ctx: Context, data: bytes, offset: int) -> Any:
        st: _Open = ctx.state
        try:
            return os.write(st.fd, data)
        except BlockingIOError:
            if ctx.nonblock:
                raise
        handle = ctx.defer(on_interrupt=lambda h: self._drop(st, h))
        with self._lock:
            st.writers.append((handle, bytes(data)))
        self._update(st)
        return handle

    def _drop(self, st: _Open, handle: ReplyHandle) -> None:
        with self._lock:
            st.readers = [(h, n) for h, n in st.readers if h is not handle]
            st.writers = [(h, d) for h, d in st.writers if h is not handle]
        self._update(st)

    # ------------------------------------------------------------------ poll
    def poll(self, ctx: Context, events: int) -> int:
        st: _Open = ctx.state
        p = select.poll()
        p.register(st.fd, events & _POLL_BITS)
        got = p.poll(0)
        mask = got[0][1] if got else 0
        if not mask & events and ctx.poll_kh is not None:
            with self._lock:
                st.poll_events |= events & (select.POLLIN | select.POLLOUT | select.POLLPRI)
            self._update(st)
        return mask

    # ------------------------------------------------------------------ ioctl
    def ioctl(self, ctx: Context, cmd: int, arg: bytes, out_size: int) -> Any:
        st: _Open = ctx.state
        size, d = ioc_size(cmd), ioc_dir(cmd)
        if size:
            buf = bytearray(arg) + bytes(max(size, out_size) - len(arg))
            result = fcntl.ioctl(st.fd, cmd, buf, True)
            return (result, bytes(buf[:out_size])) if d & IOC_READ else result
        if cmd & 0xFFFFFFFF not in self.sizes:
            if 0 <= ctx.ioctl_arg < MMAP_MIN_ADDR:  # cannot be a user pointer: a value (_IO numbers: RTC_UIE_ON)
                return fcntl.ioctl(st.fd, cmd, ctx.ioctl_arg)
            raise OSError(errno.ENOTTY, f"ioctl {cmd:#x}: no size known to forward it (ProxyDevice(sizes=...))")
        known = self.sizes[cmd & 0xFFFFFFFF]
        if known is None:  # the argument is a value
            return fcntl.ioctl(st.fd, cmd, ctx.ioctl_arg & 0x7FFFFFFF)
        n_in, n_out = known
        if n_in or n_out:
            if getattr(ctx.session, "kind", "") != "cuse":
                raise OSError(errno.ENOTTY, f"ioctl {cmd:#x}: its argument is a pointer the FUSE kernel does not "
                                            "copy (serve the proxy over CUSE)")
            if len(arg) < n_in or out_size < n_out:
                # CUSE: ask the kernel for the argument's bytes first (the libfuse way)
                return IoctlRetry([(ctx.ioctl_arg, n_in)] if n_in else [], [(ctx.ioctl_arg, n_out)] if n_out else [])
        buf = bytearray(arg[:n_in]) + bytes(max(n_in, n_out) - min(len(arg), n_in))
        result = fcntl.ioctl(st.fd, cmd, buf, True) if buf else fcntl.ioctl(st.fd, cmd, 0)
        return (result, bytes(buf[:n_out])) if n_out else result

    # ------------------------------------------------------------------ the watcher
    def _update(self, st: _Open) -> None:
        """Watch ``st.fd`` for what its waiting calls need (or stop watching it)."""
        with self._lock:
            want = 0
            if st.readers or st.poll_events & (select.POLLIN | select.POLLPRI):
                want |= selectors.EVENT_READ
            if st.writers or st.poll_events & select.POLLOUT:
                want |= selectors.EVENT_WRITE
            try:
                if want:
                    try:
                        self._selector.modify(st.fd, want, st)
                    except KeyError:
                        self._selector.register(st.fd, want, st)
                else:
                    self._selector.unregister(st.fd)
            except (KeyError, ValueError, OSError):
                pass
        try:
            os.write(self._wake_w, b"\0")
        except OSError:
            pass

    def _watch(self) -> None:
        while not self._stopping:
            try:
                events = self._selector.select(1.0)
            except (OSError, ValueError):
                return
            for key, mask in events:
                if key.data is None:
                    try:
                        while os.read(self._wake_r, 512):
                            pass
                    except OSError:
                        pass
                    continue
                self._ready(key.data, mask)

    def _ready(self, st: _Open, mask: int) -> None:
        answers: List[Tuple[ReplyHandle, Any, bool]] = []
        notify = False
        with self._lock:
            if mask & selectors.EVENT_READ:
                while st.readers:
                    handle, size = st.readers[0]
                    data: Any
                    try:
                        data = os.read(st.fd, size)
                    except BlockingIOError:
                        break
                    except OSError as exc:
                        data = exc
                    st.readers.pop(0)
                    answers.append((handle, data, isinstance(data, OSError)))
                if st.poll_events & (select.POLLIN | select.POLLPRI):
                    notify = True
            if mask & selectors.EVENT_WRITE:
                while st.writers:
                    handle, data = st.writers[0]
                    try:
                        n: Any = os.write(st.fd, data)
                    except BlockingIOError:
                        break
                    except OSError as exc:
                        n = exc
                    st.writers.pop(0)
                    answers.append((handle, n, isinstance(n, OSError)))
                if st.poll_events & select.POLLOUT:
                    notify = True
            if notify:
                st.poll_events = 0  # the kernel polls again after the wakeup, and says what it waits for
        for handle, value, failed in answers:
            if failed:
                handle.error(value)
            else:
                handle.reply(value)
        if notify:
            self.notify_poll()
        self._update(st)

    def stop(self) -> None:
        """End the watcher thread (the server's stop closes the files)."""
        self._stopping = True
        try:
            os.write(self._wake_w, b"\0")
        except OSError:
            pass
        self._thread.join(5)
