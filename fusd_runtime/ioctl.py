"""ioctl command numbers: build them (``IOR('p', 9, 36)``) and take them apart.

The encoding is ``asm-generic/ioctl.h``'s (x86, arm, riscv...): 8 bits number,
8 bits type, 14 bits size, 2 bits direction.  On the FUSE transport the kernel
copies ``_IOC_SIZE(cmd)`` bytes in (``_IOC_WRITE``) and out (``_IOC_READ``); the
device's ``ioctl`` callback sees the bytes copied in and returns the bytes to
copy out.

Declared arguments (the second half): ``@ioctl(cmd, schema)`` / ``ioctls =
{cmd: Arg(schema, direction)}`` describe an argument with a construct schema —
a fixed struct, ``Pointer`` fields to buffers or arrays whose length is another
field, a ``Flex`` variable-length tail.  The runtime decodes it for the device
and encodes the result back; on CUSE it derives the FUSE_IOCTL_RETRY rounds
from the schema (``plan_unrestricted``), on FUSE it accepts the restricted
subset and refuses the rest at registration (``check_ioctls``).  See docs/cuse.md.
"""

from __future__ import annotations

import errno as _errno
from collections import deque as _deque
from typing import Any, Callable, Deque, Dict, List, Optional, Sequence, Tuple, Union

import construct as cs

from fusd_wire.constants import _IOC, _IOC_DIRSHIFT, _IOC_NONE, _IOC_READ, _IOC_SIZESHIFT, _IOC_TYPESHIFT, _IOC_WRITE

IOC_NONE, IOC_WRITE, IOC_READ = _IOC_NONE, _IOC_WRITE, _IOC_READ
TypeLetter = Union[str, int]


def _type(t: TypeLetter) -> int:
    return ord(t) if isinstance(t, str) else int(t)


def IO(type_: TypeLetter, nr: int) -> int:
    """``_IO(type, nr)``: no argument data."""
    return _IOC(_IOC_NONE, _type(type_), nr, 0)


def IOR(type_: TypeLetter, nr: int, size: int) -> int:
    """``_IOR(type, nr, size)``: the device writes ``size`` bytes back to the caller."""
    return _IOC(_IOC_READ, _type(type_), nr, size)


def IOW(type_: TypeLetter, nr: int, size: int) -> int:
    """``_IOW(type, nr, size)``: the caller passes ``size`` bytes in."""
    return _IOC(_IOC_WRITE, _type(type_), nr, size)


def IOWR(type_: TypeLetter, nr: int, size: int) -> int:
    """``_IOWR(type, nr, size)``: ``size`` bytes in, then ``size`` bytes out."""
    return _IOC(_IOC_READ | _IOC_WRITE, _type(type_), nr, size)


def ioc_dir(cmd: int) -> int:
    """``_IOC_DIR(cmd)``: IOC_NONE, IOC_WRITE, IOC_READ or both."""
    return (cmd >> _IOC_DIRSHIFT) & 0x3


def ioc_size(cmd: int) -> int:
    """``_IOC_SIZE(cmd)``: the argument size the number encodes."""
    return (cmd >> _IOC_SIZESHIFT) & 0x3FFF


def ioc_type(cmd: int) -> int:
    """``_IOC_TYPE(cmd)``."""
    return (cmd >> _IOC_TYPESHIFT) & 0xFF


def ioc_nr(cmd: int) -> int:
    """``_IOC_NR(cmd)``."""
    return cmd & 0xFF


# ====================================================================== declared arguments
#
# A device may describe an ioctl's argument with a ``construct`` schema instead of
# handling raw bytes.  The runtime then copies the argument in and out itself:
# on FUSE through the kernel's restricted ``_IOC_SIZE`` copy, on CUSE through the
# FUSE_IOCTL_RETRY protocol, chasing the pointers the schema declares.  This is
# the part of the module the session calls; nothing here runs for read/write.


