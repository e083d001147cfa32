"""The loopback kernel: test a device through the real session with no kernel, no root, no /dev/fuse.

- ``LoopbackKernel`` (``kernel.py``): the kernel's side of one FUSE or CUSE
  connection over a SOCK_SEQPACKET socketpair, with the kernel's rules; what the
  session writes is checked in ``incoming.py``; ``requests.py`` holds the types.
- ``LoopbackFile`` (``file.py``, ``opening.py``, ``ioctl.py``): an open file's system
  calls (open, read, write, ioctl with pointer chasing, poll with notifications,
  fsync, close).
- ``Memory``/``Region`` (``memory.py``): the caller's buffers ioctls copy from and to.
- ``Channel`` (``channel.py``): the socketpair itself (replay uses it too).

Used by ``fusd_runtime.testing`` (the pytest plugin) and ``fusd_runtime.replay``.
"""

from .channel import Channel
from .file import LoopbackFile
from .kernel import Credentials, LoopbackError, LoopbackKernel, LoopbackTimeout, Violation
from .memory import Memory, Region

__all__ = ["Channel", "Credentials", "LoopbackError", "LoopbackFile", "LoopbackKernel", "LoopbackTimeout",
           "Memory", "Region", "Violation"]
