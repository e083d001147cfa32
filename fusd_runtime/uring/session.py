"""The FUSE session served over io_uring: INIT negotiation, the queues, /dev/fuse for the rest.

What the kernel (6.14+, ``CONFIG_FUSE_IO_URING``) does, and so what this does:

- It offers FUSE_OVER_IO_URING (bit 9 of ``fuse_init_in.flags2``, so only with
  FUSE_INIT_EXT) only while the ``fuse`` module parameter ``enable_uring`` is Y.
  If offered, the rings are created *before* INIT is answered (so a failure there
  can still answer without the flag), the flag is granted, and every queue
  registers its entries *after* the reply: a REGISTER before it fails EAGAIN.
- Once the flag is granted the kernel holds every request until each possible
  CPU has a queue with a free entry -- one queue per possible CPU, no fewer.  A
  REGISTER that fails inside the kernel turns io_uring off for the connection, and
  requests flow through /dev/fuse again: then (and when the flag was not offered)
  the session falls back to the read/write readers, with one log line saying why.
- FORGET and INTERRUPT still arrive on /dev/fuse; notifications are still written
  there.  So one control reader stays on /dev/fuse.  It waits in poll(2) with a
  stop pipe beside the device (in ring mode nothing else would ever make its
  read(2) return at shutdown) -- the extra poll per message costs nothing there,
  only rare messages come that way.

Requests are answered by the same handlers as on read/write: a ring entry is
the channel the handlers reply on (``session.send(entry, parts)``); see ``queue.py``.

One difference in the serving model: on read/write a callback that blocks
without deferring makes the reader supervisor start another reader; a ring queue
has exactly one thread (the kernel hands each entry's next request to the thread
that committed it), so such a callback holds up the requests from its CPU until
it returns.  Callbacks that wait must defer (``ctx.defer()``) or be ``async``.
"""

from __future__ import annotations

import errno
import io
import logging
import os
import select
import threading
from typing import Any, List, Optional

from fusd_wire import FAST
from fusd_wire import constants as C

from ..fusefs import FuseSession
from ..reader import _KEEP_WHILE_STOPPING, ChannelEnded, _why
from ..state import IN_HEADER, RequestBuffer
from .queue import FuseQueue

log = logging.getLogger("fusd")

_OVER_IO_URING = int(C.InitFlags.FUSE_OVER_IO_URING)
_INIT_EXT = int(C.InitFlags.FUSE_INIT_EXT)
_init_in = FAST.fuse_init_in.struct
ENABLE_URING = "/sys/module/fuse/parameters/enable_uring"
_ENDED = (errno.ENODEV, errno.ECONNABORTED, errno.EBADF, errno.ENOTCONN)


def possible_cpus() -> List[int]:
    """The kernel's possible CPUs (``/sys/devices/system/cpu/possible``): one queue each."""
    try:
        with open("/sys/devices/system/cpu/possible") as f:
            text = f.read().strip()
    except OSError:
        return list(range(os.cpu_count() or 1))
    cpus: List[int] = []
    for part in text.split(","):
        lo, _, hi = part.partition("-")
        cpus.extend(range(int(lo), int(hi or lo) + 1))
    return cpus


def enable_uring_parameter() -> Optional[bool]:
    """The ``fuse`` module's ``enable_uring`` parameter, or None where the kernel has none."""
    try:
        with open(ENABLE_URING) as f:
            return f.read().strip() in ("Y", "1")
    except OSError:
        return None


class uring_enabled:
    """``with uring_enabled():`` the fuse ``enable_uring`` parameter is Y, then back to what it was.

    The kernel reads it when it sends INIT (to offer FUSE_OVER_IO_URING) and when the
    rings register; a connection that has io_uring keeps it after the parameter goes
    back to N, so a server only needs it while it starts: ``restore()`` puts it back
    early (leaving the block does too, once).  Needs root; OSError where the kernel
    has no such parameter.
    """

    def __init__(self) -> None:
        self.old: Optional[str] = None

    def __enter__(self) -> uring_enabled:
        with open(ENABLE_URING) as f:
            old = f.read().strip()
        with open(ENABLE_URING, "w") as f:
            f.write("Y")
        self.old = old if old in ("Y", "N") else "N"
        return self

    def restore(self) -> None:
        """Put the parameter back now (idempotent)."""
        if self.old is not None:
            with open(ENABLE_URING, "w") as f:
                f.write(self.old)
            self.old = None

    def __exit__(self, *exc: object) -> None:
        self.restore()


def not_offered_reason(minor: int) -> str:
    """Why the kernel did not offer FUSE_OVER_IO_URING, as far as we can tell."""
    if minor < 42:
        return f"the kernel speaks FUSE 7.{minor}; io_uring needs 7.42 (Linux 6.14) or newer"
    param = enable_uring_parameter()
    if param is None:
        return "the kernel has no FUSE io_uring support (no fuse enable_uring parameter, CONFIG_FUSE_IO_URING off)"
    if not param:
        return f"{ENABLE_URING} is N (root can set it to Y)"
    return "the kernel did not offer FUSE_OVER_IO_URING in INIT"


