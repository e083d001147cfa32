"""THE opcode table: one entry per opcode and per notification.

For every message it says the request parts, the reply parts (or that there is
no reply: FORGET, BATCH_FORGET, INTERRUPT, NOTIFY_REPLY) and the protocol minor
that introduced it.  Decoding, encoding, pretty printing, the trace decoder and
the runtime's fast path are all derived from this table (libfuse ``fuse_ll_ops[]``,
go-fuse ``opcode.go``).  A message's layout is written here and nowhere else.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Optional, Tuple

from . import constants as C
from .constants import fuse_notify_code as N
from .constants import fuse_opcode as O
from .parts import Array, Data, Dirents, KeyValues, Name, Part, Secctx, Struct

Parts = Tuple[Part, ...]


@dataclass(frozen=True)
class OpSpec:
    """How one opcode's request and reply look."""

    opcode: int
    name: str  # libfuse -d style: "READ"
    request: Parts
    reply: Optional[Parts]  # None: the kernel expects no reply
    since: int = 0  # protocol minor that introduced the opcode
    cuse: bool = False  # sent on /dev/cuse (besides the FUSE ones CUSE forwards)

    @property
    def has_reply(self) -> bool:
        """False for the opcodes the kernel expects no answer to (FORGET, BATCH_FORGET)."""
        return self.reply is not None

    @property
    def fixed_request(self) -> Optional[str]:
        """The kernel struct that starts the request body (the fast path's entry point)."""
        first = self.request[0] if self.request else None
        return first.struct_name if first is not None else None


@dataclass(frozen=True)
class NotifySpec:
    """How one notification (daemon -> kernel, unique 0, error = code) looks."""

    code: int
    name: str  # "POLL"
    body: Parts
    since: int = 0


# --- predicates used by the table -----------------------------------------------------------

def _getxattr_size_query(ctx) -> bool:
    """GETXATTR/LISTXATTR with size 0 ask for the size (fuse_getxattr_out), else the value."""
    req = ctx.request
    fixed = req.get("fuse_getxattr_in") if req is not None else None
    return fixed is None or fixed["size"] == 0  # no decoded request (a trace lost it): the size form


def _getxattr_value(ctx) -> bool:
    """The other form: a GETXATTR/LISTXATTR with a nonzero size gets the value (or names) itself."""
    return not _getxattr_size_query(ctx)


def _ioctl_retry(ctx) -> bool:
    """An IOCTL reply with FUSE_IOCTL_RETRY carries iovecs (unrestricted ioctls), not data."""
    return bool(ctx.parts["fuse_ioctl_out"]["flags"] & C.IoctlFlags.FUSE_IOCTL_RETRY)


def _ioctl_done(ctx) -> bool:
    """An IOCTL reply without FUSE_IOCTL_RETRY carries the output data."""
    return not _ioctl_retry(ctx)


def _legacy_secctx(ctx) -> bool:
    """7.36/7.37 appended security contexts to create-like requests; 7.38+ uses extensions."""
    return bool(ctx.flags & C.InitFlags.FUSE_SECURITY_CTX) and 36 <= ctx.minor < 38


_ENTRY = (Struct("fuse_entry_out"),)
_EMPTY: Parts = ()
_SECCTX = Secctx("secctx", when=_legacy_secctx)


def _op(opcode: O, request: Parts, reply: Optional[Parts], since: int = 0, cuse: bool = False) -> OpSpec:
    name = opcode.name[5:] if opcode.name.startswith("FUSE_") else opcode.name
    return OpSpec(int(opcode), name, tuple(request), None if reply is None else tuple(reply), since, cuse)


