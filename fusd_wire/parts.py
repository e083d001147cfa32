"""The pieces a FUSE message body is made of, for the opcode table.

A message body is a sequence of *parts*: fixed kernel structs (versioned, see
``layouts.py``), NUL-terminated names, a trailing payload, counted arrays of
structs, dirent lists, the CUSE ``KEY=VALUE\\0`` info blob and security
contexts.  Each part knows its name in the decoded body and gives a construct
object for a protocol minor and flag set; ``codec.py`` walks them in order.

A part may carry ``when``: a predicate on the decoding context that says whether
the part is present at all (e.g. GETXATTR answers a ``fuse_getxattr_out`` when
the request asked for size 0, the value otherwise).
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple

import construct as cs

from . import constants as C
from .errors import WireError
from .fastdecode import container_reader
from .layouts import layout
from .schemas import fuse_dirent, fuse_secctx, fuse_supp_groups

#: A predicate or count on the decoding context (see ``codec.PartContext``).
CtxFn = Callable[[Any], Any]


def merge_fields(zero: Any, given: Any, where: str) -> Any:
    """``given`` over an all-zero container (in place), refusing fields the struct does not have."""
    if given is None:
        return zero
    if hasattr(given, "_asdict") and hasattr(given, "_header_names"):
        given = dict(zip(given._header_names, given))
    if not isinstance(given, Mapping):
        raise WireError(f"{where}: expected a mapping of fields, got {type(given).__name__}", expected=where)
    for key, value in given.items():
        if key.startswith("_"):
            if key in zero:
                zero[key] = value
            continue
        if key not in zero:
            raise WireError(f"{where} has no field {key!r}", expected=where)
        if isinstance(zero[key], dict):
            zero[key] = merge_fields(zero[key], value, f"{where}.{key}")
        else:
            zero[key] = value
    return zero


class Part:
    """One named piece of a message body."""

    #: name of the kernel struct when the part is one fixed struct, else None
    struct_name: Optional[str] = None
    #: (struct part, field) that holds this part's length in bytes, if any
    length: Optional[Tuple[str, str]] = None

    def __init__(self, name: str, when: Optional[CtxFn] = None) -> None:
        self.name = name
        self.when = when

    def construct(self, ctx: Any) -> cs.Construct:  # pragma: no cover - abstract
        raise NotImplementedError

    def describe(self) -> str:
        """What the part is, for error messages."""
        return self.name

    def default(self) -> Any:
        """Value used when encoding and the caller gave none."""
        return None

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r})"


class Struct(Part):
    """A fixed kernel struct, cut to the layout of the negotiated minor."""

    struct_name: str

    def __init__(self, struct_name: str, when: Optional[CtxFn] = None, name: Optional[str] = None) -> None:
        super().__init__(name or struct_name, when)
        self.struct_name = struct_name

    def construct(self, ctx: Any) -> cs.Construct:
        return layout(self.struct_name, ctx.minor, ctx.flags)

    def describe(self) -> str:
        return self.struct_name

    def default(self) -> Any:
        return {}


class _BytesOrStr(cs.Adapter):
    """Bytes on decode; accepts str (UTF-8, surrogateescape) on encode."""

    def _decode(self, obj, context, path):
        return obj

    def _encode(self, obj, context, path):
        return obj.encode("utf-8", "surrogateescape") if isinstance(obj, str) else obj


_NAME = _BytesOrStr(cs.NullTerminated(cs.GreedyBytes, term=b"\0"))


class Name(Part):
    """A NUL-terminated file name (bytes; FUSE names need not be UTF-8).

    ``length``: (struct part, field) that must hold the name's length without the NUL.
    """

    def __init__(self, name: str, when: Optional[CtxFn] = None, length: Optional[Tuple[str, str]] = None) -> None:
        super().__init__(name, when)
        self.length = length

    def construct(self, ctx: Any) -> cs.Construct:
        return _NAME

    def describe(self) -> str:
        return f"NUL-terminated {self.name}"

    def default(self) -> Any:
        return b""


_DATA = _BytesOrStr(cs.GreedyBytes)


class Data(Part):
    """The rest of the message: a READ/WRITE payload, an xattr value, ioctl data.

    ``length``: (struct part, field) that must hold the payload's length.
    """

    def __init__(self, name: str, when: Optional[CtxFn] = None, length: Optional[Tuple[str, str]] = None) -> None:
        super().__init__(name, when)
        self.length = length

    def construct(self, ctx: Any) -> cs.Construct:
        return _DATA

    def describe(self) -> str:
        return f"{self.name} payload"

    def default(self) -> Any:
        return b""


class Array(Part):
    """Kernel structs in a row (forget lists, iovecs, prune node ids), counted by a struct field.

    ``count``: (struct part, field) that holds the number of elements.
    """

    def __init__(self, name: str, element: str, count: Tuple[str, str], when: Optional[CtxFn] = None) -> None:
        super().__init__(name, when)
        self.element = element
        self.count_field = count

    def count(self, ctx: Any) -> int:
        """The number of elements: the counting field's value in the parts decoded so far."""
        holder, fld = self.count_field
        return ctx.parts[holder][fld]

    def construct(self, ctx: Any) -> cs.Construct:
        elem = cs.Int64ul if self.element == "uint64_t" else layout(self.element, ctx.minor, ctx.flags)
        return cs.Array(self.count(ctx), elem)

    def describe(self) -> str:
        return f"array of {self.element}"

    def default(self) -> Any:
        return []


