"""The fast path (``struct.Struct`` derived at import) agrees with construct on every layout.

construct is the specification; ``fastpath.FAST`` and ``layouts.fast_layout`` are
what the server runs.  A divergence (a wrong format code, a field out of order,
a signedness slip, a prefix cut in the wrong place for an old minor) would decode
garbage silently on the hot path, so hypothesis throws random bytes of the right
size at every struct in ``STRUCTS`` and at every compat layout an old minor or
the FUSE_SETXATTR_EXT flag selects, and demands identical values and identical
bytes back from both paths.
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from wire_samples import MINORS

from fusd_wire import FAST, WireError
from fusd_wire import constants as C
from fusd_wire.fastpath import record_to_dict
from fusd_wire.layouts import COMPAT_SIZES, fast_layout, layout
from fusd_wire.schemas import STRUCTS

SETXATTR_EXT = int(C.InitFlags.FUSE_SETXATTR_EXT)
#: the proof minors plus both sides of every size change in COMPAT_SIZES and of the iovec change (7.16)
LAYOUT_MINORS = sorted(set(MINORS) | {m for sizes in COMPAT_SIZES.values() for first, _ in sizes
                                      for m in (first - 1, first)} | {15, 16})


def _layout_cases():
    """One case per distinct (struct, wire layout): every struct, every minor, with/without SETXATTR_EXT."""
    seen = {}
    for name in STRUCTS:
        for minor in LAYOUT_MINORS:
            for flags in (0, SETXATTR_EXT):
                con = layout(name, minor, flags)
                key = (name, repr(fast_layout(name, minor, flags).struct.format),
                       tuple(sc.name for sc in con.subcons))
                seen.setdefault(key, (name, minor, flags))
    return [pytest.param(*case, id=f"{case[0]}@7.{case[1]}{'+ext' if case[2] else ''}") for case in seen.values()]


CASES = _layout_cases()


def plain(value):
    """A construct parse result as plain dicts/lists, without ``_io``."""
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items() if k != "_io"}
    if isinstance(value, list):
        return [plain(v) for v in value]
    return value


def test_every_struct_and_compat_layout_is_covered():
    names = {p.values[0] for p in CASES}
    assert names == set(STRUCTS)
    sizes = {(p.values[0], layout(*p.values).sizeof()) for p in CASES}
    for name, steps in COMPAT_SIZES.items():
        for _first, size in steps:
            assert (name, size) in sizes, f"{name} at {size} bytes is not tested"
    assert ("fuse_setxattr_in", 8) in sizes and ("fuse_setxattr_in", 16) in sizes
    assert len({p.values[0] for p in CASES if p.values[0] == "fuse_ioctl_iovec"}) == 1
    assert sum(p.values[0] == "fuse_ioctl_iovec" for p in CASES) == 2  # raw struct iovec < 7.16, then ours


@pytest.mark.parametrize("name,minor,flags", CASES)
@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_construct_and_fast_path_agree(name, minor, flags, data):
    con = layout(name, minor, flags)
    fast = fast_layout(name, minor, flags)
    size = con.sizeof()
    assert fast.size == size
    raw = data.draw(st.binary(min_size=size, max_size=size), label="raw")
    pad = data.draw(st.integers(0, 16), label="offset")
    buf = bytes(pad) + raw + b"\xff"

    parsed = con.parse(raw)
    record = fast.decode(buf, pad)
    assert record_to_dict(record) == plain(parsed)

    assert con.build(parsed) == raw
    assert fast.pack(*fast.unpack_from(buf, pad)) == raw
    assert fast.encode(record) == raw
    assert fast.encode(plain(parsed)) == raw  # a mapping with header names works too
    assert con.build(record_to_dict(record)) == raw


@pytest.mark.parametrize("name", sorted(STRUCTS))
def test_full_layout_is_the_fast_namespace(name):
    """``FAST.<name>`` (what the hot path imports) is the 7.45 layout, field for field."""
    fast = FAST[name]
    assert fast.size == STRUCTS[name].sizeof()
    assert fast.struct.format == fast_layout(name, 45, SETXATTR_EXT).struct.format
    assert fast.record is not None and record_to_dict(fast.zero()) == plain(STRUCTS[name].parse(bytes(fast.size)))


def test_short_buffer_is_a_wire_error_with_offset():
    with pytest.raises(WireError) as info:
        FAST.fuse_read_in.decode(bytes(60), 40)
    assert (info.value.offset, info.value.expected) == (40, "fuse_read_in")
    assert "offset 40" in str(info.value)


def test_encode_fills_missing_fields_with_zero_and_refuses_bad_values():
    raw = FAST.fuse_out_header.encode({"len": 16, "unique": 9})
    assert raw == STRUCTS["fuse_out_header"].build({"len": 16, "error": 0, "unique": 9})
    with pytest.raises(WireError):
        FAST.fuse_out_header.encode({"len": -1})
    with pytest.raises(WireError):
        FAST.fuse_init_out.encode({"unused": [0] * 3})  # uint16_t unused[11]: wrong element count


@pytest.mark.parametrize("name", sorted(STRUCTS))
def test_offsets_point_at_each_field(name):
    """``offsets[f]`` is where the packed struct holds field ``f`` (first non-zero byte of a 1 in it)."""
    fast = FAST[name]
    zero = fast.struct.unpack(bytes(fast.size))
    for i, field in enumerate(fast.fields):
        values = list(zero)
        values[i] = b"\x01" * len(zero[i]) if isinstance(zero[i], bytes) else 1
        raw = fast.struct.pack(*values)
        assert raw.index(1) == fast.offsets[field], f"{name}.{field}"
