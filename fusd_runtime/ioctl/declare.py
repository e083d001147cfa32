"""Declaring ioctls: ``@ioctl(cmd, schema)``, ``ioctls = {cmd: Arg(...)}``, and a device's table of them.

A declaration is checked when it is made (the class body runs, or the device is
added): the schema compiles (``codec.py``), its size matches ``_IOC_SIZE(cmd)``
where the number encodes one and the declared ``size=`` where it does not, the
directions make sense.  The result per command is an :class:`IoctlSpec`, which
holds everything the session needs per call, precomputed.

Tables follow the class hierarchy like methods do: a subclass inherits its
bases' declarations, overrides a handler by defining a method of the same name
(the declaration stays), re-declares a command with its own ``@ioctl``, and
undeclares one with ``name = None`` or ``ioctls = {cmd: None}`` (the command then
reaches the raw ``Device.ioctl``).
"""

from __future__ import annotations

import errno as _errno
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import construct as cs

from .codec import Codec, ConstructCodec, compile_schema, merge_spans
from .numbers import IOC_NONE, IOC_READ, IOC_SIZEMASK, IOC_WRITE, ioc_dir, ioc_size
from .restricted import (
    _restricted_caller,
    call_declared,
    restricted_decode,
    restricted_encoder,
    split_result,
)
from .schema import DIRECTIONS, IN, INOUT, OUT, Sized, check_out_fields

Schema = Union[cs.Construct, Sized, None]


class Arg:
    """Declares an ioctl argument: a construct ``schema`` and its ``direction``.

    Args:
        schema: a construct schema (``cs.Struct``, a :class:`~fusd_runtime.ioctl.CStruct`,
            ``cs.Int32sl``...), a :class:`~fusd_runtime.ioctl.Sized` array that fills
            ``_IOC_SIZE(cmd)``, or None: a *value* argument (the handler gets the
            caller's ``unsigned long`` argument itself, nothing is copied).
        direction: IN (``_IOW``: the caller passes it), OUT (``_IOR``: the device
            fills it) or INOUT (``_IOWR``); None takes it from the number (required
            for numbers that encode none, like tty ``0x5401`` or SCSI ``0x2285``).
            A struct with Pointer fields or a Flex tail is always copied in as well:
            its addresses and counts must be read.
        out_fields: copy back only these top-level fields (the real driver's
            ``copy_to_user`` of two fields); the rest of the caller's struct is
            not written.  On FUSE the kernel copies a prefix: the bytes up to the
            last out field are written, the others with the caller's own values
            (``_IOWR``) or zeros (``_IOR``).
        size: the argument's ``sizeof`` when the number encodes no size (a check
            that the schema's layout is the C one: ``sizeof(struct sg_io_hdr)`` is 88).
    """

    def __init__(self, schema: Schema, direction: Optional[str] = None, *,
                 out_fields: Optional[Sequence[str]] = None, size: Optional[int] = None) -> None:
        if direction is not None and direction not in DIRECTIONS:
            raise ValueError(f"direction must be one of {DIRECTIONS} or None, not {direction!r}")
        self.schema = schema
        self.direction = direction
        self.out_fields = check_out_fields(out_fields, "Arg")
        self.size = size
        if self.out_fields is not None and direction == IN:
            raise ValueError("Arg out_fields with direction IN: nothing is copied out")
        self.codec: Any = None
        if schema is not None and not isinstance(schema, Sized):
            self.codec = compile_schema(schema)

    @property
    def chases(self) -> bool:
        """True if copying this argument needs more than one fixed-size copy (CUSE only)."""
        codec = self.codec
        return codec is not None and (bool(codec.slots) or codec.flex is not None)

    def bind(self, cmd: int, handler: Optional[str] = None) -> IoctlSpec:
        """This argument for command ``cmd``: checks the number against the schema."""
        cmd = int(cmd) & 0xFFFFFFFF
        if isinstance(self.schema, Sized):
            return FamilySpec(cmd, self, handler)
        return IoctlSpec(cmd, self, self.codec, handler)


