"""The compiled marshalling plan against construct, byte for byte, on random schemas and values.

``fusd_runtime.ioctl.codec`` turns a declared construct schema into
``struct.Struct`` code and generated record classes; construct stays the spec.
Hypothesis draws schemas from the compiled subset (every integer and float
format, bytes, strings, padding, arrays, nested and C-laid-out structs), then
random values and random bytes, and checks that both paths build the same bytes
and parse the same values.  The records' mapping API and the forgiving encoder
(dicts, missing fields, bad values) are tested after.
"""

from __future__ import annotations

import math
import random
import struct
from typing import Any

import construct as cs
import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st

from fusd_runtime.ioctl import CStruct, Record, c, compile_schema
from fusd_runtime.ioctl.codec import Codec, ConstructCodec

SCALARS = [cs.Int8ul, cs.Int8sl, cs.Int16ul, cs.Int16sl, cs.Int32ul, cs.Int32sl, cs.Int64ul, cs.Int64sl,
           cs.Float32l, cs.Float64l, c.int, c.uint, c.long, c.ulong, c.uchar, c.short, c.u64, c.s8]
_names = st.sampled_from(["a", "b", "count", "flags", "len", "buf", "x", "y", "status", "tm_sec", "items"])


def _schemas(depth: int = 2) -> Any:
    leaf = st.one_of(
        st.sampled_from(SCALARS),
        st.integers(1, 12).map(cs.Bytes),
        st.integers(1, 12).map(lambda n: cs.PaddedString(n, "ascii")),
    )
    if depth == 0:
        return leaf
    inner = _schemas(depth - 1)
    return st.one_of(
        leaf,
        st.tuples(st.integers(0, 20), inner).map(lambda t: cs.Array(t[0], t[1])),
        _struct(inner, cs.Struct),
        _struct(inner, CStruct),
    )


def _struct(inner: Any, kind: Any) -> Any:
    field = st.tuples(_names, inner)
    pad = st.integers(1, 5).map(cs.Padding)

    def build(fields: Any) -> Any:
        seen, subcons = set(), []
        for item in fields:
            if isinstance(item, cs.Construct):  # padding (plain structs only)
                subcons.append(item)
                continue
            name, sub = item
            if name not in seen:
                seen.add(name)
                subcons.append(name / sub)
        if not any(sc.name for sc in subcons):
            subcons.append("only" / cs.Int8ul)
        return kind(*subcons) if kind is cs.Struct else kind(*[sc for sc in subcons if sc.name])

    elems = st.lists(st.one_of(field, pad) if kind is cs.Struct else field, min_size=1, max_size=6)
    return elems.map(build)


def _values(schema: Any) -> Any:
    """A strategy for valid values of ``schema`` (as construct builds them)."""
    while isinstance(schema, cs.Renamed):
        schema = schema.subcon
    if isinstance(schema, cs.FormatField):
        fmt = schema.fmtstr[1:]
        if fmt in "fd":
            width = 32 if fmt == "f" else 64
            return st.floats(width=width, allow_nan=False)
        bits = 8 * schema.length
        if fmt.islower() and fmt != "?":
            return st.integers(-(1 << (bits - 1)), (1 << (bits - 1)) - 1)
        return st.integers(0, (1 << bits) - 1)
    if isinstance(schema, cs.Bytes):
        return st.binary(min_size=schema.length, max_size=schema.length)
    if isinstance(schema, cs.StringEncoded):
        n = schema.subcon.length
        return st.text(alphabet="abcxyz019 ", max_size=n)
    if isinstance(schema, cs.Array):
        return st.lists(_values(schema.subcon), min_size=schema.count, max_size=schema.count)
    if isinstance(schema, cs.Struct):
        named = [sc for sc in schema.subcons if sc.name]
        return st.tuples(*[_values(sc) for sc in named]).map(
            lambda vals: {sc.name: v for sc, v in zip(named, vals)})
    raise AssertionError(schema)