#: directions of an argument or of a pointed-to buffer, seen from the caller
IN, OUT, INOUT = "in", "out", "inout"
_DIRECTIONS = (IN, OUT, INOUT)
#: the kernel's caps on one unrestricted ioctl (``FUSE_IOCTL_MAX_IOV``; CUSE's 32 pages per direction)
MAX_IOV = 256
MAX_BYTES = 32 * 4096

Length = Any  # a field name of the same struct, an int, or a callable(container) -> int


class Pointer(cs.Adapter):  # type: ignore[misc]
    """A pointer field: 8 bytes holding an address in the *caller's* memory.

    ``length`` says how much it points to: the name of another field of the same
    struct, an int, or ``callable(container) -> int``.  With ``target=None`` the
    pointer addresses ``length`` bytes (the device sees ``bytes``/``bytearray``);
    with a fixed-size ``target`` schema it addresses an array of ``length``
    elements (the device sees a list of decoded elements), whose own pointers are
    followed in further rounds.  ``direction`` is IN (caller -> device), OUT
    (device -> caller) or INOUT.  Only the CUSE transport can follow pointers.
    """

    def __init__(self, length: Length, target: Optional[cs.Construct] = None, direction: str = INOUT) -> None:
        super().__init__(cs.Int64ul)
        if direction not in _DIRECTIONS:
            raise ValueError(f"Pointer direction must be one of {_DIRECTIONS}, not {direction!r}")
        self.length = length
        self.direction = direction
        self.target = target
        self.target_layout: Optional[_Layout] = None
        if target is not None:
            self.target_layout = _Layout(target, what="Pointer target")
            if self.target_layout.flex is not None:
                raise ValueError("a Pointer target must be fixed-size (no Flex array)")
            if self.target_layout.pointers and direction == OUT:
                raise ValueError("a Pointer with direction OUT cannot point to elements that hold pointers: "
                                 "their addresses would never be read")

    def _decode(self, obj: int, context: Any, path: Any) -> int:
        return obj

    def _encode(self, obj: int, context: Any, path: Any) -> int:
        return obj


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
        self.item_layout = _Layout(item, what="Flex item")
        if self.item_layout.flex is not None:
            raise ValueError("a Flex item must be fixed-size")

    def _parse(self, stream: Any, context: Any, path: Any) -> Any:
        n = _resolve(self.count, context)
        return cs.ListContainer(self.item._parsereport(stream, context, path) for _ in range(n))

    def _build(self, obj: Any, stream: Any, context: Any, path: Any) -> Any:
        for item in obj:
            self.item._build(item, stream, context, path)
        return obj

    def _sizeof(self, context: Any, path: Any) -> int:
        raise cs.SizeofError("a Flex array has no fixed size", path=path)


def _resolve(length: Length, container: Any) -> int:
    if isinstance(length, int):
        return length
    if callable(length):
        return int(length(container))
    return int(container[length])