class IoctlSpec:
    """One declared ioctl of a device, with what every call needs computed once.

    Attributes:
        cmd: the command number.
        arg: the :class:`Arg`.
        codec: the compiled schema (None for a value argument).
        direction: IN, OUT or INOUT of the argument itself.
        handler: the method name (None: ``Device.ioctl`` gets the decoded value).
        reads: the argument is copied in (IN/INOUT, or it has pointers/a Flex tail).
        out_spans: ``[(offset, size)]`` of the argument copied out (None: all of it).
    """

    __slots__ = ("cmd", "arg", "codec", "layout", "direction", "handler", "reads", "writes", "out_spans",
                 "out_end", "chases", "value_arg", "call_restricted", "planner")

    def __init__(self, cmd: int, arg: Arg, codec: Any, handler: Optional[str]) -> None:
        self.cmd, self.arg, self.codec, self.handler = cmd, arg, codec, handler
        #: decode, call the handler, encode: ``call(ctx, data, out_size, pending)`` (FUSE; generated)
        self.call_restricted: Callable[[Any, bytes, int, Dict[int, Any]], Any]
        self.planner: Any = None  # the CUSE round planner, generated on first use (walk.py)
        self.layout = codec  # the name v1 used
        self.value_arg = codec is None
        self.chases = codec is not None and (bool(codec.slots) or codec.flex is not None)
        size = ioc_size(cmd)
        direction = arg.direction
        self.out_spans: Optional[List[Tuple[int, int]]] = None
        self.out_end = 0
        if codec is None:
            self.direction = IN
            self.reads = self.writes = False
            self.call_restricted = _restricted_caller(self)
            return
        if direction is None:
            d = ioc_dir(cmd)
            if d == IOC_NONE:
                raise ValueError(f"ioctl {cmd:#x} encodes no direction (a tty-style number?): "
                                 f"declare it with direction=IN, OUT or INOUT")
            direction = {IOC_WRITE: IN, IOC_READ: OUT}.get(d, INOUT)
        flex = " (without the Flex tail)" if codec.flex else ""
        if size and size != codec.size:
            raise ValueError(f"ioctl {cmd:#x} encodes a {size}-byte argument but its schema is "
                             f"{codec.size} bytes{flex}")
        if arg.size is not None and arg.size != codec.size:
            raise ValueError(f"ioctl {cmd:#x}: declared size={arg.size} but its schema is {codec.size} bytes{flex} "
                             f"(a missing or extra padding field? CStruct computes C's padding)")
        if self.chases and direction == OUT:
            direction = INOUT  # the addresses / counts must be read first
        self.direction = direction
        self.reads = direction != OUT
        self.writes = direction != IN
        if arg.out_fields is not None:
            spans = []
            for f in arg.out_fields:
                if codec.flex is not None and f == codec.flex[0]:
                    spans.append((codec.size, -1))  # the tail: its length is known per call
                else:
                    spans.append(codec.field_span(f, f"ioctl {cmd:#x}"))
            self.out_spans = merge_spans([s for s in spans if s[1] >= 0]) + [s for s in spans if s[1] < 0]
            self.out_end = max(o + n for o, n in spans if n >= 0) if any(n >= 0 for _, n in spans) else 0
        self.call_restricted = _restricted_caller(self)

    @property
    def refuses_compat(self) -> bool:
        """True if a 32-bit caller (FUSE_IOCTL_COMPAT) must be refused: its layout would differ."""
        if self.codec is None:
            return False
        if self.chases:
            return True
        return not getattr(self.arg.schema, "abi_neutral", True)

    def restricted_problem(self) -> Optional[str]:
        """Why this declaration cannot work on the FUSE transport, or None if it can."""
        cmd = self.cmd
        if self.codec is None:
            return None
        if self.chases:
            what = "a pointer field" if self.codec.slots else "a variable-length (Flex) tail"
            return (f"ioctl {cmd:#x}: its argument has {what}; the FUSE transport only copies _IOC_SIZE(cmd) "
                    f"bytes at the argument address and cannot follow it. Serve this device with CuseServer "
                    f"(unrestricted ioctls) or declare a fixed struct")
        if ioc_size(cmd) == 0:
            return (f"ioctl {cmd:#x} encodes no argument size (a tty-style number); the FUSE transport copies "
                    f"only _IOC_SIZE(cmd) bytes, so its {self.codec.size}-byte argument cannot reach the device. "
                    f"Serve this device with CuseServer")
        d = ioc_dir(cmd)
        if self.direction in (IN, INOUT) and not d & IOC_WRITE:
            return f"ioctl {cmd:#x} is not _IOW/_IOWR: the FUSE kernel copies nothing in for it"
        if self.direction in (OUT, INOUT) and not d & IOC_READ:
            return f"ioctl {cmd:#x} is not _IOR/_IOWR: the FUSE kernel copies nothing out for it"
        return None

    def __repr__(self) -> str:
        return f"<IoctlSpec {self.cmd:#x} {self.direction} {self.handler or 'ioctl'}>"


