"""Decode and encode whole FUSE/CUSE messages, both directions, at any protocol minor.

This is the *complete* codec, driven by the opcode table and built on construct:
it validates everything and is what traces, tests and tools use.  The runtime's
hot path does not call it per request; it uses ``fastpath.FAST`` and
``Codec.fast()`` instead.

    from fusd_wire import Codec, Conversation, constants as C

    codec = Codec(minor=45)                      # the negotiated protocol (and flags=)
    raw = codec.encode_request(C.fuse_opcode.FUSE_READ, {"fuse_read_in": {
        "fh": 1, "offset": 0, "size": 4096, "read_flags": 0, "lock_owner": 0, "flags": 0, "padding": 0}},
        unique=10, nodeid=2)                     # what the kernel would send
    req = codec.decode_request(raw)
    raw = codec.encode_reply(req, {"data": b"hi"})
    rep = codec.decode_reply(raw, req)           # replies need their request
    conv = Conversation()                        # pairs by unique, follows INIT

Every failure is a ``WireError`` naming the opcode, the byte offset and what was
expected there.
"""

from __future__ import annotations

import errno as _errno
import functools
import io
from dataclasses import dataclass, field
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Union

import construct as cs

from . import constants as C
from .errors import WireError
from .fastdecode import container_reader
from .fastpath import FAST, FastStruct
from .layouts import fast_layout, layout
from .opcodes import NOTIFICATIONS, OPS, NotifySpec, OpSpec
from .parts import EXTENSIONS, Data, Name, Part, merge_fields, strip_io

IN_HEADER_SIZE = FAST.fuse_in_header.size
OUT_HEADER_SIZE = FAST.fuse_out_header.size
_IN_HEADER = FAST.fuse_in_header
_OUT_HEADER = FAST.fuse_out_header
_READ_IN_HEADER = container_reader(layout("fuse_in_header"), "fuse_in_header")
_READ_OUT_HEADER = container_reader(layout("fuse_out_header"), "fuse_out_header")
Buffer = Union[bytes, bytearray, memoryview]


@dataclass
class Request:
    """A decoded kernel -> daemon message."""

    header: Any  # Container of fuse_in_header fields
    body: Any  # Container: one key per part of the opcode's request
    extensions: List[Any] = field(default_factory=list)

    @property
    def opcode(self) -> int:
        """The opcode (``fuse_in_header.opcode``)."""
        return self.header["opcode"]  # type: ignore[no-any-return]

    @property
    def unique(self) -> int:
        """The request id its reply carries (``fuse_in_header.unique``)."""
        return self.header["unique"]  # type: ignore[no-any-return]

    @property
    def name(self) -> str:
        """The opcode's short name: ``READ``, ``CUSE_INIT``."""
        return C.opcode_name(self.header["opcode"])

    @property
    def spec(self) -> Optional[OpSpec]:
        """The opcode's table entry; None for an opcode the table does not know."""
        return OPS.get(self.header["opcode"])


@dataclass
class Reply:
    """A decoded daemon -> kernel reply to a request."""

    header: Any  # Container of fuse_out_header fields
    opcode: int  # the request's opcode
    body: Any  # Container, or None for an error reply

    @property
    def unique(self) -> int:
        """The id of the request this answers."""
        return self.header["unique"]  # type: ignore[no-any-return]

    @property
    def error(self) -> int:
        """0, or a negative errno (``fuse_out_header.error``)."""
        return self.header["error"]  # type: ignore[no-any-return]

    @property
    def name(self) -> str:
        """The request's opcode name: ``READ``."""
        return C.opcode_name(self.opcode)


@dataclass
class Notification:
    """A decoded daemon -> kernel notification (unique 0, error = notify code)."""

    header: Any
    body: Any

    @property
    def code(self) -> int:
        """The notify code (sent in ``fuse_out_header.error``)."""
        return self.header.error

    @property
    def name(self) -> str:
        """The notification's short name: ``POLL``, ``INVAL_INODE``."""
        return C.notify_name(self.header.error)


class PartContext:
    """What a part's predicates and counts may look at while a body is coded."""

    __slots__ = ("minor", "flags", "request", "parts")

    def __init__(self, minor: int, flags: int, request: Any = None) -> None:
        self.minor = minor
        self.flags = flags
        self.request = request  # the request body, when coding a reply
        self.parts: Any = cs.Container()


