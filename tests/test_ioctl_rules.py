"""The declaration rules of ioctls v2, on the model of the kernel's retry loop (``ioctl_model``).

Data-dependent directions and lengths (per element of an array of structs),
read-only caller memory, NULL pointers (EFAULT unless optional), the kernel's
limits (ENOMEM), field-level output, Sized families, C layouts, value
arguments, undeclaring and overriding in subclasses.  The same rules against
the real CUSE kernel are in ``tests/cuse/test_cuse_ioctl_rules.py``.
"""

from __future__ import annotations

import errno
import struct
from types import SimpleNamespace
from typing import Any

import construct as cs
import pytest
from ioctl_model import PAGE, KernelModel

from fusd_runtime import Device
from fusd_runtime.ioctl import (
    IN,
    INOUT,
    IOR,
    IOW,
    IOWR,
    MAX_BYTES,
    OUT,
    Arg,
    CStruct,
    IoctlRetry,
    Pointer,
    Sized,
    c,
    call_declared,
    check_ioctls,
    compile_schema,
    ioctl,
    ioctl_table,
    plan_unrestricted,
    restricted_decode,
    restricted_encoder,
)

P = PAGE

# --- i2c-dev's I2C_RDWR (linux/i2c.h, linux/i2c-dev.h): each message's flags say which way its buffer goes
I2C_M_RD = 0x0001
i2c_msg = CStruct("addr" / c.u16, "flags" / c.u16, "len" / c.u16,
                  "buf" / Pointer("len", direction=lambda m: OUT if m.flags & I2C_M_RD else IN), name="i2c_msg")
i2c_rdwr_ioctl_data = CStruct("msgs" / Pointer("nmsgs", target=i2c_msg, direction=IN), "nmsgs" / c.u32,
                              name="i2c_rdwr_ioctl_data")
I2C_RDWR = 0x0707  # encodes no size: the declared size is checked instead


class Eeprom(Device):
    """An I2C EEPROM at 0x50: a write of one byte sets the address, a read returns from there."""

    def __init__(self) -> None:
        self.mem = bytes(range(256))
        self.pos = 0

    @ioctl(I2C_RDWR, i2c_rdwr_ioctl_data, IN, size=16)
    def rdwr(self, ctx: Any, arg: Any) -> int:
        for m in arg.msgs:
            if m.flags & I2C_M_RD:
                m.buf[:] = self.mem[self.pos:self.pos + m.len]
            else:
                self.pos = m.buf[0]
        return len(arg.msgs)


def _i2c_call(k: KernelModel, msgs: Any) -> Any:
    k.put(P + 256, b"".join(i2c_msg.build(m) for m in msgs))
    k.put(P, i2c_rdwr_ioctl_data.build(dict(msgs=P + 256, nmsgs=len(msgs))))
    dev = Eeprom()
    spec = ioctl_table(dev).get(I2C_RDWR)
    return k.call(spec, P, dev.rdwr)


def test_direction_per_element_from_its_flags_and_read_only_write_buffers() -> None:
    # the write buffer and the message array are read-only memory, as a const buffer would be
    k = KernelModel(readonly=[(P, 1024), (P + 2048, 1)])
    k.put(P + 2048, b"\x10")
    res = _i2c_call(k, [dict(addr=0x50, flags=0, len=1, buf=P + 2048),
                        dict(addr=0x50, flags=I2C_M_RD, len=4, buf=P + 3000)])
    assert res == 2 and bytes(k.mem[P + 3000:P + 3004]) == bytes([0x10, 0x11, 0x12, 0x13])
    # rounds: the struct; the messages; the write buffer in and the read buffer out
    assert k.rounds == 3
    assert k.copied_in == [(P, 16), (P + 256, 32), (P + 2048, 1)]  # the read buffer is not copied in
    assert k.copied_out == [(P + 3000, 4)]  # nothing IN is written back: read-only memory is fine


