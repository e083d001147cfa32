"""Declared ioctl arguments: the FUSE (restricted) subset against the real kernel, the clear
refusals, and the unrestricted round planner driven by a model of the kernel's retry loop.

The CUSE tier (tests/cuse) proves the unrestricted protocol against the real CUSE
kernel; here the same planner runs against ``KernelModel``, which follows
fs/fuse/ioctl.c's loop (copy the in iovecs, re-send, copy the reply to the out
iovecs) over a bytearray standing in for the caller's memory, so every round
can be checked on any machine.
"""

from __future__ import annotations

import fcntl
import os
import struct

import construct as cs
import pytest
from conftest import needs_fuse
from ioctl_model import KernelModel
from ioctl_schemas import BATCH, EXTENTS, XFER, batch, extent, extents, segment, xfer

from fusd_runtime import Context, Device, Server
from fusd_runtime.ioctl import (
    INOUT,
    IOR,
    IOW,
    IOWR,
    OUT,
    Arg,
    Flex,
    Pointer,
    check_ioctls,
    ioctl,
    ioctl_table,
)

u32, s32, u64 = cs.Int32ul, cs.Int32sl, cs.Int64ul
point = cs.Struct("x" / s32, "y" / s32)
GET_POINT, SET_POINT, MOVE_POINT = IOR("Q", 1, 8), IOW("Q", 2, 8), IOWR("Q", 3, 8)


class Plotter(Device):
    def __init__(self) -> None:
        self.p = {"x": 1, "y": 2}

    @ioctl(GET_POINT, point)
    def get_point(self, ctx: Context, pt):
        pt.update(self.p)
        return pt

    @ioctl(SET_POINT, point)
    def set_point(self, ctx: Context, pt) -> int:
        self.p = {"x": pt.x, "y": pt.y}
        return 3

    @ioctl(MOVE_POINT, point)
    def move(self, ctx: Context, pt):
        self.p = {"x": self.p["x"] + pt.x, "y": self.p["y"] + pt.y}
        return 0, self.p


@needs_fuse
def test_declared_fixed_structs_work_on_fuse(server: Server) -> None:
    dev = server.add(Plotter(), "plotter")
    fd = os.open(server.path("plotter"), os.O_RDWR)
    try:
        assert fcntl.ioctl(fd, GET_POINT, bytes(8)) == struct.pack("<ii", 1, 2)
        assert fcntl.ioctl(fd, SET_POINT, struct.pack("<ii", 10, -20)) == struct.pack("<ii", 10, -20)
        assert dev.p == {"x": 10, "y": -20}
        assert fcntl.ioctl(fd, MOVE_POINT, struct.pack("<ii", 1, 1)) == struct.pack("<ii", 11, -19)
        buf = bytearray(struct.pack("<ii", 0, 0))
        assert fcntl.ioctl(fd, SET_POINT, buf, True) == 3  # the handler's int result is the syscall's
    finally:
        os.close(fd)


@pytest.mark.parametrize("schema, cmd, needle", [
    (xfer, XFER, "pointer field"),
    (extents, EXTENTS, "Flex"),
    (point, 0x5401, "encodes no argument size"),
])
def test_fuse_refuses_what_needs_cuse_at_registration(schema, cmd, needle) -> None:
    class NeedsCuse(Device):
        ioctls = {cmd: Arg(schema, INOUT)}

    with pytest.raises(ValueError) as exc:
        check_ioctls(NeedsCuse(), "fuse")
    assert needle in str(exc.value) and ("CuseServer" in str(exc.value))
    assert ioctl_table(NeedsCuse())  # the same declaration is fine for CUSE
    check_ioctls(NeedsCuse(), "cuse")


@needs_fuse
def test_server_add_refuses_a_pointer_ioctl(server: Server) -> None:
    class Spi(Device):
        @ioctl(XFER, xfer)
        def transfer(self, ctx: Context, x) -> int:
            return 0

    with pytest.raises(ValueError, match="cannot follow it"):
        server.add(Spi(), "spi")
    assert "spi" not in server.devices()


def test_declaration_mistakes_raise_when_declared() -> None:
    with pytest.raises(ValueError, match="encodes a 4-byte argument but its schema is 8 bytes"):
        ioctl(IOR("Q", 9, 4), point)
    with pytest.raises(ValueError, match="encodes no direction"):
        ioctl(0x5401, point)
    with pytest.raises(ValueError, match="last field"):
        Arg(cs.Struct("items" / Flex("n", extent), "n" / u32))
    with pytest.raises(ValueError, match="fixed size"):
        Arg(cs.Struct("name" / cs.CString("utf8")))
    with pytest.raises(ValueError, match="OUT cannot point to elements that hold pointers"):
        Pointer("n", target=segment, direction=OUT)


