"""The one exception type the codec raises for bad wire data."""

from __future__ import annotations

from typing import Optional


class WireError(ValueError):
    """Malformed, truncated or inconsistent FUSE/CUSE wire data.

    Every decoding and encoding failure of ``fusd_wire`` is a ``WireError`` (never an
    ``IndexError``, ``struct.error`` or a construct exception).  It says what and where:

    Attributes:
        opcode: the message's opcode (or notification code), when known.
        offset: byte offset in the message where the problem is, when known.
        expected: what the codec expected there (a struct name, "NUL-terminated name", ...).
        unique: the message's ``unique``, when known.
    """

    def __init__(self, message: str, *, opcode: Optional[int] = None, offset: Optional[int] = None,
                 expected: Optional[str] = None, unique: Optional[int] = None) -> None:
        self.opcode = opcode
        self.offset = offset
        self.expected = expected
        self.unique = unique
        self.detail = message
        super().__init__(message)

    def __str__(self) -> str:
        where = []
        if self.opcode is not None:
            from .constants import opcode_name
            where.append(f"opcode {opcode_name(self.opcode)} ({self.opcode})")
        if self.unique is not None:
            where.append(f"unique {self.unique}")
        if self.offset is not None:
            where.append(f"offset {self.offset}")
        prefix = ", ".join(where)
        return f"{prefix}: {self.detail}" if prefix else self.detail