class FamilySpec(IoctlSpec):
    """A :class:`~fusd_runtime.ioctl.Sized` declaration: one spec per ``_IOC_SIZE``, made when first called."""

    __slots__ = ("sized", "by_size")

    def __init__(self, cmd: int, arg: Arg, handler: Optional[str]) -> None:
        self.cmd, self.arg, self.handler = cmd & ~IOC_SIZEMASK & 0xFFFFFFFF, arg, handler
        self.codec = self.layout = self.planner = None
        self.sized: Sized = arg.schema  # type: ignore[assignment]
        self.by_size: Dict[int, Optional[IoctlSpec]] = {}
        item = self.sized.item
        self.value_arg = False
        self.chases = item is not None and bool(compile_schema(item).slots)
        self.direction = arg.direction or INOUT
        self.reads = self.writes = True
        self.out_spans, self.out_end = None, 0
        if arg.direction is None and ioc_dir(cmd) == IOC_NONE:
            raise ValueError(f"ioctl family {cmd:#x} encodes no direction: declare direction=IN, OUT or INOUT")
        if arg.out_fields is not None:
            raise ValueError("a Sized argument has no fields to select with out_fields")
        self.call_restricted = _INVALID_MEMBER.call_restricted  # tables hand out members, never the family

    def for_cmd(self, cmd: int) -> Optional[IoctlSpec]:
        """The spec of the family member ``cmd``; None when its size is no whole number of items."""
        size = ioc_size(cmd)
        try:
            return self.by_size[size]
        except KeyError:
            pass
        item = self.sized.item
        spec: Optional[IoctlSpec] = None
        isz = item.sizeof() if item is not None else 1
        count = size // isz
        if size and size % isz == 0 and (self.sized.max_count is None or count <= self.sized.max_count):
            member = Arg(self.sized.schema_for(size), self.arg.direction)
            spec = IoctlSpec(cmd, member, member.codec, self.handler)
        self.by_size[size] = spec
        return spec

    def restricted_problem(self) -> Optional[str]:
        """Why the family cannot work on FUSE (its items hold pointers), or None."""
        if self.chases:
            return (f"ioctl family {self.cmd:#x}: its elements have a pointer field; the FUSE transport only copies "
                    f"_IOC_SIZE(cmd) bytes at the argument address and cannot follow it. Serve this device with "
                    f"CuseServer (unrestricted ioctls)")
        return None

    def __repr__(self) -> str:
        return f"<FamilySpec {self.cmd:#x} {self.sized!r} {self.handler or 'ioctl'}>"


