"""The unrestricted protocol for declared arguments: one FUSE_IOCTL_RETRY round at a time.

With CUSE_UNRESTRICTED_IOCTL every ioctl first arrives with no data; the
runtime answers FUSE_IOCTL_RETRY naming the caller's memory to copy in and
out, the kernel copies and asks again, until the device has everything.

The planner is **stateless**: each round it walks the declared schema breadth
first from the argument, consuming the copied-in bytes region by region (they
are exactly the previous retry's in ranges, in order).  A region whose bytes
are missing is asked for; what its pointers address waits for the next round.
When every in range is present and the out ranges are those the kernel
prepared (``out_size``), the value is complete and the device is called.
Because each region depends only on bytes before it, the ranges of one round
are a prefix of the next round's, and a caller that changes its memory between
rounds only costs another round.

Per region only what its direction says is copied: IN regions are never named
as out ranges (read-only memory works), OUT regions never as in ranges.  A
pointer's length and direction are evaluated on the decoded struct that holds
it, so they may depend on its other fields, element by element.
"""

from __future__ import annotations

import errno as _errno
from typing import Any, Callable, Dict, List, Optional, Tuple

from .codec import Record
from .declare import IoctlSpec
from .restricted import split_result
from .retry import MAX_BYTES, MAX_IOV, IoctlRetry
from .schema import IN, INOUT, OUT

_TOP, _BYTES, _ARRAY = 0, 1, 2


#: Where a result goes: one tuple per region copied out, in the order of the out ranges (tuples: the
#: planner makes one per OUT region every round, and an object costs five times as much).
#: (kind, holder, field name, path from the argument, length, codec, out spans, bytes copied in, count)
_Out = Tuple[int, Any, Optional[str], Tuple[Any, ...], int, Any, Any, Any, int]


class Plan:
    """The outcome of one round: a retry to send (``retry``), or the decoded value and where results go."""

    __slots__ = ("retry", "value", "outs")

    def __init__(self) -> None:
        self.retry: Optional[IoctlRetry] = None
        self.value: Any = None
        self.outs: List[_Out] = []


def _get(obj: Any, path: Tuple[Any, ...]) -> Any:
    for key in path:
        if isinstance(key, int) or isinstance(obj, dict):
            obj = obj[key]
        else:
            obj = getattr(obj, key) if isinstance(obj, Record) or not hasattr(obj, "__getitem__") else obj[key]
    return obj


def _set(holder: Any, name: str, value: Any) -> None:
    if isinstance(holder, dict):
        holder[name] = value
    else:
        setattr(holder, name, value)


def _children(root: Any, base: Tuple[Any, ...], slots: Any, queue: List[Any]) -> None:
    """Queue the regions the pointers of one decoded struct (or array element) address."""
    for s in slots:
        hp = s.holder_path
        h = root if not hp else _get(root, hp)
        name = s.name
        addr = getattr(h, name)
        dfn = s.dfn
        if dfn is None:
            d = s.dconst
        else:
            d = dfn(h)
            if d != IN and d != OUT and d != INOUT and d is not None:
                raise ValueError(f"{s.what}: the direction function returned {d!r} (IN, OUT, INOUT or None)")
        if d is None:
            setattr(h, name, None)
            continue
        lf = s.lfield
        n = getattr(h, lf) if lf is not None else (s.lconst if s.lfn is None else int(s.lfn(h)))
        if n <= 0:
            if n < 0:
                raise OSError(_errno.EINVAL, f"{s.what}: negative length {n}")
            setattr(h, name, (b"" if d == IN else bytearray()) if s.elem is None else [])
            continue
        if not addr:
            if s.optional:
                setattr(h, name, None)
                continue
            raise OSError(_errno.EFAULT, f"{s.what}: NULL pointer with length {n}")
        elem = s.elem
        queue.append((h, s, addr, n, n if elem is None else n * elem.size, d, base + s.path if base else s.path))