#: The opcode table: every request the kernel can send, by opcode number.
OPS: Dict[int, OpSpec] = {spec.opcode: spec for spec in (
    _op(O.FUSE_LOOKUP, (Name("name"),), _ENTRY),
    _op(O.FUSE_FORGET, (Struct("fuse_forget_in"),), None),
    _op(O.FUSE_GETATTR, (Struct("fuse_getattr_in"),), (Struct("fuse_attr_out"),)),
    _op(O.FUSE_SETATTR, (Struct("fuse_setattr_in"),), (Struct("fuse_attr_out"),)),
    _op(O.FUSE_READLINK, _EMPTY, (Data("target"),)),
    _op(O.FUSE_SYMLINK, (Name("name"), Name("linkname"), _SECCTX), _ENTRY),
    _op(O.FUSE_MKNOD, (Struct("fuse_mknod_in"), Name("name"), _SECCTX), _ENTRY),
    _op(O.FUSE_MKDIR, (Struct("fuse_mkdir_in"), Name("name"), _SECCTX), _ENTRY),
    _op(O.FUSE_UNLINK, (Name("name"),), _EMPTY),
    _op(O.FUSE_RMDIR, (Name("name"),), _EMPTY),
    _op(O.FUSE_RENAME, (Struct("fuse_rename_in"), Name("oldname"), Name("newname")), _EMPTY),
    _op(O.FUSE_LINK, (Struct("fuse_link_in"), Name("newname")), _ENTRY),
    _op(O.FUSE_OPEN, (Struct("fuse_open_in"),), (Struct("fuse_open_out"),), cuse=True),
    _op(O.FUSE_READ, (Struct("fuse_read_in"),), (Data("data"),), cuse=True),
    _op(O.FUSE_WRITE, (Struct("fuse_write_in"), Data("data", length=("fuse_write_in", "size"))),
        (Struct("fuse_write_out"),), cuse=True),
    _op(O.FUSE_STATFS, _EMPTY, (Struct("fuse_statfs_out"),)),
    _op(O.FUSE_RELEASE, (Struct("fuse_release_in"),), _EMPTY, cuse=True),
    _op(O.FUSE_FSYNC, (Struct("fuse_fsync_in"),), _EMPTY, cuse=True),
    _op(O.FUSE_SETXATTR, (Struct("fuse_setxattr_in"), Name("name"), Data("value", length=("fuse_setxattr_in", "size"))),
        _EMPTY),
    _op(O.FUSE_GETXATTR, (Struct("fuse_getxattr_in"), Name("name")),
        (Struct("fuse_getxattr_out", when=_getxattr_size_query), Data("value", when=_getxattr_value))),
    _op(O.FUSE_LISTXATTR, (Struct("fuse_getxattr_in"),),
        (Struct("fuse_getxattr_out", when=_getxattr_size_query), Data("names", when=_getxattr_value))),
    _op(O.FUSE_REMOVEXATTR, (Name("name"),), _EMPTY),
    _op(O.FUSE_FLUSH, (Struct("fuse_flush_in"),), _EMPTY, cuse=True),
    _op(O.FUSE_INIT, (Struct("fuse_init_in"),), (Struct("fuse_init_out"),)),
    _op(O.FUSE_OPENDIR, (Struct("fuse_open_in"),), (Struct("fuse_open_out"),)),
    _op(O.FUSE_READDIR, (Struct("fuse_read_in"),), (Dirents("dirents"),)),
    _op(O.FUSE_RELEASEDIR, (Struct("fuse_release_in"),), _EMPTY),
    _op(O.FUSE_FSYNCDIR, (Struct("fuse_fsync_in"),), _EMPTY),
    _op(O.FUSE_GETLK, (Struct("fuse_lk_in"),), (Struct("fuse_lk_out"),)),
    _op(O.FUSE_SETLK, (Struct("fuse_lk_in"),), _EMPTY),
    _op(O.FUSE_SETLKW, (Struct("fuse_lk_in"),), _EMPTY),
    _op(O.FUSE_ACCESS, (Struct("fuse_access_in"),), _EMPTY),
    _op(O.FUSE_CREATE, (Struct("fuse_create_in"), Name("name"), _SECCTX),
        (Struct("fuse_entry_out"), Struct("fuse_open_out"))),
    _op(O.FUSE_INTERRUPT, (Struct("fuse_interrupt_in"),), None, cuse=True),
    _op(O.FUSE_BMAP, (Struct("fuse_bmap_in"),), (Struct("fuse_bmap_out"),)),
    _op(O.FUSE_DESTROY, _EMPTY, _EMPTY),
    _op(O.FUSE_IOCTL, (Struct("fuse_ioctl_in"), Data("data", length=("fuse_ioctl_in", "in_size"))),
        (Struct("fuse_ioctl_out"),
         Array("in_iov", "fuse_ioctl_iovec", ("fuse_ioctl_out", "in_iovs"), when=_ioctl_retry),
         Array("out_iov", "fuse_ioctl_iovec", ("fuse_ioctl_out", "out_iovs"), when=_ioctl_retry),
         Data("data", when=_ioctl_done)), since=11, cuse=True),
    _op(O.FUSE_POLL, (Struct("fuse_poll_in"),), (Struct("fuse_poll_out"),), since=11, cuse=True),
    _op(O.FUSE_NOTIFY_REPLY,
        (Struct("fuse_notify_retrieve_in"), Data("data", length=("fuse_notify_retrieve_in", "size"))),
        None, since=15),
    _op(O.FUSE_BATCH_FORGET,
        (Struct("fuse_batch_forget_in"),
         Array("forgets", "fuse_forget_one", ("fuse_batch_forget_in", "count"))),
        None, since=16),
    _op(O.FUSE_FALLOCATE, (Struct("fuse_fallocate_in"),), _EMPTY, since=19),
    _op(O.FUSE_READDIRPLUS, (Struct("fuse_read_in"),), (Dirents("dirents", plus=True),), since=21),
    _op(O.FUSE_RENAME2, (Struct("fuse_rename2_in"), Name("oldname"), Name("newname")), _EMPTY, since=23),
    _op(O.FUSE_LSEEK, (Struct("fuse_lseek_in"),), (Struct("fuse_lseek_out"),), since=24),
    _op(O.FUSE_COPY_FILE_RANGE, (Struct("fuse_copy_file_range_in"),), (Struct("fuse_write_out"),), since=28),
    _op(O.FUSE_SETUPMAPPING, (Struct("fuse_setupmapping_in"),), _EMPTY, since=31),
    _op(O.FUSE_REMOVEMAPPING,
        (Struct("fuse_removemapping_in"),
         Array("mappings", "fuse_removemapping_one", ("fuse_removemapping_in", "count"))),
        _EMPTY, since=31),
    _op(O.FUSE_SYNCFS, (Struct("fuse_syncfs_in"),), _EMPTY, since=34),
    _op(O.FUSE_TMPFILE, (Struct("fuse_create_in"), Name("name"), _SECCTX),
        (Struct("fuse_entry_out"), Struct("fuse_open_out")), since=37),
    _op(O.FUSE_STATX, (Struct("fuse_statx_in"),), (Struct("fuse_statx_out"),), since=39),
    _op(O.FUSE_COPY_FILE_RANGE_64, (Struct("fuse_copy_file_range_in"),), (Struct("fuse_copy_file_range_out"),),
        since=43),
    _op(O.CUSE_INIT, (Struct("cuse_init_in"),), (Struct("cuse_init_out"), KeyValues("info")), cuse=True),
)}


