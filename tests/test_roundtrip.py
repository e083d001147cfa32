"""Round trips through the complete codec for every opcode and notification, at every minor.

For each message kind the codec knows (``OPS``: requests, and replies where the
kernel expects one, in success and error form; ``NOTIFICATIONS``), at minors
9, 23, 31, 38 and 45 (and 12 and 36, where iovecs and security contexts change
shape), a seeded generator (``wire_samples``) fills every field with non-trivial
values and this module proves:

* encode -> decode gives back exactly the values given (every field, every name,
  payload, dirent, iovec, extension), with the header's ``len`` and lengths right;
* decode -> encode gives back the same bytes.

The second half checks the version- and flag-dependent sizes against numbers
taken from ``fuse_kernel.h`` by hand, not from ``layouts.COMPAT_SIZES``: a wrong
table entry must fail here.
"""

from __future__ import annotations

import errno
import random
from typing import Any, Dict, Iterable

import pytest
from wire_samples import (
    MINORS,
    Variant,
    codec_flags,
    notifications_at,
    ops_at,
    random_notify,
    random_reply,
    random_request,
    variants_for,
)

from fusd_wire import NOTIFICATIONS, OPS, Codec, Conversation, Request, WireError
from fusd_wire import constants as C
from fusd_wire.layouts import COMPAT_SIZES, layout
from fusd_wire.parts import Part

O = C.fuse_opcode
SEEDS = 3  # random messages per opcode, shape variant and protocol
#: the proof minors plus 12 (raw ``struct iovec`` retries, <7.16) and 36 (legacy security contexts)
ALL_MINORS = tuple(sorted(set(MINORS) | {12, 36}))
SETXATTR_EXT = int(C.InitFlags.FUSE_SETXATTR_EXT)
SECURITY_CTX = int(C.InitFlags.FUSE_SECURITY_CTX)


def plain(value: Any) -> Any:
    """Decoded containers as plain dicts/lists, without construct's ``_io``."""
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items() if k != "_io"}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    return value


def expected_body(parts: Iterable[Part], given: Dict[str, Any]) -> Dict[str, Any]:
    """What the decoder must return: every part, None for the ones absent in this shape."""
    return {p.name: plain(given.get(p.name)) for p in parts}


def protocols():
    """(minor, flags) pairs: each minor, and with FUSE_SETXATTR_EXT (and 7.36's legacy secctx) where it exists."""
    for minor in ALL_MINORS:
        yield minor, 0
        if minor >= 33:
            yield minor, codec_flags(minor, setxattr_ext=True)
        if minor == 36:
            yield minor, SECURITY_CTX | SETXATTR_EXT


OP_CASES = [pytest.param(minor, flags, spec.opcode, id=f"7.{minor}-{flags:#x}-{spec.name}")
            for minor, flags in protocols() for spec in ops_at(minor)]
NOTIFY_CASES = [pytest.param(minor, spec.code, id=f"7.{minor}-{spec.name}")
                for minor in ALL_MINORS for spec in notifications_at(minor)]


def test_cases_cover_the_table():
    """Every opcode and notification is exercised at 7.45, and old minors leave out the newer ones."""
    covered = {p.values[2] for p in OP_CASES}
    assert covered == set(OPS)
    assert {p.values[1] for p in NOTIFY_CASES} == set(NOTIFICATIONS)
    assert O.FUSE_STATX not in {spec.opcode for spec in ops_at(38)}
    assert O.FUSE_IOCTL not in {spec.opcode for spec in ops_at(9)}


