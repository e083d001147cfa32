"""A process's open file on the loopback kernel: the system calls of ``fs/fuse/file.c`` and ``cuse.c``.

What each call sends, and why (the kernel source it follows):

- ``open`` (``opening.py``) — FUSE: LOOKUP of each path component from the root, the
  permission check ``default_permissions`` makes (owner/group/other bits of the
  attributes; root passes), EISDIR for a directory, then OPEN with ``f_flags``
  minus O_CREAT/O_EXCL/O_NOCTTY, and minus O_TRUNC unless FUSE_ATOMIC_O_TRUNC
  was granted (``fuse_send_open``; without it O_TRUNC is a SETATTR first).  CUSE:
  OPEN on nodeid 0 (``cuse_open``), the node's mode checked the same way.  An
  ENOSYS answer means "no open needed" (``no_open``: fh 0, and no RELEASE).
- ``read``/``write`` — ``fuse_direct_io``: chunks of at most ``max_read`` /
  ``max_write`` and ``max_pages`` pages, ``read_in.flags`` = the file's current
  ``f_flags`` (so O_NONBLOCK reaches the device), a short answer ends the loop,
  an answer longer than asked is EIO; an error after some bytes returns those
  bytes.  The offset is the file position on a seekable FUSE file, 0 on a
  stream (FOPEN_STREAM) and always 0 on CUSE (``cuse_read_iter``); ``pread`` on a
  stream or non-seekable file is ESPIPE.  Reading a write-only file (or the
  reverse) is EBADF, before any request.  Without FOPEN_DIRECT_IO the kernel
  reads through the page cache, bounded by the file size (0 for device files):
  such a read returns end of file without asking.
- ``ioctl`` — ``ioctl.do_ioctl``; the argument conventions of ``fcntl.ioctl``.
- ``poll`` — ``fuse_file_poll``: POLL with this file's ``kh``, the events asked
  and FUSE_POLL_SCHEDULE_NOTIFY only when the caller will wait (timeout != 0),
  which registers the file for NOTIFY_POLL; a wakeup makes the kernel poll
  again; ENOSYS means DEFAULT_POLLMASK from then on (``no_poll``), another error
  POLLERR.  POLLERR/POLLHUP/POLLNVAL are reported whether asked for or not.
- ``fsync`` — FUSE: FSYNC (ENOSYS: ``no_fsync``, success); CUSE has no fsync
  (EINVAL from the VFS).
- ``close`` — FUSE: FLUSH unless FOPEN_NOFLUSH or ``no_flush`` (ENOSYS), its
  error is close's; then, for the last reference, RELEASE, which the kernel
  sends in the background on FUSE and waits for on CUSE (``fuse_sync_release``).
  CUSE has no FLUSH.  ``dup()`` makes another reference to the same open file.
"""

from __future__ import annotations

import errno
import os
import platform
import select
import threading
import time
from typing import TYPE_CHECKING, Any, List, Optional, Tuple, Union

from fusd_wire import FAST
from fusd_wire import constants as C

from . import ioctl as _ioctl
from .memory import Region

if TYPE_CHECKING:  # pragma: no cover
    from .kernel import Credentials, LoopbackKernel

OP = C.fuse_opcode
FO = C.FopenFlags
_OPEN_OUT = FAST.fuse_open_out.struct
_WRITE_OUT = FAST.fuse_write_out.struct
_POLL_OUT = FAST.fuse_poll_out.struct
#: what poll(2) reports without being asked (``poll_mask`` in fs/select.c adds these)
ALWAYS = select.POLLERR | select.POLLHUP | select.POLLNVAL
DEFAULT_POLLMASK = select.POLLIN | select.POLLOUT | select.POLLRDNORM | select.POLLWRNORM
_ACCMODE = os.O_ACCMODE
#: The kernel's O_LARGEFILE (``open(2)`` adds it on 64-bit, force_o_largefile); glibc's os.O_LARGEFILE is 0.
O_LARGEFILE = {"aarch64": 0o400000, "arm64": 0o400000}.get(platform.machine(), 0o100000)


