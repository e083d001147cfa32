"""Live tap: sit between the kernel and an unmodified FUSE daemon and record every message.

    python -m fusd_wire tap -o cap.pcapng MOUNTPOINT -- ./daemon -f /dev/fd/{fd}

The tap opens ``/dev/fuse``, mounts it on MOUNTPOINT with mount(2) (root only), and starts
the daemon with one end of an ``AF_UNIX``/``SOCK_SEQPACKET`` socketpair as its "device":
libfuse 3 accepts ``/dev/fd/N`` as a mountpoint and then just read()s and writev()s the
fd.  SEQPACKET keeps message boundaries, so one read is one request and one writev one
reply, exactly as on /dev/fuse.  Two relay threads copy kernel -> daemon and daemon ->
kernel, recording each message before passing it on.

Limits (why this is not for every daemon): the daemon must use plain read/writev (no
``splice``, no ``FUSE_DEV_IOC_CLONE`` clone fds -- ioctls on a socket fail), and mount
options the daemon would have passed to mount(2) (allow_other, fsname, ...) are the
tap's instead.  Reads block in the kernel, so messages are relayed as they come;
the recorded bytes are exactly what each side sent.
"""

from __future__ import annotations

import ctypes
import errno
import os
import socket
import subprocess
import threading
from typing import List, Optional, Sequence

from .pcapng import INBOUND, OUTBOUND
from .recorder import Recorder

_BUF = (1 << 20) + 4096 * 2  # max_write up to 1 MiB plus headers
_MNT_DETACH = 2
_MS_NOSUID, _MS_NODEV = 2, 4


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def _mount(fd: int, mountpoint: str, fsname: str) -> None:
    st = os.stat(mountpoint)
    opts = f"fd={fd},rootmode={st.st_mode & 0o170000:o},user_id={os.getuid()},group_id={os.getgid()}"
    if _libc().mount(fsname.encode(), mountpoint.encode(), f"fuse.{fsname}".encode(), _MS_NOSUID | _MS_NODEV,
                     opts.encode()) != 0:
        e = ctypes.get_errno()
        raise OSError(e, f"mount {mountpoint}: {os.strerror(e)}")


def _umount(mountpoint: str) -> None:
    _libc().umount2(mountpoint.encode(), _MNT_DETACH)


def run_tap(mountpoint: str, argv: Sequence[str], output: str, *, fsname: str = "fusdtap") -> int:
    """Mount, start the daemon, relay and record until the file system is unmounted or the
    daemon exits; always unmounts.  Returns 0 when the file system was unmounted (we then
    stopped the daemon with SIGTERM, as ENODEV would have), else the daemon's exit status."""
    mountpoint = os.path.abspath(mountpoint)
    dev = os.open("/dev/fuse", os.O_RDWR | os.O_CLOEXEC)
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    for s in (ours, theirs):
        for opt in (getattr(socket, "SO_SNDBUFFORCE", 32), getattr(socket, "SO_RCVBUFFORCE", 33)):
            try:
                s.setsockopt(socket.SOL_SOCKET, opt, 4 * _BUF)
            except OSError:
                pass
    child_fd = theirs.fileno()
    args: List[str] = [a.replace("{fd}", str(child_fd)) for a in argv]
    if not any("{fd}" in a for a in argv):
        args.append(f"/dev/fd/{child_fd}")
    rec = Recorder(output)
    conn = rec.connection(f"tap {mountpoint}")
    proc: Optional[subprocess.Popen] = None
    try:
        _mount(dev, mountpoint, fsname)
        proc = subprocess.Popen(args, pass_fds=(child_fd,))
        theirs.close()

        stopped_by_us: List[bool] = []

        def kernel_to_daemon() -> None:
            while True:
                try:
                    data = os.read(dev, _BUF)
                except OSError as e:
                    if e.errno in (errno.EINTR, errno.EAGAIN, errno.ENOENT):
                        continue
                    break  # ENODEV: unmounted
                rec.record(conn, INBOUND, data)
                try:
                    ours.send(data)
                except OSError:
                    break
            # Unmounted.  A daemon on /dev/fuse would now read ENODEV and exit cleanly; a
            # socket cannot say ENODEV, so ask politely (libfuse exits its loop on SIGTERM),
            # and only then close the socket (EOF: libfuse calls that a short read).
            if proc is not None and proc.poll() is None:
                stopped_by_us.append(True)
                proc.terminate()
                try:
                    proc.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    pass
            try:
                ours.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

        def daemon_to_kernel() -> None:
            while True:
                try:
                    data = ours.recv(_BUF)
                except OSError:
                    break
                if not data:
                    break
                rec.record(conn, OUTBOUND, data)
                try:
                    os.write(dev, data)
                except OSError as e:
                    if e.errno == errno.ENOENT:  # the request was interrupted; the kernel dropped it
                        continue
                    if e.errno == errno.ENODEV:
                        break
                    # EINVAL etc.: a malformed reply; it is recorded, the kernel said no

        threads = [threading.Thread(target=f, daemon=True) for f in (kernel_to_daemon, daemon_to_kernel)]
        for t in threads:
            t.start()
        status = proc.wait()
        _umount(mountpoint)  # wakes kernel_to_daemon with ENODEV if the daemon went first
        for t in threads:
            t.join(timeout=10)
        return 0 if stopped_by_us else status
    finally:
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()
        _umount(mountpoint)
        rec.close()
        ours.close()
        if theirs.fileno() != -1:
            theirs.close()
        os.close(dev)
