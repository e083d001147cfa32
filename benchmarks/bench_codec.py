"""Codec cost per message: the fast path vs plain construct vs the complete Codec.

The kernel round trip of a /dev/fuse request costs about 4 µs here and the
Python budget per request is about 1 µs, so the server's hot path must decode
and answer a message in about a microsecond.  For each opcode a character
device sees (READ, WRITE, IOCTL, POLL, OPEN, RELEASE) this measures "decode
fuse_in_header + the request struct, then encode the reply" three ways, in one
pytest-benchmark group per opcode:

* ``fast``: what the runtime does - ``FAST.fuse_in_header.unpack_from(buf)``,
  ``FAST.fuse_read_in.unpack_from(buf, 40)``, ``FAST.fuse_out_header.pack(...)``
  plus the reply struct's ``pack``; the reply is returned as the iovec list a
  ``writev`` would take (payloads are not copied);
* ``construct``: the same with ``STRUCTS[...].parse``/``build`` (the schemas);
* ``codec``: ``Codec.decode_request`` + ``Codec.encode_reply`` (validating,
  what traces and tests use).

Each benchmark also checks its reply bytes against the Codec's, so a fast path
that got faster by being wrong fails.  Run (docs/codec-benchmark.md has the table):

    python -m pytest benchmarks/bench_codec.py --benchmark-enable --benchmark-only

Under the project's default ``--benchmark-disable`` each function runs once, as
a plain test.
"""

from __future__ import annotations

import pytest

from fusd_wire import FAST, Codec
from fusd_wire import constants as C
from fusd_wire.schemas import STRUCTS

O = C.fuse_opcode
CODEC = Codec(45)
UNIQUE = 0x1234_5678
DATA = bytes(range(256)) * 16  # a 4 KiB read answer / write payload
IOCTL_ARG = b"\x01\x02\x03\x04"
DIRECT_IO = int(C.FOPEN_DIRECT_IO)

IN = FAST.fuse_in_header
OUT = FAST.fuse_out_header
IN_S, OUT_S = STRUCTS["fuse_in_header"], STRUCTS["fuse_out_header"]
IN_SIZE, OUT_SIZE = IN.size, OUT.size

#: request bytes per opcode, as the kernel sends them (encoded by the complete codec)
REQUESTS = {
    "READ": CODEC.encode_request(O.FUSE_READ, {"fuse_read_in": {"fh": 7, "size": len(DATA), "flags": 0o4002}},
                                 unique=UNIQUE, nodeid=2, pid=4242),
    "WRITE": CODEC.encode_request(O.FUSE_WRITE, {"fuse_write_in": {"fh": 7, "flags": 0o2}, "data": DATA},
                                  unique=UNIQUE, nodeid=2, pid=4242),
    "IOCTL": CODEC.encode_request(O.FUSE_IOCTL, {"fuse_ioctl_in": {"fh": 7, "cmd": 0xC0047001, "arg": 0x7FFF0000,
                                                                   "out_size": 4}, "data": IOCTL_ARG},
                                  unique=UNIQUE, nodeid=2, pid=4242),
    "POLL": CODEC.encode_request(O.FUSE_POLL, {"fuse_poll_in": {"fh": 7, "kh": 99, "flags": 1, "events": 1}},
                                 unique=UNIQUE, nodeid=2, pid=4242),
    "OPEN": CODEC.encode_request(O.FUSE_OPEN, {"fuse_open_in": {"flags": 0o100002}}, unique=UNIQUE, nodeid=2,
                                 pid=4242),
    "RELEASE": CODEC.encode_request(O.FUSE_RELEASE, {"fuse_release_in": {"fh": 7, "flags": 0o2}}, unique=UNIQUE,
                                    nodeid=2, pid=4242),
}

#: the reply each handler gives, as the complete codec encodes it: the reference bytes
REPLY_BODIES = {
    "READ": {"data": DATA},
    "WRITE": {"fuse_write_out": {"size": len(DATA)}},
    "IOCTL": {"fuse_ioctl_out": {"result": 0}, "data": IOCTL_ARG},
    "POLL": {"fuse_poll_out": {"revents": 1}},
    "OPEN": {"fuse_open_out": {"fh": 7, "open_flags": DIRECT_IO}},
    "RELEASE": {},
}
EXPECTED = {op: CODEC.encode_reply(CODEC.decode_request(raw), REPLY_BODIES[op]) for op, raw in REQUESTS.items()}


# ---------------------------------------------------------------- fast path: flat tuples, writev-ready iovecs

def fast_read(buf):
    unique = IN.unpack_from(buf)[2]
    fh, offset, size, read_flags, lock_owner, flags, _pad = FAST.fuse_read_in.unpack_from(buf, IN_SIZE)
    data = DATA[:size]
    return [OUT.pack(OUT_SIZE + len(data), 0, unique), data]


