"""The FUSD-compatible procedural API: FUSD's 2001 interface, in Python.

FUSD programs registered a device with a table of callbacks and ran a loop::

    from fusd_runtime import fusd

    def do_open(file):
        file.private_data = b"hello\\n"     # what this open file has left to read
        return 0

    def do_read(file, length, offset):   # offset is 0: a device is a stream
        data, file.private_data = file.private_data[:length], file.private_data[length:]
        return data                       # b"": end of file; or -errno, or -FUSD_NOREPLY

    handle = fusd.register("hello", 0o666, {"open": do_open, "read": do_read})
    server = fusd.start()                 # fusd.run() serves until Ctrl-C instead
    print(open(fusd.path(handle)).read(), end="")
    server.stop()

Callbacks get a *file* (FUSD's ``struct fusd_file_info``: ``device_info``,
``private_data``, ``flags``, ``pid``, ``uid``, ``gid``) and return what FUSD's did:
a non-negative result (bytes for ``read``, a count for ``write``, the ioctl
result or ``(result, bytes)``, a poll mask) or ``-errno``.  Returning
``-FUSD_NOREPLY`` keeps the call pending until ``fusd_return(file, retval)``,
from any thread — a blocking read.

Differences from C FUSD, all because Python has no user buffers to fill: ``read``
returns the data instead of filling ``buffer``; ``ioctl(file, cmd, arg_bytes)``
returns the bytes to copy out; ``poll(file, events)`` replaces ``poll_diff`` and
``fusd_poll_changed(file)`` wakes pollers.
"""

from __future__ import annotations

import errno
from typing import Any, Callable, Dict, Mapping, Optional, Union

from .device import DEFER, Context, Device

#: Return ``-FUSD_NOREPLY`` from a callback to answer later with ``fusd_return``.
FUSD_NOREPLY = 0x7FFF

Ops = Union[Mapping[str, Callable[..., Any]], Any]

_server: Any = None
_handles: Dict[int, FusdDevice] = {}
_next_handle = 1


class FusdDevice(Device):
    """Adapts a FUSD callback table to the Device API."""

    #: the server the device was registered with (set by ``register``)
    fusd_server: Any

    def __init__(self, ops: Ops, device_info: Any) -> None:
        self.ops = ops
        self.device_info = device_info

    def _op(self, name: str) -> Optional[Callable[..., Any]]:
        if isinstance(self.ops, Mapping):
            return self.ops.get(name)
        return getattr(self.ops, name, None)

    def _call(self, ctx: Context, name: str, default: Any, *args: Any) -> Any:
        func = self._op(name)
        if func is None:
            return default
        result = func(ctx, *args)
        if isinstance(result, int) and not isinstance(result, bool) and result < 0:
            if result == -FUSD_NOREPLY:
                ctx._fusd_pending = ctx.defer()
                return DEFER
            raise OSError(-result, errno.errorcode.get(-result, "error"))
        return result

    def open(self, ctx: Context) -> Any:
        ctx.device_info = self.device_info
        ctx.private_data = None
        result = self._call(ctx, "open", 0)
        return DEFER if result is DEFER else None

    def release(self, ctx: Context) -> None:
        func = self._op("close")
        if func is not None:
            func(ctx)

    def read(self, ctx: Context, size: int, offset: int) -> Any:
        if self._op("read") is None:
            raise OSError(errno.EINVAL, "no read callback")
        return self._call(ctx, "read", b"", size, offset)

    def write(self, ctx: Context, data: bytes, offset: int) -> Any:
        if self._op("write") is None:
            raise OSError(errno.EINVAL, "no write callback")
        return self._call(ctx, "write", len(data), data, offset)

    def ioctl(self, ctx: Context, cmd: int, arg: bytes, out_size: int) -> Any:
        if self._op("ioctl") is None:
            raise OSError(errno.ENOTTY, "no ioctl callback")
        return self._call(ctx, "ioctl", 0, cmd, arg)

    def poll(self, ctx: Context, events: int) -> Any:
        return self._call(ctx, "poll", super().poll(ctx, events), events)


def _default_server() -> Any:
    global _server
    if _server is None:
        from .server import Server
        _server = Server()
    return _server


def register(name: str, mode: int = 0o666, ops: Ops = None, device_info: Any = None, *,
             server: Any = None) -> int:
    """``fusd_register``: create the device ``name``; returns a handle (>0) or ``-errno``.

    The device appears under the server's directory (``server.path(name)``); the
    default server mounts a temporary directory when ``run()`` starts it.
    """
    global _next_handle
    srv = server or _default_server()
    device = FusdDevice(ops or {}, device_info)
    try:
        srv.add(device, name, mode=mode)
    except ValueError:
        return -errno.EEXIST
    handle = _next_handle
    _next_handle += 1
    _handles[handle] = device
    device.fusd_server = srv
    return handle


def unregister(handle: int) -> int:
    """``fusd_unregister``: remove the device; open files then answer ENODEV.  0 or ``-errno``."""
    device = _handles.pop(handle, None)
    if device is None:
        return -errno.EBADF
    device.fusd_server.remove(device)
    return 0


def fusd_return(file: Context, retval: Any) -> int:
    """Answer the call ``file`` deferred with ``-FUSD_NOREPLY``: data/count/mask, or ``-errno``."""
    handle = getattr(file, "_fusd_pending", None)
    if handle is None:
        return -errno.EINVAL
    file._fusd_pending = None
    if isinstance(retval, int) and not isinstance(retval, bool) and retval < 0:
        return 0 if handle.error(-retval) else -errno.EINTR
    return 0 if handle.reply(retval) else -errno.EINTR


def fusd_poll_changed(file: Context) -> None:
    """The readiness of ``file``'s device changed: pollers wake and ask again."""
    file.device.notify_poll()


def path(handle: int) -> str:
    """Where the device of ``handle`` can be opened."""
    device = _handles[handle]
    return device.fusd_server.path(device)


def start() -> Any:
    """Start serving the registered devices in the background; returns the server."""
    return _default_server().start()


def run() -> None:
    """``fusd_run``: serve until SIGINT/SIGTERM, then unmount."""
    _default_server().serve_forever()