class _DirentList(cs.Construct):
    """``struct fuse_dirent``/``fuse_direntplus`` records, each 8-byte aligned, to the end."""

    def __init__(self, fixed: cs.Struct, plus: bool) -> None:
        super().__init__()
        self.fixed = fixed
        self.plus = plus
        self.fixed_size = fixed.sizeof()
        self.read_fixed = container_reader(fixed, "fuse_direntplus" if plus else "fuse_dirent")

    def _dirent(self, entry):
        return entry.dirent if self.plus else entry

    def _parse(self, stream, context, path):
        data = cs.stream_read_entire(stream, path)
        out = cs.ListContainer()
        pos = 0
        while pos < len(data):
            if len(data) - pos < self.fixed_size:
                raise cs.ExplicitError(f"dirent at +{pos}: {len(data) - pos} bytes left, a record needs "
                                       f"{self.fixed_size}")
            entry = self.read_fixed(data, pos)
            d = self._dirent(entry)
            end = pos + self.fixed_size + d.namelen
            if end > len(data):
                raise cs.ExplicitError(f"dirent at +{pos}: name of {d.namelen} bytes runs past the end")
            d.name = bytes(data[pos + self.fixed_size:end])
            reclen = (end - pos + 7) & ~7
            if pos + reclen > len(data):
                raise cs.ExplicitError(f"dirent at +{pos}: record of {reclen} bytes (with alignment) runs past "
                                       "the end")
            out.append(entry)
            pos += reclen
        return out

    def _build(self, obj, stream, context, path):
        for given in obj:
            given = dict(given)
            name = (given["dirent"] if self.plus else given).get("name", b"")
            entry = strip_io(self.fixed.parse(bytes(self.fixed_size)))
            if self.plus:
                given["dirent"] = {k: v for k, v in given.get("dirent", {}).items() if k != "name"}
            else:
                given.pop("name", None)
            merge_fields(entry, given, "fuse_direntplus" if self.plus else "fuse_dirent")
            d = self._dirent(entry)
            if isinstance(name, str):
                name = name.encode("utf-8", "surrogateescape")
            d["namelen"] = len(name)
            rec = self.fixed.build(entry) + name
            rec += bytes(-len(rec) % 8)
            cs.stream_write(stream, rec, len(rec), path)
        return obj


def strip_io(value: Any) -> Any:
    """Drop construct's ``_io`` bookkeeping from parsed containers, recursively."""
    if isinstance(value, dict):
        value.pop("_io", None)
        for v in value.values():
            strip_io(v)
    elif isinstance(value, list):
        for v in value:
            strip_io(v)
    return value


@functools.cache
def _dirent_list(minor: int, plus: bool) -> _DirentList:
    """The dirent list construct of a minor (cached: its fast reader is derived once)."""
    fixed = cs.Struct("entry_out" / layout("fuse_entry_out", minor), "dirent" / fuse_dirent) if plus else fuse_dirent
    return _DirentList(fixed, plus)


class Dirents(Part):
    """READDIR/READDIRPLUS reply: a list of dirents (``plus``: each after a fuse_entry_out)."""

    def __init__(self, name: str, plus: bool = False) -> None:
        super().__init__(name)
        self.plus = plus

    def construct(self, ctx: Any) -> cs.Construct:
        return _dirent_list(ctx.minor if self.plus else 0, self.plus)

    def describe(self) -> str:
        return "fuse_direntplus list" if self.plus else "fuse_dirent list"

    def default(self) -> Any:
        return []


class _KeyValueBlob(cs.Construct):
    """``KEY=VALUE\\0KEY=VALUE\\0...``: the CUSE_INIT reply's device info, as a dict."""

    def _parse(self, stream, context, path):
        data = cs.stream_read_entire(stream, path)
        out: Dict[str, str] = {}
        if not data:
            return out
        if not data.endswith(b"\0"):
            raise cs.ExplicitError("info blob does not end with NUL")
        for item in data[:-1].split(b"\0"):
            if not item:
                continue
            key, sep, value = item.decode("utf-8", "surrogateescape").partition("=")
            out[key] = value if sep else ""
        return out

    def _build(self, obj, stream, context, path):
        raw = b"".join(f"{k}={v}".encode("utf-8", "surrogateescape") + b"\0" for k, v in obj.items())
        cs.stream_write(stream, raw, len(raw), path)
        return obj


class KeyValues(Part):
    """The CUSE info blob (``DEVNAME=name``), as an ordered dict of str."""

    def construct(self, ctx: Any) -> cs.Construct:
        return _KeyValueBlob()

    def describe(self) -> str:
        return "KEY=VALUE\\0 info blob"

    def default(self) -> Any:
        return {}


