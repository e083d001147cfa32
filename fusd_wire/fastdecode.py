"""construct-shaped values at ``struct`` speed: fixed kernel structs decoded into Containers.

The complete codec hands out ``construct.Container`` objects (attribute access, the
shape every caller and test relies on).  Building them with construct's ``parse``
costs ~10-30 µs per struct, which made trace decoding run at a few thousand messages
a second.  The values themselves are what the derived ``struct.Struct`` of
``fastpath`` unpacks in well under a microsecond; only the nesting is missing.  So,
per fixed-size schema, once: the schema is walked (the same walk ``fastpath`` does),
and a small function is generated that unpacks the flat tuple and builds the nested
Containers (arrays as ``ListContainer``), exactly what ``strip_io(schema.parse(...))``
returns.  ``tests/test_fastdecode.py`` checks both agree on every struct at every
minor and on every message of the wire samples.

    read = container_reader(layout("fuse_entry_out", 45))
    entry = read(buf, 16)        # Container(nodeid=..., attr=Container(ino=..., ...))
"""

from __future__ import annotations

from typing import Any, Callable, Dict, List, Tuple

import construct as cs

from .fastpath import FastStruct

Reader = Callable[[Any, int], Any]

_CACHE: Dict[int, Tuple[cs.Construct, Reader]] = {}


def _unwrap(sub: cs.Construct) -> cs.Construct:
    while isinstance(sub, cs.Renamed):
        sub = sub.subcon
    return sub


def _expr(schema: cs.Construct, counter: List[int]) -> str:
    """Python source building the value of ``schema`` from the flat tuple ``v``."""
    schema = _unwrap(schema)
    if isinstance(schema, (cs.FormatField, cs.Bytes)):
        i = counter[0]
        counter[0] += 1
        return f"v[{i}]"
    if isinstance(schema, cs.Array):
        return "L([" + ", ".join(_expr(schema.subcon, counter) for _ in range(schema.count)) + "])"
    if isinstance(schema, cs.Struct):
        items = ", ".join(f"{sc.name!r}: {_expr(sc, counter)}" for sc in schema.subcons)
        return "C({" + items + "})"
    raise AssertionError(f"no fast decoder for {schema!r}")  # fastpath refused it first


def container_reader(schema: cs.Construct, name: str = "struct") -> Reader:
    """``read(buf, offset)`` -> the Container ``schema.parse`` gives (without ``_io``).

    ``schema`` must be fixed-size; the caller checks ``len(buf) - offset >= size``
    (``struct.error`` otherwise).  Cached per schema object (``layouts.layout`` caches
    those, so this is one generated function per struct, minor and flag set).
    """
    hit = _CACHE.get(id(schema))
    if hit is not None and hit[0] is schema:
        return hit[1]
    fast = FastStruct(name, schema)
    counter = [0]
    body = _expr(schema, counter)
    if counter[0] != len(fast.fields):  # the two walks must see the same fields in the same order
        raise AssertionError(f"{name}: {counter[0]} fields built, {len(fast.fields)} unpacked")
    src = f"def read(buf, offset, u=unpack_from, C=C, L=L):\n    v = u(buf, offset)\n    return {body}\n"
    env: Dict[str, Any] = {"unpack_from": fast.struct.unpack_from, "C": cs.Container, "L": cs.ListContainer}
    exec(compile(src, f"<fastdecode {name}>", "exec"), env)  # generated from the schema, nothing else
    read: Reader = env["read"]
    _CACHE[id(schema)] = (schema, read)  # the schema is kept alive, so its id stays unique
    return read


__all__ = ["Reader", "container_reader"]
