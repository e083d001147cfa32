"""What the session writes, as ``fs/fuse/dev.c`` ``fuse_dev_do_write`` takes it; and the poll waiters.

Every message from the session is logged, then checked: ``len`` against the
message size, ``error`` in ``(-1000, 0]``, an error reply without a body, the
body's size against what the request takes (``copy_out_args``), notification
sizes and codes.  Where the kernel would answer the daemon's ``write(2)`` with
EINVAL or ENOENT the loopback cannot (the socket write succeeded): it records a
:class:`~fusd_runtime.loopback.requests.Violation` and, like the kernel, fails
the request with EIO (a bad body) or leaves it waiting (a bad header).  An
INTERRUPT's answer (unique | 1) re-queues it on EAGAIN and turns interrupts off
on ENOSYS.  NOTIFY_POLL wakes the waiters of its ``kh`` (``fuse_notify_poll_wakeup``).
"""

from __future__ import annotations

import errno
import itertools
import threading
import time
from typing import Dict, List, Optional, Set, Tuple

from fusd_wire import FAST
from fusd_wire import constants as C

from .requests import OUT_HEADER_SIZE, Pending, Violation

_OUT_HEADER = FAST.fuse_out_header.struct
FUSE_INT_REQ_BIT = 1
#: An errno the daemon may send: ``fuse_dev_do_write`` refuses ``error <= -1000 || error > 0``.
ERRNO_LIMIT = 1000
#: Uniques of the loopback's own requests (waking a stopping reader): never a kernel's.
OWN_UNIQUE = 1 << 62


