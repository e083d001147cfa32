"""The vocabulary of a declared argument: directions, pointer fields, flexible tails.

These are construct constructs, so a declaration stays an ordinary construct
schema: construct parses, builds and prints it (the spec), and ``codec.py``
compiles the same schema into ``struct.Struct`` code for the hot path.

- ``Pointer``: an address in the *caller's* memory and how much it points to;
  its length and its direction may be functions of the struct that holds it
  (``sg_io_hdr.dxfer_direction`` decides which way ``dxferp`` goes).
- ``Flex``: a flexible array member (``struct fiemap``'s ``fm_extents[]``).
- ``Sized``: an argument that is an array filling ``_IOC_SIZE(cmd)``
  (``SPI_IOC_MESSAGE(N)``: N transfers); declared once for every N.
"""

from __future__ import annotations

from typing import Any, Callable, Optional, Sequence, Tuple, Union

import construct as cs

#: directions of an argument or of a pointed-to buffer, seen from the caller:
#: IN = caller -> device (copied in), OUT = device -> caller (copied out), INOUT = both
IN, OUT, INOUT = "in", "out", "inout"
#: the three directions, for checks
DIRECTIONS = (IN, OUT, INOUT)

#: a length: a field name of the same struct, an int, or ``callable(struct) -> int``
Length = Union[str, int, Callable[[Any], int]]
#: a pointer's direction: IN, OUT, INOUT, None (not copied at all) or ``callable(struct) -> one of those``
Direction = Union[str, None, Callable[[Any], Optional[str]]]


def resolve_length(length: Length, container: Any) -> int:
    """The value of a declared length for one decoded struct."""
    if length.__class__ is int:
        return length  # type: ignore[return-value]
    if callable(length):
        return int(length(container))
    name = str(length)
    return int(container[name]) if isinstance(container, dict) else int(getattr(container, name))


def check_direction(direction: Any, what: str, allow_none: bool = True) -> None:
    """ValueError unless ``direction`` is a valid direction (or a callable choosing one)."""
    if callable(direction) or direction in DIRECTIONS or (allow_none and direction is None):
        return
    raise ValueError(f"{what} must be one of {DIRECTIONS}{', None' if allow_none else ''} "
                     f"or a function of the struct, not {direction!r}")


def check_out_fields(out_fields: Optional[Sequence[str]], what: str) -> Optional[Tuple[str, ...]]:
    """``out_fields`` as a tuple of names (checked against the schema when it is compiled)."""
    if out_fields is None:
        return None
    if isinstance(out_fields, str):
        raise ValueError(f"{what}: out_fields is a sequence of field names, not the string {out_fields!r}")
    names = tuple(out_fields)
    if not names:
        raise ValueError(f"{what}: out_fields is empty (say direction=IN if nothing is copied out)")
    return names


