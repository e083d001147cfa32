"""The same SPI-style transfer device twice: declared (``@ioctl``) and written by hand with IoctlRetry.

Used by ``benchmarks/bench_ioctl.py`` (daemon CPU of both, one run) and
``tests/test_ioctl_loopback.py`` (both give the caller the same bytes, in the
same number of rounds).  The argument is ``struct xfer { void *tx; void *rx;
__u32 len; __u32 status; }``: ``tx`` is read, ``rx`` written, ``len`` bytes
each; the device answers each byte of tx incremented by one.
"""

from __future__ import annotations

import errno
import struct
from typing import Any

from fusd_runtime import Device
from fusd_runtime.ioctl import IN, IOR, IOW, IOWR, CStruct, IoctlRetry, Pointer, c, ioctl

xfer = CStruct("tx" / Pointer("len", direction=IN), "rx" / Pointer("len", direction="out"),
               "len" / c.u32, "status" / c.u32, name="xfer")
XFER = IOW("X", 1, xfer.sizeof())
_XFER = struct.Struct("<QQII")
_INC = bytes((i + 1) & 0xFF for i in range(256))


class DeclaredXfer(Device):
    @ioctl(XFER, xfer, IN)
    def transfer(self, ctx: Any, x: Any) -> int:
        x.rx[:] = x.tx.translate(_INC)
        return x.len


class HandXfer(Device):
    def ioctl(self, ctx: Any, cmd: int, data: bytes, out_size: int) -> Any:
        if cmd != XFER:
            raise OSError(errno.ENOTTY, "unknown ioctl")
        if len(data) < 24:
            raise OSError(errno.EINVAL, "short argument")
        tx, rx, n, _ = _XFER.unpack_from(data)
        if len(data) != 24 + n or out_size != n:
            return IoctlRetry([(ctx.ioctl_arg, 24), (tx, n)], [(rx, n)])
        return n, data[24:].translate(_INC)


# --- plain fixed-size ioctls (restricted: FUSE copies _IOC_SIZE bytes)
point = CStruct("x" / c.int, "y" / c.int, "z" / c.int, name="point")
GET_POINT = IOR("B", 1, point.sizeof())
MOVE_POINT = IOWR("B", 2, point.sizeof())
_POINT = struct.Struct("<iii")


class DeclaredPoint(Device):
    def __init__(self) -> None:
        self.x, self.y, self.z = 1, 2, 3

    @ioctl(GET_POINT, point)
    def get(self, ctx: Any, p: Any) -> Any:
        p.x, p.y, p.z = self.x, self.y, self.z
        return p

    @ioctl(MOVE_POINT, point)
    def move(self, ctx: Any, p: Any) -> Any:
        p.x += 1
        return p


class HandPoint(Device):
    def __init__(self) -> None:
        self.x, self.y, self.z = 1, 2, 3

    def ioctl(self, ctx: Any, cmd: int, arg: bytes, out_size: int) -> Any:
        if cmd == GET_POINT:
            return _POINT.pack(self.x, self.y, self.z)
        if cmd == MOVE_POINT:
            x, y, z = _POINT.unpack(arg)
            return _POINT.pack(x + 1, y, z)
        raise OSError(errno.ENOTTY, "unknown ioctl")
