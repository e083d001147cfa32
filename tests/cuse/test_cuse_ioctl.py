"""CUSE: unrestricted ioctls from real clients — structs, pointers chased over retry rounds, tty numbers.

The devices declare their arguments with construct schemas (``fusd_runtime.ioctl``);
the runtime answers FUSE_IOCTL_RETRY until the kernel has copied in everything
the schema points to, calls the device with decoded objects and copies the
results out to the caller's memory.
"""

from __future__ import annotations

import fcntl
import os
import struct
import termios

import construct as cs
from ioctl_schemas import BATCH, EXTENTS, XFER, batch, extents, xfer

from fusd_runtime import Context, Device
from fusd_runtime.cuse import CuseServer
from fusd_runtime.examples import COUNTER_ADD, COUNTER_GET, Counter
from fusd_runtime.ioctl import IOR, IOW, OUT, Arg, ioctl

from .conftest import client, needs_cuse, unique_name

pytestmark = needs_cuse

u32, s32, u64 = cs.Int32ul, cs.Int32sl, cs.Int64ul

# struct rtc_time (linux/rtc.h): nine ints
rtc_time = cs.Struct(*(name / s32 for name in ("tm_sec", "tm_min", "tm_hour", "tm_mday", "tm_mon", "tm_year",
                                               "tm_wday", "tm_yday", "tm_isdst")))
RTC_RD_TIME = IOR("p", 9, rtc_time.sizeof())
RTC_SET_TIME = IOW("p", 10, rtc_time.sizeof())


# tty-style numbers: no size, no direction in the number
kernel_termios = cs.Struct("c_iflag" / u32, "c_oflag" / u32, "c_cflag" / u32, "c_lflag" / u32, "c_line" / cs.Int8ul,
                           "c_cc" / cs.Array(19, cs.Int8ul))


class Gadget(Device):
    """A device with declared ioctls of every shape."""

    ioctls = {termios.TCGETS: Arg(kernel_termios, OUT), termios.FIONREAD: Arg(s32, OUT)}

    def __init__(self) -> None:
        self.time = dict(tm_sec=56, tm_min=34, tm_hour=12, tm_mday=31, tm_mon=11, tm_year=125, tm_wday=3,
                         tm_yday=364, tm_isdst=0)
        self.seen: list = []

    @ioctl(RTC_RD_TIME, rtc_time)
    def read_time(self, ctx: Context, tm):
        tm.update(self.time)
        return tm

    @ioctl(RTC_SET_TIME, rtc_time)
    def set_time(self, ctx: Context, tm) -> int:
        self.time = {k: v for k, v in tm.items() if not k.startswith("_")}
        return 0

    @ioctl(XFER, xfer)
    def transfer(self, ctx: Context, x):
        self.seen.append(bytes(x.tx))
        reply = bytes(x.tx).upper()[:x.rx_len]
        x.rx[:len(reply)] = reply
        return len(reply)  # the ioctl's return value; x (modified in place) is copied out

    @ioctl(BATCH, batch)
    def run_batch(self, ctx: Context, b):
        for seg in b.segs:
            seg.buf = bytes(seg.buf)[::-1]  # reverse each buffer in place (same length)
            seg.flags = 1
        b.done = b.count
        return b

    @ioctl(EXTENTS, extents)
    def map_extents(self, ctx: Context, e):
        e.items = [dict(start=i * 4096, length=4096 * (i + 1)) for i in range(e.count)]
        e.mapped = e.count
        return e

    def ioctl(self, ctx: Context, cmd: int, arg, out_size: int):
        if cmd == termios.TCGETS:
            arg.c_cflag = termios.B38400 | termios.CS8 | termios.CREAD
            arg.c_cc[termios.VMIN] = 1
            return arg
        if cmd == termios.FIONREAD:
            return 0, 42  # (ioctl result, value copied out): a bare int would be the result
        if cmd == termios.TCSBRK:  # undeclared, no size: the argument is a plain int
            return ctx.ioctl_arg + 1
        raise OSError(25, "unknown")


def test_undeclared_sized_ioctls_are_copied_like_fuse_does(cuse: CuseServer) -> None:
    name = unique_name("counter")
    cuse.add(Counter(), name)
    fd = os.open(cuse.path(name), os.O_RDWR)
    try:
        assert fcntl.ioctl(fd, COUNTER_ADD, struct.pack("<Q", 5)) == struct.pack("<Q", 5)
        assert fcntl.ioctl(fd, COUNTER_ADD, struct.pack("<Q", 7)) == struct.pack("<Q", 12)
        assert fcntl.ioctl(fd, COUNTER_GET, bytes(8)) == struct.pack("<Q", 12)
    finally:
        os.close(fd)


