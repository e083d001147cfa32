"""Live tap: sit between the kernel and an unmodified FUSE daemon and record every message.

    python -m fusd_wire tap -o cap.pcapng MOUNTPOINT -- bindfs -f SRC MOUNTPOINT     # libfuse 2 or 3
    python -m fusd_wire tap -o cap.pcapng MOUNTPOINT -- ./daemon -f /dev/fd/{fd}     # libfuse 3, fd form

The tap opens ``/dev/fuse`` and mounts it (mount(2): root only); the daemon gets one end
of an ``AF_UNIX``/``SOCK_SEQPACKET`` socketpair as its "device" (SEQPACKET keeps one
request per read, as on /dev/fuse), and two relay threads copy and record each message.

How the daemon gets the socket:

- **As fusermount** (default: the daemon's own command line, its own mountpoint and
  options).  libfuse 2 and 3 mount through ``fusermount``/``fusermount3`` when mount(2)
  fails with EPERM: they run it with ``_FUSE_COMMFD`` set and wait for the device fd to
  come back over that socket.  The daemon runs in a private mount namespace (slave: it
  still sees the host's mounts, including ours) where ``fusermount_shim.py`` is
  bind-mounted over the fusermount binaries, and without ``CAP_SYS_ADMIN`` (dropped from
  its bounding set) so that its own mount(2) fails.  The shim asks the tap to mount with
  the daemon's options (fsname, subtype, allow_other, ...) and hands over the relay socket.
- **As /dev/fd/N** (an argument containing ``{fd}``): libfuse 3 accepts an open fd as its
  mountpoint; the tap mounts first with its own options.

Splicing daemons (libfuse's ``fuse_reply_data``, fuse-overlayfs) send a reply with
``splice(2)`` from a pipe; into a socket that arrives as several packets.  The relay
reassembles each daemon message by its header's ``len`` (recorded once, with a comment
saying how many fragments it came in) and refuses -- stops the daemon, unmounts, exits 1
with the reason -- anything that cannot be one message (a fragment running past the
declared length, a header shorter than ``fuse_out_header``, or fragments of two replies
interleaved, which a multi-threaded splicing daemon can produce on a socket: run it
single-threaded, ``-s``).  Nothing is forwarded to the kernel before it is whole.

Limits: no ``clone_fd`` (``FUSE_DEV_IOC_CLONE`` on a socket fails and libfuse falls back to
one fd); a daemon that needs ``CAP_SYS_ADMIN`` for something else than mounting needs the
``{fd}`` form.
"""

from __future__ import annotations

import ctypes
import errno
import json
import os
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import threading
from importlib import resources
from typing import Any, Dict, List, Optional, Sequence, Set, Tuple

from .pcapng import INBOUND, OUTBOUND
from .recorder import Recorder

_BUF = (1 << 20) + 4096 * 2  # max_write up to 1 MiB plus headers
_MNT_DETACH = 2
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_SYNCHRONOUS = 1, 2, 4, 8, 16
MS_DIRSYNC, MS_NOATIME, MS_NODIRATIME, MS_BIND, MS_REC, MS_SLAVE = 128, 1024, 2048, 4096, 16384, 1 << 19
_CLONE_NEWNS = 0x00020000
_PR_CAPBSET_DROP, _CAP_SYS_ADMIN = 24, 21
_OUT_HEADER = struct.Struct("<IiQ")
_FUSERMOUNTS = ("/usr/bin/fusermount3", "/usr/bin/fusermount", "/bin/fusermount3", "/bin/fusermount",
                "/usr/local/bin/fusermount3", "/usr/local/bin/fusermount")
#: fusermount -o options: mount flags (set, clear) and options the kernel takes as they are
_FLAG_OPTS = {"ro": (MS_RDONLY, 0), "rw": (0, MS_RDONLY), "nosuid": (MS_NOSUID, 0), "suid": (0, MS_NOSUID),
              "nodev": (MS_NODEV, 0), "dev": (0, MS_NODEV), "noexec": (MS_NOEXEC, 0), "exec": (0, MS_NOEXEC),
              "sync": (MS_SYNCHRONOUS, 0), "async": (0, MS_SYNCHRONOUS), "dirsync": (MS_DIRSYNC, 0),
              "noatime": (MS_NOATIME, 0), "atime": (0, MS_NOATIME), "nodiratime": (MS_NODIRATIME, 0)}
