"""Compiled marshalling: a construct schema turned into ``struct.Struct`` code, once, at declaration.

construct is the spec (and the pretty-printer), but its ``parse`` costs tens of
microseconds per struct where a kernel round trip costs four.  So each declared
schema is walked once and compiled into:

- one ``struct.Struct`` for its fixed bytes (padding as ``x``),
- a generated **record class** per struct (``__slots__``, attribute access, a
  small mapping API: ``rec["f"]``, ``keys()``, ``items()``, ``update()``),
- generated ``decode`` / ``encode`` functions (no per-field Python dispatch),
- the **pointer slots** (where each ``Pointer`` sits, how its length and
  direction are found) and the byte **spans** of every top-level field (for
  field-level output).

Supported: construct integers and floats (and ``c.*``), ``Bytes(n)``,
``PaddedString(n)`` with a one-byte encoding, ``Padding(n)``, ``Array(n, x)``,
nested ``Struct``/``CStruct``, ``Pointer``, and a ``Flex`` tail.  A schema with
anything else (``Enum``, ``BitStruct``, ``Computed``...) still works, through
construct itself (:class:`ConstructCodec`, slow, Containers for values), unless
it needs pointers followed.  ``tests/test_ioctl_codec.py`` proves with hypothesis
that the compiled code and construct agree byte for byte.
"""

from __future__ import annotations

import keyword
import struct
from collections.abc import Mapping
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import construct as cs

from .schema import Flex, Length, Pointer, holds, resolve_length

_UNROLL = 16  # arrays up to this many elements get straight-line code; longer ones a loop


class NotCompilable(Exception):
    """The schema uses a construct outside the compiled subset (the caller falls back to construct)."""


# ====================================================================== records
class Record:
    """Base of the generated record classes: one slot per field, plus a small mapping API.

    A decoded struct argument is a record: ``tm.tm_hour``, ``tm.tm_hour = 12``,
    ``tm["tm_hour"]``, ``dict(tm)``, ``tm.update(other)``, ``tm.items()``.  A
    field named like one of these methods shadows it; ``_asdict()`` always works.
    """

    __slots__ = ()
    _fields: Tuple[str, ...] = ()
    _fieldset: frozenset = frozenset()
    __hash__ = None  # type: ignore[assignment]  # mutable

    def __getitem__(self, key: str) -> Any:
        """``rec["field"]``: the field's value; KeyError for a name that is no field."""
        if key in self._fieldset:
            return getattr(self, key)
        raise KeyError(key)

    def __setitem__(self, key: str, value: Any) -> None:
        if key not in self._fieldset:
            raise KeyError(f"{type(self).__name__} has no field {key!r}")
        setattr(self, key, value)

    def __contains__(self, key: object) -> bool:
        return key in self._fieldset

    def __iter__(self) -> Any:
        """The field names, in order (``dict(rec)``, ``list(rec)``)."""
        return iter(self._fields)

    def __len__(self) -> int:
        """How many fields."""
        return len(self._fields)

    def keys(self) -> Tuple[str, ...]:
        """The field names, in order."""
        return self._fields

    def values(self) -> List[Any]:
        """The field values, in order."""
        return [getattr(self, f) for f in self._fields]

    def items(self) -> List[Tuple[str, Any]]:
        """``(name, value)`` pairs, in order."""
        return [(f, getattr(self, f)) for f in self._fields]

    def get(self, key: str, default: Any = None) -> Any:
        """The field's value, or ``default`` for a name that is no field."""
        return getattr(self, key) if key in self._fieldset else default

    def update(self, other: Any = (), **kwargs: Any) -> None:
        """Set fields from a mapping (or ``(name, value)`` pairs) and keywords; unknown names raise KeyError."""
        pairs = other.items() if hasattr(other, "items") else other
        for k, v in pairs:
            self[k] = v
        for k, v in kwargs.items():
            self[k] = v

    def _asdict(self) -> Dict[str, Any]:
        """The fields as a plain dict (nested records stay records)."""
        return {f: getattr(self, f) for f in self._fields}

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Record):
            return self._fields == other._fields and all(getattr(self, f) == getattr(other, f) for f in self._fields)
        if isinstance(other, Mapping):
            keys = [k for k in other if not str(k).startswith("_")]  # construct Containers carry _io
            return sorted(keys) == sorted(self._fields) and all(getattr(self, f) == other[f] for f in self._fields)
        return NotImplemented

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(f'{f}={getattr(self, f)!r}' for f in self._fields)})"


