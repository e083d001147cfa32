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

import struct
from typing import Any, Callable, Dict, List, Optional, Tuple

import construct as cs

from .nodes import (
    _ArrayNode,
    _BytesNode,
    _Env,
    _len,
    _Node,
    _Pad,
    _PointerNode,
    _Scalar,
    _StringNode,
    _StructNode,
    compile_node,
)
from .record import NotCompilable, Record, make_record
from .schema import Flex, Length, Pointer, holds, resolve_length

__all__ = ["Codec", "ConstructCodec", "PointerSlot", "Record", "NotCompilable", "compile_schema", "make_record",
           "merge_spans", "resolve"]


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
