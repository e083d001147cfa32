"""Getting a /dev/fuse channel mounted, and making sure it gets unmounted.

Two ways in:
- root: open ``/dev/fuse`` and call ``mount(2)`` through ctypes with ``fd=N``;
- anyone else: ``fusermount3`` mounts for us and passes the fd back over a
  socketpair (``_FUSE_COMMFD``, SCM_RIGHTS).

Every way out unmounts: ``Mount.close()`` on normal exit, and a watchdog for
when this process is SIGKILLed.  As root the watchdog is a tiny child process
blocked on a pipe only we hold; when we die the pipe breaks and it lazily
unmounts.  With fusermount3 the same job is done by its ``auto_unmount`` option.

The watchdog must not cost the server anything while it serves, yet it is a
second interpreter, on the server's CPU when the server is pinned.  Started as
plain ``python -c`` it took ~27 ms of CPU (site, the editable-install finder,
ctypes.util), mostly after the mount was already served: a client starting
right then lost ~2 µs per call on average over its first 10,000 calls, and its
first 1,000-4,000 calls ran 1.1 µs slower at the median (issue 18).  So it
starts lean (``-I -S``, nothing imported before it blocks: ~12 ms of CPU, 9.6
instead of 13.3 MB resident; ctypes only when it unmounts), and the mount
waits until it is blocked (it closes a second pipe then, at most
``WATCHDOG_READY_TIMEOUT``) so that its start-up is over before anything is
served.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import select
import shutil
import socket
import stat
import subprocess
import sys
from typing import List, Optional

MS_NOSUID, MS_NODEV = 2, 4
MNT_DETACH = 2
#: seconds a mount waits for its watchdog to be up (it works anyway once it is; slow machines)
WATCHDOG_READY_TIMEOUT = 10.0

_libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
_libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p]
_libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]


class MountError(OSError):
    """Mounting failed; the message says why and what to try."""


def _mount(source: str, target: str, fstype: str, flags: int, data: str) -> None:
    if _libc.mount(source.encode(), target.encode(), fstype.encode(), flags, data.encode()) != 0:
        err = ctypes.get_errno()
        raise MountError(err, f"mount({target}): {os.strerror(err)}")


def umount(target: str, lazy: bool = True) -> bool:
    """Unmount ``target`` (lazily by default); False if it was not mounted."""
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


# The watchdog: blocks on a pipe whose write end only the server holds.  Run with
# ``-I -S`` and only os/signal/sys (loaded by the bare interpreter anyway) before the
# read: it must start cheaply, see the module docstring.
_WATCHDOG = r"""
import os, signal, sys
for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT):
    signal.signal(s, signal.SIG_IGN)
fd, ready, target = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
os.close(ready)  # started: the server may serve now
while True:
    try:
        if not os.read(fd, 64):
            break
    except InterruptedError:
        continue
    except OSError:
        break
