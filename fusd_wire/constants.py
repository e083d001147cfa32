"""Every constant of the FUSE/CUSE wire protocol, named as in ``fuse_kernel.h`` 7.45.

The header has two kinds of constants: C enums (``enum fuse_opcode``, ``enum
fuse_notify_code``, ``enum fuse_ext_type``) and groups of ``#define`` bits that go
into one field each (INIT flags, FOPEN_*, FUSE_IOCTL_*, ...).  Each becomes one
``IntEnum``/``IntFlag`` class here, and every member is also reachable at module
level under its header name, so ``FUSE_READ``, ``FOPEN_DIRECT_IO`` and
``FUSE_IOCTL_RETRY`` can be held against the header line by line.

This module is the only place a constant's value is written: the module-level
header names are not assignments but resolved by the module ``__getattr__`` from
the classes (PEP 562), which type checkers read as "any other attribute is an
``int``".  So ``C.FUSE_READ`` type-checks as an int, but a misspelt ``C.FUSE_RAED``
would too; code in this project uses the classes (``fuse_opcode.FUSE_READ``),
which mypy checks name by name.
"""

from __future__ import annotations

import enum
import functools
from typing import Dict, List, Type

FUSE_KERNEL_VERSION = 7
#: The protocol minor this codec implements (libfuse ``include/fuse_kernel.h``).
FUSE_KERNEL_MINOR_VERSION = 45
FUSE_ROOT_ID = 1
FUSE_MIN_READ_BUFFER = 8192
CUSE_INIT_INFO_MAX = 4096
FUSE_IOCTL_MAX_IOV = 256
FUSE_INVALID_UIDGID = 0xFFFFFFFF
#: Set in ``fuse_in_header.unique`` of a request the kernel re-sends (7.40).
FUSE_UNIQUE_RESEND = 1 << 63

# Compat sizes of structs that grew (header FUSE_COMPAT_*); used by layouts.py.
FUSE_COMPAT_ENTRY_OUT_SIZE = 120
FUSE_COMPAT_ATTR_OUT_SIZE = 96
FUSE_COMPAT_MKNOD_IN_SIZE = 8
FUSE_COMPAT_WRITE_IN_SIZE = 24
FUSE_COMPAT_STATFS_SIZE = 48
FUSE_COMPAT_SETXATTR_IN_SIZE = 8
FUSE_COMPAT_INIT_OUT_SIZE = 8
FUSE_COMPAT_22_INIT_OUT_SIZE = 24

# FUSE-over-io_uring (7.42): sizes of the two areas of ``struct fuse_uring_req_header``.
FUSE_URING_IN_OUT_HEADER_SZ = 128  # fuse_in_header (fetch) / fuse_out_header (commit)
FUSE_URING_OP_IN_OUT_SZ = 128  # the opcode's fixed request struct (in_args[0])


class fuse_opcode(enum.IntEnum):
    """``enum fuse_opcode``: the request a message carries (``fuse_in_header.opcode``)."""

    FUSE_LOOKUP = 1
    FUSE_FORGET = 2  # no reply
    FUSE_GETATTR = 3
    FUSE_SETATTR = 4
    FUSE_READLINK = 5
    FUSE_SYMLINK = 6
    FUSE_MKNOD = 8
    FUSE_MKDIR = 9
    FUSE_UNLINK = 10
    FUSE_RMDIR = 11
    FUSE_RENAME = 12
    FUSE_LINK = 13
    FUSE_OPEN = 14
    FUSE_READ = 15
    FUSE_WRITE = 16
    FUSE_STATFS = 17
    FUSE_RELEASE = 18
    FUSE_FSYNC = 20
    FUSE_SETXATTR = 21
    FUSE_GETXATTR = 22
    FUSE_LISTXATTR = 23
    FUSE_REMOVEXATTR = 24
    FUSE_FLUSH = 25
    FUSE_INIT = 26
    FUSE_OPENDIR = 27
    FUSE_READDIR = 28
    FUSE_RELEASEDIR = 29
    FUSE_FSYNCDIR = 30
    FUSE_GETLK = 31
    FUSE_SETLK = 32
    FUSE_SETLKW = 33
    FUSE_ACCESS = 34
    FUSE_CREATE = 35
    FUSE_INTERRUPT = 36
    FUSE_BMAP = 37
    FUSE_DESTROY = 38
    FUSE_IOCTL = 39
    FUSE_POLL = 40
    FUSE_NOTIFY_REPLY = 41
    FUSE_BATCH_FORGET = 42
    FUSE_FALLOCATE = 43
    FUSE_READDIRPLUS = 44
    FUSE_RENAME2 = 45
    FUSE_LSEEK = 46
    FUSE_COPY_FILE_RANGE = 47
    FUSE_SETUPMAPPING = 48
    FUSE_REMOVEMAPPING = 49
    FUSE_SYNCFS = 50
    FUSE_TMPFILE = 51
    FUSE_STATX = 52
    FUSE_COPY_FILE_RANGE_64 = 53
    # CUSE specific operations
    CUSE_INIT = 4096
    # Reserved opcodes: helpful to detect structure endian-ness
    CUSE_INIT_BSWAP_RESERVED = 1048576  # CUSE_INIT << 8
    FUSE_INIT_BSWAP_RESERVED = 436207616  # FUSE_INIT << 24