P = 4096  # the model's first mapped address (page 0 is NULL)


def test_model_pointer_to_in_and_out_buffers_two_rounds() -> None:
    k = KernelModel()
    k.put(P + 100, b"hello")
    k.put(P, xfer.build(dict(tx=P + 100, rx=P + 150, tx_len=5, rx_len=8)))
    spec = Arg(xfer).bind(XFER)

    def transfer(ctx, x):
        x.rx[:5] = bytes(x.tx).upper()
        return 5

    assert k.call(spec, P, transfer) == 5
    assert bytes(k.mem[P + 150:P + 158]) == b"HELLO\0\0\0" and k.rounds == 2
    # tx is IN: read, never written back; rx is OUT: written, never read
    assert k.copied_in == [(P, 24), (P + 100, 5)] and k.copied_out == [(P, 24), (P + 150, 8)]


def test_model_pointers_inside_pointed_to_data_three_rounds_and_flex() -> None:
    k = KernelModel()
    k.put(P + 300, b"abc"), k.put(P + 310, b"wxyz")
    k.put(P + 200, segment.build(dict(buf=P + 300, len=3, flags=0)) + segment.build(dict(buf=P + 310, len=4, flags=0)))
    k.put(P, batch.build(dict(segs=P + 200, count=2, done=0)))

    def run(ctx, b):
        for seg in b.segs:
            seg.buf[:] = bytes(seg.buf)[::-1]
            seg.flags = 7
        b.done = 2
        return b

    k.call(Arg(batch).bind(BATCH), P, run)
    assert k.rounds == 3 and bytes(k.mem[P + 300:P + 303]) == b"cba" and bytes(k.mem[P + 310:P + 314]) == b"zyxw"
    assert batch.parse(bytes(k.mem[P:P + 16])).done == 2
    # the segments were written back with their flags and their original buffer addresses
    assert [(s.buf, s.len, s.flags) for s in cs.Array(2, segment).parse(bytes(k.mem[P + 200:P + 232]))] == \
        [(P + 300, 3, 7), (P + 310, 4, 7)]

    k = KernelModel()
    k.put(P, struct.pack("<II", 3, 0))

    def fill(ctx, e):
        e.items = [dict(start=i, length=10 * i) for i in range(e.count)]
        e.mapped = e.count
        return e

    k.call(Arg(extents).bind(EXTENTS), P, fill)
    assert k.rounds == 2 and struct.unpack("<II", k.mem[P:P + 8]) == (3, 3)
    assert struct.unpack("<6Q", k.mem[P + 8:P + 56]) == (0, 0, 1, 10, 2, 20)


def test_model_out_only_and_too_long_results() -> None:
    k = KernelModel()
    k.call(Arg(point, OUT).bind(0x5401), P + 8, lambda ctx, p: {"x": 5, "y": 6})
    assert k.rounds == 1 and struct.unpack("<ii", k.mem[P + 8:P + 16]) == (5, 6)
    k.put(P, xfer.build(dict(tx=0, rx=P + 40, tx_len=0, rx_len=2)))
    with pytest.raises(ValueError, match="caller's memory holds 2"):
        k.call(Arg(xfer).bind(XFER), P, lambda ctx, x: setattr(x, "rx", b"toolong") or x)


class AsyncPlotter(Device):
    """Declared handlers may be ``async def``: the runtime encodes what the coroutine returns."""

    def __init__(self) -> None:
        self.p = {"x": 1, "y": 2}

    @ioctl(GET_POINT, point)
    async def get_point(self, ctx: Context, pt):
        import asyncio
        await asyncio.sleep(0.01)  # suspends: answered from the loop, through the saved encoder
        pt.update(self.p)
        return pt

    @ioctl(SET_POINT, point)
    async def set_point(self, ctx: Context, pt) -> int:
        self.p = {"x": pt.x, "y": pt.y}  # returns without suspending: answered in the reader
        return 7


@needs_fuse
def test_async_declared_handlers_on_fuse(server: Server) -> None:
    server.add(AsyncPlotter(), "aplotter")
    fd = os.open(server.path("aplotter"), os.O_RDWR)
    try:
        assert fcntl.ioctl(fd, GET_POINT, bytes(8)) == struct.pack("<ii", 1, 2)
        assert fcntl.ioctl(fd, SET_POINT, bytearray(struct.pack("<ii", 5, 6)), True) == 7
        assert fcntl.ioctl(fd, GET_POINT, bytes(8)) == struct.pack("<ii", 5, 6)
    finally:
        os.close(fd)
