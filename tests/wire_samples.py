"""Valid FUSE/CUSE messages with non-trivial values, generated from the opcode table.

The round-trip, fuzz and benchmark code all need "a valid message of opcode X at
minor Y".  Writing those by hand would restate every layout a second time, so
this module walks the same table the codec uses (``OPS``/``NOTIFICATIONS``, the
parts, ``layouts.layout``) and fills every field with a seeded random value
(edge values often: 0, all ones, the sign bit).  The only facts kept here are
the ones the table states as code rather than data: which struct field counts
an ``Array`` part, and the variants that change a message's shape (GETXATTR
size 0, IOCTL RETRY, INIT's stated minor).

Everything is deterministic for a given ``random.Random`` so failures replay.
"""

from __future__ import annotations

import random
import struct
from typing import Any, Dict, List, Optional, Tuple

import construct as cs

from fusd_wire import NOTIFICATIONS, OPS, Codec, NotifySpec, OpSpec, Request, WireError
from fusd_wire import constants as C
from fusd_wire.codec import Conversation, PartContext, iter_messages
from fusd_wire.layouts import layout
from fusd_wire.parts import Array, Data, Dirents, KeyValues, Name, Part, Secctx, Struct

#: The minors the proofs run at (issue 2): pre-7.9 layouts, 7.23 (full init_out),
#: 7.31, 7.38 (the CUSE guest, first with extensions) and 7.45 (this host).
MINORS = (9, 23, 31, 38, 45)

#: Array part -> (struct part, field) holding its element count.  The table states
#: the count as a lambda; this is its inverse, checked by ``array_count_field``.
ARRAY_COUNTS = {
    "forgets": ("fuse_batch_forget_in", "count"),
    "mappings": ("fuse_removemapping_in", "count"),
    "nodeids": ("fuse_notify_prune_out", "count"),
    "in_iov": ("fuse_ioctl_out", "in_iovs"),
    "out_iov": ("fuse_ioctl_out", "out_iovs"),
}

#: struct part -> its minor-stating field: INIT's layouts follow the minor the message states.
_STATES_MINOR = {"fuse_init_in", "fuse_init_out"}


def codec_flags(minor: int, setxattr_ext: bool = False) -> int:
    """Negotiated INIT flags for a test codec (FUSE_SETXATTR_EXT exists from 7.33)."""
    return int(C.InitFlags.FUSE_SETXATTR_EXT) if setxattr_ext and minor >= 33 else 0


