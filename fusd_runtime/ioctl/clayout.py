"""C layouts: declare a struct like its C definition, get alignment and padding computed.

::

    from fusd_runtime.ioctl import CStruct, Pointer, c, IN

    i2c_msg = CStruct(                          # <linux/i2c.h>
        "addr" / c.u16, "flags" / c.u16, "len" / c.u16,
        "buf" / Pointer("len", direction=IN),   # 2 bytes of padding are inserted before buf
        name="i2c_msg")
    assert i2c_msg.sizeof() == 16 and i2c_msg.c_offsets["buf"] == 8
    print(i2c_msg.describe())

The rules are the x86-64 System V (LP64) ABI's, which is what a 64-bit caller
on x86-64 (and, for these types, arm64 and riscv64) lays out:

- ``char`` 1 byte, ``short`` 2, ``int`` 4, ``long``/``size_t``/pointers 8,
  ``long long`` 8, ``float`` 4, ``double`` 8; each aligned to its size.
- A member starts at the next offset that is a multiple of its alignment; the
  struct's alignment is its largest member's, and its size is rounded up to
  it (tail padding).  An array aligns like its element; a nested struct like
  its largest member.  A flexible array member (``Flex``) starts aligned to
  its item, and ``sizeof`` does not count it.
- ``packed=True`` is ``__attribute__((packed))``: no padding, alignment 1.
- Not supported: bitfields, ``long double``, unions (declare the largest
  member, or ``cs.Bytes(n)`` and decode it in the handler).

The same struct on i386 (ILP32: ``long`` and pointers 4 bytes, 8-byte integers
aligned to 4 inside structs) is computed too: ``abi_neutral`` says whether a
32-bit caller lays it out the same, which decides whether 32-bit callers can be
served (see ``docs/ioctl.md``).  Padding becomes ``cs.Padding`` fields, so
construct parses and prints the struct exactly as C lays it out.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Tuple

import construct as cs

from .schema import Flex, Pointer


class CType(cs.FormatField):  # type: ignore[misc]
    """A C scalar type: a little-endian construct field plus its C name and i386 size/alignment."""

    def __init__(self, fmt: str, c_name: str, ilp32: Optional[Tuple[str, int]] = None) -> None:
        super().__init__("<", fmt)
        self.c_name = c_name
        size = self.length
        #: (format, alignment) of the same C type for an i386 caller
        self.ilp32 = ilp32 if ilp32 is not None else (fmt, size if size < 8 else 4)

    def __repr__(self) -> str:
        return f"c.{self.c_name}"


def _info(sub: cs.Construct, what: str) -> Tuple[int, int, int, int, bool]:
    """(size, align) for LP64, (size, align) for ILP32, and whether it holds a pointer."""
    while isinstance(sub, cs.Renamed):
        sub = sub.subcon
    if isinstance(sub, Pointer):
        if sub.c_type is not None:
            size, align, size32, align32, _ = _info(sub.c_type, what)
            return size, align, size32, align32, True
        return 8, 8, 4, 4, True
    if isinstance(sub, CType):
        fmt, align32 = sub.ilp32
        return sub.length, sub.length, cs.FormatField("<", fmt).length, align32, False
    if isinstance(sub, cs.FormatField):
        n = sub.length
        return n, n, n, n if n < 8 else 4, False
    if isinstance(sub, CStruct):
        return sub.c_size, sub.c_align, sub.c_size32, sub.c_align32, sub.c_pointers
    if isinstance(sub, cs.Struct):
        size = size32 = 0
        align = align32 = 1
        pointers = False
        for sc in sub.subcons:
            s, a, s32, a32, p = _info(sc, what)
            size, size32 = size + s, size32 + s32
            align, align32 = max(align, a), max(align32, a32)
            pointers = pointers or p
        return size, align, size32, align32, pointers
    if isinstance(sub, cs.Array) and isinstance(sub.count, int):
        s, a, s32, a32, p = _info(sub.subcon, what)
        return s * sub.count, a, s32 * sub.count, a32, p
    if isinstance(sub, (cs.Bytes, cs.Padded)) and isinstance(sub.length, int):
        return sub.length, 1, sub.length, 1, False
    if isinstance(sub, cs.StringEncoded) and isinstance(getattr(sub.subcon, "length", None), int):
        return sub.subcon.length, 1, sub.subcon.length, 1, False  # PaddedString(n): char[n]
    if isinstance(sub, (cs.Enum, cs.FlagsEnum)):
        return _info(sub.subcon, what)
    raise ValueError(f"{what}: cannot tell the C size and alignment of {sub!r}; use a c.* type, "
                     f"a CStruct, cs.Array, cs.Bytes or a construct integer")


def _align(offset: int, align: int) -> int:
    return (offset + align - 1) // align * align


class CStruct(cs.Struct):  # type: ignore[misc]
    """A construct Struct laid out like C: padding inserted by the x86-64 (LP64) ABI's rules.

    Fields are given like ``cs.Struct``'s (``"name" / type``); explicit padding
    is not needed.  A ``Flex`` may be the last field.

    Attributes:
        c_name: the struct's name (for messages and ``describe``).
        c_size: ``sizeof`` on x86-64 (the Flex tail not counted).
        c_align: its alignment.
        c_offsets: ``{field: offset}``.
        c_size32, c_align32: the same struct for an i386 caller.
        abi_neutral: True if an i386 caller lays it out byte for byte the same
            (no pointers, no ``long``, no 8-byte integer that i386 aligns differently).
    """

    def __init__(self, *fields: cs.Construct, packed: bool = False, name: str = "") -> None:
        self.c_name = name or "struct"
        padded: List[cs.Construct] = []
        offsets: Dict[str, int] = {}
        layout32: List[Tuple[str, int]] = []
        off = off32 = 0
        align = align32 = 1
        pointers = False
        for i, f in enumerate(fields):
            fname = f.name
            if fname is None:
                raise ValueError(f"{self.c_name}: field {i} has no name (write \"name\" / type)")
            inner = f.subcon if isinstance(f, cs.Renamed) else f
            if isinstance(inner, Flex):
                if i != len(fields) - 1:
                    raise ValueError(f"{self.c_name}: a Flex array must be the struct's last field "
                                     f"({fname!r} is not)")
                _, a, _, a32, p = _info(inner.item, f"{self.c_name}.{fname}")
                size = size32 = 0
            else:
                size, a, size32, a32, p = _info(inner, f"{self.c_name}.{fname}")
            if packed:
                a = a32 = 1
            start = _align(off, a)
            if start > off:
                padded.append(cs.Padding(start - off))
            padded.append(f)
            offsets[fname] = start
            off = start + size
            start32 = _align(off32, a32)
            layout32.append((fname, start32))
            off32 = start32 + size32
            align, align32 = max(align, a), max(align32, a32)
            pointers = pointers or p
        end = _align(off, align)
        flex_last = bool(fields) and isinstance(fields[-1].subcon if isinstance(fields[-1], cs.Renamed)
                                                 else fields[-1], Flex)
        if end > off:
            if flex_last:  # the tail padding sits before the flexible member in C's sizeof
                padded.insert(len(padded) - 1, cs.Padding(end - off))
                offsets[fields[-1].name] = end
            else:
                padded.append(cs.Padding(end - off))
        super().__init__(*padded)
        self.c_fields = tuple(f.name for f in fields)
        self.c_offsets = offsets
        self.c_size = end
        self.c_align = align
        self.c_size32 = _align(off32, align32)
        self.c_align32 = align32
        self.c_pointers = pointers
        self.abi_neutral = (not pointers and self.c_size32 == self.c_size
                            and all(offsets[n] == o for n, o in layout32))

    def describe(self) -> str:
        """The layout as text, like ``pahole``: offset, size and type of every field, and the holes."""
        lines = [f"struct {self.c_name} {{  /* size {self.c_size}, align {self.c_align} */"]
        off = 0
        for sc in self.subcons:
            if sc.name is None:  # padding
                n = sc.sizeof()
                lines.append(f"    /* {off:4d} {n:4d} */  /* {n} bytes of padding */")
                off += n
                continue
            inner = sc.subcon if isinstance(sc, cs.Renamed) else sc
            try:
                n = inner.sizeof()
            except cs.SizeofError:
                n = 0
            lines.append(f"    /* {off:4d} {n:4d} */  {_c_type_name(inner)} {sc.name};")
            off += n
        lines.append("};")
        return "\n".join(lines)

    def __repr__(self) -> str:
        return f"<CStruct {self.c_name} {self.c_size} bytes>"


def _c_type_name(sub: Any) -> str:
    if isinstance(sub, CType):
        return sub.c_name
    if isinstance(sub, Pointer):
        return "void * /* followed */"
    if isinstance(sub, CStruct):
        return f"struct {sub.c_name}"
    if isinstance(sub, cs.Array):
        return f"{_c_type_name(sub.subcon)}[{sub.count}]"
    if isinstance(sub, Flex):
        return f"{_c_type_name(sub.item)}[]"
    if isinstance(sub, cs.FormatField):
        return f"/* {sub.fmtstr} */"
    return type(sub).__name__


class _CTypes:
    """The C scalar types, for ``CStruct`` fields: ``c.int``, ``c.ulong``, ``c.u64``, ``c.pointer``..."""

    def __init__(self) -> None:
        t = self.__dict__
        for name, fmt, ilp32 in (
            ("char", "b", None), ("schar", "b", None), ("uchar", "B", None), ("bool", "?", None),
            ("short", "h", None), ("ushort", "H", None), ("int", "l", None), ("uint", "L", None),
            ("long", "q", ("l", 4)), ("ulong", "Q", ("L", 4)), ("longlong", "q", None), ("ulonglong", "Q", None),
            ("size_t", "Q", ("L", 4)), ("ssize_t", "q", ("l", 4)), ("float", "f", None), ("double", "d", None),
            ("s8", "b", None), ("u8", "B", None), ("s16", "h", None), ("u16", "H", None), ("s32", "l", None),
            ("u32", "L", None), ("s64", "q", None), ("u64", "Q", None), ("aligned_u64", "Q", ("Q", 8)),
            ("pointer", "Q", ("L", 4)),  # a void * kept as a number: not followed (use Pointer for that)
        ):
            t[name] = CType(fmt, name, ilp32)

    @staticmethod
    def array(item: cs.Construct, n: int) -> cs.Array:
        """``item name[n]``."""
        return cs.Array(n, item)

    @staticmethod
    def chars(n: int) -> cs.Bytes:
        """``char name[n]`` as bytes (decode text in the handler, or use ``cs.PaddedString``)."""
        return cs.Bytes(n)


#: The C types: ``c.char``, ``c.uchar``, ``c.short``, ``c.ushort``, ``c.int``, ``c.uint``, ``c.long``,
#: ``c.ulong``, ``c.longlong``, ``c.ulonglong``, ``c.size_t``, ``c.ssize_t``, ``c.float``, ``c.double``,
#: ``c.bool``, the kernel's ``c.u8`` .. ``c.u64`` / ``c.s8`` .. ``c.s64`` / ``c.aligned_u64``,
#: ``c.pointer`` (a ``void *`` kept as a number), ``c.array(type, n)``, ``c.chars(n)``.
c: Any = _CTypes()