import ctypes, ctypes.util
libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
if libc.umount2(target.encode(), 2) != 0 and ctypes.get_errno() == 1:  # EPERM: not root, ask fusermount3
    import subprocess
    subprocess.run(["fusermount3", "-u", "-z", "-q", target], stdin=subprocess.DEVNULL,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
"""


class Mount:
    """A mounted FUSE channel: ``fd`` to serve, ``mountpoint``, and ``close()`` to unmount.

    Args:
        mountpoint: an existing empty directory.
        fsname: shown as the mount's source in /proc/mounts.
        allow_other: let other users (and root) use the files; for non-root mounts
            this needs ``user_allow_other`` in /etc/fuse.conf.
        method: "auto" (mount(2) as root, else fusermount3), "mount" or "fusermount".
        watchdog: unmount even if this process is SIGKILLed.
    """

    #: every mount point this process mounted (tests check none is left mounted)
    history: List[str] = []

    def __init__(self, mountpoint: str, *, fsname: str = "fusd", allow_other: Optional[bool] = None,
                 method: str = "auto", watchdog: bool = True) -> None:
        self.mountpoint = os.path.abspath(mountpoint)
        Mount.history.append(self.mountpoint)
        self.fd = -1
        self.method = method
        self._closed = False
        self._watch_w = -1
        self._watch_proc: Optional[subprocess.Popen] = None
        self._commsock: Optional[socket.socket] = None
        self._fusermount: Optional[subprocess.Popen] = None
        if not os.path.isdir(self.mountpoint):
            raise MountError(errno.ENOTDIR, f"mount point {self.mountpoint} is not a directory")
        root = os.geteuid() == 0
        if allow_other is None:
            allow_other = root
        if method == "auto":
            method = "mount" if root else "fusermount"
        self.method = method
        opts = [f"rootmode={stat.S_IFDIR:o}", f"user_id={os.geteuid()}", f"group_id={os.getegid()}",
                "default_permissions"]
        if allow_other:
            opts.append("allow_other")
        try:
            if method == "mount":
                self._mount_syscall(fsname, opts, watchdog)
            elif method == "fusermount":
                self._mount_fusermount(fsname, opts, watchdog)
            else:
                raise ValueError(f"unknown mount method {method!r}")
        except BaseException:
            self.close()
            raise

    # -- root: mount(2) ----------------------------------------------------------------------
    def _mount_syscall(self, fsname: str, opts: List[str], watchdog: bool) -> None:
        try:
            self.fd = os.open("/dev/fuse", os.O_RDWR | os.O_CLOEXEC)
        except OSError as exc:
            raise MountError(exc.errno, f"cannot open /dev/fuse: {exc.strerror} "
                             "(is the fuse module loaded? are you allowed to open it?)") from None
        data = ",".join([f"fd={self.fd}"] + opts)
        _mount(fsname, self.mountpoint, f"fuse.{fsname}", MS_NOSUID | MS_NODEV, data)
        if watchdog:
            self._start_watchdog()

    def _start_watchdog(self) -> None:
        """A child that unmounts when we die, however we die (it holds the read end of our pipe)."""
        r, w = os.pipe2(os.O_CLOEXEC)
        ready_r, ready_w = os.pipe2(os.O_CLOEXEC)
        try:
            try:
                self._watch_proc = subprocess.Popen(
                    [sys.executable, "-I", "-S", "-c", _WATCHDOG, str(r), str(ready_w), self.mountpoint],
                    pass_fds=(r, ready_w), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL, start_new_session=True)
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
    def _mount_fusermount(self, fsname: str, opts: List[str], watchdog: bool) -> None:
        exe = shutil.which("fusermount3")
        if exe is None:
            raise MountError(errno.ENOENT, "fusermount3 not found: install the fuse3 package "
                             "(or run as root to mount with mount(2))")
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        self._commsock = ours
        fm_opts = [o for o in opts if not o.startswith(("rootmode=", "user_id=", "group_id="))]
        fm_opts += [f"fsname={fsname}", f"subtype={fsname}", "nosuid", "nodev"]
        if watchdog:
            fm_opts.append("auto_unmount")
        env = dict(os.environ, _FUSE_COMMFD=str(theirs.fileno()))
        try:
            self._fusermount = subprocess.Popen(
                [exe, "-o", ",".join(fm_opts), "--", self.mountpoint], env=env, pass_fds=(theirs.fileno(),),
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        finally:
            theirs.close()
        try:
            _msg, fds, _flags, _addr = socket.recv_fds(ours, 1, 1)
        except OSError as exc:
            fds, _ = [], exc
        if not fds:
            err = b""
            if self._fusermount.stderr is not None:
                if not watchdog or self._fusermount.poll() is not None:
                    err = self._fusermount.stderr.read()
            self._fusermount.wait(timeout=10) if not watchdog else None
            raise MountError(errno.EPERM, f"fusermount3 could not mount {self.mountpoint}: "
                             f"{err.decode(errors='replace').strip() or 'no file descriptor received'}")
        self.fd = fds[0]
        os.set_inheritable(self.fd, False)
        if not watchdog:
            self._fusermount.wait(timeout=10)
        else:
            self._start_watchdog()  # auto_unmount alone did not unmount after SIGKILL in our tests

    # -- leaving -------------------------------------------------------------------------------
    def unmount(self) -> None:
        """Unmount now (lazily, so busy files do not block us)."""
        if self.method == "fusermount":
            if is_mounted(self.mountpoint):  # noqa: SIM102 - fusermount3 complains loudly otherwise
                subprocess.run(["fusermount3", "-u", "-z", "-q", self.mountpoint], stdin=subprocess.DEVNULL,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        else:
            umount(self.mountpoint)

    def close(self) -> None:
        """Unmount, close the channel and stop the watchdog.  Safe to call twice."""
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
                os.close(self._watch_w)  # the watchdog wakes, finds nothing mounted, exits
                self._watch_w = -1
            if self._watch_proc is not None:
                _reap(self._watch_proc)
            if self._commsock is not None:
                self._commsock.close()  # fusermount3's auto_unmount watcher exits
            if self._fusermount is not None:
                _reap(self._fusermount)
                if self._fusermount.stderr is not None:
                    self._fusermount.stderr.close()

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
