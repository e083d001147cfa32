"""Bounded fuzzing: malformed wire data raises WireError, located, and nothing else.

The runtime and the trace decoder feed the codec bytes they did not write: a
buggy daemon's replies, a truncated capture, a foreign strace.  Whatever comes
in, the only exception allowed out is ``WireError`` naming the offset and what
was expected (and the opcode once the header is read).  This module checks
that on a few thousand mutations of valid messages of every opcode and
notification (random bytes, truncations, bit flips, corrupted len/count/extlen
fields, splices), on every truncation and every length-field corruption of one
message per opcode, and on the inputs the long run (``tools/fuzz_codec.py``,
see docs/fuzzing.md) or review found.  The oracle is ``wire_samples.decode_all``:
strict and lenient codecs, requests, replies (with the request and with its
opcode alone), notifications, ``Conversation`` and ``iter_messages``; whatever
decodes must also encode again or be refused with a WireError.
"""

from __future__ import annotations

import random

import pytest
from wire_samples import (
    Variant,
    decode_all,
    fuzz_protocols,
    mutate,
    notifications_at,
    ops_at,
    random_notify,
    random_reply,
    random_request,
    seed_corpus,
)

from fusd_wire import Codec, WireError
from fusd_wire import constants as C

O = C.fuse_opcode
INPUTS = 4000


@pytest.fixture(scope="module")
def corpus():
    return seed_corpus(seed=11)


def _report(direction, codec, data):
    return f"{direction} at 7.{codec.minor} flags {codec.flags:#x}: {data.hex()}"


def test_seed_corpus_covers_every_message_kind(corpus):
    kinds = {(d, int.from_bytes(raw[4:8], "little", signed=True)) for d, _c, _r, raw in corpus}
    assert {k for d, k in kinds if d == "request"} == {spec.opcode for spec in ops_at(45)}
    assert {req.opcode for d, _c, req, _raw in corpus if d == "reply"} == \
        {spec.opcode for spec in ops_at(45) if spec.has_reply}
    assert {k for d, k in kinds if d == "notify"} == {spec.code for spec in notifications_at(45)}
    assert {(c.minor, c.flags) for _d, c, _r, _raw in corpus} == set(fuzz_protocols())


def test_random_mutations_only_raise_located_wire_errors(corpus):
    rng = random.Random(20261124)
    calls = refused = fully_decoded = 0
    for _ in range(INPUTS):
        direction, codec, request, raw = corpus[rng.randrange(len(corpus))]
        data = mutate(rng, raw, direction, corpus[rng.randrange(len(corpus))][3])
        try:
            n, r = decode_all(direction, codec, request, data)
        except Exception as exc:  # the report names the input so it can become a regression case
            raise AssertionError(f"{exc!r} on {_report(direction, codec, data)}") from exc
        calls += n
        refused += r
        fully_decoded += not r
    # The mutator must reach past the header checks: a good share of inputs decodes,
    # and most decoder calls refuse, or this test would prove little.
    assert fully_decoded > INPUTS // 20
    assert calls // 4 < refused < calls


def _valid_messages():
    """One request, one success reply per shape, and one notification, of every kind at 7.45."""
    codec = Codec(45, int(C.InitFlags.FUSE_SETXATTR_EXT))
    rng = random.Random(3)
    out = []
    for spec in ops_at(45):
        for variant in ([Variant(size_query=True), Variant(ioctl_retry=True)] if spec.has_reply else [Variant()]):
            raw, _ = random_request(codec, spec, rng, variant, small=True)
            out.append(("request", codec, None, raw))
            if spec.has_reply:
                req = codec.decode_request(raw)
                out.append(("reply", codec, req, random_reply(codec, spec, req, rng, variant, small=True)[0]))
    for nspec in notifications_at(45):
        out.append(("notify", codec, None, random_notify(codec, nspec, rng, small=True)[0]))
    return out


VALID = _valid_messages()


def _decode(direction, codec, request, data):
    """The one decoder of a direction (strict)."""
    if direction == "request":
        return codec.decode_request(data)
    if direction == "reply":
        return codec.decode_reply(data, request)
    return codec.decode_notify(data)


def _check(direction, codec, request, data) -> bool:
    """Strict decode: True if it decodes, False if refused with a located WireError; anything else fails."""
    try:
        _decode(direction, codec, request, data)
        return True
    except WireError as exc:
        assert exc.offset is not None and exc.expected, f"unlocated {exc!r} on {_report(direction, codec, data)}"
        assert f"offset {exc.offset}" in str(exc)
        return False
    except Exception as exc:
        raise AssertionError(f"{exc!r} on {_report(direction, codec, data)}") from exc


def test_every_truncation():
    """Every prefix of every message kind: refused (len mismatch) as is, and with ``len`` patched."""
    for direction, codec, request, raw in VALID:
        for cut in range(len(raw)):
            data = raw[:cut]
            with pytest.raises(WireError) as info:  # len still says the full size: always refused
                _decode(direction, codec, request, data)
            assert info.value.offset == 0
            if cut >= 4:
                _check(direction, codec, request, len(data).to_bytes(4, "little") + data[4:])


#: the values a length/count field is most likely to be wrong with
LENGTHS = (0, 1, 7, 8, 9, 16, 40, 0x7FFF, 0xFFFF, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF)