Mapping.register(Record)


def make_record(name: str, fields: Sequence[str]) -> type:
    """A Record subclass with one slot per field and a positional ``__init__`` (generated code)."""
    for f in fields:
        if not f.isidentifier() or keyword.iskeyword(f):
            raise NotCompilable(f"field name {f!r} is not a Python identifier")
    args = ", ".join(fields)
    body = "; ".join(f"self.{f} = {f}" for f in fields) or "pass"
    ns: Dict[str, Any] = {}
    exec(f"def __init__(self, {args}):\n    {body}\n", ns)  # noqa: S102 - generated from validated names
    cls = type(name if name.isidentifier() else "record", (Record,), {
        "__slots__": tuple(fields), "__init__": ns["__init__"], "_fields": tuple(fields),
        "_fieldset": frozenset(fields), "__module__": __name__,
    })
    return cls


# ====================================================================== nodes
class _Env:
    """Names the generated code refers to (helpers, record classes, nested decoders)."""

    def __init__(self) -> None:
        self.ns: Dict[str, Any] = {"_bytes": _check_bytes, "_sdec": _str_decode, "_senc": _str_encode}
        self.n = 0

    def add(self, obj: Any, stem: str = "o") -> str:
        self.n += 1
        name = f"_{stem}{self.n}"
        self.ns[name] = obj
        return name


def _check_bytes(value: Any, n: int, where: str) -> Any:
    if value is None:
        return b""
    if value.__class__ is not bytes:
        if isinstance(value, (bytearray, memoryview)):
            value = bytes(value)
        else:
            raise ValueError(f"{where}: expected bytes (at most {n}), got {type(value).__name__}")
    if len(value) > n:
        raise ValueError(f"{where}: {len(value)} bytes do not fit in {n}")
    return value


def _str_decode(raw: bytes, encoding: str) -> str:
    return raw.rstrip(b"\0").decode(encoding)


def _str_encode(value: Any, n: int, encoding: str, where: str) -> bytes:
    raw = (value or "").encode(encoding) if not isinstance(value, (bytes, bytearray)) else bytes(value)
    if len(raw) > n:
        raise ValueError(f"{where}: {len(raw)} bytes do not fit in {n}")
    return raw


class _Node:
    """One compiled field type: its struct format and the code that builds / flattens its values."""

    fmt = ""
    nvals = 0
    size = 0

    def expr(self, t: str, i: Any, env: _Env) -> str:
        """Source of an expression building this value from flat tuple ``t`` at index ``i`` (int or source)."""
        raise NotImplementedError

    def flat(self, v: str, env: _Env, where: str) -> List[str]:
        """Source of the flat values of value expression ``v`` (items for a pack call)."""
        raise NotImplementedError

    def zero(self) -> Any:
        """A new all-zero value of this type."""
        raise NotImplementedError

    def flatten(self, value: Any, out: List[Any], where: str, addrs: Optional[Dict[Any, int]], path: Tuple) -> None:
        """The slow, forgiving flattener: mappings, objects, None for zero; clear errors."""
        raise NotImplementedError


class _Scalar(_Node):
    def __init__(self, fmt: str, size: int) -> None:
        self.fmt, self.size, self.nvals = fmt, size, 1
        self.kind = float if fmt in "efd" else bool if fmt == "?" else int

    def expr(self, t: str, i: Any, env: _Env) -> str:
        return f"{t}[{_ix(i, 0)}]"

    def flat(self, v: str, env: _Env, where: str) -> List[str]:
        return [v]

    def zero(self) -> Any:
        return self.kind()

    def flatten(self, value: Any, out: List[Any], where: str, addrs: Any, path: Tuple) -> None:
        if value is None:
            value = self.kind()
        elif not isinstance(value, (int, float)):
            raise ValueError(f"{where}: expected a number, got {type(value).__name__}")
        out.append(value)


