"""The hot path: ``struct.Struct`` codecs derived from the construct schemas.

construct's ``parse`` costs tens of microseconds per message; a kernel round trip
costs about four.  So at import time every fixed-size construct Struct is walked
once and turned into a precompiled ``struct.Struct`` plus a light record type
(a namedtuple).  Nothing here is written by hand: change a schema and its fast
codec changes with it.  ``tests/test_fastpath.py`` proves, with hypothesis, that
both paths agree byte for byte on every struct.

Use on the hot path::

    from fusd_wire.fastpath import FAST
    buf, data, unique = bytearray(80), b"hi", 10                    # a READ request, its answer
    fh, offset, size, *_ = FAST.fuse_read_in.unpack_from(buf, 40)   # a plain tuple
    header = FAST.fuse_out_header.pack(16 + len(data), 0, unique)

``unpack_from``/``pack`` work on the *flat* field list (nested structs and arrays
spread out in order); ``decode``/``encode`` give and take records with the
header's nesting, for code that is not hot.
"""

from __future__ import annotations

import struct
from collections import namedtuple
from typing import Any, Callable, Dict, List, Mapping, Tuple

import construct as cs

from .errors import WireError


class FastStruct:
    """A precompiled codec for one fixed-size kernel struct.

    Attributes:
        name: the header's struct name (``fuse_read_in``).
        size: its size in bytes (``sizeof``).
        fields: the flat field names, nested ones as ``attr.ino``, arrays as ``unused[3]``.
        offsets: each flat field's byte offset (``offsets["ring_ent_in_out.payload_sz"]``), for
            code that reads or writes single fields of a struct in a shared buffer.
        record: the namedtuple type ``decode`` returns (nested structs as records,
            arrays as tuples).
    """

    __slots__ = ("name", "size", "fields", "offsets", "record", "struct", "unpack_from", "pack", "pack_into",
                 "_to_record", "_flatten")

    def __init__(self, name: str, schema: cs.Construct) -> None:
        self.name = name
        fmt: List[str] = ["<"]
        fields: List[str] = []
        self._to_record, self._flatten, self.record = _derive(name, schema, fmt, fields, "")
        self.struct = struct.Struct("".join(fmt))
        self.size = self.struct.size
        self.fields = tuple(fields)
        # _derive appends exactly one format item per flat field, in order
        self.offsets = {f: struct.calcsize("<" + "".join(fmt[1:i + 1])) for i, f in enumerate(fields)}
        self.unpack_from: Callable[..., Tuple[Any, ...]] = self.struct.unpack_from
        self.pack: Callable[..., bytes] = self.struct.pack
        self.pack_into: Callable[..., None] = self.struct.pack_into
        if self.size != schema.sizeof():
            raise AssertionError(f"{name}: derived {self.size} bytes, construct says {schema.sizeof()}")

    def decode(self, buf: bytes | bytearray | memoryview, offset: int = 0) -> Any:
        """Decode one struct at ``offset`` into a record; WireError if the buffer is short."""
        if len(buf) - offset < self.size:
            raise WireError(f"{self.name} needs {self.size} bytes, {max(len(buf) - offset, 0)} available",
                            offset=offset, expected=self.name)
        return self._to_record(iter(self.struct.unpack_from(buf, offset)))

    def encode(self, value: Any) -> bytes:
        """Encode a record, or a mapping with the same (possibly partial) fields: missing ones are 0."""
        flat: List[Any] = []
        self._flatten(value, flat)
        try:
            return self.struct.pack(*flat)
        except struct.error as exc:
            raise WireError(f"{self.name}: {exc}", expected=self.name) from None

    def zero(self) -> Any:
        """A record with every field zero."""
        return self.decode(bytes(self.size))

    def __repr__(self) -> str:
        return f"<FastStruct {self.name} {self.size} bytes '{self.struct.format}'>"


def _unwrap(sub: cs.Construct) -> cs.Construct:
    while isinstance(sub, cs.Renamed):
        sub = sub.subcon
    return sub