class _Secctx(cs.Construct):
    """A ``fuse_secctx_header`` followed by ``nr_secctx`` (fuse_secctx, name\\0, context)."""

    def _parse(self, stream, context, path):
        start = cs.stream_tell(stream, path)
        hdr = cs.Struct("size" / cs.Int32ul, "nr_secctx" / cs.Int32ul)._parsereport(stream, context, path)
        entries = cs.ListContainer()
        for _ in range(hdr.nr_secctx):
            ent = fuse_secctx._parsereport(stream, context, path)
            name = _NAME._parsereport(stream, context, path)
            ctx_bytes = cs.stream_read(stream, ent.size, path)
            entries.append(cs.Container(size=ent.size, name=name, context=ctx_bytes))
        used = cs.stream_tell(stream, path) - start
        if hdr.size < used:
            raise cs.ExplicitError(f"fuse_secctx_header.size {hdr.size} < {used} bytes of contexts")
        cs.stream_read(stream, hdr.size - used, path)  # alignment padding
        return cs.Container(size=hdr.size, nr_secctx=hdr.nr_secctx, contexts=entries)

    def _build(self, obj, stream, context, path):
        body = b""
        for ent in obj["contexts"]:
            name = ent["name"].encode() if isinstance(ent["name"], str) else ent["name"]
            body += fuse_secctx.build(dict(size=len(ent["context"]), padding=0)) + name + b"\0" + ent["context"]
        size = (8 + len(body) + 7) & ~7
        raw = cs.Int32ul.build(size) + cs.Int32ul.build(len(obj["contexts"])) + body
        raw += bytes(size - len(raw))
        cs.stream_write(stream, raw, len(raw), path)
        return obj


SECCTX = _Secctx()


class Secctx(Part):
    """Security contexts of a new inode (CREATE/MKNOD/MKDIR/SYMLINK with FUSE_SECURITY_CTX)."""

    def construct(self, ctx: Any) -> cs.Construct:
        return SECCTX

    def describe(self) -> str:
        return "fuse_secctx_header and contexts"


class _Extensions(cs.Construct):
    """The request extensions after the body (7.38): fuse_ext_header-framed records."""

    def _parse(self, stream, context, path):
        data = cs.stream_read_entire(stream, path)
        out = cs.ListContainer()
        pos = 0
        while pos < len(data):
            if len(data) - pos < 8:
                raise cs.ExplicitError(f"extension at +{pos}: {len(data) - pos} bytes, a fuse_ext_header needs 8")
            size, ext_type = cs.Int32ul.parse(data[pos:pos + 4]), cs.Int32ul.parse(data[pos + 4:pos + 8])
            if size < 8 or size % 8 or pos + size > len(data):
                raise cs.ExplicitError(f"extension at +{pos}: bad fuse_ext_header.size {size}")
            raw = data[pos:pos + size]
            if ext_type <= C.fuse_ext_type.FUSE_MAX_NR_SECCTX:
                out.append(cs.Container(type=ext_type, kind="secctx", secctx=SECCTX.parse(raw)))
            elif ext_type == C.fuse_ext_type.FUSE_EXT_GROUPS:
                n = fuse_supp_groups.parse(raw[8:12]).nr_groups if size >= 12 else 0
                if 12 + 4 * n > size:
                    raise cs.ExplicitError(f"extension at +{pos}: {n} groups do not fit in {size} bytes")
                groups = list(cs.Array(n, cs.Int32ul).parse(raw[12:12 + 4 * n]))
                out.append(cs.Container(type=ext_type, kind="groups", groups=groups))
            else:
                out.append(cs.Container(type=ext_type, kind="unknown", data=bytes(raw[8:])))
            pos += size
        return out

    def _build(self, obj, stream, context, path):
        for ext in obj:
            kind = ext.get("kind") or ("groups" if "groups" in ext else "secctx" if "secctx" in ext else "unknown")
            if kind == "secctx":
                raw = SECCTX.build(ext["secctx"])
            elif kind == "groups":
                body = cs.Int32ul.build(len(ext["groups"])) + b"".join(cs.Int32ul.build(g) for g in ext["groups"])
                size = (8 + len(body) + 7) & ~7
                raw = cs.Int32ul.build(size) + cs.Int32ul.build(C.fuse_ext_type.FUSE_EXT_GROUPS) + body
                raw += bytes(size - len(raw))
            else:
                body = bytes(ext.get("data", b""))
                size = (8 + len(body) + 7) & ~7
                raw = cs.Int32ul.build(size) + cs.Int32ul.build(ext["type"]) + body + bytes(size - 8 - len(body))
            cs.stream_write(stream, raw, len(raw), path)
        return obj


EXTENSIONS = _Extensions()


def names_of(parts: List[Part]) -> List[str]:
    """The body field names of a part list."""
    return [p.name for p in parts]


def defaults(parts: List[Part]) -> Mapping[str, Any]:
    """Encoding defaults for a part list."""
    return {p.name: p.default() for p in parts}
