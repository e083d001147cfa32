"""``ioctl(2)`` on a loopback file: ``fs/fuse/ioctl.c`` ``fuse_do_ioctl``, step by step.

Restricted (FUSE files, and CUSE without CUSE_UNRESTRICTED_IOCTL): the in and
out ranges are ``{arg, _IOC_SIZE(cmd)}`` by ``_IOC_DIR(cmd)``, decided by the
kernel; a FUSE_IOCTL_RETRY answer is EIO.

Unrestricted (CUSE): the first request carries no data (``in_size`` =
``out_size`` = 0); a RETRY answer names the caller's memory to copy in and
out (``fuse_ioctl_iovec``\\s, ``struct iovec`` before 7.16, same 16 bytes on a
64-bit kernel) and the kernel asks again with it, as often as the device wants:
that is how pointers in an argument are followed.  The checks are the kernel's:
more than ``FUSE_IOCTL_MAX_IOV`` ranges, or ranges longer than ``max_pages``
pages in all, are ENOMEM; an iovec array whose size is not ``count * 16`` is
EIO; copying from or to memory that is not mapped is EFAULT; a final answer
with more data than ``out_size`` is EIO; ENOSYS becomes ENOTTY
(``fuse_send_ioctl``).  A negative ``result`` is the ioctl's error.

The caller's memory is ``memory.Memory`` (buffers the client allocated): the
copies are real, from and to those buffers.
"""

from __future__ import annotations

import errno
from typing import TYPE_CHECKING, List, Tuple

from fusd_wire import FAST
from fusd_wire import constants as C

from ..ioctl import IOC_READ, IOC_WRITE, ioc_dir, ioc_size

if TYPE_CHECKING:  # pragma: no cover
    from .file import LoopbackFile

OP = C.fuse_opcode
_IOCTL_OUT = FAST.fuse_ioctl_out.struct
_IOVEC = FAST.fuse_ioctl_iovec.struct
PAGE_SIZE = 4096
Ranges = List[Tuple[int, int]]


def _verify(ranges: Ranges, max_pages: int) -> None:
    """``fuse_verify_ioctl_iov``: the ranges together fit in ``max_pages`` pages, else ENOMEM."""
    left = max_pages * PAGE_SIZE
    for _, n in ranges:
        if n > left:
            raise OSError(errno.ENOMEM, f"ioctl ranges exceed {max_pages} pages")
        left -= n


def do_ioctl(f: LoopbackFile, cmd: int, arg: int) -> int:
    """One ioctl on ``f`` with the raw argument ``arg`` (an address or a value); its result."""
    kernel = f.kernel
    cmd &= 0xFFFFFFFF
    unrestricted = kernel.transport == "cuse" and kernel.unrestricted_ioctl
    flags = int(C.IoctlFlags.FUSE_IOCTL_UNRESTRICTED) if unrestricted else 0
    in_iovs: Ranges = []
    out_iovs: Ranges = []
    if not unrestricted:
        size, d = ioc_size(cmd), ioc_dir(cmd)
        if d & IOC_WRITE:
            in_iovs = [(arg, size)]
        if d & IOC_READ:
            out_iovs = [(arg, size)]
    ioctl_in = kernel.codec.fast("fuse_ioctl_in")
    while True:
        in_size = sum(n for _, n in in_iovs)
        out_size = sum(n for _, n in out_iovs)
        room = max(out_size, PAGE_SIZE)  # "out data can be used either for actual out data or iovs"
        if -(-max(in_size, room) // PAGE_SIZE) > kernel.max_pages:
            raise OSError(errno.ENOMEM, f"an ioctl of {max(in_size, room)} bytes exceeds {kernel.max_pages} pages")
        data = b"".join(kernel.memory.copy_from_user(base, n) for base, n in in_iovs)  # EFAULT
        body = ioctl_in.pack(f.fh, flags, cmd, arg & 0xFFFFFFFFFFFFFFFF, in_size, out_size) + data
        err, payload = f.request(OP.FUSE_IOCTL, body, fixed=_IOCTL_OUT.size, var_max=room,
                                 describe=f"IOCTL {cmd:#x}")
        if err == -errno.ENOSYS:
            err = -errno.ENOTTY
        if err:
            raise OSError(-err, f"ioctl {cmd:#x}: {errno.errorcode.get(-err, '?')}")
        result, oflags, n_in, n_out = _IOCTL_OUT.unpack_from(payload)
        rest = payload[_IOCTL_OUT.size:]
        if oflags & C.IoctlFlags.FUSE_IOCTL_RETRY:
            if not unrestricted:
                raise OSError(errno.EIO, "FUSE_IOCTL_RETRY in a restricted ioctl")
            if n_in > C.FUSE_IOCTL_MAX_IOV or n_out > C.FUSE_IOCTL_MAX_IOV or n_in + n_out > C.FUSE_IOCTL_MAX_IOV:
                raise OSError(errno.ENOMEM, f"{n_in} + {n_out} ioctl ranges (at most {C.FUSE_IOCTL_MAX_IOV})")
            if (n_in + n_out) * _IOVEC.size != len(rest):
                raise OSError(errno.EIO, f"RETRY names {n_in + n_out} ranges in {len(rest)} bytes")
            iovs = [_IOVEC.unpack_from(rest, i * _IOVEC.size) for i in range(n_in + n_out)]
            in_iovs, out_iovs = iovs[:n_in], iovs[n_in:]
            _verify(in_iovs, kernel.max_pages)
            _verify(out_iovs, kernel.max_pages)
            continue
        if len(rest) > out_size:
            raise OSError(errno.EIO, f"the ioctl answered {len(rest)} bytes, {out_size} can be copied out")
        pos = 0
        for base, n in out_iovs:
            if pos >= len(rest):
                break
            chunk = rest[pos:pos + n]
            kernel.memory.copy_to_user(base, chunk)  # EFAULT
            pos += len(chunk)
        if result < 0:
            raise OSError(-result, f"ioctl {cmd:#x}: {errno.errorcode.get(-result, '?')}")
        return int(result)