_new_retry = object.__new__


def _retry(in_iovs: List[Tuple[int, int]], out_iovs: List[Tuple[int, int]], in_total: int,
           out_total: int) -> IoctlRetry:
    """An IoctlRetry, the kernel's limits checked from totals the planner kept (ENOMEM beyond them)."""
    if len(in_iovs) + len(out_iovs) > MAX_IOV or in_total > MAX_BYTES or out_total > MAX_BYTES:
        return IoctlRetry(in_iovs, out_iovs)  # raises OSError(ENOMEM) saying which limit
    r = _new_retry(IoctlRetry)
    r.in_iovs, r.out_iovs = in_iovs, out_iovs
    return r  # type: ignore[no-any-return]


def plan_unrestricted(spec: IoctlSpec, arg: int, data: bytes, out_size: int) -> Plan:
    """Decide one FUSE_IOCTL_RETRY round from what the kernel copied in (``data``).

    Raises OSError(EFAULT) for a NULL pointer with a nonzero length that is not
    ``optional``, EINVAL for a negative length, ENOMEM for more than the kernel
    copies in one ioctl (see ``retry.py``).
    """
    planner = spec.planner
    if planner is None:
        planner = _planner(spec)
    return planner(arg, data, out_size)  # type: ignore[no-any-return]


def _walk(spec: IoctlSpec, arg: int, data: bytes, out_size: int) -> Plan:
    """The generic planner: a breadth-first walk over every region the schema reaches."""
    plan = Plan()
    codec = spec.codec
    if codec is None:
        if not spec.value_arg:  # a Sized family member of a size that is no whole number of items
            raise OSError(_errno.EINVAL, f"ioctl {spec.cmd:#x}: size is not a whole number of elements")
        return plan  # a value argument: nothing to copy
    in_iovs: List[Tuple[int, int]] = []
    out_iovs: List[Tuple[int, int]] = []
    outs = plan.outs
    ndata = len(data)
    complete = True
    size = length = codec.size
    off = in_total = 0
    count = 0
    flex = codec.flex
    value: Any = None
    if spec.reads:
        if ndata >= size:
            value = codec.decode(data, 0)
            off = size
            if flex is not None:
                fname, count_fn, item = flex
                count = count_fn(value)
                if count < 0:
                    raise OSError(_errno.EINVAL, f"ioctl {spec.cmd:#x}: negative Flex count {count}")
                isz = item.size
                length = size + count * isz
                if ndata >= length:
                    dec = item.decode
                    _set(value, fname, [dec(data, size + k * isz) for k in range(count)])
                    off = length
                else:
                    complete = False
        else:
            complete = False
        in_iovs.append((arg, length))
        in_total = length
    else:
        value = codec.zero()
    out_total = 0
    if spec.writes:
        spans = spec.out_spans
        if spans is None:
            out_iovs.append((arg, length))
            out_total = length
        else:
            for o, n in spans:
                if n < 0:  # the Flex tail
                    o, n = size, length - size
                out_iovs.append((arg + o, n))
                out_total += n
        outs.append((_TOP, None, None, (), length, codec, spans, data[:length] if spec.reads else b"", count))
    if value is not None and codec.slots:
        queue: List[Any] = []
        _children(value, (), codec.slots, queue)
        i = 0
        while i < len(queue):
            holder, slot, addr, n, nbytes, d, path = queue[i]
            i += 1
            elem = slot.elem
            rdata = None
            if d != OUT:
                if complete and ndata - off >= nbytes:
                    end = off + nbytes
                    if elem is None:
                        val: Any = data[off:end] if d == IN else bytearray(data[off:end])
                    else:
                        esz = elem.size
                        dec = elem.decode
                        val = [dec(data, off + k * esz) for k in range(n)]
                        if elem.slots:
                            for k, e in enumerate(val):
                                _children(e, path + (k,), elem.slots, queue)
                    if d == INOUT:
                        rdata = data[off:end]
                    off = end
                else:
                    complete = False
                    val = None
                in_iovs.append((addr, nbytes))
                in_total += nbytes
            else:
                val = bytearray(nbytes) if elem is None else [elem.zero() for _ in range(n)]
            setattr(holder, slot.name, val)
            if d != IN:
                spans = slot.out_spans
                if spans is None:
                    out_iovs.append((addr, nbytes))
                    out_total += nbytes
                else:
                    esz = elem.size
                    for k in range(n):
                        for o, m in spans:
                            a = addr + k * esz + o
                            last = out_iovs[-1] if out_iovs else None
                            if last is not None and last[0] + last[1] == a:
                                out_iovs[-1] = (last[0], last[1] + m)
                            else:
                                out_iovs.append((a, m))
                            out_total += m
                outs.append((_BYTES if elem is None else _ARRAY, holder, slot.name, path, nbytes, elem, spans, rdata,
                             n))
    if not complete or off != ndata or out_total != out_size:
        plan.retry = _retry(in_iovs, out_iovs, in_total, out_total)
        plan.outs = []
        return plan
    plan.value = value
    return plan