class IoctlTable(dict):  # type: ignore[type-arg]
    """``{cmd: IoctlSpec}`` of one device: a plain dict (``get`` and truth stay C code on the hot path).

    ``families`` holds its Sized declarations; a device that has any gets a
    :class:`FamilyTable`, whose ``get`` also finds their members.
    """

    __slots__ = ("families",)

    def __init__(self, items: Any = (), families: Optional[Dict[int, FamilySpec]] = None) -> None:
        super().__init__(items)
        self.families: Dict[int, FamilySpec] = families or {}


class FamilyTable(IoctlTable):
    """An :class:`IoctlTable` with Sized families: ``get(SPI_IOC_MESSAGE(3))`` finds the family's member."""

    __slots__ = ()

    def get(self, cmd: int, default: Any = None) -> Any:  # type: ignore[override]
        spec = dict.get(self, cmd)
        if spec is not None:
            return spec
        family = self.families.get(cmd & ~IOC_SIZEMASK & 0xFFFFFFFF)
        if family is None:
            return default
        member = family.for_cmd(cmd)
        return _INVALID_MEMBER if member is None else member

    def __bool__(self) -> bool:
        return True


class _InvalidMember(IoctlSpec):
    """A family member whose size is no whole number of items: EINVAL (spidev's answer)."""

    __slots__ = ()

    def __init__(self) -> None:
        self.cmd, self.arg, self.codec, self.layout, self.handler = 0, None, None, None, None  # type: ignore
        self.planner = None
        self.direction, self.reads, self.writes, self.out_spans, self.out_end = IN, False, False, None, 0
        self.chases = self.value_arg = False

        def invalid(ctx: Any, data: bytes, out_size: int, pending: Dict[int, Any]) -> Any:
            raise OSError(_errno.EINVAL, "ioctl size is not a whole number of elements")
        self.call_restricted = invalid


_INVALID_MEMBER = _InvalidMember()