class Incoming:
    """The kernel's receiving half (mixed into ``LoopbackKernel``, which owns the state)."""

    transport: str
    violations: List[Violation]
    late_replies: List[int]
    notifications: List[Tuple[int, bytes]]
    log: List[Tuple[str, bytes]]
    reply_pos: Dict[int, int]
    notes_count: int
    requeue_interrupts: bool
    no_interrupt: bool
    connected: bool
    _lock: threading.Lock
    _cond: threading.Condition
    _own_replies: Set[int]
    _pending: Dict[int, Pending]
    _answered: Set[int]
    _abandoned: Set[int]
    _polled: Dict[int, threading.Event]
    _poll_cond: threading.Condition
    _poll_generation: int
    _kh: itertools.count[int]
    _stopping: bool

    def _send_interrupt(self, p: Pending) -> None:  # pragma: no cover - the kernel's
        raise NotImplementedError

    # ------------------------------------------------------------------ what the session writes
    def _violation(self, what: str, err: int, data: bytes = b"") -> None:
        self.violations.append(Violation(what, err, bytes(data[:64])))

    def _on_message(self, data: bytes) -> None:
        n = len(data)
        header = _OUT_HEADER.unpack_from(data) if n >= OUT_HEADER_SIZE else None
        if header is not None and header[2] >= OWN_UNIQUE:
            with self._cond:
                self._own_replies.add(header[2])  # the answer to a request of ours (barrier, wake-up)
                self._cond.notify_all()
            return
        with self._lock:
            pos = len(self.log)
            self.log.append(("out", data))
            if header is not None:
                if header[2] == 0:
                    self.notes_count += 1
                else:
                    self.reply_pos.setdefault(header[2], pos)
        try:
            self._dispatch(data, header)
        finally:
            with self._cond:
                self._cond.notify_all()

    def _dispatch(self, data: bytes, header: Optional[Tuple[int, int, int]]) -> None:
        n = len(data)
        if header is None:
            self._violation(f"a {n}-byte message (shorter than fuse_out_header)", errno.EINVAL, data)
            return
        length, error, unique = header
        if length != n:
            self._violation(f"fuse_out_header.len {length} but the message has {n} bytes", errno.EINVAL, data)
            return
        if unique == 0:
            self._notification(error, data[OUT_HEADER_SIZE:], data)
            return
        if error > 0 or error <= -ERRNO_LIMIT:
            self._violation(f"error {error} out of range for unique {unique}", errno.EINVAL, data)
            return
        target = unique & ~FUSE_INT_REQ_BIT
        with self._lock:
            p = self._pending.get(target)
            if p is not None and not unique & FUSE_INT_REQ_BIT:
                del self._pending[target]
                self._answered.add(target)
        if p is None:
            with self._lock:
                late, twice = target in self._abandoned, target in self._answered
            if unique & FUSE_INT_REQ_BIT or late:
                self.late_replies.append(unique)  # ENOENT to the daemon: harmless, the session expects it
            elif twice:
                self._violation(f"a second reply to unique {unique}", errno.ENOENT, data)
            else:
                self._violation(f"a reply to unique {unique}, which the kernel never sent", errno.ENOENT, data)
            return
        if unique & FUSE_INT_REQ_BIT:  # the answer to an INTERRUPT
            if n != OUT_HEADER_SIZE:
                self._violation(f"an INTERRUPT answer for unique {target} with a body", errno.EINVAL, data)
            elif error == -errno.ENOSYS:
                self.no_interrupt = True
            elif error == -errno.EAGAIN and not p.event.is_set() and self.requeue_interrupts:
                threading.Timer(0.001, self._requeue_interrupt, (p,)).start()
            return
        if error:
            if n != OUT_HEADER_SIZE:
                self._violation(f"an error reply ({error}) to {p.describe} with a {n - OUT_HEADER_SIZE}-byte body",
                                errno.EINVAL, data)
                self._fail_eio(p)
            else:
                p.finish(error)
            return
        body = data[OUT_HEADER_SIZE:]
        if not p.internal and not p.raw and not p.fits(len(body)):
            want = f"{p.fixed} bytes" if p.var_max is None else f"{p.fixed}..{p.fixed + p.var_max} bytes"
            self._violation(f"a {len(body)}-byte reply body to {p.describe}, which takes {want}", errno.EINVAL,
                            data)
            self._fail_eio(p)
            return
        p.finish(0, body)

    def _fail_eio(self, p: Pending) -> None:
        # the request ends with EIO (fuse_dev_do_write: "else if (err) req->out.h.error = -EIO")
        with self._lock:
            self._answered.discard(p.unique)
            self._abandoned.add(p.unique)
        p.finish(-errno.EIO)

    def _requeue_interrupt(self, p: Pending) -> None:
        # queue_interrupt: re-sent while the request is open (a short pause instead of a busy loop)
        if not p.event.is_set() and not self._stopping:
            self._send_interrupt(p)

    def _notification(self, code: int, body: bytes, data: bytes) -> None:
        self.notifications.append((code, body))
        if code == C.fuse_notify_code.FUSE_NOTIFY_POLL:
            if len(body) != FAST.fuse_notify_poll_wakeup_out.size:
                self._violation(f"NOTIFY_POLL with a {len(body)}-byte body", errno.EINVAL, data)
                return
            (kh,) = FAST.fuse_notify_poll_wakeup_out.struct.unpack_from(body)
            with self._poll_cond:
                woken = self._polled.get(kh)
                if woken is not None:
                    woken.set()
                    self._poll_generation += 1
                    self._poll_cond.notify_all()
        elif code in (C.fuse_notify_code.FUSE_NOTIFY_INVAL_ENTRY, C.fuse_notify_code.FUSE_NOTIFY_INVAL_INODE,
                      C.fuse_notify_code.FUSE_NOTIFY_DELETE):
            if self.transport == "cuse":
                return  # no super block: ENOENT to the daemon (fuse_reverse_inval_* not reached)
            fixed = {int(C.fuse_notify_code.FUSE_NOTIFY_INVAL_ENTRY): FAST.fuse_notify_inval_entry_out,
                     int(C.fuse_notify_code.FUSE_NOTIFY_INVAL_INODE): FAST.fuse_notify_inval_inode_out,
                     int(C.fuse_notify_code.FUSE_NOTIFY_DELETE): FAST.fuse_notify_delete_out}[code]
            if len(body) < fixed.size:
                self._violation(f"NOTIFY_{C.notify_name(code)} with a {len(body)}-byte body", errno.EINVAL, data)
        elif code not in set(int(c) for c in C.fuse_notify_code):
            self._violation(f"a notification with unknown code {code}", errno.EINVAL, data)

    def _on_eof(self) -> None:
        self._abort_pending(errno.ECONNABORTED if self._stopping else errno.ENOTCONN)

    # ------------------------------------------------------------------ poll registry
    def new_kh(self) -> int:
        """A poll handle for a new open file (``fuse_file_alloc``: ``ff->kh = ++fc->khctr``)."""
        return next(self._kh)

    def register_polled(self, kh: int) -> threading.Event:
        """``fuse_register_polled_file``: from now on NOTIFY_POLL with ``kh`` wakes its waiters."""
        with self._poll_cond:
            woken = self._polled.get(kh)
            if woken is None:
                woken = self._polled[kh] = threading.Event()
            return woken

    def unregister_polled(self, kh: int) -> None:
        """The file is released (``fuse_prepare_release`` takes it off ``polled_files``)."""
        with self._poll_cond:
            self._polled.pop(kh, None)

    def wait_wakeup(self, generation: int, deadline: Optional[float]) -> int:
        """Wait until any registered file is woken after ``generation``; the new generation."""
        with self._poll_cond:
            while self._poll_generation == generation and self.connected:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    break
                self._poll_cond.wait(left)
            return self._poll_generation

    @property
    def poll_generation(self) -> int:
        """A counter of poll wakeups (``wait_wakeup`` waits for it to move)."""
        with self._poll_cond:
            return self._poll_generation

    def _abort_pending(self, err: int) -> None:
        with self._lock:
            left = [p for p in self._pending.values() if not p.event.is_set()]
            self._abandoned.update(self._pending)
            self._pending.clear()
        for p in left:
            p.finish(-err)