def test_declared_struct_ioctls_and_tty_numbers(cuse: CuseServer) -> None:
    name = unique_name("gadget")
    dev = cuse.add(Gadget(), name)
    fd = os.open(cuse.path(name), os.O_RDWR)
    try:
        raw = fcntl.ioctl(fd, RTC_RD_TIME, bytes(36))
        assert rtc_time.parse(raw).tm_hour == 12 and rtc_time.parse(raw).tm_year == 125
        new = dict(dev.time, tm_hour=7)
        assert fcntl.ioctl(fd, RTC_SET_TIME, rtc_time.build(new)) == rtc_time.build(new)
        assert dev.time["tm_hour"] == 7
        # TCGETS (0x5401) encodes no size: the declaration supplies it; glibc's tcgetattr is the client
        attrs = termios.tcgetattr(fd)
        assert attrs[2] & termios.CSIZE == termios.CS8 and attrs[6][termios.VMIN] == 1
        assert struct.unpack("i", fcntl.ioctl(fd, termios.FIONREAD, bytes(4)))[0] == 42
        assert fcntl.ioctl(fd, termios.TCSBRK, 41) == 42  # an int argument, passed as is
    finally:
        os.close(fd)


POINTER_CLIENT = """
import ctypes, fcntl, os, sys
class Xfer(ctypes.Structure):
    _fields_ = [("tx", ctypes.c_void_p), ("rx", ctypes.c_void_p), ("tx_len", ctypes.c_uint32),
                ("rx_len", ctypes.c_uint32)]
class Segment(ctypes.Structure):
    _fields_ = [("buf", ctypes.c_void_p), ("len", ctypes.c_uint32), ("flags", ctypes.c_uint32)]
class Batch(ctypes.Structure):
    _fields_ = [("segs", ctypes.c_void_p), ("count", ctypes.c_uint32), ("done", ctypes.c_uint32)]
XFER, BATCH, EXTENTS = (int(a, 0) for a in sys.argv[2:5])
fd = os.open(sys.argv[1], os.O_RDWR)
# 1. a struct with a pointer to our request and one to our reply buffer
tx = ctypes.create_string_buffer(b"hello device", 12)
rx = ctypes.create_string_buffer(b"." * 32, 32)
x = Xfer(ctypes.addressof(tx), ctypes.addressof(rx), 12, 32)
print(fcntl.ioctl(fd, XFER, x), rx.raw)
# 2. pointers inside pointed-to data: an array of segments, each with its own buffer
bufs = [ctypes.create_string_buffer(s, len(s)) for s in (b"abc", b"0123456789", b"xy")]
segs = (Segment * 3)(*[Segment(ctypes.addressof(b), len(b), 0) for b in bufs])
b = Batch(ctypes.addressof(segs), 3, 0)
fcntl.ioctl(fd, BATCH, b)
print(b.done, [s.flags for s in segs], [bb.raw for bb in bufs])
# 3. a flexible array member after a fixed header
class Extents(ctypes.Structure):
    _fields_ = [("count", ctypes.c_uint32), ("mapped", ctypes.c_uint32), ("items", ctypes.c_uint64 * 8)]
e = Extents(4, 0)
fcntl.ioctl(fd, EXTENTS, e)
print(e.mapped, list(e.items))
os.close(fd)
"""


def test_pointers_chased_through_retry_rounds_from_another_process(cuse: CuseServer) -> None:
    name = unique_name("gadget")
    dev = cuse.add(Gadget(), name)
    session = cuse.sessions[name]
    out = client(POINTER_CLIENT, cuse.path(name), hex(XFER), hex(BATCH), hex(EXTENTS)).stdout.splitlines()
    # result 12; an OUT buffer starts zeroed and is copied out whole
    assert out[0] == "12 " + repr(b"HELLO DEVICE" + bytes(20))
    assert dev.seen == [b"hello device"]
    assert out[1] == "3 [1, 1, 1] " + repr([b"cba", b"9876543210", b"yx"])
    assert out[2] == "4 [0, 4096, 4096, 8192, 8192, 12288, 12288, 16384]"
    # rounds: XFER 2 (struct, then struct+tx with rx out), BATCH 3 (struct, segments, buffers),
    # EXTENTS 2 (header, then header+items)
    assert session.ioctl_retries == 2 + 3 + 2