class _Layout:
    """What the runtime needs to know about a schema: its size, pointer fields, flex tail."""

    __slots__ = ("schema", "size", "pointers", "flex", "header", "is_struct")

    def __init__(self, schema: cs.Construct, what: str = "ioctl argument") -> None:
        self.schema = schema
        self.pointers: List[Tuple[str, Pointer]] = []
        self.flex: Optional[Tuple[str, Flex]] = None
        self.header = schema
        self.is_struct = isinstance(schema, cs.Struct)
        if self.is_struct:
            subcons = list(schema.subcons)
            for i, sc in enumerate(subcons):
                inner = sc.subcon if isinstance(sc, cs.Renamed) else sc
                if isinstance(inner, Pointer):
                    self.pointers.append((sc.name, inner))
                elif isinstance(inner, Flex):
                    if i != len(subcons) - 1:
                        raise ValueError(f"{what}: a Flex array must be the struct's last field ({sc.name!r} is not)")
                    self.flex = (sc.name, inner)
                    self.header = cs.Struct(*subcons[:-1])
        try:
            self.size = self.header.sizeof()
        except cs.SizeofError as exc:
            raise ValueError(f"{what}: the schema must have a fixed size (or a fixed header and a Flex tail): "
                             f"{exc}") from None

    def zero(self) -> Any:
        """A decoded all-zero value (what an OUT argument starts as)."""
        return self.schema.parse(bytes(self.size)) if self.flex is None else \
            self._with_flex(self.header.parse(bytes(self.size)), [])

    def _with_flex(self, head: Any, items: List[Any]) -> Any:
        head[self.flex[0]] = cs.ListContainer(items)  # type: ignore[index]
        return head

    def flex_count(self, head: Any) -> int:
        return _resolve(self.flex[1].count, head)  # type: ignore[index]

    def encode(self, value: Any, addrs: Dict[str, int]) -> bytes:
        """Build ``value`` with its pointer fields put back to the caller's addresses."""
        if not self.is_struct:
            return self.schema.build(value)
        d = dict(value)
        d.update(addrs)
        if self.flex is None:
            return self.schema.build(d)
        name, flex = self.flex
        items = d.pop(name, None) or []
        d.pop("_io", None)
        return self.header.build(d) + b"".join(flex.item.build(it) for it in items)


class Arg:
    """Declares an ioctl argument: a construct ``schema`` and its ``direction``.

    ``direction`` is IN (``_IOW``: the caller passes it), OUT (``_IOR``: the
    device fills it) or INOUT (``_IOWR``); None takes it from the command
    number (required for tty-style numbers like ``0x5401`` that encode none).
    A struct with Pointer fields or a Flex tail is always copied in as well:
    its addresses and counts must be read.  ``schema=None`` declares an ioctl
    without argument data (the device still sees ``ctx.ioctl_arg``).
    """

    def __init__(self, schema: Optional[cs.Construct], direction: Optional[str] = None) -> None:
        if direction is not None and direction not in _DIRECTIONS:
            raise ValueError(f"direction must be one of {_DIRECTIONS} or None, not {direction!r}")
        self.schema = schema
        self.direction = direction
        self.layout = _Layout(schema) if schema is not None else None

    @property
    def chases(self) -> bool:
        """True if copying this argument needs more than one fixed-size copy (CUSE only)."""
        return self.layout is not None and (bool(self.layout.pointers) or self.layout.flex is not None)

    def bind(self, cmd: int, handler: Optional[str] = None) -> IoctlSpec:
        """This argument for command ``cmd``: checks the number against the schema."""
        cmd = int(cmd) & 0xFFFFFFFF
        direction = self.direction
        size = ioc_size(cmd)
        if self.layout is None:
            return IoctlSpec(cmd, self, IN, handler)
        if direction is None:
            d = ioc_dir(cmd)
            if d == IOC_NONE:
                raise ValueError(f"ioctl {cmd:#x} encodes no direction (a tty-style number?): "
                                 f"declare it with direction=IN, OUT or INOUT")
            direction = {IOC_WRITE: IN, IOC_READ: OUT}.get(d, INOUT)
        if size and size != self.layout.size:
            raise ValueError(f"ioctl {cmd:#x} encodes a {size}-byte argument but its schema is "
                             f"{self.layout.size} bytes{' (without the Flex tail)' if self.layout.flex else ''}")
        if self.chases and direction == OUT:
            direction = INOUT  # the addresses / counts must be read first
        return IoctlSpec(cmd, self, direction, handler)