def rand_int(rng: random.Random, fmt: str) -> int:
    """A value for a ``struct`` format code: edge values a third of the time."""
    bits = struct.calcsize("<" + fmt) * 8
    if fmt.islower():
        lo, hi = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    else:
        lo, hi = 0, (1 << bits) - 1
    if rng.random() < 0.35:
        return rng.choice([lo, hi, 0, 1, hi // 2 + 1 if lo == 0 else -1])
    return rng.randint(lo, hi)


def rand_bytes(rng: random.Random, lo: int, hi: int, nul: bool = True) -> bytes:
    """Random bytes; ``nul=False`` keeps NUL out (names)."""
    n = rng.randint(lo, hi)
    first = 0 if nul else 1
    return bytes(rng.randint(first, 255) for _ in range(n))


def random_fields(con: cs.Construct, rng: random.Random) -> Any:
    """Random values for every field of a (fixed-size) construct schema, nested as construct nests them."""
    while isinstance(con, cs.Renamed):
        con = con.subcon
    if isinstance(con, cs.FormatField):
        return rand_int(rng, con.fmtstr[1:])
    if isinstance(con, cs.Bytes):
        return rand_bytes(rng, con.length, con.length)
    if isinstance(con, cs.Array):
        return [random_fields(con.subcon, rng) for _ in range(con.count)]
    if isinstance(con, cs.Struct):
        return {sc.name: random_fields(sc, rng) for sc in con.subcons}
    raise AssertionError(f"no generator for {con!r}")


def random_name(rng: random.Random, empty_ok: bool = False) -> bytes:
    """A file name: any bytes but NUL and '/', often not UTF-8."""
    return bytes(b for b in rand_bytes(rng, 0 if empty_ok else 1, 40, nul=False) if b != 0x2F) or b"x"


def random_secctx(rng: random.Random, n: Optional[int] = None) -> Dict[str, Any]:
    """A fuse_secctx_header + contexts, with the sizes the kernel would compute."""
    n = rng.randint(0, 3) if n is None else n
    contexts = []
    body = 0
    for _ in range(n):
        ctx = rand_bytes(rng, 0, 30)
        name = rng.choice([b"security.selinux", b"security.smack", b"s"])
        contexts.append({"size": len(ctx), "name": name, "context": ctx})
        body += 8 + len(name) + 1 + len(ctx)
    return {"size": (8 + body + 7) & ~7, "nr_secctx": n, "contexts": contexts}


def random_extensions(rng: random.Random) -> List[Dict[str, Any]]:
    """Request extensions (7.38): security contexts, supplementary groups, an unknown type."""
    exts: List[Dict[str, Any]] = []
    for kind in rng.sample(["secctx", "groups", "unknown"], rng.randint(1, 3)):
        if kind == "secctx":
            sec = random_secctx(rng, rng.randint(1, 2))
            exts.append({"type": sec["nr_secctx"], "kind": "secctx", "secctx": sec})
        elif kind == "groups":
            exts.append({"type": int(C.fuse_ext_type.FUSE_EXT_GROUPS), "kind": "groups",
                         "groups": [rand_int(rng, "I") for _ in range(rng.randint(0, 5))]})
        else:
            exts.append({"type": rng.randint(33, 0xFFFFFFFF), "kind": "unknown",
                         "data": rand_bytes(rng, 0, 3) * 8})
    return exts


class Variant:
    """Knobs that pick a message's shape where the table has alternatives."""

    def __init__(self, size_query: bool = False, ioctl_retry: bool = False) -> None:
        self.size_query = size_query  # GETXATTR/LISTXATTR request size 0
        self.ioctl_retry = ioctl_retry  # IOCTL reply with FUSE_IOCTL_RETRY


def fill_parts(parts: Tuple[Part, ...], minor: int, flags: int, rng: random.Random, variant: Variant,
               request: Any = None, small: bool = False) -> Dict[str, Any]:
    """A body for ``parts`` with every length/count field consistent with its data.

    Absent parts (their ``when`` is false) are left out.  ``small`` keeps payloads
    short (fuzz seeds).
    """
    ctx = PartContext(minor, flags, request)
    body: Dict[str, Any] = {}
    for part in parts:
        if isinstance(part, Struct):
            if part.when is not None and not part.when(ctx):
                continue
            values = random_fields(layout(part.struct_name, minor, flags), rng)
            if part.struct_name in _STATES_MINOR:
                values["major"], values["minor"] = 7, minor
                if "flags2" in values and not values["flags"] & C.InitFlags.FUSE_INIT_EXT:
                    values["flags"] |= int(C.InitFlags.FUSE_INIT_EXT)
            if part.struct_name == "fuse_getxattr_in" and variant.size_query:
                values["size"] = 0
            if part.struct_name == "fuse_ioctl_out":
                retry = int(C.IoctlFlags.FUSE_IOCTL_RETRY)
                values["flags"] = (values["flags"] | retry) if variant.ioctl_retry else (values["flags"] & ~retry)
                if variant.ioctl_retry:
                    values["in_iovs"], values["out_iovs"] = rng.randint(0, 4), rng.randint(0, 4)
            for holder, fld in ARRAY_COUNTS.values():
                if holder == part.struct_name and holder != "fuse_ioctl_out":
                    values[fld] = rng.randint(0, 6)
            body[part.name] = values
            ctx.parts[part.name] = values
    for part in parts:
        if isinstance(part, Struct) or (part.when is not None and not part.when(ctx)):
            continue
        if isinstance(part, Name):
            value: Any = random_name(rng, empty_ok=True)
        elif isinstance(part, Data):
            value = rand_bytes(rng, 0, 24 if small else 300)
        elif isinstance(part, Array):
            n = array_count_field(part, ctx)
            elem = None if part.element == "uint64_t" else layout(part.element, minor, flags)
            value = [rand_int(rng, "Q") if elem is None else random_fields(elem, rng) for _ in range(n)]
        elif isinstance(part, Dirents):
            value = [random_dirent(rng, minor, part.plus) for _ in range(rng.randint(0, 2 if small else 5))]
        elif isinstance(part, KeyValues):
            value = {"DEVNAME": "fusd-" + random_name(rng).hex()[:12], "MODE": "0666", "NOTE": "a=b \u00e9"}
        elif isinstance(part, Secctx):
            value = random_secctx(rng)
        else:
            raise AssertionError(f"no generator for part {part!r}")
        body[part.name] = value
        if part.length is not None:
            holder, fld = part.length
            body[holder][fld] = len(value)
    return body


def array_count_field(part: Array, ctx: PartContext) -> int:
    """The element count the table's lambda reads, checked against ``ARRAY_COUNTS``."""
    holder, fld = ARRAY_COUNTS[part.name]
    n = part.count(ctx)
    assert n == ctx.parts[holder][fld], f"ARRAY_COUNTS[{part.name!r}] disagrees with the table"
    return n


def random_dirent(rng: random.Random, minor: int, plus: bool) -> Dict[str, Any]:
    """One fuse_dirent (or fuse_direntplus) with its name."""
    name = random_name(rng)
    dirent = random_fields(layout("fuse_dirent"), rng)
    dirent["namelen"] = len(name)
    dirent["name"] = name
    if not plus:
        return dirent
    return {"entry_out": random_fields(layout("fuse_entry_out", minor), rng), "dirent": dirent}


def random_request(codec: Codec, spec: OpSpec, rng: random.Random, variant: Variant,
                   small: bool = False) -> Tuple[bytes, Dict[str, Any]]:
    """(encoded request, the arguments given) for one opcode, with header fields and extensions."""
    body = fill_parts(spec.request, codec.minor, codec.flags, rng, variant, small=small)
    args: Dict[str, Any] = {
        "unique": rng.randint(1, (1 << 64) - 1), "nodeid": rand_int(rng, "Q"), "uid": rand_int(rng, "I"),
        "gid": rand_int(rng, "I"), "pid": rand_int(rng, "I"),
        "extensions": random_extensions(rng) if codec.minor >= 38 and rng.random() < 0.6 else [],
    }
    raw = codec.encode_request(spec.opcode, body, **args)
    return raw, {"body": body, **args}


def random_reply(codec: Codec, spec: OpSpec, request: Request, rng: random.Random, variant: Variant,
                 small: bool = False) -> Tuple[bytes, Dict[str, Any]]:
    """(encoded success reply, the body given) to a decoded request."""
    assert spec.reply is not None
    body = fill_parts(spec.reply, codec.minor, codec.flags, rng, variant, request=request.body, small=small)
    return codec.encode_reply(request, body), body


def random_notify(codec: Codec, spec: NotifySpec, rng: random.Random,
                  small: bool = False) -> Tuple[bytes, Dict[str, Any]]:
    """(encoded notification, the body given)."""
    body = fill_parts(spec.body, codec.minor, codec.flags, rng, Variant(), small=small)
    return codec.encode_notify(spec.code, body), body


def ops_at(minor: int) -> List[OpSpec]:
    """Every opcode a kernel speaking ``minor`` may send."""
    return [spec for spec in OPS.values() if spec.since <= minor]


def notifications_at(minor: int) -> List[NotifySpec]:
    """Every notification a daemon may send at ``minor``."""
    return [spec for spec in NOTIFICATIONS.values() if spec.since <= minor]


def variants_for(spec: OpSpec) -> List[Variant]:
    """The shapes an opcode's messages come in (both GETXATTR forms, both IOCTL reply forms)."""
    if spec.opcode in (C.fuse_opcode.FUSE_GETXATTR, C.fuse_opcode.FUSE_LISTXATTR):
        return [Variant(size_query=True), Variant(size_query=False)]
    if spec.opcode == C.fuse_opcode.FUSE_IOCTL:
        return [Variant(ioctl_retry=True), Variant(ioctl_retry=False)]
    return [Variant()]


def fuzz_protocols(minors=MINORS) -> List[Tuple[int, int]]:
    """(minor, flags) to fuzz at: each minor, with FUSE_SETXATTR_EXT where it exists, plus 7.12 (raw iovec
    retries) and 7.36 with FUSE_SECURITY_CTX (security contexts appended to create-like requests)."""
    out = []
    for minor in minors:
        out.append((minor, 0))
        if minor >= 33:
            out.append((minor, codec_flags(minor, True)))
    return out + [(12, 0), (36, int(C.InitFlags.FUSE_SECURITY_CTX) | codec_flags(36, True))]


def seed_corpus(minors=MINORS, per_op: int = 2, seed: int = 0) -> List[Tuple[str, Codec, Any, bytes]]:
    """Valid messages of every kind, for fuzzing: (direction, codec, request-or-None, raw).

    direction is "request", "reply" (with the decoded Request it answers) or "notify".
    """
    rng = random.Random(seed)
    out: List[Tuple[str, Codec, Any, bytes]] = []
    for minor, flags in fuzz_protocols(minors):
        codec = Codec(minor, flags)
        for spec in ops_at(minor):
            for variant in variants_for(spec):
                for i in range(per_op):
                    raw, _args = random_request(codec, spec, rng, variant, small=True)
                    out.append(("request", codec, None, raw))
                    req = codec.decode_request(raw)
                    if spec.has_reply:
                        rep, _ = random_reply(codec, spec, req, rng, variant, small=True)
                        out.append(("reply", codec, req, rep))
                        if not i:  # one error reply per opcode is plenty: they are 16 bytes
                            out.append(("reply", codec, req, codec.encode_reply(req, error=-rng.randint(1, 133))))
        for nspec in notifications_at(minor):
            for _ in range(per_op):
                out.append(("notify", codec, None, random_notify(codec, nspec, rng, small=True)[0]))
    return out


# ------------------------------------------------------------------ malformed messages (fuzzing)

#: u32 values that break length and count fields: empty, tiny, unaligned, huge, sign bit.
INTERESTING = (0, 1, 2, 3, 4, 7, 8, 9, 15, 16, 24, 39, 40, 41, 63, 64, 255, 256, 4095, 4096, 0x7FFF, 0xFFFF,
               0x10000, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFE, 0xFFFFFFFF)


def _fix_len(rng: random.Random, data: bytearray) -> bytearray:
    """Mostly make the header's ``len`` match, so the input gets past the first check into the body."""
    if len(data) >= 4 and rng.random() < 0.85:
        data[0:4] = len(data).to_bytes(4, "little")
    return data


def _put(data: bytearray, offset: int, width: int, value: int) -> None:
    if offset + width <= len(data):
        data[offset:offset + width] = (value & ((1 << (8 * width)) - 1)).to_bytes(width, "little")


def mutate(rng: random.Random, raw: bytes, direction: str, other: bytes = b"") -> bytes:
    """One malformed variant of a valid message: random bytes, truncation, bit flips, corrupt lengths.

    ``direction`` ("request", "reply", "notify") picks which header fields to aim at;
    ``other`` is another valid message to splice with.
    """
    data = bytearray(raw)
    op = rng.randrange(9)
    if op == 0:  # random bytes, sometimes behind a plausible header
        data = bytearray(rand_bytes(rng, 0, 160))
        if rng.random() < 0.5:
            data[:min(len(raw), 16)] = raw[:16]
        return bytes(_fix_len(rng, data))
    if op == 1:  # truncation
        header = 40 if direction == "request" else 16
        keep = rng.randrange(len(data) + 1) if rng.random() < 0.3 or len(data) <= header \
            else rng.randint(header, len(data) - 1)
        data = data[:keep]
        return bytes(_fix_len(rng, data))
    if op == 2:  # bit flips
        for _ in range(rng.randint(1, 8)):
            if data:
                i = rng.randrange(len(data))
                data[i] ^= 1 << rng.randrange(8)
        return bytes(_fix_len(rng, data) if rng.random() < 0.5 else data)
    if op == 3:  # a length/count field anywhere: aligned u32 or u64 in the body
        width = rng.choice((4, 4, 8, 2))
        if len(data) >= width:
            offset = rng.randrange(0, len(data) - width + 1, width if len(data) >= 2 * width else 1)
            value = rng.choice(INTERESTING + (len(data), len(data) - 40, len(data) - 16, rng.getrandbits(32)))
            _put(data, offset, width, value)
        return bytes(_fix_len(rng, data))
    if op == 4:  # the header's own len, total_extlen (requests), error/unique (from the daemon)
        if direction == "request":
            field = rng.choice(["len", "extlen", "opcode"])
            if field == "len":
                _put(data, 0, 4, rng.choice(INTERESTING + (len(data) + 1, len(data) - 1)))
            elif field == "extlen":
                if rng.random() < 0.5 and len(data) >= 40:  # a bad extension record at the end
                    size = rng.choice((0, 4, 7, 8, 12, 16, 24, 0xFFFFFFFF))
                    ext_type = rng.choice((0, 1, 2, 31, 32, 33, 0xFFFFFFFF))
                    record = size.to_bytes(4, "little") + ext_type.to_bytes(4, "little") + rand_bytes(rng, 0, 2) * 8
                    data += record
                    _put(data, 36, 2, len(record) // 8)
                    _fix_len(rng, data)
                else:
                    _put(data, 36, 2, rng.choice((1, 2, 3, 4, 0x7F, 0xFFFF, (len(data) - 40) // 8)))
            else:
                _put(data, 4, 4, rng.choice(list(range(0, 60)) + [4096, 4097, 0xFFFFFFFF]))
        else:
            field = rng.choice(["len", "error", "unique"])
            if field == "len":
                _put(data, 0, 4, rng.choice(INTERESTING + (len(data) + 1, len(data) - 1)))
            elif field == "error":
                _put(data, 4, 4, rng.choice((0, 1, 9, 10, -1, -4095, -4096, 0x7FFFFFFF, 0x80000000)))
            else:
                _put(data, 8, 8, rng.choice((0, 1, 1 << 63, (1 << 64) - 1)))
        return bytes(data)
    if op == 5:  # insert or append junk
        junk = rand_bytes(rng, 1, 24)
        at = rng.randrange(len(data) + 1)
        data[at:at] = junk
        return bytes(_fix_len(rng, data))
    if op == 6:  # delete a slice
        if data:
            a = rng.randrange(len(data))
            del data[a:a + rng.randint(1, 16)]
        return bytes(_fix_len(rng, data))
    if op == 7 and other:  # splice two messages
        cut = rng.randrange(len(data) + 1)
        data = data[:cut] + bytearray(other[rng.randrange(len(other) + 1):])
        return bytes(_fix_len(rng, data))
    # several of the above at once
    out = raw
    for _ in range(rng.randint(2, 4)):
        out = mutate(rng, out, direction, other)
    return out


class UnlocatedWireError(AssertionError):
    """A WireError that does not say where in the message the problem is."""


_LENIENT: Dict[Tuple[int, int], Codec] = {}


def _reencode(codec: Codec, msg: Any, request: Any) -> None:
    """Encode what was decoded again: it may be refused, but only with a WireError."""
    try:
        if isinstance(msg, Request):
            h = msg.header
            codec.encode_request(h.opcode, msg.body, unique=h.unique, nodeid=h.nodeid, uid=h.uid, gid=h.gid,
                                 pid=h.pid, extensions=msg.extensions)
        elif hasattr(msg, "opcode"):  # Reply
            if msg.body is None:
                codec.encode_reply(msg.opcode, unique=msg.unique, error=msg.error)
            else:
                codec.encode_reply(request if request is not None else msg.opcode, msg.body, unique=msg.unique)
        else:
            codec.encode_notify(msg.code, msg.body)
    except WireError:
        pass


def _opcode_of(direction: str, request: Optional[Request], data: bytes) -> Optional[int]:
    """The opcode a decoder's WireError must name: the request's, once its header is complete."""
    if direction == "reply":
        return request.opcode if request is not None else None
    return int.from_bytes(data[4:8], "little") if len(data) >= 40 else None


def decode_all(direction: str, codec: Codec, request: Optional[Request], data: bytes) -> Tuple[int, int]:
    """Feed ``data`` to every decoder of its direction, strict and lenient: (decoder calls, refusals).

    The only exception allowed out of a decoder is ``WireError``, and it must name an
    offset and what was expected, and the opcode once it is known; anything else
    propagates (an ``UnlocatedWireError`` for a WireError that does not say where).
    What decodes is encoded again, which may only fail with a WireError.
    """
    key = (codec.minor, codec.flags)
    lenient = _LENIENT.get(key)
    if lenient is None:
        lenient = _LENIENT[key] = Codec(codec.minor, codec.flags, strict=False)
    refused = ncalls = 0
    for c in (codec, lenient):
        if direction == "request":
            calls = [(c.decode_request, (data,))]
        elif direction == "reply":
            assert request is not None
            calls = [(c.decode_reply, (data, request)), (c.decode_reply, (data, request.opcode)),
                     (c.decode_from_daemon, (data, request))]
        else:
            calls = [(c.decode_notify, (data,)), (c.decode_from_daemon, (data, None))]
        conv = Conversation(c)
        if direction == "request":
            calls.append((conv.request, (data,)))
        else:
            if request is not None:
                conv.pending[request.unique] = request
            calls.append((conv.from_daemon, (data,)))
        calls.append((lambda raw: list(iter_messages(raw)), (data,)))
        for fn, args in calls:
            ncalls += 1
            try:
                msg = fn(*args)
            except WireError as exc:
                if exc.offset is None or f"offset {exc.offset}" not in str(exc) or not exc.expected:
                    raise UnlocatedWireError(f"{fn.__name__}: WireError without offset/expected: {exc}") from exc
                if fn in (c.decode_request, c.decode_reply) and exc.opcode != _opcode_of(direction, request, data):
                    raise UnlocatedWireError(f"{fn.__name__}: WireError without the opcode: {exc}") from exc
                refused += 1
                continue
            if isinstance(msg, tuple):  # Conversation.from_daemon: (message, request)
                msg = msg[0]
            if not isinstance(msg, list):
                _reencode(c, msg, request if direction == "reply" else None)
    return ncalls, refused