class fuse_notify_code(enum.IntEnum):
    """``enum fuse_notify_code``: a notification's code, sent in ``fuse_out_header.error``."""

    FUSE_NOTIFY_POLL = 1
    FUSE_NOTIFY_INVAL_INODE = 2
    FUSE_NOTIFY_INVAL_ENTRY = 3
    FUSE_NOTIFY_STORE = 4
    FUSE_NOTIFY_RETRIEVE = 5
    FUSE_NOTIFY_DELETE = 6
    FUSE_NOTIFY_RESEND = 7
    FUSE_NOTIFY_INC_EPOCH = 8
    FUSE_NOTIFY_PRUNE = 9


class fuse_ext_type(enum.IntEnum):
    """``enum fuse_ext_type``: ``fuse_ext_header.type``; types 0..31 are a ``fuse_secctx_header``."""

    FUSE_MAX_NR_SECCTX = 31
    FUSE_EXT_GROUPS = 32


class InitFlags(enum.IntFlag):
    """INIT request/reply flags; bits 32..63 travel in ``flags2`` (7.36, FUSE_INIT_EXT)."""

    FUSE_ASYNC_READ = 1 << 0
    FUSE_POSIX_LOCKS = 1 << 1
    FUSE_FILE_OPS = 1 << 2
    FUSE_ATOMIC_O_TRUNC = 1 << 3
    FUSE_EXPORT_SUPPORT = 1 << 4
    FUSE_BIG_WRITES = 1 << 5
    FUSE_DONT_MASK = 1 << 6
    FUSE_SPLICE_WRITE = 1 << 7
    FUSE_SPLICE_MOVE = 1 << 8
    FUSE_SPLICE_READ = 1 << 9
    FUSE_FLOCK_LOCKS = 1 << 10
    FUSE_HAS_IOCTL_DIR = 1 << 11
    FUSE_AUTO_INVAL_DATA = 1 << 12
    FUSE_DO_READDIRPLUS = 1 << 13
    FUSE_READDIRPLUS_AUTO = 1 << 14
    FUSE_ASYNC_DIO = 1 << 15
    FUSE_WRITEBACK_CACHE = 1 << 16
    FUSE_NO_OPEN_SUPPORT = 1 << 17
    FUSE_PARALLEL_DIROPS = 1 << 18
    FUSE_HANDLE_KILLPRIV = 1 << 19
    FUSE_POSIX_ACL = 1 << 20
    FUSE_ABORT_ERROR = 1 << 21
    FUSE_MAX_PAGES = 1 << 22
    FUSE_CACHE_SYMLINKS = 1 << 23
    FUSE_NO_OPENDIR_SUPPORT = 1 << 24
    FUSE_EXPLICIT_INVAL_DATA = 1 << 25
    FUSE_MAP_ALIGNMENT = 1 << 26
    FUSE_SUBMOUNTS = 1 << 27
    FUSE_HANDLE_KILLPRIV_V2 = 1 << 28
    FUSE_SETXATTR_EXT = 1 << 29
    FUSE_INIT_EXT = 1 << 30
    FUSE_INIT_RESERVED = 1 << 31
    # bits 32..63 get shifted down 32 bits into the flags2 field
    FUSE_SECURITY_CTX = 1 << 32
    FUSE_HAS_INODE_DAX = 1 << 33
    FUSE_CREATE_SUPP_GROUP = 1 << 34
    FUSE_HAS_EXPIRE_ONLY = 1 << 35
    FUSE_DIRECT_IO_ALLOW_MMAP = 1 << 36
    FUSE_PASSTHROUGH = 1 << 37
    FUSE_NO_EXPORT_SUPPORT = 1 << 38
    FUSE_HAS_RESEND = 1 << 39
    FUSE_ALLOW_IDMAP = 1 << 40
    FUSE_OVER_IO_URING = 1 << 41
    FUSE_REQUEST_TIMEOUT = 1 << 42


#: Obsolete name kept by the header for FUSE_DIRECT_IO_ALLOW_MMAP.
FUSE_DIRECT_IO_RELAX = InitFlags.FUSE_DIRECT_IO_ALLOW_MMAP