class _PointerNode(_Scalar):
    def __init__(self, decl: Pointer) -> None:
        super().__init__("Q", 8)
        self.decl = decl

    def flat(self, v: str, env: _Env, where: str) -> List[str]:
        raise NotCompilable("pointer")  # structs with pointers are encoded by ``flatten`` (addresses)

    def flatten(self, value: Any, out: List[Any], where: str, addrs: Any, path: Tuple) -> None:
        if addrs is not None and path in addrs:
            out.append(addrs[path])
        elif isinstance(value, int):
            out.append(value)
        else:
            out.append(0)


class _BytesNode(_Node):
    def __init__(self, n: int) -> None:
        self.fmt, self.size, self.nvals, self.n = f"{n}s", n, 1, n

    def expr(self, t: str, i: Any, env: _Env) -> str:
        return f"{t}[{_ix(i, 0)}]"

    def flat(self, v: str, env: _Env, where: str) -> List[str]:
        return [f"_bytes({v}, {self.n}, {where!r})"]

    def zero(self) -> Any:
        return bytes(self.n)

    def flatten(self, value: Any, out: List[Any], where: str, addrs: Any, path: Tuple) -> None:
        out.append(_check_bytes(value, self.n, where))


class _StringNode(_Node):
    def __init__(self, n: int, encoding: str) -> None:
        self.fmt, self.size, self.nvals, self.n, self.encoding = f"{n}s", n, 1, n, encoding

    def expr(self, t: str, i: Any, env: _Env) -> str:
        return f"_sdec({t}[{_ix(i, 0)}], {self.encoding!r})"

    def flat(self, v: str, env: _Env, where: str) -> List[str]:
        return [f"_senc({v}, {self.n}, {self.encoding!r}, {where!r})"]

    def zero(self) -> Any:
        return ""

    def flatten(self, value: Any, out: List[Any], where: str, addrs: Any, path: Tuple) -> None:
        out.append(_str_encode(value, self.n, self.encoding, where))


class _Pad(_Node):
    def __init__(self, n: int) -> None:
        self.fmt, self.size, self.nvals = f"{n}x", n, 0


class _ArrayNode(_Node):
    def __init__(self, n: int, elem: _Node) -> None:
        self.n, self.elem = n, elem
        self.fmt = f"{n}{elem.fmt}" if isinstance(elem, _Scalar) and n else elem.fmt * n
        self.size, self.nvals = elem.size * n, elem.nvals * n

    def expr(self, t: str, i: Any, env: _Env) -> str:
        n, e, m = self.n, self.elem, self.elem.nvals
        if isinstance(e, _Scalar):
            return f"list({t}[{_ix(i, 0)}:{_ix(i, n)}])"
        if n <= _UNROLL:
            return "[" + ", ".join(e.expr(t, _add(i, k * m), env)
                                   for k in range(n)) + "]"
        exec(f"def f(t, j):\n    return {e.expr('t', 'j', env)}\n", env.ns)  # noqa: S102
        f = env.add(env.ns.pop("f"), "el")
        return f"[{f}({t}, {_ix(i, 0)} + {m} * k) for k in range({n})]"

    def flat(self, v: str, env: _Env, where: str) -> List[str]:
        n, e = self.n, self.elem
        if isinstance(e, _Scalar):
            return [f"*_len({v}, {n}, {where!r})"]
        if n <= _UNROLL:
            out: List[str] = []
            for k in range(n):
                out += e.flat(f"{v}[{k}]", env, f"{where}[{k}]")
            return out
        items = ", ".join(e.flat("x", env, f"{where}[]"))
        return [f"*[y for x in _len({v}, {n}, {where!r}) for y in ({items},)]"]

    def zero(self) -> Any:
        return [self.elem.zero() for _ in range(self.n)]

    def flatten(self, value: Any, out: List[Any], where: str, addrs: Any, path: Tuple) -> None:
        if value is None or (isinstance(value, int) and value == 0):
            value = [None] * self.n
        if isinstance(value, (bytes, bytearray)) and isinstance(self.elem, _Scalar):
            value = list(value)
        if len(value) != self.n:
            raise ValueError(f"{where}: expected {self.n} elements, got {len(value)}")
        for k, item in enumerate(value):
            self.elem.flatten(item, out, f"{where}[{k}]", addrs, path + (k,))