class UringFuseSession(FuseSession):
    """A FuseSession whose requests come and go through FUSE-over-io_uring queues.

    Args (besides FuseSession's):
        depth: ring entries each queue registers at start (it grows by as many when
            deferred calls hold all but a few, up to ``max_entries``).
        max_entries: the most entries a queue registers.
        pin: pin each queue's thread to its CPU (when this process may run there).
    """

    def __init__(self, fd: int, registry: Any, mountpoint: str, *, depth: int = 128, max_entries: int = 2048,
                 pin: bool = True, **kwargs: Any) -> None:
        super().__init__(fd, registry, mountpoint, **kwargs)
        self.depth = depth
        self.max_entries = max_entries
        self.pin = pin
        self.queues: List[FuseQueue] = []
        #: True while requests are served through the rings; False after a fallback (or before INIT)
        self.uring_active = False
        #: why read/write is used instead, once INIT decided
        self.fallback_reason: Optional[str] = None
        self._stop_r, self._stop_w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        self._control: Optional[threading.Thread] = None
        self._rw_mode = False

    # ------------------------------------------------------------------ readers
    def start_readers(self) -> None:
        """Start the control reader on /dev/fuse (INIT now; FORGET, INTERRUPT later)."""
        if not os.get_blocking(self.fd):
            raise ValueError(f"fuse: the channel fd {self.fd} must be blocking")
        self._control = threading.Thread(target=self._control_reader, name="fusd-fuse-control", daemon=True)
        self._control.start()

    def _control_reader(self) -> None:
        fd = self.fd
        buf = RequestBuffer(self.bufsize)
        readinto = io.FileIO(fd, "r", closefd=False).readinto
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        poller.register(self._stop_r, select.POLLIN)
        rec = self.recorder
        try:
            while not self._rw_mode:
                try:
                    ready = dict(poller.poll())
                except InterruptedError:
                    continue
                if self._stop_r in ready:
                    return
                try:
                    n = readinto(buf)
                except OSError as exc:
                    if exc.errno in (errno.EINTR, errno.EAGAIN, errno.ENOENT):
                        continue
                    raise ChannelEnded(_why(exc), exc) from None
                if n is None:
                    continue
                if rec is not None:
                    rec.record(self.conn_id, 1, memoryview(buf)[:n])
                self._dispatch_control(fd, buf, n)
        except ChannelEnded as end:
            if end.reason != "stopping":
                self.end(end.reason)
        except BaseException as exc:  # noqa: B036 - e.g. SystemExit from runtime code: stop, don't vanish
            self.fatal(exc)

    def _dispatch_control(self, fd: int, buf: bytearray, n: int) -> None:
        """One /dev/fuse message, checked and dispatched as the read/write reader does."""
        length, opcode, unique, nodeid, uid, gid, pid, _, _ = IN_HEADER.unpack_from(buf)
        try:
            if length != n or n < self.min_length[opcode & 4095]:
                self.malformed(fd, buf, n, length, opcode, unique)
                return
            handler = self.handlers.get(opcode)
            if handler is None:
                parts = self.unhandled(fd, opcode, unique)
            else:
                parts = handler(fd, buf, n, unique, nodeid, uid, gid, pid)
            if parts is not None:
                self.writev(fd, parts)
        except OSError as exc:
            if exc.errno in (errno.ENOENT, errno.EINTR):
                return
            if exc.errno in _ENDED:
                raise ChannelEnded(_why(exc), exc) from None
            self._report(exc)
        except ChannelEnded:
            raise
        except Exception as exc:  # a bug in the runtime itself: keep serving, say it once
            self._log_once(f"runtime.{opcode}", "fusd: internal error while serving opcode %s", opcode, exc)
            self.answer_error(fd, unique, errno.EIO)

    # ------------------------------------------------------------------ INIT
    def _op_init(self, chan: Any, buf: Any, n: int, unique: int, nodeid: int, uid: int, gid: int,
                 pid: int) -> None:
        major, minor, _, flags, flags2 = _init_in.unpack_from(buf, 40)[:5]
        minor = min(minor, C.FUSE_KERNEL_MINOR_VERSION)
        offered = (major == C.FUSE_KERNEL_VERSION and minor >= 36 and flags & _INIT_EXT
                   and (flags2 << 32) & _OVER_IO_URING)
        self.wanted_flags &= ~_OVER_IO_URING
        if major != C.FUSE_KERNEL_VERSION:
            pass  # answered with our major; the kernel sends INIT again
        elif not offered:
            self.fallback_reason = not_offered_reason(minor)
        else:
            try:
                self._make_queues()
                self.wanted_flags |= _OVER_IO_URING
            except OSError as exc:
                self._close_queues()
                self.fallback_reason = f"could not set up the rings: {exc}"
        super()._op_init(chan, buf, n, unique, nodeid, uid, gid, pid)

    def _make_queues(self) -> None:
        """One queue per possible CPU, its ring made by its own thread; registered after the INIT reply."""
        try:
            allowed = os.sched_getaffinity(0)
        except OSError:
            allowed = set()
        # the kernel copies up to max(FUSE_MIN_READ_BUFFER, max_write, max_pages * page) per request
        page = os.sysconf("SC_PAGESIZE")
        payload = max(C.FUSE_MIN_READ_BUFFER, self.max_write, (self.max_write // 4096) * page)
        for qid in possible_cpus():
            cpu = qid if self.pin and qid in allowed else None
            q = FuseQueue(self, qid, self.fd, payload, depth=self.depth, max_entries=self.max_entries, cpu=cpu)
            self.queues.append(q)
            q.start()
        for q in self.queues:
            if not q.prepared.wait(10):
                raise OSError(errno.ETIMEDOUT, f"ring queue {q.qid} did not start")
            if q.error is not None:
                raise q.error

    def _init_done(self) -> None:
        if self.init_flags & _OVER_IO_URING:
            for q in self.queues:
                q.go()
            failed = [q for q in self.queues if not q.registered.wait(10) or q.error is not None]
            if not failed:
                self.uring_active = True
                log.info("fusd: serving through FUSE-over-io_uring (%d queues, %d entries each)",
                         len(self.queues), self.depth)
            else:
                # A REGISTER the kernel refused switched the connection back to /dev/fuse.
                err = failed[0].error
                self.fallback_reason = f"the kernel refused the ring ({err or 'queue did not start'})"
                self._stop_queues()
                self._close_queues()
        if not self.uring_active and self.fallback_reason is not None:
            log.warning("fusd: io_uring transport not used: %s; serving through read/write on /dev/fuse",
                        self.fallback_reason)
            self._rw_mode = True  # the control reader ends; the read/write readers take over
            super().start_readers()
        super()._init_done()

    # ------------------------------------------------------------------ queue lifecycle
    def _queue_finished(self, queue: FuseQueue, reason: Optional[str]) -> None:
        """A queue thread ended: stopping, or (``reason``) the kernel ended the connection."""
        if reason is not None and not self.stopping:
            self.end(self._how_the_connection_ended() or reason)

    def _how_the_connection_ended(self) -> Optional[str]:
        """What /dev/fuse says: its entries are cancelled with ENOTCONN on an unmount and on a
        fusectl abort alike, but a read of the disconnected device fails ENODEV or ECONNABORTED."""
        if self.fd < 0:
            return None
        poller = select.poll()
        poller.register(self.fd, select.POLLIN)
        try:
            ready = poller.poll(0)
            if not ready or not ready[0][1] & select.POLLERR:
                return None  # still connected: nothing to read without taking a message
            os.read(self.fd, self.bufsize)
        except OSError as exc:
            return _why(exc) if exc.errno in (errno.ENODEV, errno.ECONNABORTED) else None
        return None

    def _stop_queues(self, timeout: float = 5.0) -> None:
        for q in self.queues:
            q.stop()
        for q in self.queues:
            if not q.join(timeout):
                log.warning("fusd: ring queue %d did not stop within %.0f s (a callback that does not "
                            "return?); closing its ring under it", q.qid, timeout)

    def _close_queues(self) -> None:
        """Close every ring now (each thread closes its own when it leaves; this covers the
        ones that did not): no ring may outlive the session, or the unmount would wait for it."""
        for q in self.queues:
            if not q.registered.is_set():
                q.go(cancel=True)  # prepared, never told to register
                q.join(5)
            q.close()
        self.queues = []

    def stop_readers(self, timeout: float = 5.0) -> None:
        """Stop serving: answer what is pending, stop the queues and the control reader."""
        if self._rw_mode:
            super().stop_readers(timeout)
            return
        self.stopping = True
        for opcode in list(self.handlers):  # as on read/write: cleanup requests still reach the devices
            if opcode not in _KEEP_WHILE_STOPPING:
                self.handlers.pop(opcode, None)
        self.fail_pending()
        self._stop_queues(timeout)
        self._close_queues()  # before the unmount: see _close_queues
        try:
            os.write(self._stop_w, b"x")
        except OSError:
            pass
        if self._control is not None:
            self._control.join(timeout)

    def close_fds(self) -> None:
        """Close the rings (the kernel cancels their entries, releasing /dev/fuse) and our fds."""
        self._close_queues()
        for fd in (self._stop_r, self._stop_w):
            try:
                os.close(fd)
            except OSError:
                pass
        self._stop_r = self._stop_w = -1
        super().close_fds()