@pytest.mark.parametrize("minor,flags,opcode", OP_CASES)
def test_request_and_reply_round_trip(minor, flags, opcode):
    codec = Codec(minor, flags)
    spec = OPS[opcode]
    rng = random.Random(f"{minor}/{flags}/{opcode}")
    for variant in variants_for(spec):
        for _ in range(SEEDS):
            raw, given = random_request(codec, spec, rng, variant)
            req = codec.decode_request(raw)
            hdr = req.header
            assert (hdr.len, hdr.opcode, hdr.unique, hdr.nodeid, hdr.uid, hdr.gid, hdr.pid) == (
                len(raw), opcode, given["unique"], given["nodeid"], given["uid"], given["gid"], given["pid"])
            assert plain(req.body) == expected_body(spec.request, given["body"])
            assert plain(req.extensions) == given["extensions"]
            assert (hdr.total_extlen > 0) == bool(given["extensions"])
            again = codec.encode_request(opcode, req.body, unique=hdr.unique, nodeid=hdr.nodeid, uid=hdr.uid,
                                         gid=hdr.gid, pid=hdr.pid, extensions=req.extensions)
            assert again == raw
            if spec.has_reply:
                _check_reply(codec, spec, req, rng, variant)
            else:
                # FORGET, BATCH_FORGET, INTERRUPT, NOTIFY_REPLY: the kernel waits for nothing.
                with pytest.raises(WireError):
                    codec.encode_reply(req, {})


def _check_reply(codec: Codec, spec, req: Request, rng: random.Random, variant: Variant) -> None:
    raw, body = random_reply(codec, spec, req, rng, variant)
    rep = codec.decode_reply(raw, req)
    assert (rep.header.len, rep.header.error, rep.header.unique, rep.opcode) == (len(raw), 0, req.unique, spec.opcode)
    assert plain(rep.body) == expected_body(spec.reply, body)
    assert codec.encode_reply(req, rep.body) == raw
    # The error form: a bare fuse_out_header with a negative errno, whatever the opcode.
    err = rng.choice([errno.ENOENT, errno.EIO, errno.ENOSYS, errno.EAGAIN, 4095])
    raw = codec.encode_reply(req, error=-err)
    assert len(raw) == 16
    rep = codec.decode_reply(raw, req)
    assert (rep.error, rep.unique, rep.body) == (-err, req.unique, None)
    assert codec.encode_reply(req, error=rep.error) == raw
    assert codec.encode_reply(spec.opcode, unique=req.unique, error=err) == raw  # positive errno is negated


@pytest.mark.parametrize("minor,code", NOTIFY_CASES)
def test_notification_round_trip(minor, code):
    codec = Codec(minor)
    spec = NOTIFICATIONS[code]
    rng = random.Random(f"notify/{minor}/{code}")
    for _ in range(SEEDS):
        raw, body = random_notify(codec, spec, rng)
        note = codec.decode_notify(raw)
        assert (note.header.len, note.header.unique, note.code) == (len(raw), 0, code)
        assert plain(note.body) == expected_body(spec.body, body)
        assert codec.encode_notify(code, note.body) == raw
        assert codec.decode_from_daemon(raw, None).code == code


# ------------------------------------------------------------------ version-dependent sizes

def _body_len(raw: bytes, header: int) -> int:
    return len(raw) - header


#: (struct, minor, flags, size in bytes), from fuse_kernel.h's FUSE_COMPAT_* and changelog.
HEADER_SIZES = [
    ("fuse_init_out", 4, 0, 8), ("fuse_init_out", 5, 0, 24), ("fuse_init_out", 22, 0, 24),
    ("fuse_init_out", 23, 0, 64), ("fuse_init_out", 45, 0, 64),
    ("fuse_init_in", 9, 0, 16), ("fuse_init_in", 35, 0, 16), ("fuse_init_in", 36, 0, 64),
    ("fuse_entry_out", 8, 0, 120), ("fuse_entry_out", 9, 0, 128),
    ("fuse_attr_out", 8, 0, 96), ("fuse_attr_out", 9, 0, 104),
    ("fuse_write_in", 8, 0, 24), ("fuse_write_in", 9, 0, 40),
    # read_in/getattr_in: a 7.9+ kernel sends them full size even to a 7.8 daemon (live-tested).
    ("fuse_read_in", 8, 0, 40), ("fuse_read_in", 9, 0, 40),
    ("fuse_getattr_in", 8, 0, 16), ("fuse_getattr_in", 9, 0, 16),
    ("fuse_mknod_in", 11, 0, 8), ("fuse_mknod_in", 12, 0, 16),
    ("fuse_setxattr_in", 45, 0, 8), ("fuse_setxattr_in", 45, SETXATTR_EXT, 16),
    ("fuse_statfs_out", 3, 0, 48), ("fuse_statfs_out", 4, 0, 80),
    ("fuse_in_header", 45, 0, 40), ("fuse_out_header", 45, 0, 16), ("cuse_init_out", 45, 0, 72),
]


