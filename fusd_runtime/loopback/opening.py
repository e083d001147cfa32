"""``open(2)`` on the loopback kernel: ``fuse_send_open`` and ``cuse_open``, with the VFS checks before them.

FUSE: LOOKUP of each path component from the root (ENOENT, ENOTDIR, EISDIR for a
directory), the ``default_permissions`` check of ``generic_permission`` on the
entry's mode/uid/gid (owner, group or other bits; root passes), SETATTR size 0
first for O_TRUNC without FUSE_ATOMIC_O_TRUNC, then OPEN with ``f_flags`` minus
O_CREAT/O_EXCL/O_NOCTTY (and minus O_TRUNC unless atomic).  CUSE: the node's mode
checked the same way, OPEN on nodeid 0.  O_LARGEFILE is added as ``open(2)`` adds
it on a 64-bit kernel (``force_o_largefile``).  An ENOSYS answer to OPEN means no
open is needed (``no_open``: fh 0 and no RELEASE), as ``fuse_do_open`` takes it.
"""

from __future__ import annotations

import errno
import os
import stat
from typing import TYPE_CHECKING, Tuple

from fusd_wire import constants as C

from .file import _OPEN_OUT, FO, O_LARGEFILE, OP, LoopbackFile, _OpenFile

if TYPE_CHECKING:  # pragma: no cover
    from .kernel import Credentials, LoopbackKernel

_ACCMODE = os.O_ACCMODE


def _permitted(attrs: Tuple[int, int, int], flags: int, creds: Credentials) -> bool:
    """``generic_permission`` for MAY_READ/MAY_WRITE: owner, group, other bits; root passes."""
    mode, uid, gid = attrs
    if creds.uid == 0:
        return True
    acc = flags & _ACCMODE
    want = {os.O_RDONLY: 4, os.O_WRONLY: 2, os.O_RDWR: 6}.get(acc, 6)
    if flags & os.O_TRUNC:
        want |= 2
    if creds.uid == uid:
        bits = (mode >> 6) & 7
    elif creds.gid == gid or gid in creds.groups:
        bits = (mode >> 3) & 7
    else:
        bits = mode & 7
    return bits & want == want


def open_file(kernel: LoopbackKernel, name: str, flags: int, creds: Credentials) -> LoopbackFile:
    """``open(2)`` of device ``name`` (see the module doc); O_LARGEFILE is added as on a 64-bit kernel."""
    from .requests import LoopbackError

    flags |= O_LARGEFILE
    if kernel.transport == "cuse":
        if name and name not in kernel.devices and name != kernel.devname:
            raise LoopbackError(errno.ENOENT, f"no such device: {name!r} (this connection serves "
                                              f"{kernel.devname!r})")
        (devname, _), = kernel.devices.items()
        a = kernel.attrs[devname]
        if not _permitted((a["mode"], a["uid"], a["gid"]), flags, creds):
            raise PermissionError(errno.EACCES, f"permission denied: /dev/{kernel.devname}")
        nodeid, atomic_trunc = 0, False
    else:
        nodeid, attr = _lookup(kernel, name, creds)
        mode = attr[0]
        if stat.S_ISDIR(mode):
            raise IsADirectoryError(errno.EISDIR, f"is a directory: {name!r}")
        if not _permitted(attr, flags, creds):
            raise PermissionError(errno.EACCES, f"permission denied: {name!r}")
        atomic_trunc = bool(kernel.init_flags & C.InitFlags.FUSE_ATOMIC_O_TRUNC)
        if flags & os.O_TRUNC and not atomic_trunc:
            _truncate(kernel, nodeid, creds, name)
    open_in = flags & ~(os.O_CREAT | os.O_EXCL | os.O_NOCTTY)
    if not atomic_trunc:
        open_in &= ~os.O_TRUNC
    fh, open_flags = 0, int(FO.FOPEN_KEEP_CACHE)
    if not kernel.no_open:
        body = kernel.codec.fast("fuse_open_in").encode({"flags": open_in})
        err, out = kernel.call(OP.FUSE_OPEN, nodeid, body, fixed=kernel.codec.fast("fuse_open_out").size,
                               creds=creds, describe=f"OPEN {name or kernel.devname}")
        if err == -errno.ENOSYS:
            kernel.no_open = True
        elif err:
            raise OSError(-err, f"open {name or kernel.devname}: {errno.errorcode.get(-err, '?')}")
        else:
            fh, open_flags = _OPEN_OUT.unpack_from(out.ljust(_OPEN_OUT.size, b"\0"))[:2]
    of = _OpenFile(fh, nodeid, open_flags, kernel.new_kh())
    return LoopbackFile(kernel, of, flags, creds, name or (kernel.devname or ""))


def _lookup(kernel: LoopbackKernel, name: str, creds: Credentials) -> Tuple[int, Tuple[int, int, int]]:
    """LOOKUP every component of ``name`` from the root: the node id and its (mode, uid, gid)."""
    nodeid = C.FUSE_ROOT_ID
    parts = [p for p in name.split("/") if p]
    if not parts:
        raise IsADirectoryError(errno.EISDIR, "the mount's root is a directory")
    entry = kernel.codec.fast("fuse_entry_out")
    attr_at = entry.fields.index("attr.mode")
    for part in parts:
        raw = part.encode("utf-8", "surrogateescape")
        err, out = kernel.call(OP.FUSE_LOOKUP, nodeid, raw + b"\0", fixed=entry.size, creds=creds,
                               describe=f"LOOKUP {part}")
        if err:
            raise OSError(-err, f"{name}: {os.strerror(-err)}")
        values = entry.unpack_from(out)
        nodeid = values[0]
        if nodeid == 0:
            raise FileNotFoundError(errno.ENOENT, f"{name}: negative entry")
        mode, uid, gid = values[attr_at], values[attr_at + 2], values[attr_at + 3]
        if part is not parts[-1] and not stat.S_ISDIR(mode):
            raise NotADirectoryError(errno.ENOTDIR, f"{name}: not a directory")
    return nodeid, (mode, uid, gid)


def _truncate(kernel: LoopbackKernel, nodeid: int, creds: Credentials, name: str) -> None:
    setattr_in = kernel.codec.fast("fuse_setattr_in")
    body = setattr_in.encode({"valid": int(C.FattrFlags.FATTR_SIZE), "size": 0})
    err, _ = kernel.call(OP.FUSE_SETATTR, nodeid, body, fixed=kernel.codec.fast("fuse_attr_out").size,
                         creds=creds, describe=f"SETATTR {name}")
    if err:
        raise OSError(-err, f"truncate {name}: {os.strerror(-err)}")