def test_inout_buffers_are_read_and_written_and_a_read_only_one_faults() -> None:
    k = KernelModel(readonly=[(P + 2048, 4)])
    k.put(P + 256, i2c_msg.build(dict(addr=0x50, flags=I2C_M_RD, len=4, buf=P + 2048)))
    k.put(P, i2c_rdwr_ioctl_data.build(dict(msgs=P + 256, nmsgs=1)))
    with pytest.raises(OSError) as exc:  # the kernel's copy-out into read-only memory
        k.call(ioctl_table(Eeprom()).get(I2C_RDWR), P, Eeprom().rdwr)
    assert exc.value.errno == errno.EFAULT


xfer = CStruct("tx" / Pointer("len", direction=IN, optional=True), "rx" / Pointer("len", direction=OUT),
               "len" / c.u32, name="xfer")
XFER = IOW("X", 1, xfer.sizeof())


def test_null_pointers_efault_unless_optional() -> None:
    spec = Arg(xfer).bind(XFER)
    seen = []

    def handler(ctx: Any, x: Any) -> int:
        seen.append((x.tx, bytes(x.rx) if x.rx is not None else None))
        return 0

    k = KernelModel()
    k.put(P, xfer.build(dict(tx=0, rx=P + 100, len=3)))  # tx optional: NULL means "none"
    assert k.call(spec, P, handler) == 0 and seen == [(None, bytes(3))]
    k.put(P, xfer.build(dict(tx=P + 200, rx=0, len=3)))  # rx is not optional: EFAULT, device not called
    with pytest.raises(OSError) as exc:
        k.call(spec, P, handler)
    assert exc.value.errno == errno.EFAULT and "rx: NULL pointer with length 3" in str(exc.value)
    k.put(P, xfer.build(dict(tx=0, rx=0, len=0)))  # NULL with length 0 is no access at all
    assert k.call(spec, P, handler) == 0 and seen[-1] == (b"", b"")


def test_the_kernels_limits_answer_enomem() -> None:
    big = CStruct("buf" / Pointer("len", direction=IN), "len" / c.u32, name="big")
    spec = Arg(big).bind(IOW("X", 2, big.sizeof()))
    k = KernelModel(size=P + MAX_BYTES + 64)
    k.put(P, big.build(dict(buf=P + 32, len=MAX_BYTES - 16)))  # struct + buffer = exactly 128 KiB: fine
    assert k.call(spec, P, lambda ctx, b: len(b.buf)) == MAX_BYTES - 16
    k.put(P, big.build(dict(buf=P + 32, len=MAX_BYTES - 15)))
    with pytest.raises(OSError) as exc:
        k.call(spec, P, lambda ctx, b: 0)
    assert exc.value.errno == errno.ENOMEM and "at most 131072 bytes in" in str(exc.value)
    # 256 ranges at most: the struct, the array and 255 buffers is one too many
    seg = CStruct("p" / Pointer("n", direction=IN), "n" / c.u32, name="seg")
    many = CStruct("segs" / Pointer("count", target=seg, direction=IN), "count" / c.u32, name="many")
    spec = Arg(many).bind(IOW("X", 3, many.sizeof()))
    for count, ok in ((254, True), (255, False)):
        k = KernelModel(size=8 * P)
        k.put(P + 64, b"".join(seg.build(dict(p=P + 6 * P, n=1)) for _ in range(count)))
        k.put(P, many.build(dict(segs=P + 64, count=count)))
        if ok:
            assert k.call(spec, P, lambda ctx, m: len(m.segs)) == count
        else:
            with pytest.raises(OSError) as exc:
                k.call(spec, P, lambda ctx, m: 0)
            assert exc.value.errno == errno.ENOMEM and "at most 256 memory ranges" in str(exc.value)
    # a raw device's own retry is held to the same limits, with the kernel's errno
    with pytest.raises(OSError) as exc:
        IoctlRetry([(P, 1)] * 200, [(P, 1)] * 57)
    assert exc.value.errno == errno.ENOMEM


# --- field-level output: sg_io_hdr-like, a struct whose status fields alone are written back
hdr = CStruct("interface_id" / c.int, "dxfer_len" / c.uint, "dxferp" / Pointer("dxfer_len", direction=OUT),
              "status" / c.uchar, "sb_len_wr" / c.uchar, "resid" / c.int, "info" / c.uint, name="hdr")
HDR = 0x2285


