"""One ``construct`` Struct per kernel struct of ``fuse_kernel.h`` 7.45.

Names, field names and field order are the header's, so this file can be held
against the header line by line.  Only fixed-size structs live here; the
variable parts of messages (names, payloads, dirent lists, the CUSE info blob)
are described in ``parts.py`` and assembled per opcode in ``opcodes.py``.

These Structs are the specification.  They are never used on the hot path:
``fastpath.py`` derives a ``struct.Struct`` from each of them at import time.
Layouts that shrink for old protocol minors are derived from these full
layouts by ``layouts.py``; nothing here is written twice.
"""

from __future__ import annotations

from typing import Dict

import construct as cs

from .constants import FUSE_URING_IN_OUT_HEADER_SZ, FUSE_URING_OP_IN_OUT_SZ

u8, u16, u32, u64 = cs.Int8ul, cs.Int16ul, cs.Int32ul, cs.Int64ul
s32, s64 = cs.Int32sl, cs.Int64sl

fuse_attr = cs.Struct(
    "ino" / u64,
    "size" / u64,
    "blocks" / u64,
    "atime" / u64,
    "mtime" / u64,
    "ctime" / u64,
    "atimensec" / u32,
    "mtimensec" / u32,
    "ctimensec" / u32,
    "mode" / u32,
    "nlink" / u32,
    "uid" / u32,
    "gid" / u32,
    "rdev" / u32,
    "blksize" / u32,
    "flags" / u32,
)

fuse_sx_time = cs.Struct(
    "tv_sec" / s64,
    "tv_nsec" / u32,
    "__reserved" / s32,
)

fuse_statx = cs.Struct(
    "mask" / u32,
    "blksize" / u32,
    "attributes" / u64,
    "nlink" / u32,
    "uid" / u32,
    "gid" / u32,
    "mode" / u16,
    "__spare0" / cs.Array(1, u16),
    "ino" / u64,
    "size" / u64,
    "blocks" / u64,
    "attributes_mask" / u64,
    "atime" / fuse_sx_time,
    "btime" / fuse_sx_time,
    "ctime" / fuse_sx_time,
    "mtime" / fuse_sx_time,
    "rdev_major" / u32,
    "rdev_minor" / u32,
    "dev_major" / u32,
    "dev_minor" / u32,
    "__spare2" / cs.Array(14, u64),
)

fuse_kstatfs = cs.Struct(
    "blocks" / u64,
    "bfree" / u64,
    "bavail" / u64,
    "files" / u64,
    "ffree" / u64,
    "bsize" / u32,
    "namelen" / u32,
    "frsize" / u32,
    "padding" / u32,
    "spare" / cs.Array(6, u32),
)

fuse_file_lock = cs.Struct(
    "start" / u64,
    "end" / u64,
    "type" / u32,
    "pid" / u32,  # tgid
)

fuse_entry_out = cs.Struct(
    "nodeid" / u64,
    "generation" / u64,
    "entry_valid" / u64,
    "attr_valid" / u64,
    "entry_valid_nsec" / u32,
    "attr_valid_nsec" / u32,
    "attr" / fuse_attr,
)

fuse_forget_in = cs.Struct("nlookup" / u64)

fuse_forget_one = cs.Struct("nodeid" / u64, "nlookup" / u64)

fuse_batch_forget_in = cs.Struct("count" / u32, "dummy" / u32)

fuse_getattr_in = cs.Struct("getattr_flags" / u32, "dummy" / u32, "fh" / u64)

fuse_attr_out = cs.Struct(
    "attr_valid" / u64,
    "attr_valid_nsec" / u32,
    "dummy" / u32,
    "attr" / fuse_attr,
)

fuse_statx_in = cs.Struct(
    "getattr_flags" / u32,
    "reserved" / u32,
    "fh" / u64,
    "sx_flags" / u32,
    "sx_mask" / u32,
)

fuse_statx_out = cs.Struct(
    "attr_valid" / u64,
    "attr_valid_nsec" / u32,
    "flags" / u32,
    "spare" / cs.Array(2, u64),
    "stat" / fuse_statx,
)

fuse_mknod_in = cs.Struct("mode" / u32, "rdev" / u32, "umask" / u32, "padding" / u32)

fuse_mkdir_in = cs.Struct("mode" / u32, "umask" / u32)

fuse_rename_in = cs.Struct("newdir" / u64)

fuse_rename2_in = cs.Struct("newdir" / u64, "flags" / u32, "padding" / u32)

fuse_link_in = cs.Struct("oldnodeid" / u64)

fuse_setattr_in = cs.Struct(
    "valid" / u32,
    "padding" / u32,
    "fh" / u64,
    "size" / u64,
    "lock_owner" / u64,
    "atime" / u64,
    "mtime" / u64,
    "ctime" / u64,
    "atimensec" / u32,
    "mtimensec" / u32,
    "ctimensec" / u32,
    "mode" / u32,
    "unused4" / u32,
    "uid" / u32,
    "gid" / u32,
    "unused5" / u32,
)