class Pointer(cs.Adapter):  # type: ignore[misc]
    """A pointer field: 8 bytes holding an address in the *caller's* memory.

    Args:
        length: how much it points to: the name of another field of the same
            struct, an int, or ``callable(struct) -> int``.  Bytes when
            ``target`` is None, elements of ``target`` otherwise.
        target: None (the pointer addresses ``length`` bytes; the device sees
            ``bytes`` for IN, a ``bytearray`` to fill for OUT/INOUT), or a
            fixed-size schema (an array of ``length`` decoded elements, whose
            own pointers are followed in further rounds).
        direction: IN (caller -> device), OUT (device -> caller), INOUT, None
            (not copied: the device sees None), or ``callable(struct) -> one of
            those``, evaluated on the decoded struct that holds the pointer (for
            an array of structs: on each element).  Only what it says is copied:
            an IN buffer is never written back (read-only caller memory works),
            an OUT buffer never read (and does not count towards the in limit).
        optional: a NULL address with a nonzero length is allowed (the device
            sees None).  Otherwise it answers EFAULT, as the kernel's own copy
            from address 0 would.
        out_fields: for a struct ``target`` copied out: only these fields of each
            element are written back.
        c_type: the field's C type, for ``CStruct``'s 32-bit layout: None for
            ``void *`` (4 bytes on i386), ``c.u64`` for an address kept in a
            ``__u64`` (``spi_ioc_transfer.tx_buf``: 8 bytes on both).

    Only the CUSE transport can follow pointers (FUSE refuses such a device at ``add``).
    """

    def __init__(self, length: Length, target: Optional[cs.Construct] = None, direction: Direction = INOUT,
                 *, optional: bool = False, out_fields: Optional[Sequence[str]] = None,
                 c_type: Optional[cs.Construct] = None) -> None:
        super().__init__(cs.Int64ul)
        self.c_type = c_type
        check_direction(direction, "Pointer direction")
        if not (isinstance(length, (str, int)) or callable(length)):
            raise ValueError(f"Pointer length must be a field name, an int or a function, not {length!r}")
        self.length = length
        self.direction = direction
        self.target = target
        self.optional = bool(optional)
        self.out_fields = check_out_fields(out_fields, "Pointer")
        if self.out_fields is not None and target is None:
            raise ValueError("Pointer out_fields needs a struct target (a byte buffer is copied out whole)")
        if self.out_fields is not None and direction == IN:
            raise ValueError("Pointer out_fields with direction IN: nothing is copied out")
        if direction == OUT and target is not None and holds(target, Pointer):
            raise ValueError("a Pointer with direction OUT cannot point to elements that hold pointers: "
                             "their addresses would never be read")

    def _decode(self, obj: int, context: Any, path: Any) -> int:
        return obj

    def _encode(self, obj: Any, context: Any, path: Any) -> int:
        return obj if isinstance(obj, int) else 0


def holds(sub: Any, types: Any) -> bool:
    """True if construct ``sub`` is or contains (through structs, arrays, renames) one of ``types``."""
    while isinstance(sub, cs.Renamed):
        sub = sub.subcon
    if isinstance(sub, types):
        return True
    if isinstance(sub, cs.Struct):
        return any(holds(sc, types) for sc in sub.subcons)
    inner = getattr(sub, "subcon", None)
    return inner is not None and holds(inner, types)


class Flex(cs.Construct):  # type: ignore[misc]
    """A flexible array member (``struct fiemap``'s ``fm_extents[]``): the struct's last field.

    ``count`` (a field name or a callable) says how many ``item`` elements follow
    the fixed header; ``_IOC_SIZE`` of the command is the header's size.  Only the
    CUSE transport can copy it (the FUSE kernel copies ``_IOC_SIZE`` bytes only).
    """

    def __init__(self, count: Length, item: cs.Construct) -> None:
        super().__init__()
        self.count = count
        self.item = item

    def _parse(self, stream: Any, context: Any, path: Any) -> Any:
        n = resolve_length(self.count, context)
        return cs.ListContainer(self.item._parsereport(stream, context, path) for _ in range(n))

    def _build(self, obj: Any, stream: Any, context: Any, path: Any) -> Any:
        for item in obj:
            self.item._build(item, stream, context, path)
        return obj

    def _sizeof(self, context: Any, path: Any) -> int:
        raise cs.SizeofError("a Flex array has no fixed size", path=path)


class Sized:
    """An argument that is an array of ``item`` filling ``_IOC_SIZE(cmd)``: one declaration for every size.

    ``@ioctl(SPI_IOC_MESSAGE(0), Sized(spi_ioc_transfer), IN)`` declares
    ``SPI_IOC_MESSAGE(N)`` for every N: the number's size bits are ignored when
    looking the command up, and the argument is ``_IOC_SIZE(cmd) // sizeof(item)``
    elements (a size that is not a multiple answers EINVAL, as spidev does).
    With ``item=None`` the argument is ``_IOC_SIZE(cmd)`` raw bytes
    (``EVIOCGNAME(len)``).  ``max_count`` caps N.
    """

    def __init__(self, item: Optional[cs.Construct], max_count: Optional[int] = None) -> None:
        self.item = item
        self.max_count = max_count

    def schema_for(self, size: int) -> cs.Construct:
        """The fixed schema of the argument when the number encodes ``size`` bytes."""
        if self.item is None:
            return cs.Bytes(size)
        return cs.Array(size // self.item.sizeof(), self.item)

    def __repr__(self) -> str:
        return f"Sized({self.item!r})"