class fuse_uring_cmd(enum.IntEnum):
    """``enum fuse_uring_cmd`` (7.42): ``io_uring_sqe.cmd_op`` of an IORING_OP_URING_CMD on /dev/fuse.

    Each SQE's 80-byte command area (IORING_SETUP_SQE128) holds a ``fuse_uring_cmd_req``.
    """

    FUSE_IO_URING_CMD_INVALID = 0
    # register the request buffer and fetch a fuse request
    FUSE_IO_URING_CMD_REGISTER = 1
    # commit fuse request result and fetch next request
    FUSE_IO_URING_CMD_COMMIT_AND_FETCH = 2


class CuseInitFlags(enum.IntFlag):
    """CUSE INIT request/reply flags (``cuse_init_in.flags``/``cuse_init_out.flags``)."""

    CUSE_UNRESTRICTED_IOCTL = 1 << 0


class FattrFlags(enum.IntFlag):
    """Bitmasks for ``fuse_setattr_in.valid``."""

    FATTR_MODE = 1 << 0
    FATTR_UID = 1 << 1
    FATTR_GID = 1 << 2
    FATTR_SIZE = 1 << 3
    FATTR_ATIME = 1 << 4
    FATTR_MTIME = 1 << 5
    FATTR_FH = 1 << 6
    FATTR_ATIME_NOW = 1 << 7
    FATTR_MTIME_NOW = 1 << 8
    FATTR_LOCKOWNER = 1 << 9
    FATTR_CTIME = 1 << 10
    FATTR_KILL_SUIDGID = 1 << 11


class FopenFlags(enum.IntFlag):
    """Flags returned by OPEN/OPENDIR/CREATE in ``fuse_open_out.open_flags``."""

    FOPEN_DIRECT_IO = 1 << 0
    FOPEN_KEEP_CACHE = 1 << 1
    FOPEN_NONSEEKABLE = 1 << 2
    FOPEN_CACHE_DIR = 1 << 3
    FOPEN_STREAM = 1 << 4
    FOPEN_NOFLUSH = 1 << 5
    FOPEN_PARALLEL_DIRECT_WRITES = 1 << 6
    FOPEN_PASSTHROUGH = 1 << 7


class OpenInFlags(enum.IntFlag):
    """``fuse_open_in.open_flags`` / ``fuse_create_in.open_flags``."""

    FUSE_OPEN_KILL_SUIDGID = 1 << 0


class ReleaseFlags(enum.IntFlag):
    """``fuse_release_in.release_flags``."""

    FUSE_RELEASE_FLUSH = 1 << 0
    FUSE_RELEASE_FLOCK_UNLOCK = 1 << 1


class GetattrFlags(enum.IntFlag):
    """``fuse_getattr_in.getattr_flags``."""

    FUSE_GETATTR_FH = 1 << 0


class LkFlags(enum.IntFlag):
    """``fuse_lk_in.lk_flags``."""

    FUSE_LK_FLOCK = 1 << 0


class WriteFlags(enum.IntFlag):
    """``fuse_write_in.write_flags``."""

    FUSE_WRITE_CACHE = 1 << 0
    FUSE_WRITE_LOCKOWNER = 1 << 1
    FUSE_WRITE_KILL_SUIDGID = 1 << 2


#: Obsolete name kept by the header.
FUSE_WRITE_KILL_PRIV = WriteFlags.FUSE_WRITE_KILL_SUIDGID


class ReadFlags(enum.IntFlag):
    """``fuse_read_in.read_flags``."""

    FUSE_READ_LOCKOWNER = 1 << 1


class IoctlFlags(enum.IntFlag):
    """``fuse_ioctl_in.flags`` / ``fuse_ioctl_out.flags``."""

    FUSE_IOCTL_COMPAT = 1 << 0
    FUSE_IOCTL_UNRESTRICTED = 1 << 1
    FUSE_IOCTL_RETRY = 1 << 2
    FUSE_IOCTL_32BIT = 1 << 3
    FUSE_IOCTL_DIR = 1 << 4
    FUSE_IOCTL_COMPAT_X32 = 1 << 5


class PollFlags(enum.IntFlag):
    """``fuse_poll_in.flags``."""

    FUSE_POLL_SCHEDULE_NOTIFY = 1 << 0


class FsyncFlags(enum.IntFlag):
    """``fuse_fsync_in.fsync_flags``."""

    FUSE_FSYNC_FDATASYNC = 1 << 0


class AttrFlags(enum.IntFlag):
    """``fuse_attr.flags``."""

    FUSE_ATTR_SUBMOUNT = 1 << 0
    FUSE_ATTR_DAX = 1 << 1


