"""The generated Container readers (``fastdecode``) give what construct's parse gives.

The complete codec now cuts fixed structs out with them instead of construct, so a
divergence (a field out of order, a nested struct flattened, an array as a tuple, a
layout cut wrong for an old minor) would change every decoded trace.  Hypothesis
throws random bytes at every struct in every compat layout and demands the same
Container (same keys in the same order, same nesting and types) as
``strip_io(schema.parse(...))``; and every wire sample decodes the same, with the
same types, through the codec as through construct alone.
"""

from __future__ import annotations

import io

import construct as cs
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_fastpath import CASES
from wire_samples import seed_corpus

from fusd_wire.codec import PartContext
from fusd_wire.fastdecode import container_reader
from fusd_wire.layouts import layout
from fusd_wire.opcodes import NOTIFICATIONS, OPS
from fusd_wire.parts import strip_io


def shape(value):
    """Types, keys (in order) and values, recursively: Containers must match exactly, not just compare equal."""
    if isinstance(value, dict):
        return (type(value).__name__, [(k, shape(v)) for k, v in value.items() if k != "_io"])
    if isinstance(value, list):
        return (type(value).__name__, [shape(v) for v in value])
    return (type(value).__name__, value)


@pytest.mark.parametrize("name,minor,flags", [p.values for p in CASES], ids=[p.id for p in CASES])
@settings(max_examples=25, suppress_health_check=[HealthCheck.function_scoped_fixture], deadline=None)
@given(data=st.data())
def test_reader_equals_construct_parse(name, minor, flags, data):
    con = layout(name, minor, flags)
    raw = data.draw(st.binary(min_size=con.sizeof(), max_size=con.sizeof()))
    pad = data.draw(st.integers(0, 9))
    buf = bytes(pad) + raw
    got = container_reader(con, name)(buf, pad)
    assert isinstance(got, cs.Container)
    assert shape(got) == shape(strip_io(con.parse(raw)))


def test_reader_is_derived_once_per_layout():
    con = layout("fuse_entry_out", 45)
    assert container_reader(con) is container_reader(con)
    assert container_reader(layout("fuse_entry_out", 8)) is not container_reader(con)


def _construct_body(codec, parts, data, request_body):
    """The old way: every part through construct (the reference for the codec's fast cuts)."""
    ctx = PartContext(codec.minor, codec.flags, request_body)
    stream = io.BytesIO(data)
    for part in parts:
        if part.when is not None and not part.when(ctx):
            ctx.parts[part.name] = None
            continue
        ctx.parts[part.name] = strip_io(part.construct(ctx).parse_stream(stream))
    return ctx.parts


def test_codec_bodies_equal_construct_decoding():
    """Every sample message decodes to exactly (types, key order, values) what construct alone gives."""
    checked = 0
    for direction, codec, req, raw in seed_corpus():
        if direction == "request":
            msg = codec.decode_request(raw)
            spec = OPS[msg.opcode]
            end = len(raw) - msg.header.total_extlen * 8 if codec.minor >= 38 else len(raw)
            ref = _construct_body(codec, spec.request, raw[40:end], None)
        elif direction == "reply":
            msg = codec.decode_reply(raw, req)
            if msg.error:
                continue
            ref = _construct_body(codec, OPS[req.opcode].reply, raw[16:], req.body)
        else:
            msg = codec.decode_notify(raw)
            ref = _construct_body(codec, NOTIFICATIONS[msg.code].body, raw[16:], None)
        assert shape(msg.body) == shape(ref), (direction, codec, raw.hex())
        checked += 1
    assert checked > 1000
