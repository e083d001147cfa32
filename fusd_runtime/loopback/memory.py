"""The caller's address space, as the loopback kernel's ioctls see it.

A real ``ioctl(fd, cmd, arg)`` hands the kernel an address in the calling
process; on CUSE the device names further ranges (``FUSE_IOCTL_RETRY`` iovecs,
pointers it found in the argument) and the kernel copies them in and out with
``copy_from_user``/``copy_to_user``, failing the whole ioctl with EFAULT when a
range is not mapped (``fs/fuse/ioctl.c``, ``fuse_do_ioctl``).  The loopback
kernel has no process memory to copy, so the client allocates buffers here and
puts their addresses in its structs: the pointer chase is real, only the memory
is a Python one.

Regions are placed with an unmapped gap between them, so a length that runs
past the end of a buffer is an EFAULT, as it would be at a page boundary.
"""

from __future__ import annotations

import errno
import threading
from typing import Dict, List, Tuple, Union

#: Where the first region goes; nonzero, so a NULL pointer never hits a buffer.
BASE = 0x7F00_0000_0000
#: Unmapped bytes after every region (a guard page).
GAP = 4096

BytesLike = Union[bytes, bytearray, memoryview]


class Region:
    """One buffer of the caller's memory: ``addr`` (what goes in a pointer field), ``data``."""

    __slots__ = ("addr", "data")

    def __init__(self, addr: int, data: bytearray) -> None:
        self.addr = addr
        self.data = data

    def __len__(self) -> int:
        """The buffer's size."""
        return len(self.data)

    def read(self) -> bytes:
        """The buffer's current contents."""
        return bytes(self.data)

    def write(self, data: BytesLike, offset: int = 0) -> None:
        """Overwrite part of the buffer (what a client does before the ioctl)."""
        end = offset + len(data)
        if offset < 0 or end > len(self.data):
            raise ValueError(f"{len(data)} bytes at offset {offset} do not fit a {len(self.data)}-byte buffer")
        self.data[offset:end] = data

    def __repr__(self) -> str:
        return f"<Region {self.addr:#x} {len(self.data)} bytes>"


class Memory:
    """Buffers the loopback kernel copies ioctl arguments from and to (thread-safe)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._regions: List[Region] = []
        self._next = BASE

    def alloc(self, size_or_data: Union[int, BytesLike]) -> Region:
        """A new buffer: ``size`` zero bytes, or a copy of the given bytes."""
        data = bytearray(size_or_data) if not isinstance(size_or_data, int) else bytearray(size_or_data)
        with self._lock:
            region = Region(self._next, data)
            self._regions.append(region)
            self._next += (len(data) + GAP + 4095) // 4096 * 4096 + 4096
        return region

    def free(self, region: Region) -> None:
        """Unmap a buffer: later copies from its addresses fail with EFAULT."""
        with self._lock:
            self._regions = [r for r in self._regions if r is not region]

    def _find(self, addr: int, length: int) -> Tuple[Region, int]:
        for region in self._regions:
            start = region.addr
            if start <= addr and addr + length <= start + len(region.data):
                return region, addr - start
        raise OSError(errno.EFAULT, f"bad address: {length} bytes at {addr:#x} are not in one allocated buffer")

    def copy_from_user(self, addr: int, length: int) -> bytes:
        """The ``length`` bytes at ``addr``; EFAULT if they are not mapped."""
        if length == 0:
            return b""
        with self._lock:
            region, off = self._find(addr, length)
            return bytes(region.data[off:off + length])

    def copy_to_user(self, addr: int, data: BytesLike) -> None:
        """Store ``data`` at ``addr``; EFAULT if the range is not mapped."""
        if not data:
            return
        with self._lock:
            region, off = self._find(addr, len(data))
            region.data[off:off + len(data)] = data

    def regions(self) -> Dict[int, int]:
        """``{address: size}`` of every mapped buffer (for messages)."""
        with self._lock:
            return {r.addr: len(r.data) for r in self._regions}
