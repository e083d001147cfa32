"""Getting a /dev/fuse channel mounted, knowing which mount is ours, and unmounting only that.

Two ways in:
- root: open ``/dev/fuse`` and call ``mount(2)`` through ctypes with ``fd=N``;
- anyone else: ``fusermount3`` mounts for us and passes the fd back over a
  socketpair (``_FUSE_COMMFD``, SCM_RIGHTS).

Right after mounting, the mount's identity is read from ``/proc/self/mountinfo``:
its mount id, the device number ``major:minor`` of the new superblock (the FUSE
connection: ``/sys/fs/fuse/connections/<dev>``) and its source, ``<fsname>:<pid>``
(``.<n>`` for the n-th mount of a process).  The source is there because the
kernel hands out the lowest free mount id and device number: a mount that replaced
ours after an operator unmounted it often gets both.  The mountpoint itself is
never stat'ed here: until the server answers FUSE_INIT that would hang.

Every way out unmounts, and only ours: ``Mount.close()`` on normal exit, and a
watchdog child for when this process is SIGKILLed (it blocks on a pipe only we
hold; when we die the pipe breaks).  Both first check that the topmost mount at
the mountpoint is still the one we made — a second server mounted on top of us,
or an operator who unmounted us and mounted something else there, is left alone.

Before mounting, a mountpoint that is already a FUSE mount is refused (another
server, or a stale one: ``fusd abort DIR``), as is a non-empty directory, unless
asked for (``overmount=True`` / ``nonempty=True``).

For an operator and for the server's own lifecycle: :meth:`Mount.abort` (the
fusectl ``abort`` file; fusectl is mounted at ``/sys/fs/fuse/connections`` if it is
not), :meth:`Mount.is_ours`, :meth:`Mount.still_mounted`, :attr:`Mount.connection`.

This module imports nothing but the standard library: the watchdog loads it by
path (``python -I -S``) once the server has died, to unmount.

The watchdog must not cost the server anything while it serves, yet it is a
second interpreter, on the server's CPU when the server is pinned.  Started as
``python -c`` with the old inline script it took ~27 ms of CPU (site, the
editable-install finder, ctypes.util), running this module as a script ~41 ms
(its imports, ``find_library``), mostly after the mount was already served: a
client starting right then lost ~2 µs per call on average over its first 10,000
calls, and its first 1,000-4,000 calls ran 1.1 µs slower at the median (issue
18).  So it starts lean (``-I -S``, nothing imported before it blocks: ~12 ms
of CPU, 9.6 instead of 13.3 MB resident), and the mount waits until it is
blocked (it closes a second pipe then, at most ``WATCHDOG_READY_TIMEOUT``) so
that its start-up is over before anything is served.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import logging
import os
import re
import select
import shutil
import socket
import stat
import subprocess
import sys
from itertools import count
from typing import List, NamedTuple, Optional

MS_RDONLY, MS_NOSUID, MS_NODEV = 1, 2, 4
MNT_DETACH = 2
MOUNTINFO = "/proc/self/mountinfo"
FUSECTL_DIR = "/sys/fs/fuse/connections"
#: how long fusermount3 may take to mount and exit
FUSERMOUNT_TIMEOUT = 10.0
#: seconds a mount waits for its watchdog to be up (it works anyway once it is; slow machines)
WATCHDOG_READY_TIMEOUT = 10.0

log = logging.getLogger("fusd")

_libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
_libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p]
_libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]


class MountError(OSError):
    """Mounting (or unmounting, or aborting) failed; the message says why and what to try."""


# ---------------------------------------------------------------------- /proc/self/mountinfo
class MountInfo(NamedTuple):
    """One line of ``/proc/self/mountinfo`` (see proc(5)); paths unescaped."""

    mount_id: int
    parent_id: int
    major: int
    minor: int
    root: str
    mountpoint: str
    options: str
    fstype: str
    source: str
    super_options: str

    @property
    def is_fuse(self) -> bool:
        """A FUSE mount (``fuse``, ``fuse.NAME``, ``fuseblk``...): its root may hang a stat()."""
        return self.fstype in ("fuse", "fuseblk") or self.fstype.startswith(("fuse.", "fuseblk."))

    @property
    def connection(self) -> int:
        """The kernel's ``dev_t`` of the superblock: the FUSE connection's number in fusectl."""
        return (self.major << 20) | self.minor

    @property
    def identity(self) -> str:
        """``mount-id major:minor source``: what tells this mount from any other at the same path."""
        return f"{self.mount_id} {self.major}:{self.minor} {self.source}"


_ESCAPE = re.compile(rb"\\([0-7]{3})")


def _unescape(field: bytes) -> str:
    return os.fsdecode(_ESCAPE.sub(lambda m: bytes([int(m.group(1), 8)]), field))


def mountinfo(path: str = MOUNTINFO) -> List[MountInfo]:
    """Every mount of this process's mount namespace, in the kernel's order."""
    out = []
    with open(path, "rb") as f:
        for line in f:
            fields = line.split()
            try:
                sep = fields.index(b"-", 6)
                major, minor = fields[2].split(b":")
                out.append(MountInfo(int(fields[0]), int(fields[1]), int(major), int(minor), _unescape(fields[3]),
                                     _unescape(fields[4]), fields[5].decode(), fields[sep + 1].decode(),
                                     _unescape(fields[sep + 2]), fields[sep + 3].decode() if len(fields) > sep + 3
                                     else ""))
            except (ValueError, IndexError):
                continue  # a line we cannot read is not one of ours
    return out


def mount_at(path: str, table: Optional[List[MountInfo]] = None) -> Optional[MountInfo]:
    """The topmost mount whose mountpoint is ``path`` (resolved, absolute), or None.

    Mounts stacked on one path are children of the one below; the topmost is the
    one no other mount at that path sits on.
    """
    here = [m for m in (mountinfo() if table is None else table) if m.mountpoint == path]
    for m in reversed(here):
        if not any(other.parent_id == m.mount_id for other in here):
            return m
    return here[-1] if here else None


def find(identity: str, table: Optional[List[MountInfo]] = None) -> Optional[MountInfo]:
    """The mount with this ``MountInfo.identity``, wherever it is now (a parent may have been renamed)."""
    for m in mountinfo() if table is None else table:
        if m.identity == identity:
            return m
    return None


def unmount_if_on_top(identity: str) -> Optional[MountInfo]:
    """Unmount the mount ``identity`` if nothing is mounted on top of it; the mount on top if one is.

    Wherever the mount is now: a directory above it may have been renamed since.
    """
    table = mountinfo()
    ours = find(identity, table)
    if ours is None:
        return None
    top = mount_at(ours.mountpoint, table)
    if top is not None and top.identity != identity:
        return top
    umount(ours.mountpoint)
    return None


def resolve(path: str) -> str:
    """``path`` made absolute with its directories' symlinks resolved, without stat()ing the last part.

    (Stat'ing a FUSE mount whose server does not answer would hang us.)  A last
    part that is itself a symlink is followed only when no mount sits there.
    """
    path = os.path.abspath(path)
    parent, base = os.path.split(path)
    if not base:
        return path
    real = os.path.join(os.path.realpath(parent), base)
    if mount_at(real) is None and os.path.islink(real):
        return resolve(os.path.realpath(real))
    return real


# ---------------------------------------------------------------------- mount(2), umount2(2)
def _mount(source: str, target: str, fstype: str, flags: int, data: str) -> None:
    if _libc.mount(source.encode(), target.encode(), fstype.encode(), flags, data.encode()) != 0:
        err = ctypes.get_errno()
        raise MountError(err, f"mount({target}): {os.strerror(err)}")


def umount(target: str, lazy: bool = True) -> bool:
    """Unmount whatever is on top of ``target`` (lazily by default); False if nothing was mounted.

    As an ordinary user this asks ``fusermount3 -u -z``.  It does not check whose
    mount it is: :meth:`Mount.close` does that first.
    """
    if _libc.umount2(target.encode(), MNT_DETACH if lazy else 0) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOENT):
        return False
    if err == errno.EPERM and shutil.which("fusermount3"):
        return subprocess.run(["fusermount3", "-u", "-z", "-q", target], stdin=subprocess.DEVNULL,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).returncode == 0
    raise OSError(err, f"umount({target}): {os.strerror(err)}")


def is_mounted(target: str) -> bool:
    """True if ``target`` (an absolute path) is a mount point in /proc/self/mounts.

    Never stats ``target``: a FUSE mount whose server stopped answering would hang us.
    """
    real = os.path.abspath(target)
    with open("/proc/self/mounts") as f:
        for line in f:
            parts = line.split()
            if len(parts) > 1 and parts[1].replace("\\040", " ") == real:
                return True
    return False


# ---------------------------------------------------------------------- fusectl: aborting a connection
def ensure_fusectl() -> str:
    """The FUSE control filesystem's directory, mounting fusectl there first if needed (root).

    Raises MountError saying what to do when it is not mounted and we may not mount it.
    """
    if any(m.fstype == "fusectl" and m.mountpoint == FUSECTL_DIR for m in mountinfo()):
        return FUSECTL_DIR
    if not os.path.isdir(FUSECTL_DIR):
        raise MountError(errno.ENOENT, f"{FUSECTL_DIR} does not exist: the fuse kernel module is not loaded "
                         "(modprobe fuse)")
    if os.geteuid() != 0:
        raise MountError(errno.EPERM, f"the FUSE control filesystem is not mounted at {FUSECTL_DIR}: "
                         f"ask root to run 'mount -t fusectl fusectl {FUSECTL_DIR}'")
    _mount("fusectl", FUSECTL_DIR, "fusectl", 0, "")
    return FUSECTL_DIR


def connection_dir(connection: int) -> str:
    """``/sys/fs/fuse/connections/<connection>`` (fusectl mounted if needed)."""
    return os.path.join(ensure_fusectl(), str(connection))


def abort_connection(connection: int) -> None:
    """Abort FUSE connection ``connection``: every waiting and later request fails (ENOTCONN).

    The mount stays until it is unmounted; the server's reads of its channel fail.
    """
    path = os.path.join(connection_dir(connection), "abort")
    try:
        with open(path, "w") as f:
            f.write("1")
    except FileNotFoundError:
        raise MountError(errno.ENOENT, f"no FUSE connection {connection} (it has already ended)") from None
    except PermissionError:
        raise MountError(errno.EPERM, f"not allowed to abort FUSE connection {connection}: only its owner "
                         "and root may") from None


# ---------------------------------------------------------------------- the watchdog
# The watchdog, run as ``python -I -S -c _WATCHDOG FD READY THIS_FILE MOUNTPOINT IDENTITY``: it
# ignores the terminal's signals, closes READY (the mount waits for that), blocks on FD, whose write
# end only the server holds, and once the server is gone loads this module by path to unmount our
# mount if it is still on top.  Nothing is imported before it blocks (see the module docstring);
# MOUNTPOINT is there for people reading ps.
_WATCHDOG = r"""
import os, signal, sys
for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT):
    signal.signal(s, signal.SIG_IGN)