class IoctlSpec:
    """One declared ioctl of a device: command, argument, direction, handler method."""

    __slots__ = ("cmd", "arg", "layout", "direction", "handler")

    def __init__(self, cmd: int, arg: Arg, direction: str, handler: Optional[str]) -> None:
        self.cmd, self.arg, self.layout, self.direction, self.handler = cmd, arg, arg.layout, direction, handler

    def restricted_problem(self) -> Optional[str]:
        """Why this declaration cannot work on the FUSE transport, or None if it can."""
        cmd = self.cmd
        if self.layout is None:
            return None
        if self.arg.chases:
            what = "a pointer field" if self.layout.pointers else "a variable-length (Flex) tail"
            return (f"ioctl {cmd:#x}: its argument has {what}; the FUSE transport only copies _IOC_SIZE(cmd) "
                    f"bytes at the argument address and cannot follow it. Serve this device with CuseServer "
                    f"(unrestricted ioctls) or declare a fixed struct")
        if ioc_size(cmd) == 0:
            return (f"ioctl {cmd:#x} encodes no argument size (a tty-style number); the FUSE transport copies "
                    f"only _IOC_SIZE(cmd) bytes, so its {self.layout.size}-byte argument cannot reach the device. "
                    f"Serve this device with CuseServer")
        d = ioc_dir(cmd)
        if self.direction in (IN, INOUT) and not d & IOC_WRITE:
            return f"ioctl {cmd:#x} is not _IOW/_IOWR: the FUSE kernel copies nothing in for it"
        if self.direction in (OUT, INOUT) and not d & IOC_READ:
            return f"ioctl {cmd:#x} is not _IOR/_IOWR: the FUSE kernel copies nothing out for it"
        return None

    def __repr__(self) -> str:
        return f"<IoctlSpec {self.cmd:#x} {self.direction} {self.handler or 'ioctl'}>"


def ioctl(cmd: int, schema: Optional[cs.Construct] = None, direction: Optional[str] = None
          ) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorate a Device method as the handler of ``cmd`` with a declared argument.

    ::

        import construct as cs
        from fusd_runtime import Device, ioctl
        from fusd_runtime.ioctl import IOR

        rtc_time = cs.Struct(*(name / cs.Int32sl for name in (         # struct rtc_time
            "tm_sec", "tm_min", "tm_hour", "tm_mday", "tm_mon", "tm_year", "tm_wday", "tm_yday", "tm_isdst")))
        RTC_RD_TIME = IOR("p", 9, rtc_time.sizeof())

        class Rtc(Device):
            @ioctl(RTC_RD_TIME, rtc_time)
            def read_time(self, ctx, tm):      # tm: a zeroed Container (OUT)
                tm.tm_hour = 12
                return tm                      # copied out to the caller

    The method gets ``(ctx, value)``: the decoded argument (IN/INOUT), or a
    zero-filled one to fill (OUT).  It returns the value to copy out (or None:
    ``value`` as modified), an int ioctl result, a ``(result, value)`` pair, or
    defers (``ctx.defer()``, then ``handle.reply(value)``).  Mistakes in the
    declaration raise here, when the class is defined.
    """
    spec_arg = Arg(schema, direction)
    spec_arg.bind(cmd)  # check now

    def deco(fn: Callable[..., Any]) -> Callable[..., Any]:
        fn.__fusd_ioctl__ = (int(cmd), spec_arg)  # type: ignore[attr-defined]
        return fn
    return deco


_TABLE_ATTR = "_fusd_ioctl_table"
_CLASS_TABLES: Dict[type, Dict[int, IoctlSpec]] = {}


def ioctl_table(device: Any) -> Dict[int, IoctlSpec]:
    """The declared ioctls of ``device``: ``@ioctl`` methods plus its ``ioctls`` mapping (cached)."""
    table = device.__dict__.get(_TABLE_ATTR) if hasattr(device, "__dict__") else None
    if table is not None:
        return table
    cls = type(device)
    base = _CLASS_TABLES.get(cls)
    if base is None:
        base = {}
        for klass in reversed(cls.__mro__):
            for name, member in vars(klass).items():
                decl = getattr(member, "__fusd_ioctl__", None)
                if decl is not None:
                    cmd, arg = decl
                    base[cmd & 0xFFFFFFFF] = arg.bind(cmd, name)
        _CLASS_TABLES[cls] = base
    table = dict(base)
    for cmd, arg in (getattr(device, "ioctls", None) or {}).items():
        if not isinstance(arg, Arg):
            arg = Arg(arg)  # a bare schema
        table[int(cmd) & 0xFFFFFFFF] = arg.bind(cmd)
    try:
        device.__dict__[_TABLE_ATTR] = table
    except (AttributeError, TypeError):
        pass
    return table


def check_ioctls(device: Any, transport: str) -> Dict[int, IoctlSpec]:
    """Validate ``device``'s declared ioctls for ``transport`` ("fuse" refuses what needs CUSE)."""
    table = ioctl_table(device)
    if transport == "fuse":
        for spec in table.values():
            problem = spec.restricted_problem()
            if problem is not None:
                raise ValueError(f"device {type(device).__name__}: {problem}")
    return table