# ---------------------------------------------------------------------- generated planners
def _planner(spec: IoctlSpec) -> Callable[[int, bytes, int], Plan]:
    """The planner for ``spec``: generated straight-line code for the common shape, else the generic walk.

    The common shape is a struct whose pointers (its own fields) address byte
    buffers: ``spi_ioc_transfer``-like, ``sg_io_hdr``.  The generated code makes
    the same rounds as :func:`_walk` (``tests/test_ioctl_codec.py`` checks that
    on random arguments), without a queue, a call per pointer, or any branch a
    constant direction decides.
    """
    planner = spec.planner
    if planner is not None:
        return planner  # type: ignore[no-any-return]
    codec = spec.codec
    simple = (codec is not None and codec.compiled and codec.record is not None and codec.flex is None
              and spec.reads and codec.slots and all(not s.holder_path and s.elem is None for s in codec.slots))
    planner = _generate(spec) if simple else (lambda arg, data, out_size: _walk(spec, arg, data, out_size))
    spec.planner = planner
    return planner


def _generate(spec: IoctlSpec) -> Callable[[int, bytes, int], Plan]:
    codec = spec.codec
    size = codec.size
    ns: Dict[str, Any] = dict(codec.ns)
    ns.update(_Plan=Plan, _retry=_retry, _OSError=OSError, _EINVAL=_errno.EINVAL, _EFAULT=_errno.EFAULT,
              _ValueError=ValueError, _BYTES=_BYTES, _TOP=_TOP, _codec=codec, _IN=IN, _OUT=OUT, _INOUT=INOUT)
    top_out: List[str] = []
    top_total = 0
    if spec.writes:
        spans = spec.out_spans if spec.out_spans is not None else [(0, size)]
        top_out = [f"(arg + {o}, {n})" for o, n in spans]
        top_total = sum(n for _, n in spans)
    ns["_spans"] = spec.out_spans
    L = ["def plan(arg, data, out_size):",
         "    p = _Plan()",
         "    n = len(data)",
         f"    if n < {size}:",
         f"        p.retry = _retry([(arg, {size})], [{', '.join(top_out)}], {size}, {top_total})",
         "        return p",
         f"    v = {codec.src_decode.replace('DATA', 'data')}",
         f"    in_iovs = [(arg, {size})]",
         f"    in_total = {size}",
         f"    out_iovs = [{', '.join(top_out)}]",
         f"    out_total = {top_total}",
         f"    outs = [(_TOP, None, None, (), {size}, _codec, _spans, data[:{size}], 0)]" if spec.writes
         else "    outs = []",
         f"    off = {size}",
         "    complete = True"]
    for k, s in enumerate(codec.slots):
        f = s.name
        ns[f"_s{k}"] = s
        ind = "    "
        L.append(f"    a = v.{f}")
        if s.dfn is not None:
            ns[f"_d{k}"] = s.dfn
            L += [f"    d = _d{k}(v)",
                  "    if d != _IN and d != _OUT and d != _INOUT and d is not None:",
                  f"        raise _ValueError({s.what!r} + ': the direction function returned ' + repr(d))",
                  "    if d is None:",
                  f"        v.{f} = None",
                  "    else:"]
            ind = "        "
            dirs: Tuple[Any, ...] = (IN, OUT, INOUT)
        elif s.dconst is None:
            L.append(f"    v.{f} = None")
            continue
        else:
            L.append(f"    d = {s.dconst!r}")
            dirs = (s.dconst,)
        if s.lfield is not None:
            L.append(f"{ind}m = v.{s.lfield}")
        elif s.lfn is not None:
            ns[f"_l{k}"] = s.lfn
            L.append(f"{ind}m = int(_l{k}(v))")
        else:
            L.append(f"{ind}m = {s.lconst}")
        empty = "b'' if d == _IN else bytearray()" if len(dirs) > 1 else ("b''" if dirs[0] == IN else "bytearray()")
        null = f"{ind}    v.{f} = None" if s.optional else \
            f"{ind}    raise _OSError(_EFAULT, {s.what!r} + ': NULL pointer with length ' + str(m))"
        L += [f"{ind}if m <= 0:",
              f"{ind}    if m < 0:",
              f"{ind}        raise _OSError(_EINVAL, {s.what!r} + ': negative length ' + str(m))",
              f"{ind}    v.{f} = {empty}",
              f"{ind}elif not a:", null,
              f"{ind}else:"]
        i2 = ind + "    "
        body: List[str] = [f"{i2}rd = None"]
        reads = [x for x in dirs if x != OUT]
        if reads:
            cond = f"{i2}if d != _OUT:" if len(dirs) > 1 else None
            i3 = i2 + "    " if cond else i2
            val = "data[off:e] if d == _IN else bytearray(data[off:e])" if len(reads) > 1 or len(dirs) > 1 else \
                ("data[off:e]" if reads[0] == IN else "bytearray(data[off:e])")
            blk = [f"{i3}if complete and n - off >= m:",
                   f"{i3}    e = off + m",
                   f"{i3}    val = {val}"]
            if INOUT in reads:
                blk.append(f"{i3}    if d == _INOUT:" if len(dirs) > 1 else f"{i3}    if True:")
                blk.append(f"{i3}        rd = data[off:e]")
            blk += [f"{i3}    off = e",
                    f"{i3}else:",
                    f"{i3}    complete = False",
                    f"{i3}    val = None",
                    f"{i3}in_iovs.append((a, m))",
                    f"{i3}in_total += m"]
            if cond:
                body += [cond] + blk + [f"{i2}else:", f"{i2}    val = bytearray(m)"]
            else:
                body += blk
        else:
            body.append(f"{i2}val = bytearray(m)")
        body.append(f"{i2}v.{f} = val")
        writes = [x for x in dirs if x != IN]
        if writes:
            cond = f"{i2}if d != _IN:" if len(dirs) > 1 else None
            i3 = i2 + "    " if cond else i2
            blk = [f"{i3}out_iovs.append((a, m))",
                   f"{i3}out_total += m",
                   f"{i3}outs.append((_BYTES, v, {f!r}, ({f!r},), m, None, None, rd, m))"]
            body += ([cond] if cond else []) + blk
        L += body
    L += ["    if not complete or off != n or out_total != out_size:",
          "        p.retry = _retry(in_iovs, out_iovs, in_total, out_total)",
          "        return p",
          "    p.value = v",
          "    p.outs = outs",
          "    return p"]
    exec("\n".join(L) + "\n", ns)  # noqa: S102 - generated from the validated declaration
    fn = ns["plan"]
    fn.source = "\n".join(L)  # type: ignore[attr-defined]  # for debugging and the tests
    return fn  # type: ignore[no-any-return]