def _derive(name: str, schema: cs.Construct, fmt: List[str], fields: List[str], prefix: str):
    """Append the struct format of ``schema`` to ``fmt``; return (to_record, flatten, record type)."""
    schema = _unwrap(schema)
    if isinstance(schema, cs.FormatField):
        fmt.append(schema.fmtstr[1:])
        fields.append(prefix.rstrip("."))
        return (lambda it: next(it)), _flatten_scalar, None
    if isinstance(schema, cs.Bytes) and isinstance(schema.length, int):
        fmt.append(f"{schema.length}s")
        fields.append(prefix.rstrip("."))
        return (lambda it: next(it)), _flatten_bytes, None
    if isinstance(schema, cs.Array) and isinstance(schema.count, int):
        count = schema.count
        elems = [_derive(name, schema.subcon, fmt, fields, f"{prefix.rstrip('.')}[{i}].") for i in range(count)]
        to_rec, flat_one = elems[0][0], elems[0][1]

        def array_to_record(it, _n=count, _f=to_rec):
            return tuple(_f(it) for _ in range(_n))

        def array_flatten(value, out, _n=count, _f=flat_one):
            if value is None or value == 0:
                value = (None,) * _n
            if len(value) != _n:
                raise WireError(f"{prefix.rstrip('.')}: expected {_n} elements, got {len(value)}", expected=name)
            for v in value:
                _f(v, out)

        return array_to_record, array_flatten, None
    if isinstance(schema, cs.Struct):
        names: List[str] = []
        subs = []
        for sc in schema.subcons:
            if sc.name is None:
                raise AssertionError(f"{name}: unnamed field")
            names.append(sc.name)
            subs.append(_derive(name, sc, fmt, fields, f"{prefix}{sc.name}."))
        record = namedtuple(_record_name(prefix or name), [_pyname(n) for n in names])  # type: ignore[misc]
        record._header_names = tuple(names)  # type: ignore[attr-defined]
        converters = [s[0] for s in subs]
        flatteners = [s[1] for s in subs]
        if all(isinstance(_unwrap(sc), (cs.FormatField, cs.Bytes)) for sc in schema.subcons):
            def struct_to_record(it, _r=record, _n=len(names)):
                return _r._make([next(it) for _ in range(_n)])
        else:
            def struct_to_record(it, _r=record, _c=converters):
                return _r._make([c(it) for c in _c])

        pynames = [_pyname(n) for n in names]

        def struct_flatten(value, out, _names=names, _py=pynames, _f=flatteners):
            if value is None or value == 0:
                for f in _f:
                    f(None, out)
                return
            if isinstance(value, Mapping):
                for n, f in zip(_names, _f):
                    f(value.get(n), out)
            else:
                for p, f in zip(_py, _f):
                    f(getattr(value, p, None), out)

        return struct_to_record, struct_flatten, record
    raise AssertionError(f"{name}: cannot derive a fast codec for {schema!r}")


def _flatten_scalar(value: Any, out: List[Any]) -> None:
    out.append(0 if value is None else value)


def _flatten_bytes(value: Any, out: List[Any]) -> None:
    out.append(b"" if value is None else value)


def _pyname(field: str) -> str:
    # namedtuple refuses names starting with "_" (fuse_statx.__spare0); keep them readable.
    return field.lstrip("_") if field.startswith("_") else field


def _record_name(prefix: str) -> str:
    return prefix.rstrip(".").replace(".", "_") or "record"


def record_to_dict(value: Any) -> Any:
    """A record (or tuple of records) as plain dicts/lists, with the header's field names."""
    if hasattr(value, "_header_names"):
        return {k: record_to_dict(v) for k, v in zip(value._header_names, value)}
    if isinstance(value, tuple):
        return [record_to_dict(v) for v in value]
    return value


class _FastNamespace:
    """``FAST.fuse_read_in`` etc.: every fixed-size schema's FastStruct, built at import."""

    def __init__(self, table: Dict[str, FastStruct]) -> None:
        self.__dict__.update(table)

    def __getitem__(self, name: str) -> FastStruct:
        return self.__dict__[name]

    def __getattr__(self, name: str) -> FastStruct:
        """Only reached for names that are no fixed-size kernel struct (the others are attributes)."""
        raise AttributeError(f"no fast codec named {name!r} (not a fixed-size kernel struct)")

    def __iter__(self):
        return iter(self.__dict__.values())

    def __len__(self) -> int:
        return len(self.__dict__)


def derive_all(structs: Mapping[str, cs.Construct]) -> _FastNamespace:
    """Derive a FastStruct for every schema in ``structs``."""
    return _FastNamespace({name: FastStruct(name, s) for name, s in structs.items()})


def _build() -> _FastNamespace:
    from .schemas import STRUCTS
    return derive_all(STRUCTS)


#: Every kernel struct's fast codec, e.g. ``FAST.fuse_in_header``.
FAST = _build()