# ---------------------------------------------------------------------- calling the device
class IoctlRetry:
    """Answer FUSE_IOCTL_RETRY: copy these ``(address, length)`` ranges in / out and ask again.

    The declared-argument machinery produces these; a device with raw bytes
    ioctls on CUSE may return one itself (libfuse style) and see the copied-in
    bytes, concatenated, in the next call's ``arg``.
    """

    __slots__ = ("in_iovs", "out_iovs")

    def __init__(self, in_iovs: Sequence[Tuple[int, int]], out_iovs: Sequence[Tuple[int, int]]) -> None:
        if len(in_iovs) + len(out_iovs) > MAX_IOV:
            raise OSError(_errno.EINVAL, f"an ioctl can name at most {MAX_IOV} memory ranges "
                                         f"({len(in_iovs)} in + {len(out_iovs)} out asked)")
        if sum(n for _, n in in_iovs) > MAX_BYTES or sum(n for _, n in out_iovs) > MAX_BYTES:
            raise OSError(_errno.EINVAL, f"an ioctl can copy at most {MAX_BYTES} bytes each way")
        self.in_iovs = list(in_iovs)
        self.out_iovs = list(out_iovs)

    def __repr__(self) -> str:
        return f"<IoctlRetry in={self.in_iovs} out={self.out_iovs}>"


def call_declared(spec: IoctlSpec, ctx: Any, value: Any, out_size: int) -> Any:
    """Run the device's handler for a declared ioctl with the decoded ``value``."""
    if spec.handler is not None:
        return getattr(ctx.device, spec.handler)(ctx, value)
    return ctx.device.ioctl(ctx, spec.cmd, value, out_size)


def split_result(result: Any, value: Any) -> Tuple[int, Any]:
    """``(ioctl result, value to copy out)`` from what a declared handler returned."""
    if result is None:
        return 0, value
    if isinstance(result, bool) or not isinstance(result, (int, tuple)):
        return 0, result
    if isinstance(result, int):
        return result, value
    res, val = result
    return int(res), val


def restricted_decode(spec: IoctlSpec, data: bytes) -> Any:
    """The decoded argument on the FUSE transport (the kernel copied ``_IOC_SIZE`` bytes in)."""
    layout = spec.layout
    if layout is None:
        return None
    if spec.direction == OUT:
        return layout.zero()
    if len(data) < layout.size:
        raise OSError(_errno.EINVAL, f"ioctl {spec.cmd:#x}: {len(data)} bytes copied in, schema needs {layout.size}")
    return layout.schema.parse(data)


def restricted_encoder(spec: IoctlSpec, value: Any) -> Callable[[Any], Any]:
    """Turns the handler's result into the ``(result, bytes)`` the session replies with (FUSE)."""
    def encode(result: Any) -> Any:
        res, val = split_result(result, value)
        if spec.layout is None or spec.direction == IN:
            return res
        return res, spec.layout.encode(val, {})
    return encode


