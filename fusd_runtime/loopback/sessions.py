"""Building a real runtime session on the loopback channel: the one place that knows the session's API.

Everything the loopback kernel and replay need from ``fusd_runtime.session``:

- the constructors, as the servers call them: ``FuseSession(fd, registry,
  mountpoint, readers=, recorder=, on_error=)`` and ``CuseSession(device,
  devname, fd=, readers=, recorder=, on_error=)``;
- ``start_readers()`` and ``stop_readers(timeout)``; ``Device.session`` set as a
  server sets it (``notify_poll``/``open_count`` go through it);
- ``wake_reader()``, which a stopping session calls to make a blocked reader
  read one more request: the real transports provoke a LOOKUP or an OPEN from
  the kernel; here the kernel's end sends a request itself (``wake``).

FUSE sessions get one reader: extra FUSE readers clone ``/dev/fuse``
(``FUSE_DEV_IOC_CLONE``), which a socket cannot.  CUSE readers share the fd,
so several are possible there.
"""

from __future__ import annotations

import os
from typing import Any, Callable, Dict, List, Optional

from fusd_wire import constants as C

from ..device import Device
from ..ioctl import check_ioctls
from ..registry import Registry

#: The mount point a loopback FUSE session believes it serves (it never touches it).
MOUNTPOINT = "<loopback>"


def fuse_session(fd: int, devices: Dict[str, Device], attrs: Dict[str, Dict[str, int]], *,
                 wake: Callable[[], None], recorder: Any = None,
                 errors: Optional[List[BaseException]] = None) -> Any:
    """A ``FuseSession`` serving ``devices`` (name -> device) on ``fd``, not started."""
    from ..fusefs import FuseSession

    registry = Registry(os.geteuid(), os.getegid())
    for name, device in devices.items():
        check_ioctls(device, "fuse")
        a = attrs[name]
        registry.add(name, device, a["mode"], a["uid"], a["gid"])
    cls = type("LoopbackFuseSession", (FuseSession,), {"wake_reader": lambda self: wake()})
    session = cls(fd, registry, MOUNTPOINT, readers=1, recorder=recorder,
                  on_error=errors.append if errors is not None else None)
    for name, device in devices.items():
        device.name = name
        device.session = session
    return session


def cuse_session(fd: int, device: Device, devname: str, *, wake: Callable[[], None], recorder: Any = None,
                 errors: Optional[List[BaseException]] = None, readers: int = 1) -> Any:
    """A ``CuseSession`` serving ``device`` as ``/dev/<devname>`` on ``fd``, not started."""
    from ..cuse import CuseSession

    check_ioctls(device, "cuse")
    cls = type("LoopbackCuseSession", (CuseSession,), {"wake_reader": lambda self: wake()})
    session = cls(device, devname, fd=fd, readers=readers, recorder=recorder,
                  on_error=errors.append if errors is not None else None)
    device.name = devname
    device.session = session
    return session


def detach(devices: List[Device]) -> None:
    """The devices are no longer served (as a server leaves them after stop)."""
    for device in devices:
        device.session = None


#: The opcode a loopback kernel sends to wake a stopping reader: any request the
#: session answers without a device; STATFS on the root is harmless on both transports.
WAKE_OPCODE = int(C.fuse_opcode.FUSE_STATFS)