def _ix(i: Any, k: int) -> str:
    """Index source: ``i + k`` folded when ``i`` is a number."""
    if isinstance(i, int):
        return str(i + k)
    return f"{i}+{k}" if k else str(i)


def _add(i: Any, k: int) -> Any:
    """``i + k`` as an int, or as source when ``i`` is source."""
    if isinstance(i, int):
        return i + k
    return f"{i}+{k}" if k else i


def _len(value: Any, n: int, where: str) -> Any:
    if value is None or len(value) != n:
        raise ValueError(f"{where}: expected {n} elements, got {'None' if value is None else len(value)}")
    return value


class _StructNode(_Node):
    def __init__(self, name: str, fields: List[Tuple[Optional[str], _Node]], flex: Optional[Tuple[str, Flex]]) -> None:
        self.fields = fields  # (name or None for padding, node), in order
        self.flex = flex
        names = [f for f, _ in fields if f is not None] + ([flex[0]] if flex else [])
        self.record = make_record(name, names)
        self.fmt = "".join(n.fmt for _, n in fields)
        self.size = sum(n.size for _, n in fields)
        self.nvals = sum(n.nvals for _, n in fields)

    def expr(self, t: str, i: Any, env: _Env) -> str:
        parts = []
        k = 0
        for f, node in self.fields:
            if f is None:
                continue
            parts.append(node.expr(t, _add(i, k), env))
            k += node.nvals
        if self.flex:
            parts.append("None")
        return f"{env.add(self.record, 'R')}({', '.join(parts)})"

    def flat(self, v: str, env: _Env, where: str) -> List[str]:
        out: List[str] = []
        for f, node in self.fields:
            if f is not None:
                out += node.flat(f"{v}.{f}", env, f"{where}.{f}" if where else f)
        return out

    def zero(self) -> Any:
        vals = [node.zero() for f, node in self.fields if f is not None]
        if self.flex:
            vals.append([])
        return self.record(*vals)

    def flatten(self, value: Any, out: List[Any], where: str, addrs: Any, path: Tuple) -> None:
        if value is None or (isinstance(value, int) and value == 0):
            value = {}
        get: Callable[[str], Any]
        if isinstance(value, Mapping) and not isinstance(value, Record):
            get = value.get
        else:
            def get(name: str, _v: Any = value) -> Any:
                return getattr(_v, name, None)
        for f, node in self.fields:
            if f is not None:
                node.flatten(get(f), out, f"{where}.{f}" if where else f, addrs, path + (f,))


def compile_node(sub: cs.Construct, name: str = "record") -> _Node:
    """The _Node for one construct (NotCompilable outside the supported subset)."""
    while isinstance(sub, cs.Renamed):
        sub = sub.subcon
    if isinstance(sub, Pointer):
        return _PointerNode(sub)
    if isinstance(sub, cs.FormatField):
        fmt = sub.fmtstr
        if fmt[0] not in "<=" and struct.calcsize(fmt) > 1:
            raise NotCompilable(f"big-endian field {sub!r}")
        return _Scalar(fmt[1:], sub.length)
    if isinstance(sub, cs.Bytes) and isinstance(sub.length, int):
        return _BytesNode(sub.length)
    if isinstance(sub, cs.Padded) and isinstance(sub.length, int) and sub.subcon is cs.Pass:
        return _Pad(sub.length)
    if isinstance(sub, cs.StringEncoded):
        fixed = sub.subcon
        if isinstance(fixed, cs.FixedSized) and isinstance(fixed.length, int) and \
                isinstance(fixed.subcon, cs.NullStripped) and len(fixed.subcon.pad) == 1:
            return _StringNode(fixed.length, sub.encoding)
        raise NotCompilable(f"string {sub!r}")
    if isinstance(sub, cs.Array) and isinstance(sub.count, int):
        return _ArrayNode(sub.count, compile_node(sub.subcon, name))
    if isinstance(sub, cs.Struct):
        fields: List[Tuple[Optional[str], _Node]] = []
        flex = None
        subcons = list(sub.subcons)
        for i, sc in enumerate(subcons):
            inner = sc.subcon if isinstance(sc, cs.Renamed) else sc
            if isinstance(inner, Flex):
                if i != len(subcons) - 1:
                    raise ValueError(f"a Flex array must be the struct's last field ({sc.name!r} is not)")
                flex = (sc.name, inner)
                continue
            node = compile_node(inner, f"{name}_{sc.name}" if sc.name else name)
            if sc.name is None and not isinstance(node, _Pad):
                raise NotCompilable(f"unnamed field {sc!r}")
            fields.append((sc.name, node))
        return _StructNode(getattr(sub, "c_name", "") or name, fields, flex)
    raise NotCompilable(f"{type(sub).__name__}")