def test_only_the_out_fields_are_written_back() -> None:
    assert hdr.c_offsets == {"interface_id": 0, "dxfer_len": 4, "dxferp": 8, "status": 16, "sb_len_wr": 17,
                             "resid": 20, "info": 24} and hdr.sizeof() == 32
    spec = Arg(hdr, INOUT, out_fields=("status", "resid"), size=32).bind(HDR)

    def handler(ctx: Any, h: Any) -> Any:
        h.dxferp[:] = b"data"
        h.status, h.resid, h.info, h.interface_id = 2, 0, 99, 0  # info and interface_id are not copied back
        return h

    k = KernelModel(readonly=[(P, 16), (P + 24, 8)])  # all but status..resid is read-only
    k.put(P, hdr.build(dict(interface_id=ord("S"), dxfer_len=4, dxferp=P + 100, status=0xEE, sb_len_wr=0xEE,
                            resid=-1, info=7)))
    before = bytes(k.mem[P:P + 32])
    assert k.call(spec, P, handler) == 0
    assert k.copied_out == [(P + 16, 1), (P + 20, 4), (P + 100, 4)]
    after = bytes(k.mem[P:P + 32])
    assert after[16] == 2 and after[20:24] == bytes(4) and bytes(k.mem[P + 100:P + 104]) == b"data"
    assert after[:16] == before[:16] and after[17:20] == before[17:20] and after[24:] == before[24:]


def test_field_level_output_on_fuse_writes_a_prefix_with_the_callers_bytes() -> None:
    flat = CStruct("a" / c.u32, "b" / c.u32, "c" / c.u32, name="flat")
    spec = Arg(flat, out_fields=("a",)).bind(IOWR("X", 9, 12))
    data = flat.build(dict(a=1, b=2, c=3))
    value = restricted_decode(spec, data)
    value.a, value.b = 10, 20
    raw = restricted_encoder(spec, value, data)(value)
    assert raw == struct.pack("<I", 10)  # the kernel copies these 4 bytes; b and c stay


def test_sized_families_declare_every_count_at_once() -> None:
    spi_ioc_transfer = CStruct("tx_buf" / Pointer("len", direction=IN, optional=True),
                               "rx_buf" / Pointer("len", direction=OUT, optional=True),
                               "len" / c.u32, "speed_hz" / c.u32, "delay_usecs" / c.u16, "bits_per_word" / c.u8,
                               "cs_change" / c.u8, "tx_nbits" / c.u8, "rx_nbits" / c.u8, "word_delay_usecs" / c.u8,
                               "pad" / c.u8, name="spi_ioc_transfer")

    def SPI_IOC_MESSAGE(n: int) -> int:
        return IOW("k", 0, n * 32)

    class Loopback(Device):
        @ioctl(SPI_IOC_MESSAGE(0), Sized(spi_ioc_transfer), IN)
        def message(self, ctx: Any, xfers: Any) -> int:
            for x in xfers:
                if x.rx_buf is not None:
                    x.rx_buf[:] = x.tx_buf if x.tx_buf is not None else bytes(x.len)
            return sum(x.len for x in xfers)

    dev = Loopback()
    table = check_ioctls(dev, "cuse")
    assert table.get(SPI_IOC_MESSAGE(3)).codec.size == 96 and table.get(IOW("k", 0, 33)).codec is None
    k = KernelModel()
    k.put(P + 500, b"abc")
    enc = compile_schema(spi_ioc_transfer).encode  # missing fields are zero
    k.put(P, enc(dict(tx_buf=P + 500, rx_buf=P + 600, len=3)) + enc(dict(tx_buf=0, rx_buf=P + 700, len=2)))
    assert k.call(table.get(SPI_IOC_MESSAGE(2)), P, dev.message) == 5
    assert bytes(k.mem[P + 600:P + 603]) == b"abc" and bytes(k.mem[P + 700:P + 702]) == b"\0\0"
    with pytest.raises(OSError) as exc:  # 33 bytes is no whole number of transfers: spidev says EINVAL
        k.call(table.get(IOW("k", 0, 33)), P, dev.message)
    assert exc.value.errno == errno.EINVAL
    with pytest.raises(ValueError, match="pointer field"):  # and FUSE cannot serve it
        check_ioctls(Loopback(), "fuse")


