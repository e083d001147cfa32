"""The records a decoded struct argument becomes: generated classes with slots and a small mapping API.

One class per declared struct, made once by :func:`make_record` (generated
``__init__``, like ``namedtuple``): attribute access at slot speed, assignment to
a field that does not exist is an error (no silent typo), and enough of the
mapping protocol that ``dict(rec)``, ``rec.update(d)``, ``rec["f"]`` and
comparisons with construct Containers work.
"""

from __future__ import annotations

import keyword
from collections.abc import Mapping
from typing import Any, Dict, List, Sequence, Tuple


class NotCompilable(Exception):
    """The schema uses a construct outside the compiled subset (the caller falls back to construct)."""


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