# ---------------------------------------------------------------------- the unrestricted protocol
class _Region:
    """One range of the caller's memory: the argument itself or what a pointer addresses."""

    __slots__ = ("addr", "length", "kind", "layout", "direction", "path", "count", "addrs", "data")

    def __init__(self, addr: int, length: int, kind: str, layout: Optional[_Layout], direction: str,
                 path: Tuple[Any, ...], count: int = 0) -> None:
        self.addr, self.length, self.kind, self.layout = addr, length, kind, layout
        self.direction, self.path, self.count = direction, path, count
        self.addrs: Any = {}  # struct: {field: address}; array: [{field: address}, ...]
        self.data = b""  # the bytes copied in (for padding INOUT results)


def _get(obj: Any, path: Tuple[Any, ...]) -> Any:
    for key in path:
        obj = obj[key]
    return obj


def _set(obj: Any, path: Tuple[Any, ...], value: Any) -> None:
    _get(obj, path[:-1])[path[-1]] = value


class Plan:
    """The outcome of one round: either a retry (``retry``) or the decoded value and its out regions."""

    __slots__ = ("retry", "value", "regions", "out_regions")

    def __init__(self) -> None:
        self.retry: Optional[IoctlRetry] = None
        self.value: Any = None
        self.regions: List[_Region] = []
        self.out_regions: List[_Region] = []


def plan_unrestricted(spec: IoctlSpec, arg: int, data: bytes, out_size: int) -> Plan:
    """Decide one FUSE_IOCTL_RETRY round from what the kernel copied in (``data``).

    Stateless: the memory ranges are recomputed every round, breadth first from
    the argument, from the bytes copied in so far (which are exactly the in
    ranges of the previous retry, in order).  A range whose bytes are missing is
    asked for; its own pointers wait for the next round.  When every in range is
    present and the out ranges are the ones the kernel prepared (``out_size``),
    the value is complete and the device can be called.
    """
    plan = Plan()
    layout = spec.layout
    if layout is None:
        if out_size or data:
            plan.retry = IoctlRetry([], [])
        return plan
    top = _Region(arg, layout.size, "struct", layout, spec.direction, ())
    queue: Deque[_Region] = _deque([top])
    in_iovs: List[Tuple[int, int]] = []
    out_iovs: List[Tuple[int, int]] = []
    offset = 0
    complete = True
    value: Any = None
    while queue:
        r = queue.popleft()
        plan.regions.append(r)
        reads = r.direction != OUT
        parsed: Any = None
        if reads:
            rl = r.layout
            if r.kind == "struct" and rl is not None and rl.flex is not None and complete \
                    and len(data) - offset >= rl.size:
                head = rl.header.parse(data[offset:offset + rl.size])
                r.count = rl.flex_count(head)
                r.length = rl.size + r.count * rl.flex[1].item_layout.size
            if complete and len(data) - offset >= r.length:
                r.data = data[offset:offset + r.length]
                offset += r.length
                parsed = _parse_region(r, queue)
            else:
                complete = False
            in_iovs.append((r.addr, r.length))
        else:
            parsed = _zero_region(r)
        if r.direction != IN:
            out_iovs.append((r.addr, r.length))
            plan.out_regions.append(r)
        if r is top:
            value = parsed
        elif parsed is not None and value is not None:
            _set(value, r.path, parsed)
    if not complete or offset != len(data) or sum(n for _, n in out_iovs) != out_size:
        plan.retry = IoctlRetry(in_iovs, out_iovs)
        return plan
    plan.value = value
    return plan


def _parse_region(r: _Region, queue: Deque[_Region]) -> Any:
    """Decode a region's bytes and queue the regions its pointers address."""
    if r.kind == "bytes":
        return bytes(r.data) if r.direction == IN else bytearray(r.data)
    layout = r.layout
    assert layout is not None
    if r.kind == "struct":
        if layout.flex is None:
            value = layout.schema.parse(r.data)
        else:
            name, flex = layout.flex
            value = layout.header.parse(r.data[:layout.size])
            isz = flex.item_layout.size
            items = [flex.item.parse(r.data[layout.size + i * isz:layout.size + (i + 1) * isz])
                     for i in range(r.count)]
            value[name] = cs.ListContainer(items)
        r.addrs = _queue_pointers(layout, value, r.path, queue)
        return value
    # an array of fixed-size elements
    isz = layout.size
    items = cs.ListContainer()
    r.addrs = []
    for i in range(r.count):
        item = layout.schema.parse(r.data[i * isz:(i + 1) * isz])
        items.append(item)
        r.addrs.append(_queue_pointers(layout, item, r.path + (i,), queue) if layout.pointers else {})
    return items