def _notify(code: N, body: Parts, since: int = 0) -> NotifySpec:
    return NotifySpec(int(code), code.name[len("FUSE_NOTIFY_"):], tuple(body), since)


#: The notification table: every daemon -> kernel notification, by notify code.
NOTIFICATIONS: Dict[int, NotifySpec] = {spec.code: spec for spec in (
    _notify(N.FUSE_NOTIFY_POLL, (Struct("fuse_notify_poll_wakeup_out"),), since=11),
    _notify(N.FUSE_NOTIFY_INVAL_INODE, (Struct("fuse_notify_inval_inode_out"),), since=12),
    _notify(N.FUSE_NOTIFY_INVAL_ENTRY, (Struct("fuse_notify_inval_entry_out"),
                                             Name("name", length=("fuse_notify_inval_entry_out", "namelen"))),
            since=12),
    _notify(N.FUSE_NOTIFY_STORE, (Struct("fuse_notify_store_out"),
                                            Data("data", length=("fuse_notify_store_out", "size"))), since=15),
    _notify(N.FUSE_NOTIFY_RETRIEVE, (Struct("fuse_notify_retrieve_out"),), since=15),
    _notify(N.FUSE_NOTIFY_DELETE, (Struct("fuse_notify_delete_out"),
                                            Name("name", length=("fuse_notify_delete_out", "namelen"))), since=18),
    _notify(N.FUSE_NOTIFY_RESEND, (), since=40),
    _notify(N.FUSE_NOTIFY_INC_EPOCH, (), since=44),
    _notify(N.FUSE_NOTIFY_PRUNE,
            (Struct("fuse_notify_prune_out"),
             Array("nodeids", "uint64_t", ("fuse_notify_prune_out", "count"))), since=45),
)}

#: Opcodes the CUSE kernel sends on /dev/cuse (cuse.c's file operations).
CUSE_OPCODES = frozenset(op for op, spec in OPS.items() if spec.cuse)


def spec_for(opcode: int) -> Optional[OpSpec]:
    """The table entry of ``opcode``, or None if it is unknown."""
    return OPS.get(opcode)
