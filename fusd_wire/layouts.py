"""Struct layouts as a given protocol minor (and negotiated INIT flags) sees them.

Structs only ever grew at their tail, so an old layout is a *prefix* of the 7.45
layout in ``schemas.py``.  This module holds the one table of those sizes (from
the header's ``FUSE_COMPAT_*`` constants and its changelog) and cuts prefixes
from the full schemas, for construct and for the fast path alike.
"""

from __future__ import annotations

import functools
from typing import Dict, Tuple

import construct as cs

from . import constants as C
from .fastpath import FastStruct
from .schemas import STRUCTS

#: struct name -> ((first minor with the next size, size before it), ...), ascending.
#: A size of 0 means the struct is not sent at all below that minor.
COMPAT_SIZES: Dict[str, Tuple[Tuple[int, int], ...]] = {
    "fuse_init_out": ((5, C.FUSE_COMPAT_INIT_OUT_SIZE), (23, C.FUSE_COMPAT_22_INIT_OUT_SIZE)),
    "fuse_init_in": ((36, 16),),  # 7.36: flags2 and reserved fields
    "fuse_entry_out": ((9, C.FUSE_COMPAT_ENTRY_OUT_SIZE),),
    "fuse_attr_out": ((9, C.FUSE_COMPAT_ATTR_OUT_SIZE),),
    "fuse_direntplus": (),
    "fuse_write_in": ((9, C.FUSE_COMPAT_WRITE_IN_SIZE),),
    # Not here: fuse_read_in, fuse_getattr_in and fuse_lk_in also grew in 7.9, but a kernel
    # that speaks 7.9+ sends them full size whatever minor the daemon negotiated (seen live:
    # GETATTR 56 B and READ 80 B at negotiated 7.8); only kernels older than 7.9 sent less.
    "fuse_mknod_in": ((12, C.FUSE_COMPAT_MKNOD_IN_SIZE),),
    "fuse_create_in": ((12, 8),),  # before 7.12 CREATE sent a fuse_open_in
    "fuse_statfs_out": ((4, C.FUSE_COMPAT_STATFS_SIZE),),
}

#: Before 7.16 FUSE_IOCTL_UNRESTRICTED retries carried raw ``struct iovec``
#: (native pointer and size_t).  On a 64-bit daemon that has the same 16-byte layout
#: as ``fuse_ioctl_iovec``; it is a separate schema so a trace says which it was.
iovec = cs.Struct("iov_base" / cs.Int64ul, "iov_len" / cs.Int64ul)


def struct_size(name: str, minor: int, flags: int = 0) -> int:
    """The size of struct ``name`` on the wire at protocol ``minor`` with INIT ``flags``."""
    full = STRUCTS[name].sizeof()
    if name == "fuse_setxattr_in" and not flags & C.InitFlags.FUSE_SETXATTR_EXT:
        return C.FUSE_COMPAT_SETXATTR_IN_SIZE
    for first_minor, size in COMPAT_SIZES.get(name, ()):
        if minor < first_minor:
            return size
    return full


def truncate(schema: cs.Struct, size: int, name: str = "") -> cs.Struct:
    """The prefix of ``schema`` that is ``size`` bytes long, cut at field boundaries.

    Nested structs are cut inside (``fuse_entry_out`` at 7.8 ends inside its ``attr``).
    """
    if size == schema.sizeof():
        return schema
    out = []
    left = size
    for sc in schema.subcons:
        if left <= 0:
            break
        n = sc.sizeof()
        if n <= left:
            out.append(sc)
            left -= n
            continue
        inner = sc.subcon if isinstance(sc, cs.Renamed) else sc
        if not isinstance(inner, cs.Struct):
            raise AssertionError(f"{name}: {size} bytes does not end on a field boundary")
        out.append(sc.name / truncate(inner, left, name))
        left = 0
    if left:
        raise AssertionError(f"{name}: {size} bytes is larger than the struct")
    return cs.Struct(*out)


def layout(name: str, minor: int = C.FUSE_KERNEL_MINOR_VERSION, flags: int = 0) -> cs.Struct:
    """The construct schema of struct ``name`` as sent at ``minor`` with INIT ``flags``."""
    return _layout(name, minor, _relevant_flags(name, flags))


@functools.cache
def _layout(name: str, minor: int, flags: int) -> cs.Struct:
    if name == "fuse_ioctl_iovec" and minor < 16:
        return iovec
    return truncate(STRUCTS[name], struct_size(name, minor, flags), name)


@functools.cache
def fast_layout(name: str, minor: int = C.FUSE_KERNEL_MINOR_VERSION, flags: int = 0) -> FastStruct:
    """The fast codec of struct ``name`` at ``minor`` with INIT ``flags`` (derived, cached)."""
    return FastStruct(name, layout(name, minor, _relevant_flags(name, flags)))


def _relevant_flags(name: str, flags: int) -> int:
    # Only setxattr_in depends on flags; keep the cache small for the rest.
    return flags & C.InitFlags.FUSE_SETXATTR_EXT if name == "fuse_setxattr_in" else 0
