"""A minimal raw FUSE daemon for tests: real kernel messages, every byte recorded.

Not a test module and not the runtime: a deliberately small daemon, built on
``fusd_wire.Codec`` only, so the tests can show that the codec understands what
THIS machine's kernel actually sends and that the kernel accepts what the codec
builds.  It mounts one file, ``dev``, opened with FOPEN_DIRECT_IO so that every
read/write/ioctl/poll of a client reaches the daemon, and records every message
in both directions (``KernelSession.messages``).

    with KernelSession(tmp_path / "mnt") as s:
        result = run_client(s.file)          # open/read/write/ioctl/poll/close, in a child
        interrupted = run_interrupted_read(s)  # a read the kernel INTERRUPTs

The session ALWAYS unmounts (umount2 MNT_DETACH) and closes /dev/fuse on every
exit path, including exceptions raised by the test body; closing the device fd
aborts the connection, so no client can stay stuck on the mount either.

Also used by ``tools/capture_vectors.py``, which saves a selection of the
captured messages as test data (``select_vectors``).
"""

from __future__ import annotations

import ctypes
import errno
import json
import os
import select
import signal
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from fusd_wire import FAST, Codec, Request, WireError
from fusd_wire import constants as C
from fusd_wire.layouts import layout

FSTYPE = "fuse.fusdtest"
FILE_NAME = "dev"
FILE_INO = 2
FILE_SIZE = 4096
MAX_WRITE = 128 * 1024
READ_DATA = b"fusd:hello, kernel"
#: A read of exactly this many bytes is held by the daemon until the kernel interrupts it.
BLOCKING_READ_SIZE = 333
#: _IOWR('E', 2, uint64_t): the restricted ioctl the client issues; the daemon answers arg + 1.
IOCTL_CMD = (3 << 30) | (8 << 16) | (ord("E") << 8) | 2
POLL_READY = select.POLLIN | select.POLLRDNORM

MS_NOSUID, MS_NODEV = 2, 4
MNT_DETACH = 2

_NO_REPLY = {C.FUSE_FORGET, C.FUSE_BATCH_FORGET, C.FUSE_INTERRUPT, C.FUSE_NOTIFY_REPLY}

_libc = ctypes.CDLL(None, use_errno=True)
_libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_void_p]
_libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]

#: Mountpoints of every session of this process, so fixtures can prove none is left behind.
MOUNTPOINTS: List[str] = []


def available() -> Optional[str]:
    """None if a kernel session can run here, else the reason it cannot (for pytest.skip)."""
    if os.geteuid() != 0:
        return "needs root to mount(2) a FUSE filesystem"
    if not os.path.exists("/dev/fuse"):
        return "/dev/fuse is missing (no FUSE in this kernel/container)"
    try:
        os.close(os.open("/dev/fuse", os.O_RDWR | os.O_CLOEXEC))
    except OSError as exc:
        return f"cannot open /dev/fuse: {exc}"
    return None


def mounted(path: str) -> bool:
    """Whether ``path`` is a mountpoint in /proc/mounts (the kernel's view, not a stat guess)."""
    with open("/proc/mounts") as f:
        return any(line.split()[1] == path for line in f)