def norm(v: Any) -> Any:
    """Records, Containers, lists and floats in one comparable form (floats by their bits)."""
    if isinstance(v, Record):
        return {k: norm(x) for k, x in v._asdict().items()}
    if isinstance(v, dict):
        return {k: norm(x) for k, x in v.items() if not k.startswith("_")}
    if isinstance(v, (list, tuple)):
        return [norm(x) for x in v]
    if isinstance(v, float):
        return struct.pack("<d", v) if not math.isnan(v) else "nan"
    return v


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_compiled_plan_and_construct_agree_on_random_values(data: Any) -> None:
    schema = data.draw(_schemas())
    codec = compile_schema(schema)
    assert isinstance(codec, Codec), codec
    assert codec.size == schema.sizeof()
    value = data.draw(_values(schema))
    built = schema.build(value)
    # encode: the same bytes from a plain mapping and from a decoded record
    assert codec.encode(value) == built
    decoded = codec.decode(built)
    assert norm(decoded) == norm(schema.parse(built))
    assert codec.encode(decoded) == built
    assert norm(codec.zero()) == norm(schema.parse(bytes(len(built))))


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_compiled_plan_and_construct_agree_on_random_bytes(data: Any) -> None:
    schema = data.draw(_schemas())
    codec = compile_schema(schema)
    raw = data.draw(st.binary(min_size=schema.sizeof(), max_size=schema.sizeof()))
    try:
        expected = schema.parse(raw)
    except (cs.ConstructError, UnicodeDecodeError):
        with pytest.raises((UnicodeDecodeError, ValueError)):
            codec.decode(raw)
        return
    got = codec.decode(raw)
    assert norm(got) == norm(expected)
    assert codec.encode(got) == schema.build(expected)  # padding bytes come back as zeros on both paths
    # at an offset inside a larger buffer, as the unrestricted planner decodes
    assert norm(codec.decode(b"\xee" * 5 + raw, 5)) == norm(expected)


def test_records_are_attribute_and_mapping_views() -> None:
    rtc_time = cs.Struct(*(n / cs.Int32sl for n in ("tm_sec", "tm_min", "tm_hour")))
    codec = compile_schema(rtc_time)
    tm = codec.zero()
    tm.tm_hour = 12
    tm["tm_min"] = 34
    tm.update({"tm_sec": 56})
    assert dict(tm) == {"tm_sec": 56, "tm_min": 34, "tm_hour": 12} == tm
    assert list(tm) == ["tm_sec", "tm_min", "tm_hour"] and len(tm) == 3 and "tm_hour" in tm
    assert tm == rtc_time.parse(codec.encode(tm))  # equal to construct's Container of the same bytes
    assert repr(tm) == "record(tm_sec=56, tm_min=34, tm_hour=12)"
    with pytest.raises(KeyError):
        tm["nope"] = 1
    with pytest.raises(AttributeError):
        tm.nope = 1  # slots: a typo in a field name is an error, not a silently ignored attribute
    # a field named like a mapping method shadows it; _asdict always works
    items = compile_schema(cs.Struct("items" / cs.Int8ul, "keys" / cs.Int8ul)).decode(b"\x01\x02")
    assert items.items == 1 and items._asdict() == {"items": 1, "keys": 2}


def test_forgiving_encoder_and_its_errors() -> None:
    termios = cs.Struct("c_iflag" / cs.Int32ul, "c_line" / cs.Int8ul, "c_cc" / cs.Array(3, cs.Int8ul),
                        "name" / cs.Bytes(4))
    codec = compile_schema(termios)
    # a dict with missing fields: zeros, like FastStruct.encode; short bytes are zero padded
    assert codec.encode({"c_line": 1, "name": b"ab"}) == bytes(4) + b"\x01" + bytes(3) + b"ab\0\0"
    with pytest.raises(ValueError, match=r"c_cc: expected 3 elements, got 2"):
        codec.encode({"c_cc": [1, 2]})
    with pytest.raises(ValueError, match=r"name: 5 bytes do not fit in 4"):
        codec.encode({"name": b"abcde"})
    with pytest.raises(ValueError, match=r"c_iflag: expected a number, got str"):
        codec.encode({"c_iflag": "x"})
    rec = codec.zero()
    rec.c_cc = [1]  # a record with a wrong value goes the forgiving path and says what is wrong
    with pytest.raises(ValueError, match=r"c_cc: expected 3 elements, got 1"):
        codec.encode(rec)


