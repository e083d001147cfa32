"""CUSE: the rules of declared ioctls against the real kernel's fuse_do_ioctl.

- only what a direction says is copied: an IN buffer in read-only memory works
  (a buffer declared INOUT there faults, which is the kernel's EFAULT);
- per element of an array of structs, a flags word decides each buffer's way;
- only ``out_fields`` are written back: the rest of the struct may be read-only;
- NULL with a nonzero length answers EFAULT, as the kernel answers a raw device
  that asks for address 0;
- more than the kernel copies in one ioctl answers ENOMEM, the errno the kernel
  itself gives a raw device asking for the same ranges;
- every retry round is counted, also those a raw device returns itself.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import os
from typing import Any

import pytest

from fusd_runtime import Context, Device
from fusd_runtime.cuse import CuseServer
from fusd_runtime.ioctl import IN, INOUT, IOW, OUT, CStruct, IoctlRetry, Pointer, c, compile_schema, ioctl

from .conftest import ReadOnlyPage, needs_cuse, unique_name

pytestmark = needs_cuse

xfer = CStruct("tx" / Pointer("len", direction=IN), "rx" / Pointer("len", direction=OUT, optional=False),
               "len" / c.u32, "status" / c.u32, name="xfer")
XFER_IN = IOW("R", 1, xfer.sizeof())
xfer_v1 = CStruct("tx" / Pointer("len", direction=INOUT), "rx" / Pointer("len", direction=OUT),
                  "len" / c.u32, "status" / c.u32, name="xfer_v1")
XFER_INOUT = IOW("R", 2, xfer_v1.sizeof())
big = CStruct("buf" / Pointer("len", direction=IN), "len" / c.u32, name="big")
BIG = IOW("R", 3, big.sizeof())
RAW_ASK = IOW("R", 4, 8)
XFER_ASYNC = IOW("R", 5, xfer.sizeof())  # a raw device asks for the ranges the test names: what does the kernel say?

I2C_M_RD = 0x0001
i2c_msg = CStruct("addr" / c.u16, "flags" / c.u16, "len" / c.u16,
                  "buf" / Pointer("len", direction=lambda m: OUT if m.flags & I2C_M_RD else IN), name="i2c_msg")
i2c_rdwr_ioctl_data = CStruct("msgs" / Pointer("nmsgs", target=i2c_msg, direction=IN), "nmsgs" / c.u32,
                              name="i2c_rdwr_ioctl_data")
I2C_RDWR = 0x0707

hdr = CStruct("interface_id" / c.int, "dxfer_len" / c.uint, "dxferp" / Pointer("dxfer_len", direction=OUT),
              "status" / c.uchar, "sb_len_wr" / c.uchar, "resid" / c.int, "info" / c.uint, name="hdr")
HDR = 0x2299


class Rules(Device):
    def __init__(self) -> None:
        self.eeprom = bytes(range(256))
        self.pos = 0
        self.raw_iovs: Any = None

    @ioctl(XFER_IN, xfer, IN)
    def xfer_in(self, ctx: Context, x: Any) -> int:
        x.rx[:] = bytes(x.tx).upper()
        return x.len

    @ioctl(XFER_INOUT, xfer_v1, IN)
    def xfer_inout(self, ctx: Context, x: Any) -> int:
        x.rx[:] = bytes(x.tx).upper()
        return x.len

    @ioctl(XFER_ASYNC, xfer, IN)
    async def xfer_async(self, ctx: Context, x: Any) -> int:
        import asyncio
        await asyncio.sleep(0.01)  # answered later, from the loop: the pointers' data still goes out
        x.rx[:] = bytes(x.tx)[::-1]
        return x.len

    @ioctl(BIG, big, IN)
    def take(self, ctx: Context, b: Any) -> int:
        return len(b.buf)

    @ioctl(I2C_RDWR, i2c_rdwr_ioctl_data, IN, size=16)
    def rdwr(self, ctx: Context, arg: Any) -> int:
        for m in arg.msgs:
            if m.flags & I2C_M_RD:
                m.buf[:] = self.eeprom[self.pos:self.pos + m.len]
            else:
                self.pos = m.buf[0]
        return len(arg.msgs)

    @ioctl(HDR, hdr, INOUT, out_fields=("status", "resid"), size=32)
    def command(self, ctx: Context, h: Any) -> Any:
        h.dxferp[:] = b"data"
        h.status, h.resid, h.info, h.interface_id = 2, 0, 99, 0  # info and interface_id are not copied back
        return h

    def ioctl(self, ctx: Context, cmd: int, data: bytes, out_size: int) -> Any:
        if cmd == RAW_ASK:  # a libfuse-style device: asks for the rounds the test put in raw_iovs, unchecked
            if not self.raw_iovs:
                return 0
            r = object.__new__(IoctlRetry)
            r.in_iovs, r.out_iovs = self.raw_iovs.pop(0)
            return r
        raise OSError(errno.ENOTTY, "unknown")


_xfer = compile_schema(xfer).encode
_big = compile_schema(big).encode


@pytest.fixture(scope="module")
def dev(cuse: CuseServer) -> Any:
    name = unique_name("rules")
    device = cuse.add(Rules(), name)
    fd = os.open(cuse.path(name), os.O_RDWR)
    yield device, fd, cuse.sessions[name]
    os.close(fd)
    cuse.remove(name)


def _errno_of(call: Any) -> int:
    with pytest.raises(OSError) as exc:
        call()
    return exc.value.errno


def test_an_in_buffer_in_read_only_memory_works_where_inout_faults(dev: Any) -> None:
    device, fd, _ = dev
    rx = ctypes.create_string_buffer(5)
    with ReadOnlyPage(b"hello") as tx:
        assert fcntl.ioctl(fd, XFER_IN, bytearray(_xfer(dict(tx=tx.addr, rx=ctypes.addressof(rx), len=5)))) == 5
        assert rx.raw == b"HELLO"
        # declared INOUT (v1's only choice) the buffer is copied back: the kernel faults on read-only memory
        arg = bytearray(_xfer(dict(tx=tx.addr, rx=ctypes.addressof(rx), len=5)))
        assert _errno_of(lambda: fcntl.ioctl(fd, XFER_INOUT, arg)) == errno.EFAULT


def test_each_message_of_an_i2c_transaction_goes_its_own_way(dev: Any) -> None:
    device, fd, _ = dev
    msg = compile_schema(i2c_msg).encode
    rd = ctypes.create_string_buffer(4)
    with ReadOnlyPage(b"\x10") as wr:  # the write message's byte lies in read-only memory
        msgs = ctypes.create_string_buffer(msg(dict(addr=0x50, flags=0, len=1, buf=wr.addr))
                                           + msg(dict(addr=0x50, flags=I2C_M_RD, len=4, buf=ctypes.addressof(rd))))
        arg = bytearray(compile_schema(i2c_rdwr_ioctl_data).encode(dict(msgs=ctypes.addressof(msgs), nmsgs=2)))
        assert fcntl.ioctl(fd, I2C_RDWR, arg) == 2
    assert rd.raw == bytes([0x10, 0x11, 0x12, 0x13])


def test_only_the_out_fields_are_written(dev: Any) -> None:
    device, fd, _ = dev
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
    libc.mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    pages = libc.mmap(None, 8192, 3, 0x22, -1, 0)
    try:
        arg = pages + 4096 - 16  # bytes 0..15 of the struct on a read-only page, 16..31 on a writable one
        data = ctypes.create_string_buffer(4)
        raw = compile_schema(hdr).encode(dict(interface_id=ord("S"), dxfer_len=4, dxferp=ctypes.addressof(data),
                                              status=0xEE, sb_len_wr=0xEE, resid=-1, info=7))
        ctypes.memmove(arg, raw, 32)
        assert libc.mprotect(pages, 4096, 1) == 0
        libc.ioctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_void_p]  # fcntl.ioctl passes a C int only
        assert libc.ioctl(fd, HDR, arg) == 0, os.strerror(ctypes.get_errno())
        after = ctypes.string_at(arg, 32)
        assert after[16] == 2 and after[17] == 0xEE and after[20:24] == bytes(4) and after[24:28] == b"\x07\0\0\0"
        assert after[:16] == raw[:16] and data.raw == b"data"
    finally:
        libc.munmap(pages, 8192)


def test_null_pointers_efault_like_the_kernel(dev: Any) -> None:
    device, fd, _ = dev
    arg = bytearray(_xfer(dict(tx=0, rx=0, len=4)))
    ours = _errno_of(lambda: fcntl.ioctl(fd, XFER_IN, arg))
    device.raw_iovs = [([(0, 4)], [])]  # a raw device asking the kernel for 4 bytes at address 0
    kernels = _errno_of(lambda: fcntl.ioctl(fd, RAW_ASK, bytes(8)))
    assert ours == kernels == errno.EFAULT


def test_over_the_limit_is_enomem_like_the_kernel(dev: Any) -> None:
    device, fd, session = dev
    buf = ctypes.create_string_buffer(128 * 1024 + 1)
    at = ctypes.addressof(buf)
    n = 128 * 1024 - 16  # with the 16-byte struct: exactly 128 KiB is fine
    assert fcntl.ioctl(fd, BIG, bytearray(_big(dict(buf=at, len=n)))) == n
    over = bytearray(_big(dict(buf=at, len=n + 1)))  # one byte more
    ours = _errno_of(lambda: fcntl.ioctl(fd, BIG, over))
    device.raw_iovs = [([(at, 16), (at, n + 1)], [])]  # the same ranges asked by a raw device
    kernels = _errno_of(lambda: fcntl.ioctl(fd, RAW_ASK, bytes(8)))
    assert ours == kernels == errno.ENOMEM
    # 257 ranges: FUSE_IOCTL_MAX_IOV is 256.  The kernel reads a retry reply into a buffer of
    # max(out_size, one page): 257 iovecs (4112 bytes) only fit after a round with more than a page
    # out, and then its limit check answers ENOMEM; right after the first round the reply does not
    # fit and the kernel answers EIO before it looks at the count.  We refuse both with ENOMEM.
    # (The priming round copies something in as well: a retry with no in range after a round with
    # some makes the kernel send the next request's fuse_ioctl_in from its data pages — see ioctl.md.)
    many = ([(at, 1)] * 200, [(at, 1)] * 57)
    device.raw_iovs = [([(at, 16)], [(at, 8192)]), many]
    assert _errno_of(lambda: fcntl.ioctl(fd, RAW_ASK, bytes(8))) == errno.ENOMEM
    device.raw_iovs = [many]
    assert _errno_of(lambda: fcntl.ioctl(fd, RAW_ASK, bytes(8))) == errno.EIO
    with pytest.raises(OSError) as exc:
        IoctlRetry(*many)
    assert exc.value.errno == errno.ENOMEM


def test_every_retry_round_is_counted(dev: Any) -> None:
    device, fd, session = dev
    before = session.ioctl_retries
    rx = ctypes.create_string_buffer(3)
    tx = ctypes.create_string_buffer(b"abc", 3)
    fcntl.ioctl(fd, XFER_IN, bytearray(_xfer(dict(tx=ctypes.addressof(tx), rx=ctypes.addressof(rx), len=3))))
    assert session.ioctl_retries - before == 2  # the struct; then tx in and rx out
    device.raw_iovs = [([(ctypes.addressof(tx), 3)], [])]
    before = session.ioctl_retries
    fcntl.ioctl(fd, RAW_ASK, bytes(8))
    assert session.ioctl_retries - before == 2  # the emulated _IOW copy, then the device's own retry


def test_an_async_handler_with_pointers(dev: Any) -> None:
    device, fd, _ = dev
    tx, rx = ctypes.create_string_buffer(b"stressed", 8), ctypes.create_string_buffer(8)
    arg = bytearray(_xfer(dict(tx=ctypes.addressof(tx), rx=ctypes.addressof(rx), len=8)))
    assert fcntl.ioctl(fd, XFER_ASYNC, arg) == 8 and rx.raw == b"desserts"