fuse_open_in = cs.Struct("flags" / u32, "open_flags" / u32)

fuse_create_in = cs.Struct("flags" / u32, "mode" / u32, "umask" / u32, "open_flags" / u32)

fuse_open_out = cs.Struct("fh" / u64, "open_flags" / u32, "backing_id" / s32)

fuse_release_in = cs.Struct("fh" / u64, "flags" / u32, "release_flags" / u32, "lock_owner" / u64)

fuse_flush_in = cs.Struct("fh" / u64, "unused" / u32, "padding" / u32, "lock_owner" / u64)

fuse_read_in = cs.Struct(
    "fh" / u64,
    "offset" / u64,
    "size" / u32,
    "read_flags" / u32,
    "lock_owner" / u64,
    "flags" / u32,
    "padding" / u32,
)

fuse_write_in = cs.Struct(
    "fh" / u64,
    "offset" / u64,
    "size" / u32,
    "write_flags" / u32,
    "lock_owner" / u64,
    "flags" / u32,
    "padding" / u32,
)

fuse_write_out = cs.Struct("size" / u32, "padding" / u32)

fuse_statfs_out = cs.Struct("st" / fuse_kstatfs)

fuse_fsync_in = cs.Struct("fh" / u64, "fsync_flags" / u32, "padding" / u32)

fuse_setxattr_in = cs.Struct("size" / u32, "flags" / u32, "setxattr_flags" / u32, "padding" / u32)

fuse_getxattr_in = cs.Struct("size" / u32, "padding" / u32)

fuse_getxattr_out = cs.Struct("size" / u32, "padding" / u32)

fuse_lk_in = cs.Struct(
    "fh" / u64,
    "owner" / u64,
    "lk" / fuse_file_lock,
    "lk_flags" / u32,
    "padding" / u32,
)

fuse_lk_out = cs.Struct("lk" / fuse_file_lock)

fuse_access_in = cs.Struct("mask" / u32, "padding" / u32)

fuse_init_in = cs.Struct(
    "major" / u32,
    "minor" / u32,
    "max_readahead" / u32,
    "flags" / u32,
    "flags2" / u32,
    "unused" / cs.Array(11, u32),
)

fuse_init_out = cs.Struct(
    "major" / u32,
    "minor" / u32,
    "max_readahead" / u32,
    "flags" / u32,
    "max_background" / u16,
    "congestion_threshold" / u16,
    "max_write" / u32,
    "time_gran" / u32,
    "max_pages" / u16,
    "map_alignment" / u16,
    "flags2" / u32,
    "max_stack_depth" / u32,
    "request_timeout" / u16,
    "unused" / cs.Array(11, u16),
)

cuse_init_in = cs.Struct("major" / u32, "minor" / u32, "unused" / u32, "flags" / u32)

cuse_init_out = cs.Struct(
    "major" / u32,
    "minor" / u32,
    "unused" / u32,
    "flags" / u32,
    "max_read" / u32,
    "max_write" / u32,
    "dev_major" / u32,  # chardev major
    "dev_minor" / u32,  # chardev minor
    "spare" / cs.Array(10, u32),
)

fuse_interrupt_in = cs.Struct("unique" / u64)

fuse_bmap_in = cs.Struct("block" / u64, "blocksize" / u32, "padding" / u32)

fuse_bmap_out = cs.Struct("block" / u64)

fuse_ioctl_in = cs.Struct(
    "fh" / u64,
    "flags" / u32,
    "cmd" / u32,
    "arg" / u64,
    "in_size" / u32,
    "out_size" / u32,
)

fuse_ioctl_iovec = cs.Struct("base" / u64, "len" / u64)

fuse_ioctl_out = cs.Struct("result" / s32, "flags" / u32, "in_iovs" / u32, "out_iovs" / u32)

fuse_poll_in = cs.Struct("fh" / u64, "kh" / u64, "flags" / u32, "events" / u32)

fuse_poll_out = cs.Struct("revents" / u32, "padding" / u32)

fuse_notify_poll_wakeup_out = cs.Struct("kh" / u64)

fuse_fallocate_in = cs.Struct(
    "fh" / u64,
    "offset" / u64,
    "length" / u64,
    "mode" / u32,
    "padding" / u32,
)

fuse_in_header = cs.Struct(
    "len" / u32,
    "opcode" / u32,
    "unique" / u64,
    "nodeid" / u64,
    "uid" / u32,
    "gid" / u32,
    "pid" / u32,
    "total_extlen" / u16,  # length of extensions in 8-byte units (7.38)
    "padding" / u16,
)

fuse_out_header = cs.Struct("len" / u32, "error" / s32, "unique" / u64)

# The fixed part of struct fuse_dirent; the name and its 8-byte alignment follow
# (parts.py).  FUSE_NAME_OFFSET == fuse_dirent.sizeof().
fuse_dirent = cs.Struct("ino" / u64, "off" / u64, "namelen" / u32, "type" / u32)