# ====================================================================== codecs
class PointerSlot:
    """Where one Pointer sits in a value: the path to the struct holding it and the field name."""

    __slots__ = ("holder_path", "name", "decl", "length", "direction", "static_direction", "elem", "path",
                 "optional", "out_spans", "what", "lfield", "lconst", "lfn", "dconst", "dfn")

    def __init__(self, holder_path: Tuple[Any, ...], name: str, decl: Pointer, elem: Optional[Codec],
                 what: str) -> None:
        self.holder_path = holder_path
        self.name = name
        self.path = holder_path + (name,)
        self.what = what
        self.decl = decl
        self.elem = elem  # the compiled target (None: a byte buffer)
        self.optional = decl.optional
        self.length: Callable[[Any], int] = _length_fn(decl.length)
        d = decl.direction
        self.static_direction = not callable(d)
        self.direction: Callable[[Any], Optional[str]] = d if callable(d) else _constant(d)
        # the same, unwrapped for the planner's inner loop: a field name, a constant, or a function
        ln = decl.length
        self.lfield: Optional[str] = ln if isinstance(ln, str) else None
        self.lconst: int = ln if isinstance(ln, int) else 0
        self.lfn: Optional[Callable[[Any], int]] = ln if callable(ln) else None  # type: ignore[assignment]
        self.dconst: Optional[str] = None if callable(d) else d  # type: ignore[assignment]
        self.dfn: Optional[Callable[[Any], Optional[str]]] = d if callable(d) else None
        self.out_spans: Optional[List[Tuple[int, int]]] = None
        if decl.out_fields is not None:
            assert elem is not None
            self.out_spans = merge_spans(elem.field_span(f, what) for f in decl.out_fields)


def merge_spans(spans: Any) -> List[Tuple[int, int]]:
    """Byte ranges ``(offset, size)`` sorted, with touching ones merged (fewer iovecs)."""
    out: List[Tuple[int, int]] = []
    for off, n in sorted(spans):
        if out and out[-1][0] + out[-1][1] == off:
            out[-1] = (out[-1][0], out[-1][1] + n)
        else:
            out.append((off, n))
    return out


def _constant(value: Any) -> Callable[[Any], Any]:
    def constant(_rec: Any) -> Any:
        return value
    return constant


def _length_fn(length: Length) -> Callable[[Any], int]:
    if isinstance(length, int):
        return _constant(length)
    if isinstance(length, str):
        def by_name(rec: Any, _f: str = length) -> int:
            return int(getattr(rec, _f) if isinstance(rec, Record) else rec[_f])
        return by_name
    fn = length

    def computed(rec: Any) -> int:
        return int(fn(rec))
    return computed


def _pointer_slots(node: _Node, path: Tuple[Any, ...], out: List[PointerSlot], what: str) -> None:
    if isinstance(node, _StructNode):
        for f, sub in node.fields:
            if isinstance(sub, _PointerNode):
                tgt = sub.decl.target
                elem = compile_schema(tgt, f"{what}.{f}", pointer_target=True) if tgt is not None else None
                if elem is not None and not isinstance(elem, Codec):
                    raise ValueError(f"{what}.{f}: the Pointer target must be compilable to follow its pointers")
                out.append(PointerSlot(path, f, sub.decl, elem, f"{what}.{f}"))  # type: ignore[arg-type]
            elif f is not None:
                _pointer_slots(sub, path + (f,), out, f"{what}.{f}")
    elif isinstance(node, _ArrayNode):
        for k in range(node.n):
            _pointer_slots(node.elem, path + (k,), out, f"{what}[{k}]")


