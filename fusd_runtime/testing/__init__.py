"""fusd's test kit: serve a device for one test, on the real kernel or on the loopback kernel.

- ``serve()`` / ``ServedDevice`` (``served.py``): serve one device, open it, wait for
  clients, bind it at a hard-coded path for subprocesses, decode its trace.
- ``DeviceFile`` (``client.py``): one client API (read/write/ioctl/poll/...) over a real
  file descriptor and a loopback file, so a test body runs on both.
- ``plugin.py``: the pytest plugin (fixtures ``fusd_device``, ``fusd_backend``; marker
  ``fusd``; the protocol trace of a failing test), installed as the ``pytest11`` entry
  point ``fusd``.
- ``nsbind.py``: ``python -m fusd_runtime.testing.nsbind SRC:DST -- CMD``.

See docs/testing.md.
"""

from .client import Buffer, Call, DeviceFile
from .served import PathBinding, ServedDevice, Unavailable, choose, serve

__all__ = ["Buffer", "Call", "DeviceFile", "PathBinding", "ServedDevice", "Unavailable", "choose", "serve"]
