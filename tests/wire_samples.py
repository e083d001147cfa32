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

from fusd_wire import NOTIFICATIONS, OPS, Codec, NotifySpec, OpSpec, Request
from fusd_wire import constants as C
from fusd_wire.codec import PartContext
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


def seed_corpus(minors=MINORS, per_op: int = 2, seed: int = 0) -> List[Tuple[str, Codec, Any, bytes]]:
    """Valid messages of every kind, for fuzzing: (direction, codec, request-or-None, raw).

    direction is "request", "reply" (with the decoded Request it answers) or "notify".
    """
    rng = random.Random(seed)
    out: List[Tuple[str, Codec, Any, bytes]] = []
    for minor in minors:
        for setx in (False, True) if minor >= 33 else (False,):
            codec = Codec(minor, codec_flags(minor, setx))
            for spec in ops_at(minor):
                for variant in variants_for(spec):
                    for _ in range(per_op):
                        raw, _args = random_request(codec, spec, rng, variant, small=True)
                        out.append(("request", codec, None, raw))
                        req = codec.decode_request(raw)
                        if spec.has_reply:
                            rep, _ = random_reply(codec, spec, req, rng, variant, small=True)
                            out.append(("reply", codec, req, rep))
                            out.append(("reply", codec, req, codec.encode_reply(req, error=-rng.randint(1, 133))))
            for nspec in notifications_at(minor):
                for _ in range(per_op):
                    out.append(("notify", codec, None, random_notify(codec, nspec, rng, small=True)[0]))
    return out