def fast_write(buf):
    unique = IN.unpack_from(buf)[2]
    fh, offset, size, write_flags, lock_owner, flags, _pad = FAST.fuse_write_in.unpack_from(buf, IN_SIZE)
    _payload = memoryview(buf)[IN_SIZE + 40:IN_SIZE + 40 + size]
    return [OUT.pack(OUT_SIZE + 8, 0, unique), FAST.fuse_write_out.pack(size, 0)]


def fast_ioctl(buf):
    unique = IN.unpack_from(buf)[2]
    fh, flags, cmd, arg, in_size, out_size = FAST.fuse_ioctl_in.unpack_from(buf, IN_SIZE)
    _arg = memoryview(buf)[IN_SIZE + 32:IN_SIZE + 32 + in_size]
    return [OUT.pack(OUT_SIZE + 16 + out_size, 0, unique), FAST.fuse_ioctl_out.pack(0, 0, 0, 0), IOCTL_ARG]


def fast_poll(buf):
    unique = IN.unpack_from(buf)[2]
    fh, kh, flags, events = FAST.fuse_poll_in.unpack_from(buf, IN_SIZE)
    return [OUT.pack(OUT_SIZE + 8, 0, unique), FAST.fuse_poll_out.pack(events & 1, 0)]


def fast_open(buf):
    unique = IN.unpack_from(buf)[2]
    flags, open_flags = FAST.fuse_open_in.unpack_from(buf, IN_SIZE)
    return [OUT.pack(OUT_SIZE + 16, 0, unique), FAST.fuse_open_out.pack(7, DIRECT_IO, 0)]


def fast_release(buf):
    unique = IN.unpack_from(buf)[2]
    fh, flags, release_flags, lock_owner = FAST.fuse_release_in.unpack_from(buf, IN_SIZE)
    return [OUT.pack(OUT_SIZE, 0, unique)]


# ---------------------------------------------------------------- construct: the schemas, parse/build

def _construct(request_struct, reply_struct=None, reply_value=None, payload=b""):
    req_s = STRUCTS[request_struct]
    req_size = req_s.sizeof()
    rep_s = STRUCTS[reply_struct] if reply_struct else None

    def handle(buf):
        hdr = IN_S.parse(buf[:IN_SIZE])
        body = req_s.parse(buf[IN_SIZE:IN_SIZE + req_size])
        reply = rep_s.build(reply_value(body)) if rep_s is not None else b""
        return [OUT_S.build({"len": OUT_SIZE + len(reply) + len(payload), "error": 0, "unique": hdr.unique}),
                reply, payload]
    return handle


CONSTRUCT = {
    "READ": _construct("fuse_read_in", payload=DATA),
    "WRITE": _construct("fuse_write_in", "fuse_write_out", lambda b: {"size": b.size, "padding": 0}),
    "IOCTL": _construct("fuse_ioctl_in", "fuse_ioctl_out",
                        lambda b: {"result": 0, "flags": 0, "in_iovs": 0, "out_iovs": 0}, payload=IOCTL_ARG),
    "POLL": _construct("fuse_poll_in", "fuse_poll_out", lambda b: {"revents": b.events & 1, "padding": 0}),
    "OPEN": _construct("fuse_open_in", "fuse_open_out",
                       lambda b: {"fh": 7, "open_flags": DIRECT_IO, "backing_id": 0}),
    "RELEASE": _construct("fuse_release_in"),
}
FASTS = {"READ": fast_read, "WRITE": fast_write, "IOCTL": fast_ioctl, "POLL": fast_poll, "OPEN": fast_open,
         "RELEASE": fast_release}


def codec_handler(op):
    body = REPLY_BODIES[op]

    def handle(buf):
        return [CODEC.encode_reply(CODEC.decode_request(buf), body)]
    return handle


OPCODES = list(REQUESTS)
#: sub-microsecond functions: time many calls per round so the timer's own cost does not dominate
pytestmark = pytest.mark.benchmark(min_time=0.0002, warmup=True, warmup_iterations=2000)


@pytest.mark.parametrize("op", OPCODES)
def test_fast(benchmark, op):
    benchmark.group = op
    buf = bytearray(REQUESTS[op])  # what os.readv fills
    assert b"".join(benchmark(FASTS[op], buf)) == EXPECTED[op]


@pytest.mark.parametrize("op", OPCODES)
def test_construct(benchmark, op):
    benchmark.group = op
    buf = bytes(REQUESTS[op])
    assert b"".join(benchmark(CONSTRUCT[op], buf)) == EXPECTED[op]


@pytest.mark.parametrize("op", OPCODES)
def test_codec(benchmark, op):
    benchmark.group = op
    buf = bytes(REQUESTS[op])
    assert b"".join(benchmark(codec_handler(op), buf)) == EXPECTED[op]