def _addresses(codec: Any, raw: Any, offset: int = 0) -> Any:
    """The caller's pointer values of a struct, from the bytes it copied in (to write them back unchanged)."""
    if not codec.slots or raw is None or len(raw) < offset + codec.size:
        return None
    orig = codec.decode(raw, offset)
    return {s.path: _get(orig, s.path) for s in codec.slots}


def _encode_region(o: _Out, v: Any) -> bytes:
    kind, _, _, path, _, codec, _, data, _ = o
    if isinstance(v, (bytes, bytearray, memoryview)):
        return bytes(v)
    if kind == _BYTES:
        if v is None:
            return b""
        raise ValueError(f"field {'.'.join(map(str, path))}: expected bytes, got {type(v).__name__}")
    if kind == _TOP:
        flex = codec.flex
        raw = codec.encode(v, _addresses(codec, data))
        if flex is not None:
            fname, _, item = flex
            items = _get(v, (fname,)) if v is not None else None
            raw += b"".join(item.encode(e) for e in (items or ()))
        return raw  # type: ignore[no-any-return]
    if v is None:
        v = []
    esz = codec.size
    return b"".join(codec.encode(e, _addresses(codec, data, k * esz)) for k, e in enumerate(v))


def _select(o: _Out, raw: bytes) -> bytes:
    """Only the out fields' bytes (``out_fields``), in range order."""
    kind, _, _, _, length, codec, spans, _, count = o
    if kind == _TOP:
        size = codec.size
        return b"".join(raw[size:length] if n < 0 else raw[off:off + n] for off, n in spans)
    esz = codec.size
    return b"".join(raw[k * esz + off:k * esz + off + n] for k in range(count) for off, n in spans)