class KernelSession:
    """A mounted FUSE filesystem with one file, served by a thread using ``fusd_wire.Codec``.

    Attributes:
        messages: every message, in order: ``("kernel", bytes)`` for what the daemon read,
            ``("daemon", bytes)`` for what it wrote (replies and notifications).
        kernel_minor: the minor the kernel stated in INIT.
        error: an exception the daemon thread died with (re-raised by ``__exit__``).
    """

    def __init__(self, mountpoint: Path, minor: int = C.FUSE_KERNEL_MINOR_VERSION) -> None:
        self.mountpoint = str(mountpoint)
        self.minor = minor  # the daemon's own minor: INIT answers min(kernel, this)
        self.file = os.path.join(self.mountpoint, FILE_NAME)
        self.messages: List[Tuple[str, bytes]] = []
        self.kernel_minor: Optional[int] = None
        self.error: Optional[BaseException] = None
        self.blocked = threading.Event()  # set when the BLOCKING_READ_SIZE read has arrived
        self.interrupted = threading.Event()  # set when it has been answered with EINTR
        self._fd = -1
        self._codec = Codec()
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self._held: Dict[int, Request] = {}  # unique -> the read the daemon is holding
        self._polled: set = set()  # kh values already sent a NOTIFY_POLL
        self._created_dir = False

    # ------------------------------------------------------------------ lifecycle
    def __enter__(self) -> KernelSession:
        if not os.path.isdir(self.mountpoint):
            os.makedirs(self.mountpoint)
            self._created_dir = True
        self._fd = os.open("/dev/fuse", os.O_RDWR | os.O_CLOEXEC)
        try:
            opts = f"fd={self._fd},rootmode=40000,user_id=0,group_id=0".encode()
            if _libc.mount(b"fusdtest", self.mountpoint.encode(), FSTYPE.encode(), MS_NOSUID | MS_NODEV, opts) != 0:
                err = ctypes.get_errno()
                raise OSError(err, f"mount {FSTYPE} on {self.mountpoint}: {os.strerror(err)}")
            MOUNTPOINTS.append(self.mountpoint)
            self._thread = threading.Thread(target=self._serve, name="fusdtest-daemon", daemon=True)
            self._thread.start()
        except BaseException:
            self._teardown()
            raise
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self._teardown()
        if exc_type is None and self.error is not None:
            raise RuntimeError("the test daemon failed") from self.error

    def _teardown(self) -> None:
        """Unmount, stop the daemon, close the device: in that order, whatever state we are in."""
        self._stop.set()
        if mounted(self.mountpoint):
            if _libc.umount2(self.mountpoint.encode(), MNT_DETACH) != 0:
                err = ctypes.get_errno()
                if err != errno.EINVAL:  # EINVAL: not a mountpoint (any more)
                    raise OSError(err, f"umount2 {self.mountpoint}: {os.strerror(err)}")
        self.abort()  # the last /dev/fuse reference goes: the connection is aborted for stragglers
        if self._created_dir:
            try:
                os.rmdir(self.mountpoint)
            except OSError:
                pass

    # ------------------------------------------------------------------ the daemon
    def _serve(self) -> None:
        poller = select.poll()
        poller.register(self._fd, select.POLLIN)
        buf = bytearray(MAX_WRITE + 4096)
        try:
            while not self._stop.is_set():
                if not poller.poll(50):
                    continue
                try:
                    n = os.readv(self._fd, [buf])
                except OSError as exc:
                    if exc.errno in (errno.EINTR, errno.EAGAIN, errno.ENOENT):
                        continue
                    if exc.errno == errno.ENODEV:  # unmounted / aborted
                        return
                    raise
                raw = bytes(buf[:n])
                self.messages.append(("kernel", raw))
                try:
                    req = self._codec.decode_request(raw)
                except WireError as exc:
                    # The codec refused what the kernel sent: answer EIO so the client fails fast
                    # (instead of hanging), remember why, keep serving.
                    self.error = self.error or exc
                    if int.from_bytes(raw[4:8], "little") not in _NO_REPLY:
                        self._send(FAST.fuse_out_header.pack(16, -errno.EIO, int.from_bytes(raw[8:16], "little")))
                    continue
                self._handle(req)
        except BaseException as exc:  # recorded, re-raised in the test thread by __exit__
            self.error = exc

    def abort(self) -> None:
        """Stop the daemon and close /dev/fuse: the kernel aborts the connection, so every
        request still waiting fails with ECONNABORTED and no client can stay stuck."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def _send(self, msg: bytes) -> None:
        self.messages.append(("daemon", msg))
        try:
            os.write(self._fd, msg)
        except OSError as exc:
            if exc.errno != errno.ENOENT:  # ENOENT: the kernel already dropped the request
                raise

    def _reply(self, req: Request, body: Optional[Dict[str, Any]] = None, error: int = 0) -> None:
        self._send(self._codec.encode_reply(req, body, error=error))

    def _fit(self, name: str, value: Dict[str, Any], minor: Optional[int] = None) -> Dict[str, Any]:
        """``value`` without the fields struct ``name`` lacks at the negotiated minor.

        The codec refuses fields an old layout does not have (rather than drop them silently),
        so a daemon that speaks an old minor must leave them out itself.
        """
        return _prune(value, layout(name, self._codec.minor if minor is None else minor))

    def _handle(self, req: Request) -> None:
        op, body = req.opcode, req.body
        if op == C.FUSE_INIT:
            init_in = body.fuse_init_in
            self.kernel_minor = init_in.minor
            wanted = C.FUSE_ASYNC_READ | C.FUSE_BIG_WRITES | C.FUSE_MAX_PAGES | C.FUSE_INIT_EXT
            out = dict(major=C.FUSE_KERNEL_VERSION, minor=min(init_in.minor, self.minor),
                       max_readahead=init_in.max_readahead, flags=init_in.flags & wanted, max_background=16,
                       congestion_threshold=12, max_write=MAX_WRITE, time_gran=1, max_pages=MAX_WRITE // 4096)
            self._reply(req, {"fuse_init_out": self._fit("fuse_init_out", out, out["minor"])})
            self._codec = self._codec.negotiated(out)
        elif op == C.FUSE_LOOKUP:
            if req.header.nodeid == C.FUSE_ROOT_ID and body.name == FILE_NAME.encode():
                self._reply(req, {"fuse_entry_out": self._fit("fuse_entry_out", dict(
                    nodeid=FILE_INO, entry_valid=1, attr=self._attr(FILE_INO)))})
            else:
                self._reply(req, error=-errno.ENOENT)
        elif op == C.FUSE_GETATTR:
            if req.header.nodeid in (C.FUSE_ROOT_ID, FILE_INO):
                # attr_valid 0: every stat/fstat reaches the daemon, so GETATTR is always captured.
                attr = self._attr(req.header.nodeid)
                self._reply(req, {"fuse_attr_out": self._fit("fuse_attr_out", dict(attr=attr))})
            else:
                self._reply(req, error=-errno.ENOENT)
        elif op == C.FUSE_OPEN:
            self._reply(req, {"fuse_open_out": dict(fh=7, open_flags=C.FOPEN_DIRECT_IO)})
        elif op == C.FUSE_READ:
            if body.fuse_read_in.size == BLOCKING_READ_SIZE:
                self._held[req.unique] = req  # answered when the kernel INTERRUPTs it
                self.blocked.set()
            else:
                self._reply(req, {"data": READ_DATA[:body.fuse_read_in.size]})
        elif op == C.FUSE_WRITE:
            self._reply(req, {"fuse_write_out": dict(size=len(body.data))})
        elif op == C.FUSE_IOCTL:
            ioc = body.fuse_ioctl_in
            if ioc.cmd != IOCTL_CMD or ioc.in_size != 8 or ioc.out_size != 8:
                self._reply(req, error=-errno.ENOTTY)
            else:
                value = int.from_bytes(body.data, "little")
                self._reply(req, {"fuse_ioctl_out": dict(result=0), "data": (value + 1).to_bytes(8, "little")})
        elif op == C.FUSE_POLL:
            poll_in = body.fuse_poll_in
            if poll_in.flags & C.FUSE_POLL_SCHEDULE_NOTIFY and poll_in.kh not in self._polled:
                # First poll: "not ready", then a wakeup, so the kernel polls again and the capture
                # holds a NOTIFY_POLL as well as both POLL answers.
                self._polled.add(poll_in.kh)
                self._reply(req, {"fuse_poll_out": dict(revents=0)})
                self._send(self._codec.encode_notify(C.FUSE_NOTIFY_POLL, {"fuse_notify_poll_wakeup_out": {
                    "kh": poll_in.kh}}))
            else:
                self._reply(req, {"fuse_poll_out": dict(revents=poll_in.events & POLL_READY)})
        elif op == C.FUSE_INTERRUPT:
            held = self._held.pop(body.fuse_interrupt_in.unique, None)
            if held is not None:  # no reply to INTERRUPT itself; the interrupted request gets EINTR
                self._reply(held, error=-errno.EINTR)
                self.interrupted.set()
        elif op in (C.FUSE_FLUSH, C.FUSE_RELEASE):
            self._reply(req)
        elif op in (C.FUSE_FORGET, C.FUSE_BATCH_FORGET):
            pass  # no reply
        elif op == C.FUSE_DESTROY:
            self._reply(req)
        else:
            self._reply(req, error=-errno.ENOSYS)

    @staticmethod
    def _attr(ino: int) -> Dict[str, int]:
        if ino == C.FUSE_ROOT_ID:
            return dict(ino=ino, mode=stat.S_IFDIR | 0o755, nlink=2, blksize=4096)
        return dict(ino=ino, size=FILE_SIZE, mode=stat.S_IFREG | 0o666, nlink=1, blksize=4096)


def _prune(value: Dict[str, Any], schema: Any) -> Dict[str, Any]:
    subs = {sc.name: (sc.subcon if hasattr(sc, "subcon") else sc) for sc in schema.subcons}
    return {k: (_prune(v, subs[k]) if isinstance(v, dict) else v) for k, v in value.items() if k in subs}


# ---------------------------------------------------------------------- clients

_CLIENT = r"""
import fcntl, json, os, select, sys
path, cmd = sys.argv[1], int(sys.argv[2])
res = {"root_is_dir": os.path.isdir(os.path.dirname(path))}
fd = os.open(path, os.O_RDWR)
res["size"] = os.fstat(fd).st_size
res["read"] = os.read(fd, 10).hex()
res["written"] = os.write(fd, b"hello fusd")
arg = bytearray((41).to_bytes(8, "little"))
res["ioctl_result"] = fcntl.ioctl(fd, cmd, arg, True)
res["ioctl_out"] = int.from_bytes(arg, "little")
p = select.poll()
p.register(fd, select.POLLIN)
res["poll"] = [ev for _, ev in p.poll(10000)]
os.close(fd)
print(json.dumps(res))
"""

_INTERRUPTED_READER = r"""
import os, signal, sys
class Interrupted(Exception):
    pass
