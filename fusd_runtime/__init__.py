"""fusd_runtime: serve Python device objects as device files (FUSE directory or CUSE /dev node).

- ``Device``, ``Context``, ``ReplyHandle``, ``DEFER``: the device author's API (``device.py``).
- ``Server``: serves devices as files of a FUSE mount (``server.py``).
- ``fusd``: the FUSD-compatible procedural API (``register``/``unregister``/``fusd_return``).
"""

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
from .mount import MountError
from .server import Server

__all__ = [
    "DEFAULT_POLLMASK", "DEFER", "POLLERR", "POLLHUP", "POLLIN", "POLLOUT", "POLLPRI", "POLLRDNORM", "POLLWRNORM",
    "Context", "Device", "MountError", "ReplyHandle", "Server",
]