def _queue_pointers(layout: _Layout, value: Any, path: Tuple[Any, ...], queue: Deque[_Region]) -> Dict[str, int]:
    addrs: Dict[str, int] = {}
    for name, ptr in layout.pointers:
        addr = int(value[name])
        n = _resolve(ptr.length, value)
        if n < 0:
            raise OSError(_errno.EINVAL, f"negative length {n} for pointer field {name!r}")
        addrs[name] = addr
        tl = ptr.target_layout
        nbytes = n if tl is None else n * tl.size
        if addr == 0 or nbytes == 0:
            value[name] = (b"" if ptr.direction == IN else bytearray()) if tl is None else cs.ListContainer()
            continue
        value[name] = None  # filled when its region is read (or zeroed, OUT)
        queue.append(_Region(addr, nbytes, "bytes" if tl is None else "array", tl, ptr.direction,
                             path + (name,), n))
    return addrs


def _zero_region(r: _Region) -> Any:
    if r.kind == "bytes":
        return bytearray(r.length)
    assert r.layout is not None
    if r.kind == "struct":
        return r.layout.zero()
    return cs.ListContainer(r.layout.zero() for _ in range(r.count))


def unrestricted_encoder(plan: Plan) -> Callable[[Any], Any]:
    """Turns the handler's result into ``(result, bytes for the out ranges, in order)`` (CUSE)."""
    def encode(result: Any) -> Any:
        res, val = split_result(result, plan.value)
        if not plan.out_regions:
            return res
        chunks: List[bytes] = []
        last = len(plan.out_regions) - 1
        for i, r in enumerate(plan.out_regions):
            v = val if not r.path else _get(val, r.path)
            if r.kind == "bytes":
                raw = bytes(v if v is not None else b"")
            elif r.kind == "struct":
                raw = r.layout.encode(v, r.addrs)  # type: ignore[union-attr]
            else:
                addrs = r.addrs or [{}] * len(v)
                raw = b"".join(r.layout.encode(e, a) for e, a in zip(v, addrs))  # type: ignore[union-attr]
            if len(raw) > r.length:
                where = "the argument" if not r.path else "field " + ".".join(map(str, r.path))
                raise ValueError(f"ioctl result for {where} is {len(raw)} bytes; the caller's memory holds {r.length}")
            if len(raw) < r.length and i != last:
                # later ranges follow in the same copy: keep what the caller had (INOUT) or zeros
                raw += r.data[len(raw):r.length] if len(r.data) == r.length else bytes(r.length - len(raw))
            chunks.append(raw)
        return res, b"".join(chunks)
    return encode


def emulate_restricted(cmd: int, arg: int, data: bytes, out_size: int) -> Optional[IoctlRetry]:
    """For an undeclared command on CUSE: the retry that copies ``_IOC_SIZE`` bytes like FUSE would.

    None when the data is already there (or the number encodes no size: the
    device then sees no data and ``ctx.ioctl_arg`` as the raw argument).
    """
    size = ioc_size(cmd)
    d = ioc_dir(cmd)
    if size == 0 or d == IOC_NONE or arg == 0:
        return None
    want_in = size if d & IOC_WRITE else 0
    want_out = size if d & IOC_READ else 0
    if len(data) == want_in and out_size == want_out:
        return None
    return IoctlRetry([(arg, size)] if want_in else [], [(arg, size)] if want_out else [])