def test_c_layouts_pad_like_the_abi_and_sizes_are_checked() -> None:
    s = CStruct("a" / c.uchar, "b" / c.u64, "c" / c.ushort, name="s")
    assert (s.c_offsets, s.sizeof(), s.c_align) == ({"a": 0, "b": 8, "c": 16}, 24, 8)
    assert not s.abi_neutral  # i386 aligns a u64 to 4: offsets 0, 4, 12, size 16
    assert (s.c_size32, CStruct("a" / c.uchar, "b" / c.aligned_u64, name="t").c_size32) == (16, 16)
    assert CStruct("a" / c.uchar, "b" / c.u64, packed=True).sizeof() == 9
    nested = CStruct("x" / c.uchar, "inner" / s, "arr" / c.array(c.ushort, 3), name="n")
    assert nested.c_offsets == {"x": 0, "inner": 8, "arr": 32} and nested.sizeof() == 40
    rtc_time = CStruct(*(n / c.int for n in ("tm_sec", "tm_min", "tm_hour")), name="rtc_time")
    assert rtc_time.abi_neutral and "/*    8    4 */  int tm_hour;" in rtc_time.describe()
    with pytest.raises(ValueError, match="declared size=64 but its schema is 88 bytes"):
        Arg(CStruct("p" / c.pointer, "q" / Pointer(1), "r" / c.array(c.u64, 9)), INOUT, size=64).bind(0x2285)
    with pytest.raises(ValueError, match="encodes a 4-byte argument but its schema is 24 bytes"):
        ioctl(IOR("X", 1, 4), s)
    assert Arg(s, OUT).bind(IOR("X", 1, 24)).refuses_compat and \
        not Arg(rtc_time, OUT).bind(IOR("X", 2, 12)).refuses_compat


def test_value_arguments_reach_the_handler_as_ints() -> None:
    class Grabber(Device):
        @ioctl(IOW("E", 0x90, 4), None)  # EVIOCGRAB: the argument is the value itself
        def grab(self, ctx: Any, value: int) -> int:
            return value + 1

    dev = Grabber()
    spec = ioctl_table(dev).get(IOW("E", 0x90, 4))
    plan = plan_unrestricted(spec, 41, b"", 0)
    assert plan.retry is None  # nothing is copied for a value: the first round calls the device
    assert call_declared(spec, SimpleNamespace(ioctl_arg=41, device=dev), plan.value, 0) == 42


def test_subclasses_override_undeclare_and_redeclare() -> None:
    GET, SET, OTHER = IOR("Q", 1, 4), IOW("Q", 2, 4), IOR("Q", 3, 4)

    class Base(Device):
        ioctls = {OTHER: Arg(cs.Int32ul, OUT)}

        @ioctl(GET, cs.Int32ul)
        def get(self, ctx: Any, v: int) -> Any:
            return 0, 1

        @ioctl(SET, cs.Int32ul)
        def set(self, ctx: Any, v: int) -> int:
            return 0

    class Override(Base):
        def get(self, ctx: Any, v: int) -> Any:  # a plain override keeps the declaration
            return 0, 2

    class Undeclare(Base):
        set = None  # type: ignore[assignment]
        ioctls = {OTHER: None}

    class Redeclare(Base):
        @ioctl(IOR("Q", 4, 4), cs.Int32ul)
        def get(self, ctx: Any, v: int) -> Any:  # the name now serves another number: GET is gone
            return 0, 3

    assert sorted(ioctl_table(Base())) == sorted([GET, SET, OTHER])
    assert ioctl_table(Override()).get(GET).handler == "get"
    assert sorted(ioctl_table(Undeclare())) == [GET]
    assert sorted(ioctl_table(Redeclare())) == sorted([SET, OTHER, IOR("Q", 4, 4)])

    with pytest.raises(ValueError, match="declared twice"):
        class Twice(Device):
            @ioctl(GET, cs.Int32ul)
            def a(self, ctx: Any, v: int) -> int:
                return 0

            @ioctl(GET, cs.Int32ul)
            def b(self, ctx: Any, v: int) -> int:
                return 0
        ioctl_table(Twice())
