"""The compiled field types: per construct type, its ``struct`` format and the code that builds its values.

``codec.py`` walks a schema once with :func:`compile_node` and asks the nodes for
Python source: an expression that builds the value from the flat tuple
``struct.unpack_from`` returns (``expr``) and the flat items a ``pack`` call
needs (``flat``).  The generated code has no per-field dispatch.  Each node
also has a slow, forgiving ``flatten`` (mappings, objects, None for zero, clear
errors) for values that are not the generated records.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping
from typing import Any, Callable, Dict, List, Optional, Tuple

import construct as cs

from .record import NotCompilable, Record, make_record
from .schema import Flex, Pointer

_UNROLL = 16  # arrays up to this many elements get straight-line code; longer ones a loop


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
        parts = e.flat("x", env, f"{where}[]")
        if not parts:  # elements without bytes (an empty array of arrays): nothing to pack
            return []
        return [f"*[y for x in _len({v}, {n}, {where!r}) for y in ({', '.join(parts)},)]"]

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