def unrestricted_encoder(plan: Plan) -> Callable[[Any], Any]:
    """Turns the handler's result into ``(result, bytes for the out ranges, in order)`` (CUSE).

    A region's result longer than the caller's memory is an error (ValueError:
    EIO, logged); a shorter one is padded with what the caller had (INOUT) or
    zeros (OUT), except in the last range, where the copy just stops.
    """
    value, outs = plan.value, plan.outs
    one = outs[0] if len(outs) == 1 and outs[0][0] == _BYTES and outs[0][6] is None else None

    def encode(result: Any) -> Any:
        if result is None:
            res, val = 0, value
        elif result.__class__ is int:
            res, val = result, value
        else:
            res, val = split_result(result, value)
        if not outs:
            return res
        same = val is value
        if one is not None and same:  # the common case: one buffer filled in place (spidev's rx, a read)
            v = getattr(one[1], one[2])  # type: ignore[arg-type]
            cls = v.__class__
            if (cls is bytearray or cls is bytes) and len(v) == one[4]:
                return res, v if cls is bytes else bytes(v)
        chunks: List[bytes] = []
        last = len(outs) - 1
        for i, o in enumerate(outs):
            kind, holder, name, path, length, _, spans, data, _ = o
            if kind == _TOP:
                v = val
            elif same:
                v = getattr(holder, name)  # type: ignore[arg-type]
            else:
                v = _get(val, path)
            cls = v.__class__
            raw = v if cls is bytes else bytes(v) if cls is bytearray else _encode_region(o, v)
            n = len(raw)
            if n > length:
                where = "the argument" if not path else "field " + ".".join(map(str, path))
                raise ValueError(f"ioctl result for {where} is {n} bytes; the caller's memory holds {length}")
            if spans is not None:
                raw = _select(o, raw.ljust(length, b"\0"))
            elif n < length and i != last:
                # later ranges follow in the same copy: keep what the caller had (INOUT) or zeros
                raw += data[n:length] if data is not None and len(data) == length else bytes(length - n)
            chunks.append(raw)
        return res, b"".join(chunks) if len(chunks) > 1 else chunks[0]
    return encode