class Codec:
    """A compiled schema: ``decode``/``encode``/``zero``, its pointer slots and field spans.

    Attributes:
        size: bytes of the fixed part (the header, for a struct with a Flex tail).
        record: the record class of a struct schema (None for a scalar, bytes or array).
        slots: every Pointer in the value, in field order (arrays element by element).
        flex: ``(field name, count function, item Codec)`` for a Flex tail, or None.
        spans: ``{field: (offset, size)}`` of a struct's fields.
    """

    compiled = True

    def __init__(self, schema: cs.Construct, what: str = "ioctl argument") -> None:
        self.schema = schema
        node = compile_node(schema, getattr(schema, "c_name", "") or "record")
        self.node = node
        self.size = node.size
        self.struct = struct.Struct("<" + node.fmt)
        if self.struct.size != node.size:
            raise AssertionError(f"{what}: compiled {self.struct.size} bytes, expected {node.size}")
        self.record = node.record if isinstance(node, _StructNode) else None
        self.slots: List[PointerSlot] = []
        _pointer_slots(node, (), self.slots, what)
        self.flex: Optional[Tuple[str, Callable[[Any], int], Codec]] = None
        if isinstance(node, _StructNode) and node.flex is not None:
            fname, fdecl = node.flex
            item = compile_schema(fdecl.item, f"{what}.{fname}", pointer_target=True)
            if not isinstance(item, Codec):
                raise ValueError(f"{what}.{fname}: a Flex item must be compilable")
            if item.slots or item.flex:
                raise ValueError(f"{what}.{fname}: a Flex item must be a fixed struct without pointers")
            self.flex = (fname, _length_fn(fdecl.count), item)
        self.spans: Dict[str, Tuple[int, int]] = {}
        if isinstance(node, _StructNode):
            off = 0
            for f, sub in node.fields:
                if f is not None:
                    self.spans[f] = (off, sub.size)
                off += sub.size
        self._gen(what)

    # ------------------------------------------------------------------ generated code
    def _gen(self, what: str) -> None:
        env = _Env()
        env.ns["_unpack"] = self.struct.unpack_from
        env.ns["_pack"] = self.struct.pack
        env.ns["_len"] = _len
        node = self.node
        flat = isinstance(node, _StructNode) and not node.flex and \
            all(isinstance(n, (_Scalar, _BytesNode, _Pad)) for _, n in node.fields)
        if flat and isinstance(node, _StructNode):  # one value per field: the record is the unpacked tuple, spread
            self.src_decode = f"{env.add(node.record, 'R')}(*_unpack(DATA, 0))"
        else:
            self.src_decode = f"(lambda t: {node.expr('t', 0, env)})(_unpack(DATA, 0))"
        src = [f"def decode(buf, off=0):\n    t = _unpack(buf, off)\n    return {node.expr('t', 0, env)}\n"]
        self.src_pack: Optional[str] = None
        try:
            items = node.flat("v", env, "")
            src.append(f"def encode(v):\n    return _pack({', '.join(items)})\n")
            self.src_pack = f"_pack({', '.join(node.flat('VALUE', env, ''))})"
        except NotCompilable:
            pass
        zeros = bytes(self.size)
        if isinstance(node, _StructNode) and all(isinstance(n, (_Scalar, _BytesNode, _StringNode, _Pad))
                                                for _, n in node.fields) and not node.flex:
            # immutable fields only: a zero record is the class called with constants
            consts = [repr(n.zero()) for f, n in node.fields if f is not None]
            self.src_zero = f"{env.add(node.record, 'R')}({', '.join(consts)})"
        else:
            env.ns["_zeros"] = zeros
            self.src_zero = "decode(_zeros)"
        src.append(f"def fresh_zero():\n    return {self.src_zero}\n")
        ns = env.ns
        exec("".join(src), ns)  # noqa: S102 - generated from the validated schema
        #: the generated code's names, for callers that inline ``src_decode``/``src_zero``/``src_pack``
        self.ns = ns
        #: a new all-zero value (what an OUT argument starts as), generated like ``decode``
        self.fresh_zero: Callable[[], Any] = ns["fresh_zero"]
        self.decode: Callable[..., Any] = ns["decode"]
        self._fast_encode: Optional[Callable[[Any], bytes]] = ns.get("encode") if self.src_pack else None
        self.record_class = self.record

    def encode(self, value: Any, addrs: Optional[Dict[Tuple[Any, ...], int]] = None) -> bytes:
        """The bytes of ``value`` (a record, a mapping, an object with the fields; missing fields 0).

        ``addrs`` maps pointer paths to the caller's addresses: pointer fields hold
        the pointed-to data while the device works, and are written back as
        addresses.  ValueError names the field that does not fit.
        """
        fast = self._fast_encode
        if fast is not None and addrs is None and (self.record is None or value.__class__ is self.record):
            try:
                return fast(value)
            except (AttributeError, TypeError, struct.error, IndexError, KeyError, ValueError):
                pass  # something inside is not what the schema says: the forgiving path accepts it or says why
        out: List[Any] = []
        self.node.flatten(value, out, "", addrs, ())
        try:
            return self.struct.pack(*out)
        except struct.error as exc:
            raise ValueError(f"cannot encode {value!r}: {exc}") from None

    def zero(self) -> Any:
        """A value with every field zero (what an OUT argument starts as)."""
        return self.fresh_zero()

    def field_span(self, name: str, what: str) -> Tuple[int, int]:
        """``(offset, size)`` of top-level field ``name``; ValueError if there is none."""
        try:
            return self.spans[name]
        except KeyError:
            raise ValueError(f"{what}: no field {name!r} (fields: {', '.join(self.spans) or 'none'})") from None

    def __repr__(self) -> str:
        return f"<Codec {self.size} bytes '{self.struct.format}', {len(self.slots)} pointers>"