# struct fuse_direntplus { struct fuse_entry_out entry_out; struct fuse_dirent dirent; }
fuse_direntplus = cs.Struct("entry_out" / fuse_entry_out, "dirent" / fuse_dirent)

fuse_notify_inval_inode_out = cs.Struct("ino" / u64, "off" / s64, "len" / s64)

fuse_notify_inval_entry_out = cs.Struct("parent" / u64, "namelen" / u32, "flags" / u32)

fuse_notify_delete_out = cs.Struct("parent" / u64, "child" / u64, "namelen" / u32, "padding" / u32)

fuse_notify_store_out = cs.Struct("nodeid" / u64, "offset" / u64, "size" / u32, "padding" / u32)

fuse_notify_retrieve_out = cs.Struct(
    "notify_unique" / u64,
    "nodeid" / u64,
    "offset" / u64,
    "size" / u32,
    "padding" / u32,
)

# Matches the size of fuse_write_in
fuse_notify_retrieve_in = cs.Struct(
    "dummy1" / u64,
    "offset" / u64,
    "size" / u32,
    "dummy2" / u32,
    "dummy3" / u64,
    "dummy4" / u64,
)

fuse_notify_prune_out = cs.Struct("count" / u32, "padding" / u32, "spare" / u64)

fuse_backing_map = cs.Struct("fd" / s32, "flags" / u32, "padding" / u64)

fuse_lseek_in = cs.Struct("fh" / u64, "offset" / u64, "whence" / u32, "padding" / u32)

fuse_lseek_out = cs.Struct("offset" / u64)

fuse_copy_file_range_in = cs.Struct(
    "fh_in" / u64,
    "off_in" / u64,
    "nodeid_out" / u64,
    "fh_out" / u64,
    "off_out" / u64,
    "len" / u64,
    "flags" / u64,
)

fuse_copy_file_range_out = cs.Struct("bytes_copied" / u64)

fuse_setupmapping_in = cs.Struct(
    "fh" / u64,  # An already open handle
    "foffset" / u64,  # Offset into the file to start the mapping
    "len" / u64,  # Length of mapping required
    "flags" / u64,  # Flags, FUSE_SETUPMAPPING_FLAG_*
    "moffset" / u64,  # Offset in Memory Window
)

fuse_removemapping_in = cs.Struct("count" / u32)  # number of fuse_removemapping_one follows

fuse_removemapping_one = cs.Struct("moffset" / u64, "len" / u64)

fuse_syncfs_in = cs.Struct("padding" / u64)

# For each security context, a fuse_secctx is sent, followed by the context's
# name (NUL-terminated) and the context itself (``size`` bytes).
fuse_secctx = cs.Struct("size" / u32, "padding" / u32)

# Comes before the fuse_secctx entries; doubles as a fuse_ext_header whose type
# (0..31) is nr_secctx.
fuse_secctx_header = cs.Struct("size" / u32, "nr_secctx" / u32)

# Extension header (7.38): ``size`` is the whole extension in bytes, 8-aligned.
fuse_ext_header = cs.Struct("size" / u32, "type" / u32)

# FUSE_EXT_GROUPS: followed by nr_groups uint32 group ids.
fuse_supp_groups = cs.Struct("nr_groups" / u32)

# FUSE-over-io_uring (7.42).  Per ring entry the daemon registers two buffers: this header
# and a payload.  Fetch: the kernel writes fuse_in_header into in_out, the opcode's first
# (fixed) argument into op_in, the rest into the payload, and ring_ent_in_out (commit_id =
# the request's unique, payload_sz = payload bytes).  Commit: the daemon writes
# fuse_out_header into in_out, the reply body into the payload and its size into payload_sz.
fuse_uring_ent_in_out = cs.Struct(
    "flags" / u64,
    "commit_id" / u64,
    "payload_sz" / u32,
    "padding" / u32,
    "reserved" / u64,
)

fuse_uring_req_header = cs.Struct(
    "in_out" / cs.Bytes(FUSE_URING_IN_OUT_HEADER_SZ),
    "op_in" / cs.Bytes(FUSE_URING_OP_IN_OUT_SZ),
    "ring_ent_in_out" / fuse_uring_ent_in_out,
)

# In the 80-byte command area of an IORING_SETUP_SQE128 SQE (io_uring_sqe.cmd).
fuse_uring_cmd_req = cs.Struct(
    "flags" / u64,
    "commit_id" / u64,
    "qid" / u16,
    "padding" / cs.Array(6, u8),
)


def _collect() -> Dict[str, cs.Struct]:
    """Every kernel struct above, by its header name, in header order."""
    return {name: obj for name, obj in globals().items()
            if isinstance(obj, cs.Struct) and (name.startswith("fuse_") or name.startswith("cuse_"))}


#: name -> construct Struct, for every kernel struct of the header.
STRUCTS: Dict[str, cs.Struct] = _collect()
