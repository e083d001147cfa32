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

- the server's per-device set-up (``Server._prepare``): ``check_device`` and
  ``check_ioctls`` as at ``add()``, the device's strand (the event loop's for
  ``async def`` devices), and the ``loop.EventLoop`` the session runs timers and
  async callbacks on (``loop=``); ``on_end`` to learn that a callback raised
  SystemExit/KeyboardInterrupt.

FUSE sessions get one reader: extra FUSE readers clone ``/dev/fuse``
(``FUSE_DEV_IOC_CLONE``), which a socket cannot (and the supervisor that would add
one is the server's, which the loopback does not run).  CUSE readers share the fd,
so several are possible there.
"""

from __future__ import annotations

import os
from typing import Any, Callable, Dict, List, Optional

from fusd_wire import constants as C

from ..device import Device
from ..prepare import prepare_device
from ..registry import Registry

#: The mount point a loopback FUSE session believes it serves (it never touches it).
MOUNTPOINT = "<loopback>"


def prepare(device: Device, transport: str, loop: Any) -> None:
    """What ``Server.add`` does to a device before serving it (checks, strand): ``prepare.prepare_device``."""
    prepare_device(device, transport, loop)


def fuse_session(fd: int, devices: Dict[str, Device], attrs: Dict[str, Dict[str, int]], *,
                 wake: Callable[[], None], recorder: Any = None, errors: Optional[List[BaseException]] = None,
                 loop: Any = None, on_end: Any = None) -> Any:
    """A ``FuseSession`` serving ``devices`` (name -> device) on ``fd``, not started."""
    from ..fusefs import FuseSession

    registry = Registry(os.geteuid(), os.getegid())
    for name, device in devices.items():
        prepare(device, "fuse", loop)
        a = attrs[name]
        registry.add(name, device, a["mode"], a["uid"], a["gid"])
    cls = type("LoopbackFuseSession", (FuseSession,), {"wake_reader": lambda self: wake()})
    session = cls(fd, registry, MOUNTPOINT, readers=1, recorder=recorder,
                  on_error=errors.append if errors is not None else None, loop=loop, on_end=on_end)
    for name, device in devices.items():
        device.name = name
        device.session = session
    return session


def cuse_session(fd: int, device: Device, devname: str, *, wake: Callable[[], None], recorder: Any = None,
                 errors: Optional[List[BaseException]] = None, readers: int = 1, loop: Any = None,
                 on_end: Any = None) -> Any:
    """A ``CuseSession`` serving ``device`` as ``/dev/<devname>`` on ``fd``, not started."""
    from ..cuse import CuseSession

    prepare(device, "cuse", loop)
    cls = type("LoopbackCuseSession", (CuseSession,), {"wake_reader": lambda self: wake()})
    session = cls(device, devname, fd=fd, readers=readers, recorder=recorder,
                  on_error=errors.append if errors is not None else None, loop=loop, on_end=on_end)
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