fd, ready, module, identity = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[5]
os.close(ready)
while True:
    try:
        if not os.read(fd, 64):
            break
    except InterruptedError:
        continue
    except OSError:
        break
import runpy
try:
    runpy.run_path(module)["unmount_if_on_top"](identity)
except OSError:
    pass
"""


# ---------------------------------------------------------------------- Mount
class Mount:
    """A mounted FUSE channel: ``fd`` to serve, ``mountpoint``, and ``close()`` to unmount.

    Args:
        mountpoint: an existing, empty directory that is not a FUSE mount already.
        fsname: the mount's type is ``fuse.<fsname>`` and its source ``<fsname>:<pid>`` (/proc/mounts).
        allow_other: let other users (and root) use the files; for non-root mounts
            this needs ``user_allow_other`` in /etc/fuse.conf.
        method: "auto" (mount(2) as root, else fusermount3), "mount" or "fusermount".
        watchdog: unmount even if this process is SIGKILLed.
        read_only: mount read-only (``ro``): opening a device for writing fails with EROFS.
        nonempty: allow a mountpoint that holds files (the devices hide them while mounted).
        overmount: allow mounting on top of another FUSE mount (it is hidden until we
            unmount; we never unmount it).

    After mounting, ``identity`` is our line of /proc/self/mountinfo (``MountInfo``) and
    ``connection`` the FUSE connection number (``/sys/fs/fuse/connections/<connection>``).
    """

    #: every mount point this process mounted (tests check none is left mounted)
    history: List[str] = []
    _serial = count(1)

    def __init__(self, mountpoint: str, *, fsname: str = "fusd", allow_other: Optional[bool] = None,
                 method: str = "auto", watchdog: bool = True, read_only: bool = False, nonempty: bool = False,
                 overmount: bool = False) -> None:
        self.fd = -1
        self.method = method
        self.identity: Optional[MountInfo] = None
        self._closed = False
        self._watch_w = -1
        self._watch_proc: Optional[subprocess.Popen] = None
        self.mountpoint = self._check_mountpoint(mountpoint, nonempty, overmount)
        Mount.history.append(self.mountpoint)
        root = os.geteuid() == 0
        if allow_other is None:
            allow_other = root
        if method == "auto":
            method = "mount" if root else "fusermount"
        if method not in ("mount", "fusermount"):
            raise ValueError(f"unknown mount method {method!r}")
        self.method = method
        n = next(Mount._serial)
        #: the mount's source in /proc/mounts: ``<fsname>:<pid>`` (``.<n>`` from a process's second mount on)
        self.source = f"{fsname}:{os.getpid()}" + (f".{n}" if n > 1 else "")
        opts = [f"rootmode={stat.S_IFDIR:o}", f"user_id={os.geteuid()}", f"group_id={os.getegid()}",
                "default_permissions"]
        if allow_other:
            opts.append("allow_other")
        before = {m.mount_id for m in mountinfo()}
        try:
            if method == "mount":
                self._mount_syscall(fsname, opts, read_only)
            else:
                self._mount_fusermount(fsname, opts, read_only)
            self.identity = self._find_ours(before)
            if watchdog:
                self._start_watchdog()
        except BaseException:
            self.close()
            raise

    @staticmethod
    def _check_mountpoint(mountpoint: str, nonempty: bool, overmount: bool) -> str:
        path = resolve(mountpoint)
        top = mount_at(path)
        if top is not None and top.is_fuse:
            if not overmount:
                raise MountError(errno.EBUSY, f"{path} is already a FUSE mount ({top.fstype}, connection "
                                 f"{top.connection}): stop the server that serves it (or 'fusd abort {path}' if "
                                 "it is stuck), or mount on top of it with overmount=True (-o overmount)")
            return path  # listing it would ask that server (and hang if it is stuck)
        if not os.path.lexists(path):
            raise MountError(errno.ENOENT, f"mount point {path} does not exist: create it (mkdir -p {path})")
        if not os.path.isdir(path):
            raise MountError(errno.ENOTDIR, f"mount point {path} is not a directory: give an empty directory")
        if not nonempty:
            try:
                entries = os.listdir(path)
            except OSError as exc:
                raise MountError(exc.errno, f"cannot read mount point {path}: {exc.strerror}") from None
            if entries:
                raise MountError(errno.ENOTEMPTY, f"mount point {path} is not empty ({len(entries)} entries, e.g. "
                                 f"{sorted(entries)[0]!r}; the devices would hide them): use an empty directory, "
                                 "or nonempty=True (-o nonempty)")
        return path

    def _find_ours(self, before: set) -> MountInfo:
        """Our new line of mountinfo: a FUSE mount at our path with our source, not there before."""
        new = [m for m in mountinfo() if m.mount_id not in before and m.is_fuse and m.mountpoint == self.mountpoint
               and m.source == self.source]
        top = mount_at(self.mountpoint, new)
        if top is None:
            raise MountError(errno.EIO, f"mounted {self.mountpoint} but cannot find the mount in {MOUNTINFO}")
        return top

    # -- root: mount(2) ----------------------------------------------------------------------
    def _mount_syscall(self, fsname: str, opts: List[str], read_only: bool) -> None:
        try:
            self.fd = os.open("/dev/fuse", os.O_RDWR | os.O_CLOEXEC)
        except OSError as exc:
            raise MountError(exc.errno, f"cannot open /dev/fuse: {exc.strerror} "
                             "(is the fuse module loaded? are you allowed to open it?)") from None
        data = ",".join([f"fd={self.fd}"] + opts)
        flags = MS_NOSUID | MS_NODEV | (MS_RDONLY if read_only else 0)
        _mount(self.source, self.mountpoint, f"fuse.{fsname}", flags, data)

    def _start_watchdog(self) -> None:
        """A child that unmounts when we die, however we die (it holds the read end of our pipe)."""
        assert self.identity is not None
        r, w = os.pipe2(os.O_CLOEXEC)
        ready_r, ready_w = os.pipe2(os.O_CLOEXEC)
        try:
            try:
                self._watch_proc = subprocess.Popen(
                    [sys.executable, "-I", "-S", "-c", _WATCHDOG, str(r), str(ready_w), os.path.abspath(__file__),
                     self.mountpoint, self.identity.identity], pass_fds=(r, ready_w),
                    stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                    start_new_session=True)
            except BaseException:
                os.close(w)
                raise
            finally:
                os.close(r)
                os.close(ready_w)
            self._watch_w = w
            # End of file when it closed its end (or died): its start-up is not the clients' to pay.
            waiter = select.poll()
            waiter.register(ready_r, select.POLLIN)
            waiter.poll(WATCHDOG_READY_TIMEOUT * 1000)
        finally:
            os.close(ready_r)

    # -- everyone: fusermount3 ---------------------------------------------------------------
    def _mount_fusermount(self, fsname: str, opts: List[str], read_only: bool) -> None:
        exe = shutil.which("fusermount3")
        if exe is None:
            raise MountError(errno.ENOENT, "fusermount3 not found: install the fuse3 package "
                             "(or run as root to mount with mount(2))")
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        fm_opts = [o for o in opts if not o.startswith(("rootmode=", "user_id=", "group_id="))]
        fm_opts += [f"fsname={self.source}", f"subtype={fsname}", "nosuid", "nodev"] + (["ro"] if read_only else [])
        # No auto_unmount: fusermount3's helper would unmount whatever FUSE mount of ours is on top of
        # the path when we exit; our watchdog checks the mount's identity first.
        env = dict(os.environ, _FUSE_COMMFD=str(theirs.fileno()))
        with ours:
            try:
                proc = subprocess.Popen([exe, "-o", ",".join(fm_opts), "--", self.mountpoint], env=env,
                                        pass_fds=(theirs.fileno(),), stdin=subprocess.DEVNULL,
                                        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            finally:
                theirs.close()
            try:
                _msg, fds, _flags, _addr = socket.recv_fds(ours, 1, 1)
            except OSError:
                fds = []
            # fusermount3 exits once it has passed the fd (or failed): its stderr says why it failed.
            try:
                _out, err = proc.communicate(timeout=FUSERMOUNT_TIMEOUT)
            except subprocess.TimeoutExpired:
                proc.kill()
                _out, err = proc.communicate()
                err = err or f"did not exit within {FUSERMOUNT_TIMEOUT:g} s".encode()
        if fds:
            self.fd = fds[0]
            os.set_inheritable(self.fd, False)
            for extra in fds[1:]:
                os.close(extra)
            return
        message = err.decode(errors="replace").strip().replace("\n", "; ") or \
            f"no file descriptor received (exit status {proc.returncode})"
        hint = ""
        if "user_allow_other" in message:
            hint = " (add user_allow_other to /etc/fuse.conf as root, or mount without allow_other)"
        raise MountError(errno.EPERM, f"fusermount3 could not mount {self.mountpoint}: {message}{hint}")

    # -- who is mounted -----------------------------------------------------------------------
    @property
    def connection(self) -> Optional[int]:
        """The FUSE connection number (``/sys/fs/fuse/connections/<n>``); None before mounting."""
        return None if self.identity is None else self.identity.connection

    def is_ours(self) -> bool:
        """True while the topmost mount at ``mountpoint`` is the one we made (what unmounting would hit)."""
        if self.identity is None:
            return False
        top = mount_at(self.mountpoint)
        return top is not None and top.identity == self.identity.identity

    def still_mounted(self) -> bool:
        """True while our mount exists anywhere in the mount table (on top, covered, or moved)."""
        if self.identity is None:
            return False
        return find(self.identity.identity) is not None

    def abort(self) -> None:
        """Abort our FUSE connection (fusectl ``abort``): waiting and later requests fail with ENOTCONN.

        Use it to free clients stuck on a server that stopped answering.  The mount
        stays until ``close()`` (or an operator) unmounts it.
        """
        if self.identity is None:
            raise MountError(errno.ENOTCONN, f"{self.mountpoint} is not mounted by us")
        abort_connection(self.identity.connection)

    # -- leaving -------------------------------------------------------------------------------
    def unmount(self) -> bool:
        """Unmount now (lazily, so busy files do not block us) if nothing is mounted on top of ours.

        Our mount is found by its identity wherever it is now (a directory above it may
        have been renamed).  Returns True if we unmounted it.  A mount of someone
        else's on top of ours (``overmount``) is never touched: ours stays under it,
        and that is logged.
        """
        if self.identity is None or not self.still_mounted():
            return False
        top = unmount_if_on_top(self.identity.identity)
        if top is None:
            return True
        log.warning("fusd: not unmounting %s: mount %s of %s is on top of ours (%s); unmount it first, "
                    "then 'umount %s'", top.mountpoint, top.identity, top.fstype, self.identity.identity,
                    top.mountpoint)
        return False

    def close(self) -> None:
        """Unmount (if ours is on top), close the channel and stop the watchdog.  Safe to call twice."""
        if self._closed:
            return
        self._closed = True
        try:
            if self.fd >= 0:
                self.unmount()
        finally:
            if self.fd >= 0:
                os.close(self.fd)
                self.fd = -1
            if self._watch_w >= 0:
                os.close(self._watch_w)  # the watchdog wakes, finds our mount gone, exits
                self._watch_w = -1
            if self._watch_proc is not None:
                _reap(self._watch_proc)

    def __enter__(self) -> Mount:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _reap(proc: subprocess.Popen) -> None:
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
