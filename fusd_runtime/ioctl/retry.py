"""FUSE_IOCTL_RETRY: the reply that names ranges of the caller's memory, and the kernel's limits on it.

The limits and errnos are the kernel's (``fs/fuse/ioctl.c``, ``fuse_do_ioctl``):
at most ``FUSE_IOCTL_MAX_IOV`` = 256 ranges in, out, and in + out; the in ranges
together, and the out ranges together, at most ``fc->max_pages`` pages — for
CUSE always the default 32 (``fuse_conn_init``; CUSE_INIT negotiates no
max_pages), so 128 KiB each way.  Beyond either the kernel answers the caller
ENOMEM.  We refuse the same requests with the same errno before sending them,
so the device's author gets a message saying which limit (the kernel says only
ENOMEM), and a declared ioctl never asks the kernel for what it would refuse.
"""

from __future__ import annotations

import errno as _errno
from typing import List, Optional, Sequence, Tuple

from .numbers import IOC_NONE, IOC_READ, IOC_WRITE, ioc_dir, ioc_size

#: the kernel's caps on one unrestricted ioctl: ``FUSE_IOCTL_MAX_IOV`` ranges ...
MAX_IOV = 256
#: ... and CUSE's 32 pages (``FUSE_DEFAULT_MAX_PAGES_PER_REQ``) of data each way
MAX_BYTES = 32 * 4096


class IoctlRetry:
    """Answer FUSE_IOCTL_RETRY: copy these ``(address, length)`` ranges in / out and ask again.

    The declared-argument machinery produces these; a device with raw bytes
    ioctls on CUSE may return one itself (libfuse style) and see the copied-in
    bytes, concatenated, in the next call's ``arg`` (and ``out_size`` the out
    ranges' total).  More ranges or bytes than the kernel takes raise
    ``OSError(ENOMEM)``, the kernel's own answer to such a retry.
    """

    __slots__ = ("in_iovs", "out_iovs")

    def __init__(self, in_iovs: Sequence[Tuple[int, int]], out_iovs: Sequence[Tuple[int, int]]) -> None:
        self.in_iovs: List[Tuple[int, int]] = in_iovs if in_iovs.__class__ is list else list(in_iovs)  # type: ignore
        self.out_iovs: List[Tuple[int, int]] = out_iovs if out_iovs.__class__ is list else list(out_iovs)  # type: ignore
        problem = retry_problem(self.in_iovs, self.out_iovs)
        if problem is not None:
            raise OSError(_errno.ENOMEM, problem)

    def __repr__(self) -> str:
        return f"<IoctlRetry in={self.in_iovs} out={self.out_iovs}>"


def retry_problem(in_iovs: Sequence[Tuple[int, int]], out_iovs: Sequence[Tuple[int, int]]) -> Optional[str]:
    """Why the kernel would refuse this retry with ENOMEM, or None."""
    n_in, n_out = len(in_iovs), len(out_iovs)
    if n_in + n_out > MAX_IOV:
        return f"an ioctl can name at most {MAX_IOV} memory ranges ({n_in} in + {n_out} out asked)"
    if n_in:
        total = 0
        for _, n in in_iovs:
            total += n
        if total > MAX_BYTES:
            return f"an ioctl can copy at most {MAX_BYTES} bytes in ({total} asked)"
    if n_out:
        total = 0
        for _, n in out_iovs:
            total += n
        if total > MAX_BYTES:
            return f"an ioctl can copy at most {MAX_BYTES} bytes out ({total} asked)"
    return None


def emulate_restricted(cmd: int, arg: int, data: bytes, out_size: int) -> Optional[IoctlRetry]:
    """For an undeclared command on CUSE: the retry that copies ``_IOC_SIZE`` bytes like FUSE would.

    Only on the first round (nothing copied yet): after it — or after a retry the
    device asked for itself — the device sees what was copied.  None when the
    number encodes no size or direction (the device then sees no data and
    ``ctx.ioctl_arg`` as the raw argument).  A NULL ``arg`` is asked for like any
    address: the kernel answers EFAULT, as FUSE's restricted copy does.
    """
    if data or out_size:
        return None
    size = ioc_size(cmd)
    d = ioc_dir(cmd)
    if size == 0 or d == IOC_NONE:
        return None
    return IoctlRetry([(arg, size)] if d & IOC_WRITE else [], [(arg, size)] if d & IOC_READ else [])
