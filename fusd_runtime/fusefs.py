"""The FUSE transport's session: a tiny filesystem whose files ARE the devices.

``<mountpoint>/<name>`` is a regular file (the kernel would hand a real S_IFCHR
node to a kernel driver, not to us) opened with FOPEN_DIRECT_IO, and FOPEN_STREAM
| FOPEN_NONSEEKABLE unless the device is seekable, so every read and write
reaches the device like on a character device.  Directories come from names
with slashes.  Attributes and entries are cached by the kernel for an hour and
invalidated with notifications when devices come and go.

INIT flags asked for (only those the kernel offers are kept):
- FUSE_BIG_WRITES, FUSE_MAX_PAGES: writes up to ``max_write`` (128 KiB) in one request.
- FUSE_ATOMIC_O_TRUNC: ``open(O_TRUNC)`` (shell ``>``) needs no SETATTR round trip.
- FUSE_PARALLEL_DIROPS: lookups in the device tree need not serialize.
- FUSE_INIT_EXT: the flags2 word exists (7.36+).
- FUSE_ABORT_ERROR: after a fusectl ``abort`` our readers get ECONNABORTED, not the
  ENODEV of an unmount, so the server can say which of the two ended it.
Not asked for: FUSE_ASYNC_DIO (would split one large read() into parallel
requests: a device's byte order must not depend on that), FUSE_WRITEBACK_CACHE
and splice (devices are not page-cached), FUSE_POSIX_LOCKS/FLOCK_LOCKS (local
locking is right for devices), READDIRPLUS (tiny directories).
"""

from __future__ import annotations

import errno
import os
import stat
import time
from typing import Any, Dict, List, Optional

from fusd_wire import FAST
from fusd_wire import constants as C

from .device import Device
from .registry import Node, Registry
from .session import OP, Session
from .state import pack_out

_init_in = FAST.fuse_init_in.struct  # 64 bytes; its first 16 are the pre-7.36 layout
TIMEOUT = 3600  # seconds the kernel may cache entries and attributes

WANTED_FLAGS = (C.InitFlags.FUSE_BIG_WRITES | C.InitFlags.FUSE_MAX_PAGES | C.InitFlags.FUSE_ATOMIC_O_TRUNC
                | C.InitFlags.FUSE_PARALLEL_DIROPS | C.InitFlags.FUSE_INIT_EXT | C.InitFlags.FUSE_ABORT_ERROR)
WAKE_NAME = ".fusd-wakeup"