@pytest.mark.parametrize("name,minor,flags,size", HEADER_SIZES)
def test_layout_sizes_match_the_header(name, minor, flags, size):
    assert layout(name, minor, flags).sizeof() == size
    assert Codec(minor, flags).fast(name).size == size


def test_compat_table_is_covered():
    """Each versioned struct of COMPAT_SIZES has a hand-checked size above (a new entry needs one)."""
    checked = {name for name, *_ in HEADER_SIZES}
    assert {name for name, sizes in COMPAT_SIZES.items() if sizes} - {"fuse_lk_in", "fuse_create_in"} <= checked


@pytest.mark.parametrize("stated,size", [(1, 8), (4, 8), (5, 24), (22, 24), (23, 64), (38, 64), (45, 64)])
def test_init_reply_size_follows_the_stated_minor(stated, size):
    """The INIT reply is 8 B below 7.5, 24 B below 7.23, 64 B after, whatever the codec's own minor."""
    codec = Codec(45)
    out = {"major": 7, "minor": stated}
    if size >= 24:
        out.update(max_readahead=0x20000, flags=0x1234, max_write=4096)
    raw = codec.encode_reply(O.FUSE_INIT, {"fuse_init_out": out}, unique=1)
    assert _body_len(raw, 16) == size
    got = codec.decode_reply(raw, O.FUSE_INIT).body.fuse_init_out
    assert (got.major, got.minor) == (7, stated)
    if size >= 24:
        assert (got.max_readahead, got.flags, got.max_write) == (0x20000, 0x1234, 4096)
    else:
        assert "max_write" not in got
    assert ("time_gran" in got) == (size == 64)
    assert codec.encode_reply(O.FUSE_INIT, {"fuse_init_out": got}, unique=1) == raw
    with pytest.raises(WireError, match="no field"):  # a field the stated minor does not have is refused
        codec.encode_reply(O.FUSE_INIT, {"fuse_init_out": dict(out, unused=1) if size == 8 else
                                         dict(out, request_timeout=1) if size == 24 else dict(out, bogus=1)},
                           unique=1)


@pytest.mark.parametrize("stated,size", [(9, 16), (35, 16), (36, 64), (45, 64)])
def test_init_request_size_follows_the_stated_minor(stated, size):
    codec = Codec(45)
    init_in = {"major": 7, "minor": stated, "flags": 7}
    if size == 64:
        init_in["flags2"] = 0x81
    raw = codec.encode_request(O.FUSE_INIT, {"fuse_init_in": init_in}, unique=1)
    assert _body_len(raw, 40) == size
    got = codec.decode_request(raw).body.fuse_init_in
    assert (got.minor, got.flags) == (stated, 7)
    assert got.get("flags2") == init_in.get("flags2")