class NotifyInvalEntryFlags(enum.IntFlag):
    """``fuse_notify_inval_entry_out.flags``."""

    FUSE_EXPIRE_ONLY = 1 << 0


class SetxattrFlags(enum.IntFlag):
    """``fuse_setxattr_in.setxattr_flags`` (with FUSE_SETXATTR_EXT)."""

    FUSE_SETXATTR_ACL_KILL_SGID = 1 << 0


class SetupmappingFlags(enum.IntFlag):
    """``fuse_setupmapping_in.flags``."""

    FUSE_SETUPMAPPING_FLAG_WRITE = 1 << 0
    FUSE_SETUPMAPPING_FLAG_READ = 1 << 1


# --- ioctl number encoding (asm-generic/ioctl.h), needed for FUSE_DEV_IOC_* ---
_IOC_NRBITS, _IOC_TYPEBITS, _IOC_SIZEBITS = 8, 8, 14
_IOC_NRSHIFT = 0
_IOC_TYPESHIFT = _IOC_NRSHIFT + _IOC_NRBITS
_IOC_SIZESHIFT = _IOC_TYPESHIFT + _IOC_TYPEBITS
_IOC_DIRSHIFT = _IOC_SIZESHIFT + _IOC_SIZEBITS
_IOC_NONE, _IOC_WRITE, _IOC_READ = 0, 1, 2


def _IOC(direction: int, type_: int, nr: int, size: int) -> int:
    """Build an ioctl command number the way ``asm-generic/ioctl.h`` does."""
    return (direction << _IOC_DIRSHIFT) | (type_ << _IOC_TYPESHIFT) | (nr << _IOC_NRSHIFT) | (size << _IOC_SIZESHIFT)


FUSE_DEV_IOC_MAGIC = 229
FUSE_DEV_IOC_CLONE = _IOC(_IOC_READ, FUSE_DEV_IOC_MAGIC, 0, 4)  # _IOR(229, 0, uint32_t)
FUSE_DEV_IOC_BACKING_OPEN = _IOC(_IOC_WRITE, FUSE_DEV_IOC_MAGIC, 1, 16)  # _IOW(229, 1, struct fuse_backing_map)
FUSE_DEV_IOC_BACKING_CLOSE = _IOC(_IOC_WRITE, FUSE_DEV_IOC_MAGIC, 2, 4)  # _IOW(229, 2, uint32_t)
FUSE_DEV_IOC_SYNC_INIT = _IOC(_IOC_NONE, FUSE_DEV_IOC_MAGIC, 3, 0)  # _IO(229, 3)

#: Every enum/flag class of this module, by name.
CONSTANT_CLASSES: Dict[str, Type[enum.IntEnum] | Type[enum.IntFlag]] = {
    cls.__name__: cls
    for cls in (
        fuse_opcode, fuse_notify_code, fuse_ext_type, fuse_uring_cmd, InitFlags, CuseInitFlags, FattrFlags,
        FopenFlags, OpenInFlags, ReleaseFlags, GetattrFlags, LkFlags, WriteFlags, ReadFlags,
        IoctlFlags, PollFlags, FsyncFlags, AttrFlags, NotifyInvalEntryFlags, SetxattrFlags,
        SetupmappingFlags,
    )
}

#: Every member of every class above by its header name (``"FUSE_READ"`` -> ``fuse_opcode.FUSE_READ``).
HEADER_NAMES: Dict[str, int] = {name: member for cls in CONSTANT_CLASSES.values()
                                for name, member in cls.__members__.items()}


def __getattr__(name: str) -> int:
    """A member under its header name at module level: ``C.FUSE_READ`` is ``fuse_opcode.FUSE_READ``.

    Called only for names the module does not define (PEP 562); the member is then
    cached in the module, so later lookups are plain attribute reads.
    """
    try:
        member = HEADER_NAMES[name]
    except KeyError:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None
    globals()[name] = member
    return member


def __dir__() -> List[str]:
    """The module's names and every header name (for ``dir()`` and completion)."""
    return sorted(set(globals()) | set(HEADER_NAMES))


@functools.lru_cache(maxsize=1024)
def opcode_name(opcode: int) -> str:
    """The libfuse ``-d`` style short name of an opcode: ``READ``, ``CUSE_INIT``, ``OPCODE_99``."""
    try:
        name = fuse_opcode(opcode).name
    except ValueError:
        return f"OPCODE_{opcode}"
    return name[5:] if name.startswith("FUSE_") else name


@functools.lru_cache(maxsize=256)
def notify_name(code: int) -> str:
    """Short name of a notification code: ``POLL``, ``INVAL_INODE``, ``NOTIFY_99``."""
    try:
        return fuse_notify_code(code).name[len("FUSE_NOTIFY_"):]
    except ValueError:
        return f"NOTIFY_{code}"