class FuseSession(Session):
    """Serves a mounted /dev/fuse: the device tree plus every device file operation."""

    kind = "fuse"

    def __init__(self, fd: int, registry: Registry, mountpoint: str, **kwargs: Any) -> None:
        super().__init__(fd, clone=True, **kwargs)
        self.registry = registry
        self.mountpoint = mountpoint
        self.start_time = int(time.time())
        # nodeid -> packed fuse_attr_out, valid for one registry generation (see _op_getattr)
        self._attr_out: Dict[int, bytes] = {}
        self._attr_generation = -1
        self._nodes_get = registry.nodes.get
        self.wanted_flags = int(WANTED_FLAGS)  # INIT flags asked for (a transport may add its own)
        self.handlers.update({
            OP.FUSE_INIT: self._op_init,
            OP.FUSE_LOOKUP: self._op_lookup,
            OP.FUSE_GETATTR: self._op_getattr,
            OP.FUSE_SETATTR: self._op_setattr,
            OP.FUSE_OPENDIR: self._op_opendir,
            OP.FUSE_READDIR: self._op_readdir,
            OP.FUSE_RELEASEDIR: self._op_releasedir,
            OP.FUSE_STATFS: self._op_statfs,
        })

    # ------------------------------------------------------------------ INIT
    def _op_init(self, chan: Any, buf: Any, n: int, unique: int, nodeid: int, uid: int, gid: int,
                 pid: int) -> None:
        major, minor, max_readahead, flags = _init_in.unpack_from(buf, 40)[:4]
        if major != C.FUSE_KERNEL_VERSION:
            # A newer major: answer ours and wait for a new INIT (fuse_kernel.h "Version negotiation").
            self.send(chan, [pack_out(24, 0, unique), FAST.fuse_init_out.struct.pack(
                C.FUSE_KERNEL_VERSION, C.FUSE_KERNEL_MINOR_VERSION, *([0] * 22))[:8]])
            return
        minor = min(minor, C.FUSE_KERNEL_MINOR_VERSION)
        if minor >= 36 and flags & C.InitFlags.FUSE_INIT_EXT:
            flags |= _init_in.unpack_from(buf, 40)[4] << 32
        granted = flags & self.wanted_flags
        self._set_minor(minor, granted)
        self._attr_out.clear()  # fuse_attr_out's layout follows the minor
        out = self.codec.fast("fuse_init_out")
        body = out.encode({
            "major": C.FUSE_KERNEL_VERSION, "minor": minor, "max_readahead": max_readahead,
            "flags": granted & 0xFFFFFFFF, "flags2": granted >> 32, "max_background": 16,
            "congestion_threshold": 12, "max_write": self.max_write, "time_gran": 1,
            "max_pages": self.max_write // 4096,
        }) if out.size > 8 else out.encode({"major": C.FUSE_KERNEL_VERSION, "minor": minor})
        self.send(chan, [pack_out(16 + len(body), 0, unique), body])
        self._init_done()

    def _init_done(self) -> None:
        """The INIT reply is written: requests may come (a transport may first set up its own)."""
        self.initialized.set()

    # ------------------------------------------------------------------ the tree
    def _attr(self, node: Node) -> List[int]:
        # A directory's times change when devices come and go (nanoseconds, so a change
        # within one second shows); a device file's are the server's start.
        size = 0
        if node.is_dir:
            ns = int(node.mtime * 1e9)
            t, tns = divmod(ns, 1_000_000_000)
        else:
            t, tns = self.start_time, 0
            size = device_size(node.device)
        return [node.nodeid, size, 0, t, t, t, tns, tns, tns, node.mode, 2 if node.is_dir else 1,
                node.uid, node.gid, 0, 4096, 0]

    def _entry(self, node: Node) -> bytes:
        fast = self.codec.fast("fuse_entry_out")
        return fast.pack(*([node.nodeid, 0, TIMEOUT, TIMEOUT, 0, 0] + self._attr(node))[:len(fast.fields)])

    def _op_lookup(self, chan: Any, buf: Any, n: int, unique: int, nodeid: int, uid: int, gid: int,
                 pid: int) -> Optional[List[Any]]:
        try:
            end = buf.index(0, 40, n)  # the name must end inside this message
        except ValueError:
            return self.bad_body(chan, unique, 1, "the name has no NUL terminator")
        name = buf[40:end].decode("utf-8", "surrogateescape")
        parent = self._nodes_get(nodeid)
        node = parent.children.get(name) if parent is not None else None
        if node is None:
            return [pack_out(16, -errno.ENOENT, unique)]  # written after the lock is released
        body = self._entry(node)
        return [pack_out(16 + len(body), 0, unique), body]

    def _attr_parts(self, unique: int, node: Node) -> List[Any]:
        generation = self.registry.generation  # read before packing: a later add/remove invalidates this body
        if self._attr_generation != generation:
            self._attr_out.clear()  # devices came or went: directory times changed, ids are gone
            self._attr_generation = generation
        fast = self.codec.fast("fuse_attr_out")
        body = fast.pack(*([TIMEOUT, 0, 0] + self._attr(node))[:len(fast.fields)])
        self._attr_out[node.nodeid] = body
        return [pack_out(16 + len(body), 0, unique), body]

    def _op_getattr(self, chan: Any, buf: Any, n: int, unique: int, nodeid: int, uid: int, gid: int,
                 pid: int) -> Optional[List[Any]]:
        # Answered from the packed fuse_attr_out of the node, made once per registry
        # generation (SETATTR repacks it): packing 19 fields per statx() cost more than
        # the rest of the reply.
        body = self._attr_out.get(nodeid)
        if body is not None and self._attr_generation == self.registry.generation:
            return [pack_out(16 + len(body), 0, unique), body]  # written after the lock is released
        node = self._nodes_get(nodeid)
        if node is None:
            return [pack_out(16, -errno.ENOENT, unique)]
        return self._attr_parts(unique, node)

    def _op_setattr(self, chan: Any, buf: Any, n: int, unique: int, nodeid: int, uid: int, gid: int,
                 pid: int) -> None:
        node = self._nodes_get(nodeid)
        if node is None:
            self.send_error(chan, unique, errno.ENOENT)
            return
        f = self.codec.fast("fuse_setattr_in").decode(buf, 40)
        if f.valid & C.FattrFlags.FATTR_MODE:
            node.mode = stat.S_IFMT(node.mode) | (f.mode & 0o7777)
        if f.valid & C.FattrFlags.FATTR_UID:
            node.uid = f.uid
        if f.valid & C.FattrFlags.FATTR_GID:
            node.gid = f.gid
        self.send(chan, self._attr_parts(unique, node))  # size changes (O_TRUNC) mean nothing to a device

    def _op_opendir(self, chan: Any, buf: Any, n: int, unique: int, nodeid: int, uid: int, gid: int,
                 pid: int) -> None:
        node = self._nodes_get(nodeid)
        if node is None or not node.is_dir:
            self.send_error(chan, unique, errno.ENOTDIR if node is not None else errno.ENOENT)
            return
        self.send(chan, [pack_out(32, 0, unique), self._pack_open_out(0, 0, 0)])

    def _op_readdir(self, chan: Any, buf: Any, n: int, unique: int, nodeid: int, uid: int, gid: int,
                 pid: int) -> None:
        _, offset, size, *_ = self._unpack_read_in(buf, 40)
        node = self._nodes_get(nodeid)
        if node is None:
            self.send_error(chan, unique, errno.ENOENT)
            return
        with self.registry.lock:
            entries = [(node.nodeid, ".", stat.S_IFDIR), (node.parent.nodeid if node.parent else node.nodeid, "..",
                                                          stat.S_IFDIR)]
            entries += [(c.nodeid, c.name, stat.S_IFMT(c.mode)) for c in node.children.values()]
        out = bytearray()
        dirent = FAST.fuse_dirent.struct
        for i, (ino, name, fmt) in enumerate(entries[offset:], start=offset + 1):
            raw = name.encode("utf-8", "surrogateescape")
            rec = dirent.pack(ino, i, len(raw), fmt >> 12) + raw
            rec += bytes(-len(rec) % 8)
            if len(out) + len(rec) > size:
                break
            out += rec
        self.send(chan, [pack_out(16 + len(out), 0, unique), out])

    def _op_releasedir(self, chan: Any, buf: Any, n: int, unique: int, nodeid: int, uid: int, gid: int,
                 pid: int) -> None:
        self.send(chan, [pack_out(16, 0, unique)])

    def _op_statfs(self, chan: Any, buf: Any, n: int, unique: int, nodeid: int, uid: int, gid: int,
                 pid: int) -> None:
        fast = self.codec.fast("fuse_statfs_out")
        body = fast.encode({"st": {"bsize": 4096, "frsize": 4096, "namelen": 255,
                                   "files": len(self.registry.nodes)}})
        self.send(chan, [pack_out(16 + len(body), 0, unique), body])

    # ------------------------------------------------------------------ devices
    def device_for_open(self, nodeid: int) -> Device:
        node = self._nodes_get(nodeid)
        if node is None or node.device is None:
            raise OSError(errno.ENOENT if node is None else errno.EISDIR, "no such device")
        return node.device

    def invalidate(self, parent_id: int, name: str) -> None:
        """Tell the kernel to forget the directory entry ``name`` in ``parent_id`` (device removed)."""
        raw = name.encode("utf-8", "surrogateescape")
        body = self.codec.fast("fuse_notify_inval_entry_out").pack(parent_id, len(raw), 0) + raw + b"\0"
        try:
            self.writev(self.fd, [pack_out(16 + len(body), C.fuse_notify_code.FUSE_NOTIFY_INVAL_ENTRY, 0), body])
        except OSError as exc:
            if exc.errno not in (errno.ENOENT, errno.ENODEV, errno.EBADF, errno.ENOTCONN):
                raise

    def wake_reader(self) -> None:
        try:
            os.stat(os.path.join(self.mountpoint, WAKE_NAME))
        except FileNotFoundError:
            pass


#: what a stream reports as st_size (see device_size)
STREAM_SIZE = (1 << 63) - 1


def device_size(device: Any) -> int:
    """A device file's st_size: ``device.size``, else the largest size for a stream, 0 for a seekable device.

    The kernel answers an *asynchronous* direct read (io_uring, libaio) at or past
    i_size with 0 bytes without asking us (fs/fuse/file.c ``fuse_direct_IO``), while
    read(2) ignores the size.  A stream has no size, so it reports the largest one:
    every async read reaches the device.  (Programs that size buffers by st_size
    need ``lseek``, which a stream refuses: Python's ``read()`` then ignores it.)
    A seekable device reports ``size`` (mmap and async reads rely on it), or 0.
    """
    size = getattr(device, "size", None)
    if size is not None:
        return int(size)
    return 0 if getattr(device, "seekable", False) else STREAM_SIZE


def node_path(mountpoint: str, node: Optional[Node]) -> str:
    """The path of a registry node under the mount."""
    return os.path.join(mountpoint, node.path) if node is not None else mountpoint