def test_pre_7_9_sizes_on_the_wire():
    """entry_out 120 B, attr_out 96 B, write_in 24 B below 7.9; full sizes at 7.9; getattr_in always 16 B."""
    for minor, entry, attr, write, getattr_in in ((8, 120, 96, 24, 16), (9, 128, 104, 40, 16)):
        codec = Codec(minor)
        lookup = codec.decode_request(codec.encode_request(O.FUSE_LOOKUP, {"name": b"dev"}, unique=5))
        assert _body_len(codec.encode_reply(lookup, {"fuse_entry_out": {"nodeid": 2}}), 16) == entry
        assert _body_len(codec.encode_reply(O.FUSE_GETATTR, {}, unique=6), 16) == attr
        raw = codec.encode_request(O.FUSE_WRITE, {"fuse_write_in": {"fh": 1}, "data": b"abc"}, unique=7)
        assert _body_len(raw, 40) == write + 3
        assert codec.decode_request(raw).body.data == b"abc"
        raw = codec.encode_request(O.FUSE_GETATTR, {}, unique=8)
        assert _body_len(raw, 40) == getattr_in
        assert dict(codec.decode_request(raw).body.fuse_getattr_in) == ({} if getattr_in == 0 else
                                                                       {"getattr_flags": 0, "dummy": 0, "fh": 0})
    # A short GETATTR body is refused, not taken for a partial getattr_in.
    raw = Codec(9).encode_request(O.FUSE_GETATTR, {}, unique=8)
    short = (len(raw) - 8).to_bytes(4, "little") + raw[4:-8]
    with pytest.raises(WireError, match="fuse_getattr_in needs 16 bytes"):
        Codec(8).decode_request(short)


@pytest.mark.parametrize("flags,size", [(0, 8), (SETXATTR_EXT, 16)])
def test_setxattr_in_depends_on_setxattr_ext(flags, size):
    codec = Codec(45, flags)
    body = {"fuse_setxattr_in": {"flags": 1}, "name": b"user.x", "value": b"\x00\x01v"}
    raw = codec.encode_request(O.FUSE_SETXATTR, body, unique=3)
    assert len(raw) == 40 + size + len(b"user.x\0") + 3
    req = codec.decode_request(raw)
    assert (req.body.fuse_setxattr_in.size, req.body.name, req.body.value) == (3, b"user.x", b"\x00\x01v")
    assert ("setxattr_flags" in req.body.fuse_setxattr_in) == bool(flags)
    # Decoding with the other flag set misreads the layout, and must say so rather than guess.
    with pytest.raises(WireError):
        Codec(45, flags ^ SETXATTR_EXT).decode_request(raw)


def test_extensions_only_from_7_38():
    groups = [{"type": int(C.fuse_ext_type.FUSE_EXT_GROUPS), "kind": "groups", "groups": [10, 20]}]
    with pytest.raises(WireError, match="7.38"):
        Codec(37).encode_request(O.FUSE_MKNOD, {"name": b"n"}, unique=1, extensions=groups)
    raw = Codec(38).encode_request(O.FUSE_MKNOD, {"name": b"n"}, unique=1, extensions=groups)
    assert int.from_bytes(raw[36:38], "little") == 3  # total_extlen: 8 + 4 + 2 * 4 -> 24 bytes, in 8s
    req = Codec(38).decode_request(raw)
    assert (req.body.name, req.extensions[0].groups) == (b"n", [10, 20])
    # Before 7.38 total_extlen is padding and the extension bytes are junk after the body.
    with pytest.raises(WireError):
        Codec(37).decode_request(raw)


@pytest.mark.parametrize("opcode,part", [(O.FUSE_GETXATTR, "value"), (O.FUSE_LISTXATTR, "names")])
def test_xattr_reply_shape_follows_the_request_size(opcode, part):
    codec = Codec(45)
    extra = {"name": b"user.k"} if opcode == O.FUSE_GETXATTR else {}
    query = codec.decode_request(codec.encode_request(opcode, {"fuse_getxattr_in": {"size": 0}, **extra}, unique=1))
    raw = codec.encode_reply(query, {"fuse_getxattr_out": {"size": 77}})
    assert _body_len(raw, 16) == 8
    rep = codec.decode_reply(raw, query)
    assert (rep.body.fuse_getxattr_out.size, rep.body[part]) == (77, None)
    assert codec.decode_reply(raw, opcode).body.fuse_getxattr_out.size == 77  # opcode alone: the size query form
    fetch = codec.decode_request(codec.encode_request(opcode, {"fuse_getxattr_in": {"size": 100}, **extra},
                                                      unique=2))
    raw = codec.encode_reply(fetch, {part: b"a\0b\0"})
    assert raw[16:] == b"a\0b\0"
    rep = codec.decode_reply(raw, fetch)
    assert (rep.body.fuse_getxattr_out, rep.body[part]) == (None, b"a\0b\0")
    with pytest.raises(WireError):  # a value is not a fuse_getxattr_out
        codec.encode_reply(fetch, {"fuse_getxattr_out": {"size": 4}})