def lock_owner(creds: Credentials) -> int:
    """``fuse_lock_owner_id(fc, current->files)``: one scrambled id per process (here: per pid)."""
    return (creds.pid * 0x9E3779B97F4A7C15 + 0x7F4A7C15) & 0xFFFFFFFFFFFFFFFF


class _OpenFile:
    """The kernel's ``struct fuse_file``: shared by every reference (``dup``) to one open."""

    __slots__ = ("fh", "nodeid", "open_flags", "kh", "refs", "pos", "released", "lock")

    def __init__(self, fh: int, nodeid: int, open_flags: int, kh: int) -> None:
        self.fh, self.nodeid, self.open_flags, self.kh = fh, nodeid, open_flags, kh
        self.refs = 1
        self.pos = 0
        self.released = False
        self.lock = threading.Lock()


class LoopbackFile:
    """One file descriptor of a device opened on a :class:`~fusd_runtime.loopback.LoopbackKernel`.

    The methods are the system calls (``read``, ``write``, ``pread``, ``pwrite``,
    ``lseek``, ``ioctl``, ``poll``, ``fsync``, ``close``) and fail like them, with
    OSError and the errno the kernel would give.  ``flags`` are the file's
    ``f_flags``; ``set_flags``/``set_blocking`` are ``fcntl(F_SETFL)``.
    """

    def __init__(self, kernel: LoopbackKernel, of: _OpenFile, flags: int, creds: Credentials, name: str) -> None:
        self.kernel = kernel
        self._of = of
        self.flags = flags
        self.creds = creds
        self.name = name
        self.closed = False
        kernel.open_files.add(self)

    # ------------------------------------------------------------------ plumbing
    @property
    def fh(self) -> int:
        """The device's file handle (``fuse_open_out.fh``)."""
        return self._of.fh

    @property
    def open_flags(self) -> int:
        """FOPEN_* flags of the OPEN answer."""
        return self._of.open_flags

    @property
    def kh(self) -> int:
        """This open file's poll handle."""
        return self._of.kh

    def _check(self) -> None:
        if self.closed:
            raise OSError(errno.EBADF, "file is closed")

    def request(self, opcode: int, body: bytes, *, fixed: int = 0, var_max: Optional[int] = None,
                describe: str = "") -> Tuple[int, bytes]:
        """Send one request for this file and wait for its answer (``(error, body)``)."""
        nodeid = self._of.nodeid
        return self.kernel.call(opcode, nodeid, body, fixed=fixed, var_max=var_max, creds=self.creds,
                                describe=describe or f"{C.opcode_name(opcode)} {self.name or 'device'}")

    @property
    def _cuse(self) -> bool:
        return self.kernel.transport == "cuse"

    @property
    def _stream(self) -> bool:
        return self._cuse or bool(self._of.open_flags & FO.FOPEN_STREAM)

    @property
    def _seekable(self) -> bool:
        return not self._cuse and not self._of.open_flags & (FO.FOPEN_STREAM | FO.FOPEN_NONSEEKABLE)

    # ------------------------------------------------------------------ flags
    def set_flags(self, flags: int) -> None:
        """``fcntl(F_SETFL)``: only O_APPEND, O_NONBLOCK, O_DIRECT, O_NOATIME, O_ASYNC change."""
        self._check()
        changeable = os.O_APPEND | os.O_NONBLOCK | os.O_DIRECT | os.O_NOATIME | getattr(os, "O_ASYNC", 0o20000)
        self.flags = (self.flags & ~changeable) | (flags & changeable)

    def set_blocking(self, blocking: bool) -> None:
        """Clear or set O_NONBLOCK (``os.set_blocking``)."""
        self.set_flags(self.flags & ~os.O_NONBLOCK if blocking else self.flags | os.O_NONBLOCK)

    # ------------------------------------------------------------------ read / write
    def _io_offset(self, offset: Optional[int]) -> int:
        if offset is not None:
            return offset if not self._cuse else 0
        if self._stream:
            return 0
        return self._of.pos

    def read(self, size: int) -> bytes:
        """``read(2)``: at most ``size`` bytes; b"" at end of file."""
        return self._read(size, None)

    def pread(self, size: int, offset: int) -> bytes:
        """``pread(2)``: ESPIPE on a stream (FUSE); CUSE ignores the offset (it sends 0)."""
        self._check()
        if not self._cuse and not self._seekable:
            raise OSError(errno.ESPIPE, "illegal seek")
        return self._read(size, offset)

    def _read(self, size: int, offset: Optional[int]) -> bytes:
        self._check()
        if self.flags & _ACCMODE == os.O_WRONLY:
            raise OSError(errno.EBADF, "file not open for reading")
        if size < 0:
            raise OSError(errno.EINVAL, "negative size")
        count = min(size, 0x7FFFF000)
        pos = self._io_offset(offset)
        if not self._cuse and not self._of.open_flags & FO.FOPEN_DIRECT_IO:
            return b""  # page-cache read of a file whose size is 0 (see the module doc)
        k = self.kernel
        nmax = min(k.max_read, k.max_pages * 4096)
        read_in = k.codec.fast("fuse_read_in")
        out = bytearray()
        while count:
            n = min(count, nmax)
            body = read_in.encode({"fh": self.fh, "offset": pos, "size": n, "flags": self.flags,
                                   "read_flags": int(C.ReadFlags.FUSE_READ_LOCKOWNER),
                                   "lock_owner": lock_owner(self.creds)})
            err, data = self.request(OP.FUSE_READ, body, fixed=0, var_max=n)
            if err:
                if out:
                    break
                raise OSError(-err, f"read: {errno.errorcode.get(-err, '?')}")
            out += data
            count -= len(data)
            pos += len(data)
            if len(data) != n:
                break
        if offset is None and self._seekable:
            self._of.pos = pos
        return bytes(out)

    def write(self, data: Union[bytes, bytearray, memoryview]) -> int:
        """``write(2)``: the bytes taken."""
        return self._write(bytes(data), None)

    def pwrite(self, data: Union[bytes, bytearray, memoryview], offset: int) -> int:
        """``pwrite(2)``: ESPIPE on a stream (FUSE); CUSE ignores the offset."""
        self._check()
        if not self._cuse and not self._seekable:
            raise OSError(errno.ESPIPE, "illegal seek")
        return self._write(bytes(data), offset)

    def _write(self, data: bytes, offset: Optional[int]) -> int:
        self._check()
        if self.flags & _ACCMODE == os.O_RDONLY:
            raise OSError(errno.EBADF, "file not open for writing")
        k = self.kernel
        pos = self._io_offset(offset)
        nmax = min(k.max_write, k.max_pages * 4096)
        write_in = k.codec.fast("fuse_write_in")
        kill = int(C.WriteFlags.FUSE_WRITE_KILL_SUIDGID) if self.creds.uid != 0 and k.minor >= 31 else 0
        owner = {"write_flags": kill | int(C.WriteFlags.FUSE_WRITE_LOCKOWNER), "lock_owner": lock_owner(self.creds)}
        done = 0
        view = memoryview(data)
        while done < len(data):
            chunk = view[done:done + nmax]
            rec = {"fh": self.fh, "offset": pos, "size": len(chunk), "flags": self.flags, **owner}
            if write_in.size == 24:  # FUSE_COMPAT_WRITE_IN_SIZE (< 7.9): no lock_owner/flags
                rec = {"fh": self.fh, "offset": pos, "size": len(chunk), "write_flags": kill}
            err, out = self.request(OP.FUSE_WRITE, write_in.encode(rec) + bytes(chunk), fixed=_WRITE_OUT.size)
            if err:
                if done:
                    break
                raise OSError(-err, f"write: {errno.errorcode.get(-err, '?')}")
            n = _WRITE_OUT.unpack_from(out)[0]
            if n > len(chunk):
                if done:
                    break
                raise OSError(errno.EIO, f"the device took {n} of {len(chunk)} bytes")
            done += n
            pos += n
            if n != len(chunk):
                break
        if offset is None and self._seekable:
            self._of.pos = pos
        return done

    def lseek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        """``lseek(2)``: ESPIPE on a stream; CUSE's ``noop_llseek`` leaves the position at 0."""
        self._check()
        if self._cuse:
            return 0
        if not self._seekable:
            raise OSError(errno.ESPIPE, "illegal seek")
        base = {os.SEEK_SET: 0, os.SEEK_CUR: self._of.pos, os.SEEK_END: 0}.get(whence)
        if base is None or base + offset < 0:
            raise OSError(errno.EINVAL, "invalid seek")
        self._of.pos = base + offset
        return self._of.pos

    # ------------------------------------------------------------------ ioctl
    def ioctl(self, cmd: int, arg: Any = 0, mutate_flag: bool = True) -> Any:
        """``fcntl.ioctl`` on this file, with its argument rules.

        ``arg`` an int: passed as is (a value, or an address of ``kernel.memory``);
        the ioctl's result is returned.  Immutable bytes: copied to a new buffer
        whose address is passed; the buffer's contents after the call are
        returned.  A mutable buffer (bytearray) with ``mutate_flag``: passed the
        same way and updated in place; the result is returned.  A
        ``memory.Region``: its address is passed; the result is returned.
        """
        self._check()
        memory = self.kernel.memory
        if isinstance(arg, Region):
            return _ioctl.do_ioctl(self, cmd, arg.addr)
        if isinstance(arg, int):
            return _ioctl.do_ioctl(self, cmd, arg)
        region = memory.alloc(bytes(arg))
        try:
            result = _ioctl.do_ioctl(self, cmd, region.addr)
            if isinstance(arg, (bytes, str)) or not mutate_flag:
                return region.read()
            arg[:] = region.read()
            return result
        finally:
            memory.free(region)

    # ------------------------------------------------------------------ poll
    def poll(self, events: int = select.POLLIN | select.POLLOUT, timeout: Optional[float] = None) -> int:
        """``poll(2)`` on this file alone: the revents (0 when ``timeout`` seconds passed)."""
        return poll_files(self.kernel, [(self, events)], timeout)[0]

    def _poll_once(self, events: int, schedule: bool) -> int:
        k = self.kernel
        if k.no_poll:
            return DEFAULT_POLLMASK
        flags = int(C.PollFlags.FUSE_POLL_SCHEDULE_NOTIFY) if schedule else 0
        if schedule:
            k.register_polled(self.kh)
        # do_pollfd asks for POLLERR | POLLHUP along with the caller's events
        body = k.codec.fast("fuse_poll_in").pack(self.fh, self.kh, flags, events | select.POLLERR | select.POLLHUP)
        err, out = self.request(OP.FUSE_POLL, body, fixed=_POLL_OUT.size)
        if err == -errno.ENOSYS:
            k.no_poll = True
            return DEFAULT_POLLMASK
        if err:
            return select.POLLERR
        return _POLL_OUT.unpack_from(out)[0]

    # ------------------------------------------------------------------ fsync / close
    def fsync(self, datasync: bool = False) -> None:
        """``fsync(2)``/``fdatasync(2)``."""
        self._check()
        k = self.kernel
        if self._cuse:
            raise OSError(errno.EINVAL, "fsync: CUSE devices have no fsync")
        if k.no_fsync:
            return
        flags = int(C.FsyncFlags.FUSE_FSYNC_FDATASYNC) if datasync else 0
        err, _ = self.request(OP.FUSE_FSYNC, k.codec.fast("fuse_fsync_in").pack(self.fh, flags, 0))
        if err == -errno.ENOSYS:
            k.no_fsync = True
        elif err:
            raise OSError(-err, f"fsync: {errno.errorcode.get(-err, '?')}")

    def dup(self) -> LoopbackFile:
        """``dup(2)``: a second descriptor of the same open file (one RELEASE, after the last close)."""
        self._check()
        with self._of.lock:
            self._of.refs += 1
        return LoopbackFile(self.kernel, self._of, self.flags, self.creds, self.name)

    def close(self) -> None:
        """``close(2)``: FLUSH (FUSE), then RELEASE for the last reference; raises FLUSH's error."""
        if self.closed:
            raise OSError(errno.EBADF, "file is already closed")
        self.closed = True
        k = self.kernel
        k.open_files.discard(self)
        flush_error = 0
        connected = k.connected
        if connected and not self._cuse and not k.no_flush and not k.no_open \
                and not self._of.open_flags & FO.FOPEN_NOFLUSH:
            body = k.codec.fast("fuse_flush_in").encode({"fh": self.fh, "lock_owner": lock_owner(self.creds)})
            try:
                err, _ = self.request(OP.FUSE_FLUSH, body)
            except OSError as exc:
                err = -(exc.errno or errno.EIO)
            if err == -errno.ENOSYS:
                k.no_flush = True
            elif err:
                flush_error = -err
        with self._of.lock:
            self._of.refs -= 1
            last = self._of.refs == 0
        if last:
            self._release(connected)
        if flush_error:
            raise OSError(flush_error, f"close: {errno.errorcode.get(flush_error, '?')}")

    def _release(self, connected: bool) -> None:
        k = self.kernel
        of = self._of
        of.released = True
        k.unregister_polled(of.kh)
        if not connected or k.no_open:
            return
        body = k.codec.fast("fuse_release_in").encode({"fh": of.fh, "flags": self.flags})
        try:
            p = k.submit(OP.FUSE_RELEASE, of.nodeid, body, creds=self.creds, describe=f"RELEASE {self.name}")
        except OSError:
            return
        if self._cuse:
            k.wait(p)  # fuse_sync_release: the last close waits for the device
        else:
            threading.Thread(target=self._background_release, args=(p,), daemon=True).start()

    def _background_release(self, p: Any) -> None:
        try:
            self.kernel.wait(p)
        except (OSError, TimeoutError):
            pass

    def __enter__(self) -> LoopbackFile:
        return self

    def __exit__(self, *exc: object) -> None:
        if not self.closed:
            self.close()

    def __repr__(self) -> str:
        state = "closed" if self.closed else f"fh={self.fh}"
        return f"<LoopbackFile {self.name or '<cuse>'} {state} flags={self.flags:#o}>"


# ---------------------------------------------------------------------- poll(2)
def poll_files(kernel: LoopbackKernel, entries: List[Tuple[LoopbackFile, int]],
               timeout: Optional[float] = None) -> List[int]:
    """``poll(2)``: ask every file; if none is ready and ``timeout`` allows, sleep until a wakeup, ask again.

    ``timeout`` is in seconds (None: forever, 0: do not wait).  A closed file
    reports POLLNVAL, like a closed descriptor.
    """
    deadline = None if timeout is None else time.monotonic() + max(timeout, 0)
    schedule = timeout is None or timeout > 0
    while True:
        generation = kernel.poll_generation
        result = []
        for f, events in entries:
            if f.closed:
                result.append(select.POLLNVAL)
                continue
            mask = f._poll_once(events, schedule)
            result.append(mask & (events | ALWAYS))
        if any(result) or not schedule or not kernel.connected:
            return result
        if deadline is not None and time.monotonic() >= deadline:
            return result
        kernel.wait_wakeup(generation, deadline)
        if deadline is not None and time.monotonic() >= deadline and kernel.poll_generation == generation:
            return result