_KERNEL_OPTS = ("default_permissions", "allow_other", "max_read=", "blksize=")
_IGNORED_OPTS = ("auto_unmount", "nonempty", "relatime", "strictatime", "lazytime", "nolazytime")


class TapError(RuntimeError):
    """The tap cannot carry on without corrupting the session; the message says why."""


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def mount_options(opts: str) -> Tuple[int, List[str], Optional[str], Optional[str], List[str]]:
    """fusermount's ``-o`` list -> (mount flags, kernel options, fsname, subtype, ignored)."""
    flags, kernel, ignored = MS_NOSUID | MS_NODEV, [], []
    fsname = subtype = None
    for opt in (o for o in opts.split(",") if o):
        if opt in _FLAG_OPTS:
            on, off = _FLAG_OPTS[opt]
            flags = (flags | on) & ~off
        elif opt == "allow_root":
            kernel.append("allow_other")  # fusermount checks the user may; the tap is root
        elif opt in _KERNEL_OPTS or any(opt.startswith(k) for k in _KERNEL_OPTS if k.endswith("=")):
            kernel.append(opt)
        elif opt.startswith("fsname="):
            fsname = opt[len("fsname="):]
        elif opt.startswith("subtype="):
            subtype = opt[len("subtype="):]
        else:
            ignored.append(opt)
    return flags, kernel, fsname, subtype, [o for o in ignored if o not in _IGNORED_OPTS]


def _mount(fd: int, mountpoint: str, fsname: str, subtype: Optional[str] = None, flags: int = MS_NOSUID | MS_NODEV,
           kernel: Sequence[str] = ("default_permissions",)) -> None:
    st = os.stat(mountpoint)
    opts = ",".join([f"fd={fd}", f"rootmode={st.st_mode & 0o170000:o}", f"user_id={os.getuid()}",
                     f"group_id={os.getgid()}", *kernel])
    fstype = f"fuse.{subtype}" if subtype else "fuse"
    if _libc().mount(fsname.encode(), mountpoint.encode(), fstype.encode(), flags, opts.encode()) != 0:
        e = ctypes.get_errno()
        raise OSError(e, f"mount {mountpoint}: {os.strerror(e)}")


def _umount(mountpoint: str) -> None:
    _libc().umount2(mountpoint.encode(), _MNT_DETACH)


class Reassembler:
    """Daemon -> kernel packets to whole FUSE messages, by ``fuse_out_header.len``.

    ``feed(packet)`` returns the finished message (and how many packets it took) or None
    while one is incomplete; raises ``TapError`` when the packets cannot be one message.
    ``pending``: uniques of requests that wait for a reply (to recognise a second reply
    starting while another is incomplete).
    """

    def __init__(self, pending: Optional[Set[int]] = None) -> None:
        self.pending = pending if pending is not None else set()
        self._buf = bytearray()
        self._need = 0
        self._parts = 0
        self._unique = 0

    def feed(self, packet: bytes) -> Optional[Tuple[bytes, int]]:
        if not self._need:
            if len(packet) < _OUT_HEADER.size:
                raise TapError(f"the daemon wrote {len(packet)} bytes, shorter than a fuse_out_header (16)")
            declared, _, unique = _OUT_HEADER.unpack_from(packet)
            if declared == len(packet):
                return packet, 1
            if declared < len(packet):
                raise TapError(f"the daemon wrote {len(packet)} bytes at once, but their header (unique {unique}) "
                               f"says {declared}")
            if declared > _BUF:
                raise TapError(f"a reply header (unique {unique}) says {declared} bytes, more than any FUSE "
                               f"message ({_BUF})")
            self._buf[:] = packet
            self._need, self._parts, self._unique = declared, 1, unique
            return None
        if len(packet) >= _OUT_HEADER.size:
            declared, error, unique = _OUT_HEADER.unpack_from(packet)
            if unique != self._unique and unique in self.pending and _OUT_HEADER.size <= declared <= _BUF \
                    and -4095 <= error <= 0:
                raise TapError(f"a reply to unique {unique} started while the one to unique {self._unique} was "
                               f"incomplete ({len(self._buf)} of {self._need} bytes): fragments of two spliced "
                               "replies interleave on the socket; run the daemon single-threaded (-s)")
        self._buf += packet
        self._parts += 1
        if len(self._buf) > self._need:
            raise TapError(f"the reply to unique {self._unique} says {self._need} bytes, its fragments add up "
                           f"to {len(self._buf)}")
        if len(self._buf) < self._need:
            return None
        done, parts = bytes(self._buf), self._parts
        self._buf.clear()
        self._need = 0
        return done, parts

    @property
    def incomplete(self) -> int:
        """Bytes of a message still being reassembled (0: none)."""
        return len(self._buf) if self._need else 0