@pytest.mark.parametrize("minor,fields", [(12, ("iov_base", "iov_len")), (16, ("base", "len")),
                                          (45, ("base", "len"))])
def test_ioctl_retry_carries_iovecs(minor, fields):
    """FUSE_IOCTL_RETRY: fuse_ioctl_out + in/out iovecs (raw ``struct iovec`` < 7.16); otherwise data."""
    codec = Codec(minor)
    req = codec.decode_request(codec.encode_request(O.FUSE_IOCTL, {"fuse_ioctl_in": {"cmd": 0x80047001}},
                                                    unique=9))
    base, length = fields
    in_iov = [{base: 0x7FFF0000, length: 4}]
    out_iov = [{base: 0x7FFF1000, length: 16}, {base: 0x7FFF2000, length: 8}]
    out = {"flags": int(C.IoctlFlags.FUSE_IOCTL_RETRY), "in_iovs": 1, "out_iovs": 2}
    retry = codec.encode_reply(req, {"fuse_ioctl_out": out, "in_iov": in_iov, "out_iov": out_iov})
    assert _body_len(retry, 16) == 16 + 3 * 16
    rep = codec.decode_reply(retry, req)
    assert (plain(rep.body.in_iov), plain(rep.body.out_iov), rep.body.data) == (in_iov, out_iov, None)
    raw = codec.encode_reply(req, {"fuse_ioctl_out": {"result": -5}, "data": b"\x01\x02"})
    rep = codec.decode_reply(raw, req)
    assert (rep.body.fuse_ioctl_out.result, rep.body.data, rep.body.in_iov) == (-5, b"\x01\x02", None)
    with pytest.raises(WireError, match="not sent"):  # a RETRY carries iovecs, never data: not silently dropped
        codec.encode_reply(req, {"fuse_ioctl_out": out, "in_iov": in_iov, "out_iov": out_iov, "data": b"x"})
    short = len(retry[:-16]).to_bytes(4, "little") + retry[4:-16]  # announces 3 iovecs, carries 2
    with pytest.raises(WireError, match="offset 48"):  # where out_iov starts
        codec.decode_reply(short, req)


def test_cuse_init_reply_carries_the_info_blob():
    codec = Codec(45)
    req = codec.decode_request(codec.encode_request(O.CUSE_INIT, {"cuse_init_in": {"major": 7, "minor": 38}},
                                                    unique=1))
    raw = codec.encode_reply(req, {"cuse_init_out": {"major": 7, "minor": 38, "max_read": 65536},
                                   "info": {"DEVNAME": "fusd0"}})
    assert raw.endswith(b"DEVNAME=fusd0\0") and len(raw) == 16 + 72 + len(b"DEVNAME=fusd0\0")
    assert codec.decode_reply(raw, req).body.info == {"DEVNAME": "fusd0"}


def test_conversation_follows_the_negotiated_minor():
    """After a 7.8 INIT reply the same connection's WRITE is decoded with the 24-byte write_in."""
    kernel = Codec(45)
    conv = Conversation(Codec(45, strict=True))
    conv.request(kernel.encode_request(O.FUSE_INIT, {"fuse_init_in": {"major": 7, "minor": 45}}, unique=1))
    conv.from_daemon(kernel.encode_reply(O.FUSE_INIT, {"fuse_init_out": {"major": 7, "minor": 8}}, unique=1))
    assert conv.codec.minor == 8
    raw = Codec(8).encode_request(O.FUSE_WRITE, {"fuse_write_in": {"fh": 4}, "data": b"xyz"}, unique=2)
    req = conv.request(raw)
    assert (req.body.fuse_write_in.fh, req.body.fuse_write_in.size, req.body.data) == (4, 3, b"xyz")