class ConstructCodec:
    """The fallback for a schema outside the compiled subset: construct itself (values are Containers)."""

    compiled = False
    slots: List[PointerSlot] = []
    flex = None
    record = None

    def __init__(self, schema: cs.Construct, what: str, why: str) -> None:
        self.schema = schema
        self.why = why
        try:
            self.size = schema.sizeof()
        except cs.SizeofError as exc:
            raise ValueError(f"{what}: the schema must have a fixed size (or a fixed header and a Flex tail): "
                             f"{exc}") from None
        self.spans: Dict[str, Tuple[int, int]] = {}
        if isinstance(schema, cs.Struct):
            off = 0
            for sc in schema.subcons:
                n = sc.sizeof()
                if sc.name is not None:
                    self.spans[sc.name] = (off, n)
                off += n

    def decode(self, buf: Any, off: int = 0) -> Any:
        """construct's parse of the ``size`` bytes at ``off``."""
        return self.schema.parse(bytes(buf[off:off + self.size]))

    def encode(self, value: Any, addrs: Any = None) -> bytes:
        """construct's build; ValueError if the value does not fit the schema."""
        if isinstance(value, Record):
            value = value._asdict()
        try:
            return self.schema.build(value)
        except cs.ConstructError as exc:
            raise ValueError(f"cannot encode {value!r}: {exc}") from None

    def zero(self) -> Any:
        """The all-zero value, parsed."""
        return self.schema.parse(bytes(self.size))

    field_span = Codec.field_span


def compile_schema(schema: cs.Construct, what: str = "ioctl argument", pointer_target: bool = False) -> Any:
    """A :class:`Codec` for ``schema`` or, outside the compiled subset, a :class:`ConstructCodec`.

    Raises ValueError for what cannot work either way: no fixed size, a Flex that
    is not last, pointers (or a Flex) in a schema that does not compile.
    """
    try:
        return Codec(schema, what)
    except NotCompilable as exc:
        if holds(schema, (Pointer, Flex)):
            raise ValueError(f"{what}: a schema with Pointer or Flex fields must use only integers, Bytes, "
                             f"PaddedString, Padding, Array and Struct ({exc})") from None
        return ConstructCodec(schema, what, str(exc))


def resolve(length: Length, value: Any) -> int:
    """A declared length evaluated on a decoded struct (records and Containers alike)."""
    return resolve_length(length, value)
