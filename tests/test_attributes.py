"""Attributes of the device tree as the kernel sees them: chmod/chown, directory times.

GETATTR answers come from a per-node cache of the packed ``fuse_attr_out``
(fusefs._op_getattr); these tests force real GETATTR round trips with
``statx(AT_STATX_FORCE_SYNC)`` (the kernel's own attribute cache would hide a
stale answer) to prove the cache follows SETATTR and devices coming and going.
"""

from __future__ import annotations

import ctypes
import os
import stat
import struct
from typing import Tuple

from fusd_runtime import Server
from fusd_runtime.examples import Hello

AT_STATX_FORCE_SYNC = 0x2000  # linux/fcntl.h
STATX_BASIC_STATS = 0x7FF  # linux/stat.h
_libc = ctypes.CDLL(None, use_errno=True)


def statx_forced(path: str) -> Tuple[int, int, int, int]:
    """(mode, uid, gid, mtime in ns) of ``path``, fetched from the daemon, not the kernel's cache."""
    buf = ctypes.create_string_buffer(256)  # struct statx
    if _libc.statx(-100, path.encode(), AT_STATX_FORCE_SYNC, STATX_BASIC_STATS, buf) != 0:  # AT_FDCWD
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), path)
    uid, gid, mode = struct.unpack_from("<IIH", buf, 20)
    sec, nsec = struct.unpack_from("<qI", buf, 112)  # stx_mtime
    return mode, uid, gid, sec * 1_000_000_000 + nsec


def test_chmod_and_chown_reach_a_forced_getattr(server: Server) -> None:
    server.add(Hello(), "hello")
    path = server.path("hello")
    assert stat.S_IMODE(statx_forced(path)[0]) == 0o666  # cached once by this GETATTR
    os.chmod(path, 0o640)
    os.chown(path, 1234, 5678)
    mode, uid, gid, _ = statx_forced(path)
    assert stat.S_ISREG(mode) and stat.S_IMODE(mode) == 0o640
    assert (uid, gid) == (1234, 5678)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o640


def test_directory_time_follows_devices_added_and_removed(server: Server) -> None:
    server.add(Hello(), "first")
    root = server.mountpoint
    before = statx_forced(root)[3]
    server.add(Hello(), "second")
    after_add = statx_forced(root)[3]
    assert after_add > before
    server.remove("second")
    assert statx_forced(root)[3] > after_add
    assert sorted(os.listdir(root)) == ["first"]
