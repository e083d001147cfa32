"""Bounded fuzzing of the trace readers: hostile captures are reported, located, never a traceback.

``tests/trace_samples.py`` has the seeds (pcapng and strace logs of every shape the
readers know), the mutator and the oracle: decode with the format forced and
detected, full and headers-only, render text and JSON -- nothing may raise, every
problem must reach ``on_problem`` as a ``CaptureError`` with a block or line number and
an offset inside the file.  The long run is ``tools/fuzz_traces.py`` (docs/fuzzing.md);
its findings are pinned below.
"""

from __future__ import annotations

import random

import pytest
from trace_samples import check, mutate, seeds

from fusd_wire import Codec
from fusd_wire import constants as C
from fusd_wire.trace.pcapng import enhanced_packet_parts, interface_description, section_header

INPUTS = 1500


def test_random_mutations_are_only_reported():
    corpus = seeds()
    rng = random.Random(20261201)
    problems = 0
    for _ in range(INPUTS):
        fmt, raw = corpus[rng.randrange(len(corpus))]
        data = mutate(rng, fmt, raw, corpus[rng.randrange(len(corpus))][1])
        problems += check(fmt, data)[1]
    assert problems > INPUTS  # the mutations do break things, and it is said


def test_every_seed_decodes():
    """The seeds are captures the readers understand (some report on purpose: SPBs have no direction,
    a payload spliced from a file is not in the log)."""
    for fmt, raw in seeds():
        events, problems = check(fmt, raw, forced=False)
        assert events > 5 and problems < events, fmt


def _hx(b: bytes) -> str:
    return "".join(f"\\x{c:02x}" for c in b)


K = Codec(45, strict=False)
O = C.fuse_opcode


def _pcapng(description: str, msgs) -> bytes:
    out = [section_header(), interface_description("x", description)]
    for direction, raw in msgs:
        head, tail = enhanced_packet_parts(0, direction, 1, len(raw))
        out += [head, raw, tail]
    return b"".join(out)


_GETXATTR = K.encode_request(O.FUSE_GETXATTR, {"fuse_getxattr_in": {"size": 9}, "name": b"a"}, unique=2)

# findings of tools/fuzz_traces.py, each pinned by a minimal input
REGRESSIONS = [
    pytest.param("strace", b'700  12:34.5 read(5, "\\x00", 1) = 1\n', id="timestamp-that-is-not-one"),
    pytest.param("pcapng", _pcapng("fuse minor=65 flags=0x1ffffffffffffffff",
                                   [(1, K.encode_request(O.FUSE_GETATTR, {}, unique=2))]), id="minor-from-the-future"),
    pytest.param("strace", (f'1 openat(AT_FDCWD, "{_hx(b"/dev/fuse")}", O_RDWR) = 5\n1 pipe2([7, 8], 0) = 0\n'
                            f'1 vmsplice(8, [{{iov_base="{_hx(bytes(16))}", iov_len=16}}], 1, 0) = 16\n'
                            "1 splice(7, NULL, 5, NULL, 99999999999999999999, 0) = 99999999999999999999\n"
                            "1 splice(7, NULL, 5, NULL, 9999999999, 0) = 9999999999\n").encode(),
                 id="splice-count-too-big"),
    pytest.param("pcapng", _pcapng("fuse", [
        (1, _GETXATTR[:-1].replace(b"\x31\x00\x00\x00", b"\x30\x00\x00\x00", 1)),  # no NUL: undecodable
        (2, K.encode_reply(K.decode_request(_GETXATTR), {"value": b"abc"}))]), id="reply-to-an-undecodable-getxattr"),
]


@pytest.mark.parametrize("fmt,data", REGRESSIONS)
def test_regressions(fmt, data):
    check(fmt, data)
