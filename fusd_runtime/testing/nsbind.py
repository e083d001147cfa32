"""Run a command with a device file at the path it hard-codes, in a private mount namespace.

    python -m fusd_runtime.testing.nsbind /tmp/fusd-x/modem:/dev/ttyUSB0 -- minicom -D /dev/ttyUSB0

A client that opens ``/dev/ttyUSB0`` no matter what cannot be pointed at a FUSE
file or a CUSE node with another name.  This helper (root: it needs
CAP_SYS_ADMIN) makes a new mount namespace (``unshare(CLONE_NEWNS)``, mounts
private so nothing propagates back), bind-mounts each ``SOURCE`` on its
``TARGET`` and executes the command there.  Only that process and its children
see the binding; when they exit the namespace and its mounts are gone, so a
test can never leave one behind.

A ``TARGET`` that does not exist is made in a private copy of its directory: an
overlay whose lower layer is the real directory (its device nodes keep working)
and whose upper layer is a tmpfs of this namespace, with the directory's own
submounts (``/dev/pts``, ``/dev/shm``, ...) moved back on top.  Nothing is
created in the real ``/dev`` (nor left in ``/tmp``: the scratch tmpfs is detached and
its directory removed before the command starts).
"""

from __future__ import annotations

import ctypes
import os
import stat
import sys
import tempfile
from typing import List, Optional, Sequence, Set

CLONE_NEWNS = 0x00020000
MS_BIND, MS_MOVE, MS_REC, MS_PRIVATE = 0x1000, 0x2000, 0x4000, 1 << 18

_libc = ctypes.CDLL(None, use_errno=True)
_libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p]
_libc.unshare.argtypes = [ctypes.c_int]
_libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]
MNT_DETACH = 2


class BindError(OSError):
    """A namespace or mount step failed (what, and the errno)."""


def _mount(src: Optional[str], target: str, fstype: Optional[str], flags: int, data: Optional[str] = None) -> None:
    if _libc.mount(src.encode() if src else None, target.encode(), fstype.encode() if fstype else None, flags,
                   data.encode() if data else None) != 0:
        err = ctypes.get_errno()
        raise BindError(err, f"mount {src or fstype} on {target}: {os.strerror(err)}")


def _submounts(parent: str) -> List[str]:
    """Mount points strictly under ``parent``, outermost first (nested ones travel with them)."""
    points: Set[str] = set()
    with open("/proc/self/mountinfo") as f:
        for line in f:
            point = line.split()[4].replace("\\040", " ")
            if point.startswith(parent.rstrip("/") + "/"):
                points.add(point)
    top = [p for p in sorted(points, key=len) if not any(p.startswith(q + "/") for q in points if q != p)]
    return top


def _shadow(parent: str, scratch: str) -> None:
    """Put a private, writable overlay of ``parent`` in place (see the module doc)."""
    upper, work, stash = (os.path.join(scratch, d) for d in ("upper", "work", "stash"))
    for d in (upper, work, stash):
        os.mkdir(d)
    moved = []
    for i, point in enumerate(_submounts(parent)):
        keep = os.path.join(stash, str(i))
        os.mkdir(keep)
        _mount(point, keep, None, MS_BIND | MS_REC)
        moved.append((keep, point))
    _mount("overlay", parent, "overlay", 0, f"lowerdir={parent},upperdir={upper},workdir={work}")
    for keep, point in moved:
        _mount(keep, point, None, MS_MOVE)


def bind_in_new_namespace(bindings: Sequence[str]) -> None:
    """Enter a private mount namespace and apply ``SOURCE:TARGET`` bindings (this process only)."""
    if _libc.unshare(CLONE_NEWNS) != 0:
        err = ctypes.get_errno()
        raise BindError(err, f"unshare(CLONE_NEWNS): {os.strerror(err)} (needs root / CAP_SYS_ADMIN)")
    _mount(None, "/", None, MS_REC | MS_PRIVATE)
    shadowed: Set[str] = set()
    for item in bindings:
        source, sep, target = item.rpartition(":")
        if not sep or not source or not target.startswith("/"):
            raise BindError(22, f"expected SOURCE:/ABSOLUTE/TARGET, got {item!r}")
        if not os.path.exists(source):
            raise BindError(2, f"no such source: {source}")
        target = os.path.normpath(target)
        if not os.path.lexists(target):
            parent = os.path.dirname(target)
            if parent not in shadowed:
                scratch = tempfile.mkdtemp(prefix="fusd-nsbind-")
                _mount("tmpfs", scratch, "tmpfs", 0, "mode=0700")
                _shadow(parent, scratch)
                # the overlay keeps the tmpfs alive; detached, its directory can go: no trace in the real /tmp
                _libc.umount2(scratch.encode(), MNT_DETACH)
                os.rmdir(scratch)
                shadowed.add(parent)
            if stat.S_ISDIR(os.stat(source).st_mode):
                os.mkdir(target)
            else:
                open(target, "w").close()
        _mount(source, target, None, MS_BIND)


def main(argv: Optional[List[str]] = None) -> int:
    """``nsbind SOURCE:TARGET [...] -- COMMAND [ARGS]``; execs the command (returns only on error)."""
    args = list(sys.argv[1:] if argv is None else argv)
    if "--" not in args or args.index("--") == 0 or args.index("--") == len(args) - 1:
        print("usage: python -m fusd_runtime.testing.nsbind SOURCE:TARGET [...] -- COMMAND [ARGS...]\n"
              "example: python -m fusd_runtime.testing.nsbind /tmp/devs/modem:/dev/ttyUSB0 -- "
              "cat /dev/ttyUSB0", file=sys.stderr)
        return 2
    cut = args.index("--")
    try:
        bind_in_new_namespace(args[:cut])
    except OSError as exc:
        print(f"nsbind: {exc}", file=sys.stderr)
        return 125
    cmd = args[cut + 1:]
    try:
        os.execvp(cmd[0], cmd)
    except OSError as exc:
        print(f"nsbind: cannot run {cmd[0]}: {exc.strerror}", file=sys.stderr)
        return 127


if __name__ == "__main__":
    sys.exit(main())
