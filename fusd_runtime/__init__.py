"""fusd_runtime: serve Python device objects as device files (FUSE directory or CUSE /dev node).

- ``Device``, ``Context``, ``ReplyHandle``, ``DEFER``: the device author's API (``device.py``).
- ``Server``: serves devices as files of a FUSE mount (``server.py``).
- ``CuseServer``: serves each device as a real ``/dev/NAME`` node through CUSE (``cuse.py``);
  ``open_server(transport="auto")`` picks CUSE where ``cuse_available()``.
- ``ioctl``/``Arg``/``Pointer``/``Flex``: declared ioctl arguments (the ``ioctl`` package, docs/ioctl.md).
- ``fusd``: the FUSD-compatible procedural API (``register``/``unregister``/``fusd_return``).
- ``DeviceError``/``DeviceWarning``: device mistakes found when a device is added (``checks.py``).
- ``MountError``: mounting failed; ``mount.Mount`` is the mount itself (identity, ``abort()``).
"""

from .checks import DeviceError, DeviceWarning
from .cuse import CuseServer, cuse_available, open_server
from .device import (
    DEFAULT_POLLMASK,
    DEFER,
    POLLERR,
    POLLHUP,
    POLLIN,
    POLLOUT,
    POLLPRI,
    POLLRDNORM,
    POLLWRNORM,
    Context,
    Device,
    ReplyHandle,
)
from .ioctl import Arg, Flex, Pointer, ioctl
from .ioctl.schema import IN, INOUT, OUT
from .mount import MountError
from .server import Server

__all__ = [
    "DEFAULT_POLLMASK", "DEFER", "POLLERR", "POLLHUP", "POLLIN", "POLLOUT", "POLLPRI", "POLLRDNORM", "POLLWRNORM",
    "Context", "Device", "DeviceError", "DeviceWarning", "MountError", "ReplyHandle", "Server",
    "CuseServer", "cuse_available", "open_server", "IN", "INOUT", "OUT", "Arg", "Flex", "Pointer", "ioctl",
]
