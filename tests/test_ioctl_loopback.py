"""Declared ioctls through the real CuseSession on a socketpair (``cuse_loopback``): host-side, no CUSE.

The guest tier (tests/cuse) is the proof against the real kernel; this checks,
on any machine, that the session's call sites (CuseSession.call_ioctl, the
retry replies, the statistics) do what the planner promises.
"""

from __future__ import annotations

import errno
from typing import Any

import pytest
from cuse_loopback import PAGE, CuseLoopback
from ioctl_bench_devices import XFER, DeclaredXfer, HandXfer, xfer

from fusd_runtime import Device
from fusd_runtime.ioctl import IN, IOR, IOW, CStruct, IoctlRetry, Pointer, c, compile_schema, ioctl

P = PAGE
_enc = compile_schema(xfer).encode


@pytest.mark.parametrize("device", [DeclaredXfer, HandXfer])
def test_declared_and_hand_written_give_the_same_bytes_in_the_same_rounds(device: Any) -> None:
    with CuseLoopback(device()) as lo:
        lo.put(P + 64, b"hal")
        lo.put(P, _enc(dict(tx=P + 64, rx=P + 128, len=3)))
        assert lo.ioctl(XFER, P) == 3
        assert lo.get(P + 128, 4) == b"ibm\0"
        # every retry round counted, including the ones a raw device returns itself
        assert lo.rounds == lo.session.ioctl_retries == 2


def test_over_limit_requests_get_the_kernels_errno_from_us() -> None:
    big = CStruct("buf" / Pointer("len", direction=IN), "len" / c.u32, name="big")
    BIG = IOW("X", 7, big.sizeof())
    asked = []

    class Declared(Device):
        @ioctl(BIG, big, IN)
        def take(self, ctx: Any, b: Any) -> int:
            return len(b.buf)

    class Raw(Device):  # asks for the same memory by hand, past our check: the loopback "kernel" refuses it
        def ioctl(self, ctx: Any, cmd: int, data: bytes, out_size: int) -> Any:
            r = object.__new__(IoctlRetry)
            r.in_iovs, r.out_iovs = [(ctx.ioctl_arg, 16), (ctx.ioctl_arg + 64, 128 * 1024)], []
            asked.append(1)
            return r

    errnos = []
    for dev in (Declared(), Raw()):
        with CuseLoopback(dev, mem_size=40 * PAGE) as lo:
            lo.put(P, compile_schema(big).encode(dict(buf=P + 64, len=128 * 1024)))
            with pytest.raises(OSError) as exc:
                lo.ioctl(BIG, P)
            errnos.append(exc.value.errno)
    assert errnos == [errno.ENOMEM, errno.ENOMEM] and asked


def test_null_and_read_only_through_the_session() -> None:
    with CuseLoopback(DeclaredXfer()) as lo:
        lo.put(P, _enc(dict(tx=0, rx=P + 128, len=3)))
        with pytest.raises(OSError) as exc:
            lo.ioctl(XFER, P)
        assert exc.value.errno == errno.EFAULT
        lo.readonly = [(P, 128)]  # the struct and the tx buffer are read-only: nothing writes there
        lo.put(P + 64, b"abc")
        lo.put(P, _enc(dict(tx=P + 64, rx=P + 128, len=3)))
        assert lo.ioctl(XFER, P) == 3 and lo.get(P + 128, 3) == b"bcd"


def test_a_32_bit_caller_is_refused_where_its_layout_differs() -> None:
    compat = 1 << 0 | 1 << 1  # FUSE_IOCTL_COMPAT | FUSE_IOCTL_UNRESTRICTED
    ints = CStruct("a" / c.int, "b" / c.int, name="ints")  # the same on i386
    mixed = CStruct("a" / c.u32, "b" / c.u64, name="mixed")  # i386 aligns b to 4: a different layout
    GET_INTS, GET_MIXED = IOR("X", 8, ints.sizeof()), IOR("X", 9, mixed.sizeof())

    class Both(DeclaredXfer):
        @ioctl(GET_INTS, ints)
        def get_ints(self, ctx: Any, v: Any) -> Any:
            v.a, v.b = 1, 2
            return v

        @ioctl(GET_MIXED, mixed)
        def get_mixed(self, ctx: Any, v: Any) -> Any:
            return v

    with CuseLoopback(Both()) as lo:
        for cmd in (XFER, GET_MIXED):  # a pointer; an ABI-dependent layout
            with pytest.raises(OSError) as exc:
                lo.ioctl(cmd, P, flags=compat)
            assert exc.value.errno == errno.EINVAL
        assert lo.ioctl(GET_INTS, P, flags=compat) == 0 and lo.get(P, 8) == b"\1\0\0\0\2\0\0\0"
        assert lo.ioctl(GET_MIXED, P) == 0  # a 64-bit caller is served

