"""Calling a declared handler: the result conventions, and the FUSE (restricted) path in one function.

On FUSE the kernel already copied ``_IOC_SIZE(cmd)`` bytes in, so a declared
command is: decode, call the handler, encode.  :func:`_restricted_caller`
generates that as one function per declaration (``IoctlSpec.call_restricted``),
so a declared fixed-size ioctl costs about what a hand-written ``ioctl()`` does.
"""

from __future__ import annotations

import errno as _errno
from types import CoroutineType
from typing import TYPE_CHECKING, Any, Callable, Dict, Tuple

if TYPE_CHECKING:  # pragma: no cover
    from .declare import IoctlSpec


def call_declared(spec: IoctlSpec, ctx: Any, value: Any, out_size: int) -> Any:
    """Run the device's handler for a declared ioctl with the decoded ``value``."""
    if spec.value_arg:
        value = ctx.ioctl_arg
    elif spec.codec is None:  # a Sized family member of a size that is no whole number of items
        raise OSError(_errno.EINVAL, "ioctl size is not a whole number of elements")
    if spec.handler is not None:
        return getattr(ctx.device, spec.handler)(ctx, value)
    return ctx.device.ioctl(ctx, spec.cmd, value, out_size)


def split_result(result: Any, value: Any) -> Tuple[int, Any]:
    """``(ioctl result, value to copy out)`` from what a declared handler returned."""
    if result is None:
        return 0, value
    cls = result.__class__
    if cls is int:
        return result, value
    if cls is tuple:
        res, val = result
        return int(res), val
    if isinstance(result, bool) or not isinstance(result, (int, tuple)):
        return 0, result
    if isinstance(result, int):
        return int(result), value
    res, val = result
    return int(res), val


def _restricted_caller(spec: IoctlSpec) -> Callable[[Any, bytes, int, Dict[int, Any]], Any]:
    """``call(ctx, data, out_size, pending)``: decode, run the handler, encode — one function per spec (FUSE).

    The common case (a struct filled in place, nothing but the value to copy
    out) packs the record straight back and returns bytes, which the session
    replies with on its fast path.  A deferred call (a handle, or an ``async def``
    handler's coroutine, which the session then runs) leaves its encoder in
    ``pending[ctx.unique]`` for the answer.
    """
    from ..device import DEFER, ReplyHandle  # the device API; it imports nothing of ioctl

    codec, name, cmd = spec.codec, spec.handler, spec.cmd
    if codec is None:
        def call_value(ctx: Any, data: bytes, out_size: int, pending: Dict[int, Any]) -> Any:
            result = call_declared(spec, ctx, None, out_size)
            encode = restricted_encoder(spec, None, data)
            if result is DEFER or result.__class__ is ReplyHandle or result.__class__ is CoroutineType:
                pending[ctx.unique] = encode
                return result
            return encode(result)
        return call_value
    if not codec.compiled:
        return _generic_restricted_caller(spec, DEFER, ReplyHandle)
    # Generated per spec, like the codec: no call per step, the record packed straight back.
    ns = dict(codec.ns)
    ns.update(_spec=spec, _encoder=restricted_encoder, _DEFER=DEFER, _ReplyHandle=ReplyHandle, _OSError=OSError,
              _EINVAL=_errno.EINVAL, _Coroutine=CoroutineType)
    if spec.reads:
        get_value = (f"    if len(data) < {codec.size}:\n"
                     f"        raise _OSError(_EINVAL, 'ioctl {cmd:#x}: ' + str(len(data)) + "
                     f"' bytes copied in, schema needs {codec.size}')\n"
                     f"    value = {codec.src_decode.replace('DATA', 'data')}\n")
    else:
        get_value = f"    value = {codec.src_zero}\n"
    handler = f"ctx.device.{name}(ctx, value)" if name is not None and name.isidentifier() else \
        f"getattr(ctx.device, {name!r})(ctx, value)" if name is not None else \
        f"ctx.device.ioctl(ctx, {cmd}, value, out_size)"
    fast = ""
    if spec.writes and spec.out_spans is None and codec.src_pack is not None:
        fast = ("    if result is None or result is value:\n"
                "        try:\n"
                f"            return {codec.src_pack.replace('VALUE', 'value')}\n"
                "        except Exception:\n"
                "            pass\n")
    src = ("def call(ctx, data, out_size, pending):\n" + get_value +
           f"    result = {handler}\n" + fast +
           "    encode = _encoder(_spec, value, data)\n"
           "    if result is _DEFER or result.__class__ is _ReplyHandle or result.__class__ is _Coroutine:\n"
           "        pending[ctx.unique] = encode\n"
           "        return result\n"
           "    return encode(result)\n")
    exec(src, ns)  # noqa: S102 - generated from the validated declaration
    return ns["call"]  # type: ignore[no-any-return]


def _generic_restricted_caller(spec: IoctlSpec, DEFER: Any, ReplyHandle: Any) -> Any:
    """The same as the generated caller, for schemas construct serves (no generated code)."""
    def call(ctx: Any, data: bytes, out_size: int, pending: Dict[int, Any]) -> Any:
        value = restricted_decode(spec, data)
        result = call_declared(spec, ctx, value, out_size)
        encode = restricted_encoder(spec, value, data)
        if result is DEFER or result.__class__ is ReplyHandle or result.__class__ is CoroutineType:
            pending[ctx.unique] = encode
            return result
        return encode(result)
    return call


def restricted_decode(spec: IoctlSpec, data: bytes) -> Any:
    """The decoded argument on the FUSE transport (the kernel copied ``_IOC_SIZE`` bytes in)."""
    codec = spec.codec
    if codec is None:
        if not spec.value_arg:
            raise OSError(_errno.EINVAL, "ioctl size is not a whole number of elements")
        return None
    if not spec.reads:
        return codec.zero()
    if len(data) < codec.size:
        raise OSError(_errno.EINVAL, f"ioctl {spec.cmd:#x}: {len(data)} bytes copied in, schema needs {codec.size}")
    return codec.decode(data)


def restricted_encoder(spec: IoctlSpec, value: Any, data: bytes = b"") -> Callable[[Any], Any]:
    """Turns the handler's result into the ``(result, bytes)`` the session replies with (FUSE).

    ``data`` is what the kernel copied in: with ``out_fields`` the bytes between
    out fields are the caller's own (or zeros for an ``_IOR`` number), and the
    reply stops after the last out field (the kernel copies only that prefix).
    """
    codec = spec.codec
    if codec is None or not spec.writes:
        def result_only(result: Any) -> Any:
            return split_result(result, value)[0]
        return result_only
    spans = spec.out_spans
    encode = codec.encode

    def encode_result(result: Any) -> Any:
        res, val = split_result(result, value)
        raw = bytes(val) if isinstance(val, (bytes, bytearray, memoryview)) else encode(val)
        if spans is not None:
            base = bytearray(data[:spec.out_end].ljust(spec.out_end, b"\0"))
            for off, n in spans:
                base[off:off + n] = raw[off:off + n]
            raw = bytes(base)
        return raw if res == 0 else (res, raw)  # bytes alone take the session's fast reply path
    return encode_result