def handler(signum, frame):
    raise Interrupted  # raising stops Python from retrying the read after EINTR (PEP 475)
signal.signal(signal.SIGUSR1, handler)
fd = os.open(sys.argv[1], os.O_RDONLY)
print("open", flush=True)
try:
    os.read(fd, int(sys.argv[2]))
    print("read returned")
except Interrupted:
    print("interrupted")
os.close(fd)
"""


def _reap(proc: subprocess.Popen, session: KernelSession) -> None:
    """Kill and reap a child that is still running.  A child stuck in a FUSE request may not
    even die of SIGKILL until its request ends, so if it lingers, abort the connection."""
    if proc.poll() is not None:
        return
    proc.kill()
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        session.abort()
        proc.wait(timeout=10)


def _run(args: List[str], session: KernelSession, timeout: float) -> subprocess.CompletedProcess:
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    finally:
        _reap(proc, session)
    return subprocess.CompletedProcess(args, proc.returncode, out, err)


def run_client(session: KernelSession, timeout: float = 30) -> Dict[str, Any]:
    """open/fstat/read/write/ioctl/poll/close on the session's file, from a separate process."""
    done = _run([sys.executable, "-c", _CLIENT, session.file, str(IOCTL_CMD)], session, timeout)
    if done.returncode != 0:
        raise AssertionError(f"client failed ({done.returncode}): {done.stderr}; daemon: {session.error!r}")
    return json.loads(done.stdout)