def test_every_length_field_corruption():
    """Every aligned u32 of the headers and fixed structs (len, opcode, counts, sizes, namelen...) broken."""
    decoded = 0
    for direction, codec, request, raw in VALID:
        for offset in range(0, min(len(raw), 80) - 3, 4):
            for value in LENGTHS + (len(raw) - 40, len(raw) - 16, len(raw) + 8):
                data = bytearray(raw)
                data[offset:offset + 4] = (value & 0xFFFFFFFF).to_bytes(4, "little")
                if offset:  # patch len too, or every corruption stops at the first check
                    data[0:4] = len(data).to_bytes(4, "little")
                decoded += _check(direction, codec, request, bytes(data))
    assert decoded  # many fields are free (fh, nodeid, ...): those corruptions still decode


def test_total_extlen_corruption():
    """Requests whose total_extlen (7.38) points past the body or frames broken extension headers."""
    codec = Codec(45)
    raw = codec.encode_request(O.FUSE_MKNOD, {"name": b"dev"}, unique=1, extensions=[
        {"type": int(C.fuse_ext_type.FUSE_EXT_GROUPS), "kind": "groups", "groups": [1, 2, 3]}])
    for extlen in range(0, 40):
        data = bytearray(raw)
        data[36:38] = extlen.to_bytes(2, "little")
        decode_all("request", codec, None, bytes(data))
    for size in (0, 4, 7, 8, 9, 16, 24, 0xFFFFFFFF):
        for ext_type in (0, 1, 31, 32, 33):
            data = bytearray(raw)
            data[-16:-8] = size.to_bytes(4, "little") + ext_type.to_bytes(4, "little")
            decode_all("request", codec, None, bytes(data))


# Hard cases, pinned with the offset their WireError must name: counts and lengths of 2^32-1
# (a decoder that trusted them would allocate or loop), sizes that would stall a parser loop,
# lengths past the end, shapes that contradict the stated minor.  Inputs the long fuzz run
# finds get added here.  (direction, minor, flags, request hex or None, message hex, offset)
REGRESSIONS = [
    # batch_forget count 2^32-1
    ("request", 45, 0x0, None,
     ('400000002a0000000300000000000000000000000000000000000000000000000000000000000000ffffffff00000000'
      '05000000000000000100000000000000'), 48),
    # dirent namelen past end
    ("reply", 45, 0x0,
     ('500000001c00000004000000000000000000000000000000000000000000000000000000000000000000000000000000'
      '0000000000000000001000000000000000000000000000000000000000000000'),
     '3000000000000000040000000000000001000000000000000100000000000000ffffff7f040000006162630000000000', 16),
    # secctx nr 2^32-1
    ("request", 36, 0x100000000, None,
     ('5a000000090000000500000000000000000000000000000000000000000000000000000000000000ed01000000000000'
      '640028000000ffffffff030000000000000073656375726974792e73656c696e75780063747800000000'), 50),
    # ext size 0
    ("request", 45, 0x0, None,
     ('4a0000000800000006000000000000000000000000000000000000000000000000000000020000000000000000000000'
      '00000000000000006e0000000000210000003132333435363738'), 58),
    # total_extlen past body
    ("request", 45, 0x0, None,
     ('500000000f00000007000000000000000000000000000000000000000000000000000000ffff00000000000000000000'
      '0000000000000000010000000000000000000000000000000000000000000000'), 32),
    # ioctl in_iovs 2^32-1
    ("reply", 45, 0x0,
     ('480000002700000008000000000000000000000000000000000000000000000000000000000000000000000000000000'
      '000000000100000000000000000000000000000000000000'),
     '300000000000000008000000000000000000000004000000ffffffff0000000001000000000000000200000000000000', 32),
    # init_out minor 4 with 64 B
    ("reply", 45, 0x0,
     ('680000001a0000000900000000000000000000000000000000000000000000000000000000000000070000002d000000'
      '000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000'
      '0000000000000000'),
     ('500000000000000009000000000000000700000004000000000000000000000000000000000000000000000000000000'
      '0000000000000000000000000000000000000000000000000000000000000000'), 24),
    # cuse info no NUL
    ("reply", 45, 0x0,
     ('38000000001000000a000000000000000000000000000000000000000000000000000000000000000700000026000000'
      '0000000000000000'),
     ('61000000000000000a000000000000000700000026000000000000000000000000000000000000000000000000000000'
      '000000000000000000000000000000000000000000000000000000000000000000000000000000004445564e414d453d'
      '78'), 88),
    # inval_entry namelen
    ("notify", 45, 0x0, None,
     '240000000300000000000000000000000100000000000000020000000000000061626300', 32),
    # prune count
    ("notify", 45, 0x0, None,
     '28000000090000000000000000000000ffffffff0000000000000000000000000700000000000000', 32),
    # error reply with body
    ("reply", 45, 0x0,
     ('38000000001000000a000000000000000000000000000000000000000000000000000000000000000700000026000000'
      '0000000000000000'),
     '12000000fbffffff0a000000000000007878', 16),
]


@pytest.mark.parametrize("direction,minor,flags,request_hex,data,offset", REGRESSIONS)
def test_regressions(direction, minor, flags, request_hex, data, offset):
    codec = Codec(minor, flags)
    req = codec.decode_request(bytes.fromhex(request_hex)) if request_hex else None
    decode_all(direction, codec, req, bytes.fromhex(data))
    with pytest.raises(WireError) as info:
        _decode(direction, codec, req, bytes.fromhex(data))
    assert info.value.offset == offset