class Tap:
    """One tapped daemon: mount, relay, record, clean up.  ``run()`` returns the exit status."""

    def __init__(self, mountpoint: str, argv: Sequence[str], output: str, *, fsname: str = "fusdtap") -> None:
        self.mountpoint = os.path.abspath(mountpoint)
        self.fd_form = any("{fd}" in a for a in argv)
        self.argv = list(argv)
        self.fsname = fsname
        self.rec = Recorder(output)
        self.conn = self.rec.connection(f"tap {self.mountpoint}")
        self.dev = -1
        self.ours, self.theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        for s in (self.ours, self.theirs):
            for opt in (getattr(socket, "SO_SNDBUFFORCE", 32), getattr(socket, "SO_RCVBUFFORCE", 33)):
                try:
                    s.setsockopt(socket.SOL_SOCKET, opt, 4 * _BUF)
                except OSError:
                    pass
        self.proc: Optional[subprocess.Popen] = None
        self.mounted = False
        self.failure: Optional[str] = None
        self.stopped_by_us = False
        self.pending: Set[int] = set()
        self.threads: List[threading.Thread] = []
        self._lock = threading.Lock()
        self._tmp = tempfile.mkdtemp(prefix="fusd-tap-")
        self._ctl: Optional[socket.socket] = None

    # ------------------------------------------------------------------ lifecycle
    def run(self) -> int:
        try:
            if self.fd_form:
                self._mount_now(self.fsname, None, MS_NOSUID | MS_NODEV, ["default_permissions"])
                child_fd = self.theirs.fileno()
                args = [a.replace("{fd}", str(child_fd)) for a in self.argv]
                self.proc = subprocess.Popen(args, pass_fds=(child_fd,))
                self.theirs.close()
                self._start_relay()
            else:
                self._start_as_fusermount()
            assert self.proc is not None
            status = self.proc.wait()
            _umount(self.mountpoint)  # wakes the kernel side with ENODEV if the daemon went first
            for t in self.threads:
                t.join(timeout=10)
            if self.failure:
                print(f"fusd tap: {self.failure}", file=sys.stderr)
                return 1
            return 0 if self.stopped_by_us else status
        finally:
            self._cleanup()

    def _cleanup(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        if self.mounted:
            _umount(self.mountpoint)
        self.rec.close()
        if self._ctl is not None:
            try:
                self._ctl.shutdown(socket.SHUT_RDWR)  # wakes the control thread's accept()
            except OSError:
                pass
        for s in (self.ours, self.theirs, self._ctl):
            if s is not None:
                s.close()
        if self.dev >= 0:
            os.close(self.dev)
        shutil.rmtree(self._tmp, ignore_errors=True)

    def _mount_now(self, fsname: str, subtype: Optional[str], flags: int, kernel: Sequence[str]) -> None:
        self.dev = os.open("/dev/fuse", os.O_RDWR | os.O_CLOEXEC)
        _mount(self.dev, self.mountpoint, fsname, subtype, flags, kernel)
        self.mounted = True

    def _abort(self, reason: str) -> None:
        """Refuse to go on: say why, stop the daemon, unmount, answer what is pending with EIO."""
        with self._lock:
            if self.failure is None:
                self.failure = reason
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
        _umount(self.mountpoint)
        for unique in list(self.pending):
            self._fail(unique)

    def _fail(self, unique: int) -> None:
        self.pending.discard(unique)
        try:
            os.write(self.dev, _OUT_HEADER.pack(16, -errno.EIO, unique))
        except OSError:
            pass

    # ------------------------------------------------------------------ as fusermount
    def _start_as_fusermount(self) -> None:
        shim = os.path.join(self._tmp, "fusermount")
        source = resources.files(__package__).joinpath("fusermount_shim.py").read_text(encoding="utf-8")
        with open(shim, "w") as f:
            f.write(f"#!{sys.executable} -S\n{source}")
        os.chmod(shim, 0o755)
        os.symlink(shim, os.path.join(self._tmp, "fusermount3"))
        control = os.path.join(self._tmp, "control")
        self._ctl = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self._ctl.bind(control)
        self._ctl.listen(4)
        targets = sorted({os.path.realpath(p) for p in _FUSERMOUNTS if os.path.exists(p)})
        env = dict(os.environ, FUSD_TAP_CONTROL=control, PATH=self._tmp + os.pathsep + os.environ.get("PATH", ""))
        t = threading.Thread(target=self._serve_control, name="fusd-tap-control", daemon=True)
        t.start()
        self.proc = subprocess.Popen(self.argv, env=env, preexec_fn=_isolate(shim, targets))

    def _serve_control(self) -> None:
        assert self._ctl is not None
        while True:
            try:
                conn, _ = self._ctl.accept()
            except OSError:
                return
            with conn:
                try:
                    request = json.loads(conn.recv(65536).decode() or "{}")
                    answer, fds = self._fusermount(request)
                except (OSError, ValueError) as exc:
                    answer, fds = {"ok": False, "error": str(exc)}, []
                try:
                    socket.send_fds(conn, [json.dumps(answer).encode()], fds)
                except OSError:
                    pass
                if fds:
                    self.theirs.close()  # the daemon has it now

    def _fusermount(self, request: Dict[str, Any]) -> Tuple[Dict[str, Any], List[int]]:
        argv = list(request.get("argv", []))
        if any(a in ("-u", "--unmount") for a in argv):
            return {"ok": True}, []  # the daemon's own unmount: ours follows when it exits
        if "--sync-init" in argv:
            return {"ok": False, "error": "fusermount --sync-init is not supported by the tap"}, []
        opts = ""
        target = None
        it = iter(range(len(argv)))
        for i in it:
            if argv[i] == "-o" and i + 1 < len(argv):
                opts = ",".join(o for o in (opts, argv[i + 1]) if o)
                next(it, None)
            elif argv[i] == "--" and i + 1 < len(argv):
                target = argv[i + 1]
                break
            elif not argv[i].startswith("-"):
                target = argv[i]
        if target is None:
            return {"ok": False, "error": f"no mountpoint in {argv!r}"}, []
        target = os.path.realpath(os.path.join(request.get("cwd", "/"), target))
        if target != os.path.realpath(self.mountpoint):
            return {"ok": False, "error": f"the daemon asked to mount {target}, the tap was started for "
                                          f"{self.mountpoint}"}, []
        if self.mounted:
            return {"ok": False, "error": "already mounted: the tap serves one mount"}, []
        flags, kernel, fsname, subtype, ignored = mount_options(opts)
        if ignored:
            print(f"fusd tap: mount options not passed on: {','.join(ignored)}", file=sys.stderr)
        self._mount_now(fsname or self.fsname, subtype, flags, kernel)
        self._start_relay()
        return {"ok": True}, [self.theirs.fileno()]

    # ------------------------------------------------------------------ relay
    def _start_relay(self) -> None:
        for f in (self._kernel_to_daemon, self._daemon_to_kernel):
            t = threading.Thread(target=f, name=f"fusd-tap-{f.__name__[1:]}", daemon=True)
            self.threads.append(t)
            t.start()

    def _kernel_to_daemon(self) -> None:
        no_reply = (2, 36, 42)  # FORGET, INTERRUPT, BATCH_FORGET: the kernel expects no answer
        while True:
            try:
                data = os.read(self.dev, _BUF)
            except OSError as e:
                if e.errno in (errno.EINTR, errno.EAGAIN, errno.ENOENT):
                    continue
                break  # ENODEV: unmounted
            self.rec.record(self.conn, INBOUND, data)
            if len(data) >= 16:
                opcode, unique = struct.unpack_from("<IQ", data, 4)
                if opcode not in no_reply:
                    self.pending.add(unique)
                    if self.failure is not None:  # refused: nothing reaches the daemon any more
                        self._fail(unique)
                        continue
            try:
                self.ours.send(data)
            except OSError:
                break
        # Unmounted.  A daemon on /dev/fuse would now read ENODEV and exit cleanly; a
        # socket cannot say ENODEV, so ask politely (libfuse exits its loop on SIGTERM),
        # and only then close the socket (EOF: libfuse calls that a short read).
        proc = self.proc
        if proc is not None and proc.poll() is None:
            self.stopped_by_us = True
            proc.terminate()
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass
        try:
            self.ours.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def _daemon_to_kernel(self) -> None:
        joiner = Reassembler(self.pending)
        while True:
            try:
                packet = self.ours.recv(_BUF)
            except OSError:
                break
            if not packet:
                if joiner.incomplete:
                    self._abort(f"the daemon closed its channel in the middle of a message "
                                f"({joiner.incomplete} bytes)")
                break
            try:
                whole = joiner.feed(packet)
            except TapError as exc:
                self.rec.record(self.conn, OUTBOUND, packet, comment=f"refused by the tap: {exc}")
                self._abort(str(exc))
                break
            if whole is None:
                continue
            data, parts = whole
            self.rec.record(self.conn, OUTBOUND, data,
                            comment=f"reassembled from {parts} socket packets (splice)" if parts > 1 else None)
            if len(data) >= 16:
                self.pending.discard(_OUT_HEADER.unpack_from(data)[2])
            try:
                os.write(self.dev, data)
            except OSError as e:
                if e.errno == errno.ENOENT:  # the request was interrupted; the kernel dropped it
                    continue
                if e.errno in (errno.ENODEV, errno.EBADF):
                    break
                # EINVAL etc.: a malformed reply; it is recorded, the kernel said no


def _isolate(shim: str, targets: Sequence[str]) -> Any:
    """A preexec function: private (slave) mount namespace, the shim over fusermount, no CAP_SYS_ADMIN."""
    libc = _libc()

    def preexec() -> None:
        if libc.unshare(_CLONE_NEWNS) != 0:
            raise OSError(ctypes.get_errno(), "unshare(CLONE_NEWNS)")
        if libc.mount(b"none", b"/", None, MS_REC | MS_SLAVE, None) != 0:
            raise OSError(ctypes.get_errno(), "mount --make-rslave /")
        for target in targets:
            if libc.mount(shim.encode(), target.encode(), None, MS_BIND, None) != 0:
                raise OSError(ctypes.get_errno(), f"bind mount over {target}")
        if libc.prctl(_PR_CAPBSET_DROP, _CAP_SYS_ADMIN, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "drop CAP_SYS_ADMIN")

    return preexec


def run_tap(mountpoint: str, argv: Sequence[str], output: str, *, fsname: str = "fusdtap") -> int:
    """Mount, start the daemon, relay and record until the file system is unmounted or the
    daemon exits; always unmounts.  Returns 0 when the file system was unmounted (we then
    stopped the daemon with SIGTERM, as ENODEV would have), 1 when the tap had to refuse a
    message (the reason is printed), else the daemon's exit status."""
    return Tap(mountpoint, argv, output, fsname=fsname).run()


__all__ = ["Reassembler", "Tap", "TapError", "mount_options", "run_tap"]