def ioctl(cmd: int, schema: Schema = None, direction: Optional[str] = None, *,
          out_fields: Optional[Sequence[str]] = None, size: Optional[int] = None
          ) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorate a Device method as the handler of ``cmd`` with a declared argument.

    ::

        from fusd_runtime import Device, ioctl
        from fusd_runtime.ioctl import IOR, CStruct, c

        rtc_time = CStruct(*(name / c.int for name in (                # struct rtc_time
            "tm_sec", "tm_min", "tm_hour", "tm_mday", "tm_mon", "tm_year", "tm_wday", "tm_yday", "tm_isdst")))
        RTC_RD_TIME = IOR("p", 9, rtc_time.sizeof())

        class Rtc(Device):
            @ioctl(RTC_RD_TIME, rtc_time)
            def read_time(self, ctx, tm):      # tm: a zeroed record (OUT)
                tm.tm_hour = 12
                return tm                      # copied out to the caller

    The method gets ``(ctx, value)``: the decoded argument (IN/INOUT), a
    zero-filled one to fill (OUT), or for ``schema=None`` the caller's argument
    itself (an int).  It returns the value to copy out (or None: ``value`` as
    modified), an int ioctl result, a ``(result, value)`` pair, or defers
    (``ctx.defer()``, then ``handle.reply(value)``).  ``out_fields`` and
    ``size`` are :class:`Arg`'s.  Mistakes in the declaration raise here, when
    the class is defined.
    """
    spec_arg = Arg(schema, direction, out_fields=out_fields, size=size)
    spec_arg.bind(cmd)  # check now

    def deco(fn: Callable[..., Any]) -> Callable[..., Any]:
        fn.__fusd_ioctl__ = (int(cmd) & 0xFFFFFFFF, spec_arg)  # type: ignore[attr-defined]
        return fn
    return deco


# ---------------------------------------------------------------------- a device's table
_TABLE_ATTR = "_fusd_ioctl_table"
_CLASS_TABLES: Dict[type, Tuple[Dict[int, IoctlSpec], Dict[int, FamilySpec]]] = {}


def _add(specs: Dict[int, IoctlSpec], families: Dict[int, FamilySpec], cmd: int, spec: Optional[IoctlSpec]) -> None:
    cmd &= 0xFFFFFFFF
    specs.pop(cmd, None)
    if spec is None or isinstance(spec, FamilySpec):
        families.pop(cmd & ~IOC_SIZEMASK & 0xFFFFFFFF, None)
    if spec is None:
        return
    if isinstance(spec, FamilySpec):
        families[spec.cmd] = spec
    else:
        specs[cmd] = spec


def _mapping_spec(cmd: int, arg: Any) -> Optional[IoctlSpec]:
    if arg is None:
        return None  # undeclared
    if not isinstance(arg, Arg):
        arg = Arg(arg)  # a bare schema
    return arg.bind(cmd)


def _class_table(cls: type) -> Tuple[Dict[int, IoctlSpec], Dict[int, FamilySpec]]:
    cached = _CLASS_TABLES.get(cls)
    if cached is not None:
        return cached
    specs: Dict[int, IoctlSpec] = {}
    families: Dict[int, FamilySpec] = {}
    for klass in reversed(cls.__mro__):
        declared_here: Dict[int, str] = {}
        for name, member in vars(klass).items():
            decl = getattr(member, "__fusd_ioctl__", None)
            if decl is None:
                continue
            cmd, arg = decl
            if cmd in declared_here:
                raise ValueError(f"{klass.__name__}: ioctl {cmd:#x} is declared twice "
                                 f"({declared_here[cmd]} and {name})")
            declared_here[cmd] = name
            _add(specs, families, cmd, arg.bind(cmd, name))
        for cmd, arg in (vars(klass).get("ioctls") or {}).items():
            _add(specs, families, int(cmd), _mapping_spec(int(cmd), arg))
    # A handler the final class no longer has (``name = None``) or that now declares
    # another command is undeclared; a plain override of the method keeps the declaration.
    for table in (specs, families):
        for cmd, spec in list(table.items()):
            if spec.handler is None:
                continue
            member = getattr(cls, spec.handler, None)
            decl = getattr(member, "__fusd_ioctl__", None)
            declared = None if decl is None else \
                (decl[0] & ~IOC_SIZEMASK & 0xFFFFFFFF if isinstance(spec, FamilySpec) else decl[0])
            if member is None or (declared is not None and declared != spec.cmd):
                del table[cmd]
    _CLASS_TABLES[cls] = (specs, families)
    return specs, families


def ioctl_table(device: Any) -> IoctlTable:
    """The declared ioctls of ``device``: ``@ioctl`` methods plus ``ioctls`` mappings (cached).

    Class declarations are collected along the MRO (bases first), then the
    instance's own ``ioctls`` (set in ``__init__``) on top.  ValueError for a
    declaration mistake.
    """
    table = device.__dict__.get(_TABLE_ATTR) if hasattr(device, "__dict__") else None
    if table is not None:
        return table  # type: ignore[no-any-return]
    specs, families = _class_table(type(device))
    specs, families = dict(specs), dict(families)
    own = device.__dict__.get("ioctls") if hasattr(device, "__dict__") else None
    for cmd, arg in (own or {}).items():
        _add(specs, families, int(cmd), _mapping_spec(int(cmd), arg))
    table = (FamilyTable if families else IoctlTable)(specs, families)
    try:
        device.__dict__[_TABLE_ATTR] = table
    except (AttributeError, TypeError):
        pass
    return table


def check_ioctls(device: Any, transport: str) -> IoctlTable:
    """Validate ``device``'s declared ioctls for ``transport`` ("fuse" refuses what needs CUSE)."""
    table = ioctl_table(device)
    if transport == "fuse":
        for spec in list(table.values()) + list(table.families.values()):
            problem = spec.restricted_problem()
            if problem is not None:
                raise ValueError(f"device {type(device).__name__}: {problem}")
    return table


__all__ = ["Arg", "IoctlSpec", "FamilySpec", "IoctlTable", "FamilyTable", "ioctl", "ioctl_table", "check_ioctls",
           "call_declared", "split_result", "restricted_decode", "restricted_encoder", "Codec", "ConstructCodec"]