class Codec:
    """The complete codec for one negotiated protocol (minor, INIT flags, FUSE or CUSE).

    Args:
        minor: the negotiated protocol minor (``min(kernel, daemon)``).
        flags: the negotiated INIT flags (``flags | flags2 << 32``).
        strict: unknown opcodes raise ``WireError``; when False they decode as
            opaque messages (``body.data``), which trace decoding needs.
    """

    def __init__(self, minor: int = C.FUSE_KERNEL_MINOR_VERSION, flags: int = 0, *, strict: bool = True) -> None:
        if not 0 <= minor <= C.FUSE_KERNEL_MINOR_VERSION:
            raise ValueError(f"protocol minor {minor} is outside 0..{C.FUSE_KERNEL_MINOR_VERSION}")
        self.minor = minor
        self.flags = flags
        self.strict = strict
        self._structs: Dict[str, Tuple[int, Any]] = {}  # struct name -> (size, fast Container reader)

    def __repr__(self) -> str:
        return f"Codec(minor={self.minor}, flags={self.flags:#x}, strict={self.strict})"

    # ---------------------------------------------------------------- fast path access
    def fast(self, struct_name: str) -> FastStruct:
        """The fast codec of a kernel struct at this codec's minor and flags."""
        return fast_layout(struct_name, self.minor, self.flags)

    # ---------------------------------------------------------------- requests
    def decode_request(self, buf: Buffer) -> Request:
        """Decode one kernel -> daemon message (header, body parts, extensions)."""
        data = bytes(buf)
        if len(data) < IN_HEADER_SIZE:
            raise WireError(f"fuse_in_header needs {IN_HEADER_SIZE} bytes, {len(data)} available",
                            offset=0, expected="fuse_in_header")
        header = _READ_IN_HEADER(data, 0)
        opcode, unique = header["opcode"], header["unique"]
        if header["len"] != len(data):
            raise WireError(f"fuse_in_header.len is {header['len']} but the message has {len(data)} bytes",
                            opcode=opcode, unique=unique, offset=0, expected="len == message size")
        end = len(data)
        extensions: List[Any] = []
        if header["total_extlen"] and self.minor >= 38:
            extlen = header.total_extlen * 8
            if extlen > end - IN_HEADER_SIZE:
                raise WireError(f"total_extlen {header.total_extlen} (x8 bytes) exceeds the body of "
                                f"{end - IN_HEADER_SIZE} bytes", opcode=opcode, unique=unique, offset=32,
                                expected="extensions inside the message")
            end -= extlen
            extensions = self._parse_part(EXTENSIONS, data[end:], end, "extensions", opcode, unique)
        spec = OPS.get(opcode)
        if spec is None:
            if self.strict:
                raise WireError(f"unknown opcode {opcode}", opcode=opcode, unique=unique, offset=4,
                                expected="a known fuse_opcode")
            return Request(header, cs.Container(data=data[IN_HEADER_SIZE:end]), extensions)
        raw = data[IN_HEADER_SIZE:end]
        ctx = self._context_for(spec, raw, request=None, reply=False)
        body = self._decode_parts(spec.request, raw, IN_HEADER_SIZE, ctx, opcode, unique)
        return Request(header, body, extensions)

    def encode_request(self, opcode: int, body: Optional[Mapping[str, Any]] = None, *, unique: int,
                       nodeid: int = 0, uid: int = 0, gid: int = 0, pid: int = 0,
                       extensions: Sequence[Mapping[str, Any]] = ()) -> bytes:
        """Encode a kernel -> daemon message, as the kernel would send it (tests, replay)."""
        spec = OPS.get(opcode)
        if spec is None:
            if self.strict:
                raise WireError(f"unknown opcode {opcode}", opcode=opcode, expected="a known fuse_opcode")
            payload = bytes((body or {}).get("data", b""))
        else:
            ctx = self._context_for(spec, body or {}, request=None, reply=False)
            payload = self._encode_parts(spec.request, body or {}, ctx, opcode)
        ext = b""
        if extensions:
            if self.minor < 38:
                raise WireError(f"request extensions need protocol 7.38, this codec speaks 7.{self.minor}",
                                opcode=opcode, expected="minor >= 38")
            ext = self._build_part(EXTENSIONS, list(extensions), opcode, "extensions")
        total = IN_HEADER_SIZE + len(payload) + len(ext)
        header = _IN_HEADER.pack(total, opcode, unique, nodeid, uid, gid, pid, len(ext) // 8, 0)
        return header + payload + ext

    # ---------------------------------------------------------------- replies
    def decode_reply(self, buf: Buffer, request: Union[Request, int]) -> Reply:
        """Decode a daemon -> kernel reply to ``request`` (a decoded Request, or its opcode).

        With only an opcode, replies whose shape depends on the request (GETXATTR,
        LISTXATTR) are decoded as the size query form.
        """
        data = bytes(buf)
        opcode = request.opcode if isinstance(request, Request) else int(request)
        header = self._out_header(data, opcode)
        if header["unique"] == 0:
            raise WireError("unique 0 is a notification, not a reply", opcode=opcode, offset=8,
                            expected="the request's unique")
        if header["error"]:
            return self._error_reply(header, data, opcode)
        spec = OPS.get(opcode)
        if spec is None or spec.reply is None:
            if spec is not None and self.strict:
                raise WireError(f"{spec.name} gets no reply", opcode=opcode, unique=header.unique, offset=0,
                                expected="no message")
            return Reply(header, opcode, cs.Container(data=data[OUT_HEADER_SIZE:]))
        req_body = request.body if isinstance(request, Request) else None
        raw = data[OUT_HEADER_SIZE:]
        ctx = self._context_for(spec, raw, request=req_body, reply=True)
        body = self._decode_parts(spec.reply, raw, OUT_HEADER_SIZE, ctx, opcode, header["unique"])
        return Reply(header, opcode, body)

    def encode_reply(self, request: Union[Request, int], body: Optional[Mapping[str, Any]] = None, *,
                     unique: Optional[int] = None, error: int = 0) -> bytes:
        """Encode a daemon -> kernel reply.  ``error`` is a negative errno (or a positive one).

        ``request`` is the decoded Request (its unique is used) or an opcode plus ``unique``.
        """
        if isinstance(request, Request):
            opcode, req_body = request.opcode, request.body
            unique = request.unique if unique is None else unique
        else:
            opcode, req_body = int(request), None
        if not unique:
            raise WireError("a reply needs the request's nonzero unique", opcode=opcode, expected="unique")
        if error:
            error = -abs(error)
            return _OUT_HEADER.pack(OUT_HEADER_SIZE, error, unique)
        spec = OPS.get(opcode)
        if spec is None or spec.reply is None:
            if spec is not None and self.strict:
                raise WireError(f"{spec.name} gets no reply", opcode=opcode, expected="no message")
            payload = bytes((body or {}).get("data", b""))
        else:
            ctx = self._context_for(spec, body or {}, request=req_body, reply=True)
            payload = self._encode_parts(spec.reply, body or {}, ctx, opcode)
        return _OUT_HEADER.pack(OUT_HEADER_SIZE + len(payload), 0, unique) + payload

    # ---------------------------------------------------------------- notifications
    def decode_notify(self, buf: Buffer) -> Notification:
        """Decode a daemon -> kernel notification (unique 0, error = fuse_notify_code)."""
        data = bytes(buf)
        header = self._out_header(data, None)
        if header.unique != 0:
            raise WireError(f"a notification has unique 0, not {header.unique}", offset=8, expected="unique 0")
        spec = NOTIFICATIONS.get(header.error)
        if spec is None:
            if self.strict:
                raise WireError(f"unknown notification code {header.error}", offset=4,
                                expected="a known fuse_notify_code")
            return Notification(header, cs.Container(data=data[OUT_HEADER_SIZE:]))
        ctx = PartContext(self.minor, self.flags)
        body = self._decode_parts(spec.body, data[OUT_HEADER_SIZE:], OUT_HEADER_SIZE, ctx, None, 0,
                                  what=f"NOTIFY_{spec.name}")
        return Notification(header, body)

    def encode_notify(self, code: int, body: Optional[Mapping[str, Any]] = None) -> bytes:
        """Encode a notification; ``code`` is a ``fuse_notify_code``."""
        spec: Optional[NotifySpec] = NOTIFICATIONS.get(code)
        if spec is None:
            raise WireError(f"unknown notification code {code}", expected="a known fuse_notify_code")
        ctx = PartContext(self.minor, self.flags)
        payload = self._encode_parts(spec.body, body or {}, ctx, None, what=f"NOTIFY_{spec.name}")
        return _OUT_HEADER.pack(OUT_HEADER_SIZE + len(payload), code, 0) + payload

    def decode_from_daemon(self, buf: Buffer, request: Optional[Union[Request, int]]) -> Union[Reply, Notification]:
        """A daemon -> kernel message: a notification if unique is 0, else a reply to ``request``."""
        if len(buf) >= OUT_HEADER_SIZE and _OUT_HEADER.unpack_from(buf)[2] == 0:
            return self.decode_notify(buf)
        if request is None:
            raise WireError("reply without a known request", offset=8, expected="a pending request's unique",
                            unique=_OUT_HEADER.unpack_from(buf)[2] if len(buf) >= OUT_HEADER_SIZE else None)
        return self.decode_reply(buf, request)

    # ---------------------------------------------------------------- INIT
    def negotiated(self, init_out: Mapping[str, Any]) -> Codec:
        """The codec for the protocol an INIT reply (fuse_init_out fields) settles on."""
        minor = min(int(init_out["minor"]), self.minor, C.FUSE_KERNEL_MINOR_VERSION)
        flags = int(init_out.get("flags", 0))
        if minor >= 36 and flags & C.InitFlags.FUSE_INIT_EXT:
            flags |= int(init_out.get("flags2", 0)) << 32
        return Codec(minor, flags, strict=self.strict)

    # ---------------------------------------------------------------- internals
    def _context_for(self, spec: OpSpec, body: Any, *, request: Any, reply: bool) -> PartContext:
        minor = self.minor
        if spec.opcode == C.fuse_opcode.FUSE_INIT:
            # INIT is self-describing: each side's layout follows the minor it states.
            stated = _stated_minor(body)
            if stated is not None:
                minor = min(stated, C.FUSE_KERNEL_MINOR_VERSION)
        return PartContext(minor, self.flags, request)

    def _out_header(self, data: bytes, opcode: Optional[int]) -> Any:
        if len(data) < OUT_HEADER_SIZE:
            raise WireError(f"fuse_out_header needs {OUT_HEADER_SIZE} bytes, {len(data)} available",
                            opcode=opcode, offset=0, expected="fuse_out_header")
        header = _READ_OUT_HEADER(data, 0)
        if header["len"] != len(data):
            raise WireError(f"fuse_out_header.len is {header.len} but the message has {len(data)} bytes",
                            opcode=opcode, unique=header.unique, offset=0, expected="len == message size")
        return header

    def _error_reply(self, header: Any, data: bytes, opcode: int) -> Reply:
        if not -4095 <= header.error < 0:
            raise WireError(f"error {header.error} is not a negative errno", opcode=opcode, unique=header.unique,
                            offset=4, expected="-4095 <= error <= 0")
        if len(data) != OUT_HEADER_SIZE:
            raise WireError(f"an error reply carries no body, this one has {len(data) - OUT_HEADER_SIZE} bytes",
                            opcode=opcode, unique=header.unique, offset=OUT_HEADER_SIZE, expected="end of message")
        return Reply(header, opcode, None)

    def _parse_part(self, part: Any, data: bytes, base: int, what: str, opcode: Optional[int],
                    unique: Optional[int]) -> Any:
        try:
            return strip_io(part.parse(data))
        except cs.ConstructError as exc:
            raise WireError(f"{what}: {_construct_message(exc)}", opcode=opcode, unique=unique, offset=base,
                            expected=what) from None

    def _decode_parts(self, parts: Sequence[Part], data: bytes, base: int, ctx: PartContext,
                      opcode: Optional[int], unique: Optional[int], what: Optional[str] = None) -> Any:
        # Fixed structs, names and payloads (nearly every message) are cut out directly,
        # structs with the derived fast reader (fastdecode: the same Containers construct
        # builds); the variable parts (dirent lists, arrays, blobs) go through construct.
        body = ctx.parts
        total = len(data)
        pos = 0
        stream: Optional[io.BytesIO] = None
        for part in parts:
            if part.when is not None and not part.when(ctx):
                body[part.name] = None
                continue
            start = pos
            if part.struct_name is not None:
                need, read = self._struct(part.struct_name, ctx)
                if total - pos < need:
                    raise WireError(f"{part.struct_name} needs {need} bytes, {total - pos} available",
                                    opcode=opcode, unique=unique, offset=base + pos, expected=part.struct_name)
                value = read(data, pos)
                pos += need
            elif isinstance(part, Name):
                end = data.find(b"\0", pos)
                if end < 0:
                    raise WireError(f"{part.describe()}: no NUL terminator before the end of the message",
                                    opcode=opcode, unique=unique, offset=base + pos, expected=part.describe())
                value = data[pos:end]
                pos = end + 1
            elif isinstance(part, Data):
                value = data[pos:]
                pos = total
            else:
                if stream is None:
                    stream = io.BytesIO(data)
                stream.seek(pos)
                try:
                    value = strip_io(part.construct(ctx).parse_stream(stream))
                except cs.ConstructError as exc:
                    raise WireError(f"{part.describe()}: {_construct_message(exc)}", opcode=opcode, unique=unique,
                                    offset=base + pos, expected=part.describe()) from None
                pos = stream.tell()
            body[part.name] = value
            if part.length is not None:
                holder, fld = part.length
                declared = body[holder][fld]
                if declared != len(value):
                    raise WireError(f"{holder}.{fld} is {declared} but the {part.name} has {len(value)} bytes",
                                    opcode=opcode, unique=unique, offset=base + start,
                                    expected=f"{part.name} of {holder}.{fld} bytes")
        rest = total - pos
        if rest:
            last = parts[-1].describe() if parts else "the header"
            raise WireError(f"{rest} unexpected bytes after {last}", opcode=opcode, unique=unique,
                            offset=base + pos, expected="end of message")
        return body

    def _struct(self, name: str, ctx: PartContext) -> Tuple[int, Any]:
        """(size, fast reader) of a struct part at the context's minor and flags (cached per codec)."""
        if ctx.minor == self.minor and ctx.flags == self.flags:
            hit = self._structs.get(name)
            if hit is None:
                con = layout(name, self.minor, self.flags)
                hit = self._structs[name] = (con.sizeof(), container_reader(con, name))
            return hit
        con = layout(name, ctx.minor, ctx.flags)  # INIT states its own minor
        return con.sizeof(), container_reader(con, name)

    def _build_part(self, con: Any, value: Any, opcode: Optional[int], what: str) -> bytes:
        try:
            return con.build(value)
        except cs.ConstructError as exc:
            raise WireError(f"{what}: {_construct_message(exc)}", opcode=opcode, expected=what) from None
        except (TypeError, ValueError, AttributeError, KeyError) as exc:
            raise WireError(f"{what}: cannot encode {value!r}: {exc}", opcode=opcode, expected=what) from None

    def _encode_parts(self, parts: Sequence[Part], body: Mapping[str, Any], ctx: PartContext,
                      opcode: Optional[int], what: Optional[str] = None) -> bytes:
        known = {p.name for p in parts}
        for key in body:
            if key not in known:
                raise WireError(f"{what or C.opcode_name(opcode or 0)} has no part {key!r} "
                                f"(parts: {', '.join(sorted(known)) or 'none'})", opcode=opcode, expected="a part name")
        values: Dict[str, Any] = {}
        for part in parts:  # fill structs first so predicates and counts can see them
            if part.struct_name is None:
                continue
            if part.when is not None and not part.when(ctx):
                continue
            con = part.construct(ctx)
            zero = strip_io(con.parse(bytes(con.sizeof())))
            values[part.name] = merge_fields(zero, body.get(part.name), part.struct_name)
            ctx.parts[part.name] = values[part.name]
        for part in parts:  # length fields the caller left out follow their payload
            if part.length is not None and part.name in body:
                holder, fld = part.length
                given = body.get(holder) or {}
                if holder in values and fld not in given:
                    payload = body[part.name]
                    n = len(payload.encode("utf-8", "surrogateescape") if isinstance(payload, str) else payload)
                    values[holder][fld] = n
        out = []
        for part in parts:
            if part.when is not None and not part.when(ctx):
                if body.get(part.name) is not None:  # e.g. a fuse_getxattr_out for a value fetch: never drop it
                    raise WireError(f"{part.describe()} is not sent in this message's form", opcode=opcode,
                                    expected=f"no {part.name}")
                continue
            con = part.construct(ctx)
            value = values[part.name] if part.struct_name is not None else body.get(part.name, part.default())
            if value is None:
                value = part.default()
            out.append(self._build_part(con, value, opcode, part.describe()))
        return b"".join(out)


def _stated_minor(body: Any) -> Optional[int]:
    """The ``minor`` an INIT body states (raw bytes or a mapping), if it states one."""
    if isinstance(body, (bytes, bytearray, memoryview)):
        return int.from_bytes(bytes(body[4:8]), "little") if len(body) >= 8 else None
    for key in ("fuse_init_in", "fuse_init_out"):
        if isinstance(body, Mapping) and isinstance(body.get(key), Mapping) and "minor" in body[key]:
            return int(body[key]["minor"])
    return None


def _construct_message(exc: cs.ConstructError) -> str:
    msg = str(exc)
    if msg.startswith("Error in path"):
        msg = msg.split("\n", 1)[-1]
    if "stream read less than specified amount" in msg or "could not read enough bytes" in msg:
        return "message ends too early (" + msg.strip() + ")"
    if "did not find term" in msg or "NullTerminated" in msg:
        return "no NUL terminator before the end of the message"
    return msg.strip()


class Conversation:
    """One connection's traffic: pairs replies with requests by unique, follows INIT.

    Feed it messages in order; it decodes each with the protocol negotiated so far
    (INIT and CUSE_INIT replies switch minor and flags) and pairs replies with
    their requests.  Used by the trace decoder, replay and tests.
    """

    def __init__(self, codec: Optional[Codec] = None) -> None:
        self.codec = codec or Codec(strict=False)
        self.pending: Dict[int, Request] = {}

    def request(self, buf: Buffer) -> Request:
        """Decode a kernel -> daemon message and remember it until its reply."""
        req = self.codec.decode_request(buf)
        h = req.header
        spec = OPS.get(h["opcode"])
        if spec is None or spec.reply is not None:
            self.pending[h["unique"]] = req
        return req

    def from_daemon(self, buf: Buffer) -> Tuple[Union[Reply, Notification], Optional[Request]]:
        """Decode a daemon -> kernel message; return it and the request it answers (if any)."""
        if len(buf) >= OUT_HEADER_SIZE and _OUT_HEADER.unpack_from(buf)[2] == 0:
            return self.codec.decode_notify(buf), None
        unique = _OUT_HEADER.unpack_from(buf)[2] if len(buf) >= OUT_HEADER_SIZE else None
        req = self.pending.get(unique) if unique is not None else None
        if req is None:
            return self.codec.decode_from_daemon(buf, None), None  # raises: a reply needs its request
        return self.answer(buf, req), req

    def answer(self, buf: Buffer, req: Request) -> Reply:
        """Decode the reply to ``req`` (a pending request the caller found by unique), forget
        the request, follow INIT.  The request is forgotten even when the reply is refused."""
        self.pending.pop(req.unique, None)
        msg = self.codec.decode_reply(buf, req)
        if not msg.error:
            op = req.opcode
            if op == C.fuse_opcode.FUSE_INIT:
                self.codec = self.codec.negotiated(msg.body.fuse_init_out)
            elif op == C.fuse_opcode.CUSE_INIT:
                out = msg.body.cuse_init_out
                self.codec = Codec(min(out.minor, self.codec.minor), out.flags, strict=self.codec.strict)
        return msg


@functools.lru_cache(maxsize=1024)
def errno_name(error: int) -> str:
    """``-2`` -> ``ENOENT``; 0 -> ``OK``; unknown -> the number."""
    if error == 0:
        return "OK"
    return _errno.errorcode.get(-error, str(error))


def iter_messages(buf: Buffer) -> Iterable[bytes]:
    """Split a byte stream of back-to-back messages by their ``len`` fields (in or out headers)."""
    data = bytes(buf)
    pos = 0
    while pos < len(data):
        if len(data) - pos < 4:
            raise WireError(f"{len(data) - pos} stray bytes", offset=pos, expected="a message header")
        n = int.from_bytes(data[pos:pos + 4], "little")
        if n < OUT_HEADER_SIZE or pos + n > len(data):
            raise WireError(f"message length {n} does not fit", offset=pos, expected="a plausible len")
        yield data[pos:pos + n]
        pos += n


__all__ = [
    "Codec", "Conversation", "Notification", "PartContext", "Reply", "Request", "WireError", "errno_name",
    "iter_messages",
]
