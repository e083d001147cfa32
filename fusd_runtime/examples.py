"""Small built-in devices: the demo's, the tests' and the benchmarks'.

Each one shows one part of the API; the gallery of realistic emulated devices
lives in ``examples/``.
"""

from __future__ import annotations

import errno
import struct
from collections import deque
from typing import Any, Deque, List

from .device import POLLHUP, POLLIN, POLLOUT, POLLRDNORM, POLLWRNORM, Context, Device, ReplyHandle
from .ioctl import IOR, IOWR


class Hello(Device):
    """Reads a fixed greeting; every open reads it from the start (pread works too)."""

    seekable = True

    def __init__(self, text: bytes = b"Hello from a Python device!\n") -> None:
        self.text = text

    def read(self, ctx: Context, size: int, offset: int) -> bytes:
        return self.text[offset:offset + size]


class PipeDevice(Device):
    """A pipe: what one client writes another reads; readers block until data arrives.

    Shows deferred replies (a blocked ``read`` is a kept ReplyHandle), O_NONBLOCK
    (EAGAIN), interrupts (the handle leaves the wait list) and poll notifications.
    ``hangup()`` makes readers see end of file and POLLHUP.
    """

    def __init__(self, capacity: int = 1 << 20) -> None:
        self.buf = bytearray()
        self.capacity = capacity
        self.readers: Deque[ReplyHandle] = deque()
        self.hung_up = False

    def read(self, ctx: Context, size: int, offset: int) -> Any:
        if self.buf:
            data = bytes(self.buf[:size])
            del self.buf[:size]
            self.notify_poll()  # room to write again
            return data
        if self.hung_up:
            return b""
        if ctx.nonblock:
            raise BlockingIOError(errno.EAGAIN, "pipe is empty")
        handle = ctx.defer(on_interrupt=self.readers.remove)
        self.readers.append(handle)
        return handle

    def write(self, ctx: Context, data: bytes, offset: int) -> int:
        if len(self.buf) + len(data) > self.capacity:
            raise BlockingIOError(errno.EAGAIN, "pipe is full")
        self.buf += data
        while self.readers and self.buf:
            handle = self.readers.popleft()
            chunk = bytes(self.buf[:handle.size])
            if handle.reply(chunk):
                del self.buf[:len(chunk)]
        self.notify_poll()
        return len(data)

    def poll(self, ctx: Context, events: int) -> int:
        mask = 0
        if self.buf:
            mask |= POLLIN | POLLRDNORM
        if len(self.buf) < self.capacity:
            mask |= POLLOUT | POLLWRNORM
        if self.hung_up:
            mask |= POLLHUP
        return mask

    def hangup(self) -> None:
        """No more data will come: blocked readers get end of file, pollers POLLHUP."""
        self.hung_up = True
        while self.readers:
            self.readers.popleft().reply(b"")
        self.notify_poll()


#: ioctls of the Counter device (``'C'`` is its ioctl type letter)
COUNTER_GET = IOR("C", 1, 8)  # read the counter (uint64)
COUNTER_ADD = IOWR("C", 2, 8)  # add a uint64, read back the new value


class Counter(Device):
    """A counter driven by ioctls: ``_IOR`` to read it, ``_IOWR`` to add and read back."""

    seekable = True

    def __init__(self) -> None:
        self.value = 0

    def ioctl(self, ctx: Context, cmd: int, arg: bytes, out_size: int) -> Any:
        if cmd == COUNTER_GET:
            return struct.pack("<Q", self.value)
        if cmd == COUNTER_ADD:
            (delta,) = struct.unpack("<Q", arg)
            self.value = (self.value + delta) & 0xFFFFFFFFFFFFFFFF
            return struct.pack("<Q", self.value)
        raise OSError(errno.ENOTTY, "unknown ioctl")

    def read(self, ctx: Context, size: int, offset: int) -> bytes:
        return f"{self.value}\n".encode()[offset:offset + size]


_pack_int = struct.Struct("<i").pack
#: the perf harness's ioctl: _IOR('E', 1, int)
PERF_IOCTL = IOR("E", 1, 4)


class PerfFile(Device):
    """The file the shared perf harness (``shared/perf/run.sh``) drives: ``dev0``.

    64 KiB of data, seekable (the harness uses pread/pwrite), an ``_IOR('E', 1, int)``
    ioctl returning a counter, and always ready for poll.  Kept minimal on purpose:
    it measures the runtime, not the device.
    """

    seekable = True
    write_view = True  # write() copies the payload into self.data at once: no bytes copy needed
    size = 65536

    def __init__(self) -> None:
        self.data = bytearray((b"abcdefghijklmnopqrstuvwxyz" * (self.size // 26 + 1))[:self.size])
        self.view = memoryview(self.data)
        self.counter = 0

    def read(self, ctx: Context, size: int, offset: int) -> Any:
        return self.view[offset:offset + size]

    def write(self, ctx: Context, data: Any, offset: int) -> int:
        n = len(data)
        end = offset + n
        if end <= self.size:  # the common case: one copy into place, no slicing of data
            self.view[offset:end] = data
        elif offset < self.size:
            self.view[offset:] = data[:self.size - offset]
        return n

    def ioctl(self, ctx: Context, cmd: int, arg: bytes, out_size: int) -> Any:
        if cmd != PERF_IOCTL:
            raise OSError(errno.ENOTTY, "unknown ioctl")
        self.counter += 1
        return _pack_int(self.counter)

    def poll(self, ctx: Context, events: int) -> int:
        return POLLIN | POLLOUT | POLLRDNORM | POLLWRNORM


class AsyncPerfFile(PerfFile):
    """PerfFile with ``async def read`` (that never waits): what an async callback costs over a sync one.

    ``python -m fusd_runtime.perfserver MNT --device fusd_runtime.examples:AsyncPerfFile``
    serves it as the harness's ``dev0``; benchmarks/bench_async.py and
    tools/daemon_instructions.py compare it with PerfFile.
    """

    async def read(self, ctx: Context, size: int, offset: int) -> Any:  # type: ignore[override]
        return self.view[offset:offset + size]


class Faulty(Device):
    """A device whose callbacks raise: the caller gets EIO, the server keeps serving."""

    def read(self, ctx: Context, size: int, offset: int) -> bytes:
        raise RuntimeError("this device is broken on purpose")

    def write(self, ctx: Context, data: bytes, offset: int) -> int:
        raise OSError(errno.ENOSPC, "no space, on purpose")


ALL: List[type] = [Hello, PipeDevice, Counter, PerfFile, Faulty]