def run_interrupted_read(session: KernelSession, timeout: float = 30) -> str:
    """A child blocks in read(); SIGUSR1 makes the kernel send INTERRUPT; returns the child's verdict."""
    proc = subprocess.Popen([sys.executable, "-c", _INTERRUPTED_READER, session.file, str(BLOCKING_READ_SIZE)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        if not session.blocked.wait(timeout):
            raise AssertionError("the blocking READ never reached the daemon")
        time.sleep(0.05)  # the READ is sent; let the child settle into its wait
        os.kill(proc.pid, signal.SIGUSR1)
        if not session.interrupted.wait(timeout):
            raise AssertionError("the kernel never sent FUSE_INTERRUPT for the held READ")
        out, err = proc.communicate(timeout=timeout)
        if proc.returncode != 0:
            raise AssertionError(f"interrupted reader failed ({proc.returncode}): {err}")
        return out.split()[-1]
    finally:
        _reap(proc, session)


def run_scenario(session: KernelSession) -> Tuple[Dict[str, Any], str]:
    """Everything the tests and the capture tool drive through one session."""
    return run_client(session), run_interrupted_read(session)


# ---------------------------------------------------------------------- test vectors

#: Requests bigger than this (and their replies) are left out of the saved vectors.
MAX_SAVED = 320


def select_vectors(messages: List[Tuple[str, bytes]]) -> List[Tuple[str, bytes]]:
    """A small, self-consistent subset: the first two requests of each opcode (plus every INIT,
    INTERRUPT and held READ) with their replies, and every notification; in capture order, so a
    ``Conversation`` replaying them still pairs every reply with its request."""
    seen: Dict[int, int] = {}
    keep_unique = set()
    always = {C.FUSE_INIT, C.FUSE_INTERRUPT}
    interrupted = {int.from_bytes(raw[40:48], "little") for d, raw in messages
                   if d == "kernel" and int.from_bytes(raw[4:8], "little") == C.FUSE_INTERRUPT}
    out = []
    for direction, raw in messages:
        unique = int.from_bytes(raw[8:16], "little")
        if direction == "kernel":
            opcode = int.from_bytes(raw[4:8], "little")
            seen[opcode] = seen.get(opcode, 0) + 1
            if opcode in always or unique in interrupted or (seen[opcode] <= 2 and len(raw) <= MAX_SAVED):
                keep_unique.add(unique)
                out.append((direction, raw))
        elif unique == 0 or unique in keep_unique:
            out.append((direction, raw))
    return out
