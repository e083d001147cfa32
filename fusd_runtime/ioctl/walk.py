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
from typing import Any, Callable, List, Optional, Tuple

from .codec import Record
from .declare import IoctlSpec, split_result
from .retry import IoctlRetry
from .schema import IN, INOUT, OUT

_TOP, _BYTES, _ARRAY = 0, 1, 2


class _Out:
    """One region the result is copied to, in the order of the out ranges."""

    __slots__ = ("kind", "holder", "name", "path", "length", "codec", "spans", "data", "count")

    def __init__(self, kind: int, holder: Any, name: Optional[str], path: Tuple[Any, ...], length: int, codec: Any,
                 spans: Any, data: Any, count: int) -> None:
        self.kind, self.holder, self.name, self.path, self.length = kind, holder, name, path, length
        self.codec, self.spans, self.data, self.count = codec, spans, data, count


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
        addr = getattr(h, s.name)
        d = s.direction(h)
        if d is None:
            setattr(h, s.name, None)
            continue
        if d != IN and d != OUT and d != INOUT:
            raise ValueError(f"{s.what}: the direction function returned {d!r} (IN, OUT, INOUT or None)")
        n = s.length(h)
        if n <= 0:
            if n < 0:
                raise OSError(_errno.EINVAL, f"{s.what}: negative length {n}")
            setattr(h, s.name, (b"" if d == IN else bytearray()) if s.elem is None else [])
            continue
        if not addr:
            if s.optional:
                setattr(h, s.name, None)
                continue
            raise OSError(_errno.EFAULT, f"{s.what}: NULL pointer with length {n}")
        elem = s.elem
        queue.append((h, s, addr, n, n if elem is None else n * elem.size, d, base + s.path))


def plan_unrestricted(spec: IoctlSpec, arg: int, data: bytes, out_size: int) -> Plan:
    """Decide one FUSE_IOCTL_RETRY round from what the kernel copied in (``data``).

    Raises OSError(EFAULT) for a NULL pointer with a nonzero length that is not
    ``optional``, EINVAL for a negative length, ENOMEM for more than the kernel
    copies in one ioctl (see ``retry.py``).
    """
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
    off = 0
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
        outs.append(_Out(_TOP, None, None, (), length, codec, spans, data[:length] if spec.reads else b"", count))
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
                outs.append(_Out(_BYTES if elem is None else _ARRAY, holder, slot.name, path, nbytes, elem, spans,
                                 rdata, n))
    if not complete or off != ndata or out_total != out_size:
        plan.retry = IoctlRetry(in_iovs, out_iovs)
        plan.outs = []
        return plan
    plan.value = value
    return plan


def _addresses(codec: Any, raw: Any, offset: int = 0) -> Any:
    """The caller's pointer values of a struct, from the bytes it copied in (to write them back unchanged)."""
    if not codec.slots or raw is None or len(raw) < offset + codec.size:
        return None
    orig = codec.decode(raw, offset)
    return {s.path: _get(orig, s.path) for s in codec.slots}


def _encode_region(o: _Out, v: Any) -> bytes:
    if isinstance(v, (bytes, bytearray, memoryview)):
        return bytes(v)
    codec = o.codec
    if o.kind == _BYTES:
        if v is None:
            return b""
        raise ValueError(f"field {'.'.join(map(str, o.path))}: expected bytes, got {type(v).__name__}")
    if o.kind == _TOP:
        flex = codec.flex
        raw = codec.encode(v, _addresses(codec, o.data))
        if flex is not None:
            fname, _, item = flex
            items = _get(v, (fname,)) if v is not None else None
            raw += b"".join(item.encode(e) for e in (items or ()))
        return raw
    if v is None:
        v = []
    esz = codec.size
    return b"".join(codec.encode(e, _addresses(codec, o.data, k * esz)) for k, e in enumerate(v))


def _select(o: _Out, raw: bytes) -> bytes:
    """Only the out fields' bytes (``out_fields``), in range order."""
    spans = o.spans
    if o.kind == _TOP:
        size = o.codec.size
        return b"".join(raw[size:o.length] if n < 0 else raw[off:off + n] for off, n in spans)
    esz = o.codec.size
    return b"".join(raw[k * esz + off:k * esz + off + n] for k in range(o.count) for off, n in spans)


def unrestricted_encoder(plan: Plan) -> Callable[[Any], Any]:
    """Turns the handler's result into ``(result, bytes for the out ranges, in order)`` (CUSE).

    A region's result longer than the caller's memory is an error (ValueError:
    EIO, logged); a shorter one is padded with what the caller had (INOUT) or
    zeros (OUT), except in the last range, where the copy just stops.
    """
    def encode(result: Any) -> Any:
        res, val = split_result(result, plan.value)
        outs = plan.outs
        if not outs:
            return res
        same = val is plan.value
        chunks: List[bytes] = []
        last = len(outs) - 1
        for i, o in enumerate(outs):
            if o.kind == _TOP:
                v = val
            elif same:
                v = getattr(o.holder, o.name)  # type: ignore[arg-type]
            else:
                v = _get(val, o.path)
            raw = _encode_region(o, v)
            if len(raw) > o.length:
                where = "the argument" if not o.path else "field " + ".".join(map(str, o.path))
                raise ValueError(f"ioctl result for {where} is {len(raw)} bytes; the caller's memory holds {o.length}")
            if o.spans is not None:
                raw = _select(o, raw.ljust(o.length, b"\0"))
            elif len(raw) < o.length and i != last:
                # later ranges follow in the same copy: keep what the caller had (INOUT) or zeros
                d = o.data
                raw += d[len(raw):o.length] if d is not None and len(d) == o.length else bytes(o.length - len(raw))
            chunks.append(raw)
        return res, b"".join(chunks) if len(chunks) > 1 else chunks[0]
    return encode