def test_outside_the_compiled_subset_construct_serves() -> None:
    flags = cs.Struct("mode" / cs.Enum(cs.Int8ul, off=0, on=1), "n" / cs.Int16ub)
    codec = compile_schema(flags)
    assert isinstance(codec, ConstructCodec)
    assert codec.decode(b"\x01\x00\x05").mode == "on" and codec.encode({"mode": "off", "n": 5}) == b"\x00\x00\x05"


# ---------------------------------------------------------------------- generated planner == generic walk
def _planner_case(data: Any) -> Any:
    from fusd_runtime.ioctl import IN, INOUT, IOWR, OUT, Arg, CStruct, Pointer

    nptr = data.draw(st.integers(1, 3))
    fields: list = [("len", c.u32), ("flags", c.u32)]
    for k in range(nptr):
        direction = data.draw(st.sampled_from([IN, OUT, INOUT, None, "flags"]))
        if direction == "flags":  # data-dependent: a bit of the flags word per pointer
            direction = (lambda bit: lambda s: (OUT if s.flags >> bit & 1 else IN) if s.flags >> 4 & 1 == 0
                         else None)(k)
        length = data.draw(st.sampled_from(["len", 3, "fn"]))
        if length == "fn":
            length = lambda s: s.len // 2  # noqa: E731
        fields.append((f"p{k}", Pointer(length, direction=direction, optional=data.draw(st.booleans()))))
    schema = CStruct(*[n / t for n, t in fields], name="case")
    spec = Arg(schema, data.draw(st.sampled_from([IN, INOUT]))).bind(IOWR("Z", 1, schema.sizeof()))
    values = {"len": data.draw(st.integers(0, 6)), "flags": data.draw(st.integers(0, 31))}
    for k in range(nptr):
        values[f"p{k}"] = data.draw(st.sampled_from([0, 0x1000 + 64 * k]))
    return spec, schema, values


def _outcome(plan: Any) -> Any:
    if plan.retry is not None:
        return ("retry", plan.retry.in_iovs, plan.retry.out_iovs)
    return ("call", norm(plan.value), [(o[0], o[2], o[3], o[4], o[7]) for o in plan.outs])


@settings(max_examples=400, deadline=None)
@given(st.data())
def test_generated_planner_makes_the_generic_walks_rounds(data: Any) -> None:
    """Round by round over the same caller memory, as the kernel loops: the same retries, value and outs."""
    from fusd_runtime.ioctl import walk

    spec, schema, values = _planner_case(data)
    generated = walk._generate(spec)
    mem = bytearray(random.Random(data.draw(st.integers(0, 1 << 32))).randbytes(0x2000))
    arg = 0x1800
    mem[arg:arg + schema.sizeof()] = compile_schema(schema).encode(values)
    in_iovs: list = []
    out_size = 0
    for _ in range(4):
        arg_data = b"".join(bytes(mem[a:a + n]) for a, n in in_iovs)
        results = []
        for planner in (generated, lambda a, d, o: walk._walk(spec, a, d, o)):
            try:
                results.append(_outcome(planner(arg, arg_data, out_size)))
            except OSError as exc:
                results.append(("error", exc.errno))
        assert results[0] == results[1], (generated.source, results)
        if results[0][0] != "retry":
            event(results[0][0])  # "call" or "error": both reached (hypothesis --hypothesis-show-statistics)
            break
        in_iovs, out_iovs = results[0][1], results[0][2]
        out_size = sum(n for _, n in out_iovs)
