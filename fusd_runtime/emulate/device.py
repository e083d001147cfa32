"""A device that answers new clients from a recording (``fusd emulate``).

    device = EmulatedDevice(load_recording("kbd.pcapng", name="kbd"))
    with Server() as server:
        server.add(device, "kbd")            # evtest <mount>/kbd sees the recorded keyboard

How it answers (the choices, and why):

- **Per-open cursors.**  The N-th open of the emulation plays the N-th recorded
  open (``opens="cycle"``: round robin over the recorded ones; ``"first"``: every
  open plays the first).  Each open file has its own cursor, so two clients each
  get the whole stream, as two readers of the real device would each get theirs.
- **Reads** return the recorded answers in order, re-sliced to the caller's
  size: a shorter read gets the first bytes and the rest waits for the next
  read.  A recorded EAGAIN was a non-blocking caller finding nothing: a
  non-blocking caller gets it again, a blocking one skips it.  When the recording
  is used up, reads block (``at_end="block"``, EAGAIN with O_NONBLOCK; a signal
  interrupts them) or return end of file (``"eof"``).
- **Timing** (``timing=True``): a recorded read is only available that many
  seconds after the open: a blocking read waits for it, a non-blocking one gets
  EAGAIN, poll reports POLLIN once it is due (and wakes its waiters then).
  Without it everything recorded is available at once.
- **ioctls** are matched by command and direction, not size (``script.ioctl_key``):
  the next recorded one of that kind in this open, else the last one seen, else
  the last of any open.  The recorded bytes are cut or zero-padded to the
  caller's ``out_size``, and a length-like result (0 < result <= recorded bytes)
  is cut with them.  On CUSE, a number without size gets the recorded
  FUSE_IOCTL_RETRY ranges again, moved to the caller's argument address.  A
  command never recorded is answered ``mismatch_errno`` (default ENOTTY) and
  listed in ``mismatches``: not an abort, so the client's own error handling runs.
- **poll** answers the recorded masks in turn, and where the device woke its
  recorded waiter (NOTIFY_POLL) the emulation wakes the new one too (at once, or
  at the recorded time with ``timing``): ``hwclock`` waits for an RTC tick with
  ``select`` alone.  What the recorded reads have ready is added (POLLIN).
- **Writes** are taken whole; what differs from the recorded writes (in order)
  is listed in ``mismatches``.
"""

from __future__ import annotations

import errno
import threading
import time
from typing import Any, Dict, List, Optional, Tuple

from ..device import DEFER, POLLIN, POLLOUT, POLLRDNORM, POLLWRNORM, Context, Device, ReplyHandle
from ..ioctl import IOC_WRITE, Arg, IoctlRetry, ioc_dir, ioc_size
from .script import IOCTL, POLL, READ, WRITE, Op, OpenScript, Recording, ioctl_key

#: errors a recording session caused itself, not the device: never replayed
_ARTEFACTS = (errno.EINTR, errno.ENODEV, errno.ENOENT)
#: how far a recorded RETRY range may lie from the recorded argument to be moved with it
_REBASE_WINDOW = 1 << 16


class _Cursor:
    """One open file's position in its recorded open."""

    def __init__(self, script: OpenScript) -> None:
        self.script = script
        self.t0 = time.monotonic()
        self.reads = [op for op in script.ops if op.kind == READ and op.error not in _ARTEFACTS]
        self.writes = [op for op in script.ops if op.kind == WRITE and not op.error]
        self.polls = [op for op in script.ops if op.kind == POLL and not op.error]
        self.poll_pos = 0
        self.read_pos = 0
        self.write_pos = 0
        self.ioctl_pos = 0
        self.leftover = b""
        self.last: Dict[Tuple[int, int, int], Op] = {}
        self.waiting: List[ReplyHandle] = []
        self.timer: Optional[threading.Timer] = None
        self.closed = False

    def peek(self) -> Optional[Op]:
        return self.reads[self.read_pos] if self.read_pos < len(self.reads) else None

    def due_in(self, op: Op, timing: bool) -> float:
        return max(0.0, op.t - (time.monotonic() - self.t0)) if timing else 0.0


class EmulatedDevice(Device):
    """Serves a :class:`~fusd_runtime.emulate.script.Recording` to new clients (see the module doc)."""

    def __init__(self, recording: Recording, *, mismatch_errno: int = errno.ENOTTY, timing: bool = False,
                 at_end: str = "block", opens: str = "cycle") -> None:
        if at_end not in ("block", "eof"):
            raise ValueError(f"at_end must be 'block' or 'eof', not {at_end!r}")
        if opens not in ("cycle", "first"):
            raise ValueError(f"opens must be 'cycle' or 'first', not {opens!r}")
        if not recording.opens:
            raise ValueError(f"{recording.source or recording.name}: the recording has no open of the device")
        self.recording = recording
        self.mismatch_errno = mismatch_errno
        self.timing = timing
        self.at_end = at_end
        self.opens_policy = opens
        self.mode = recording.mode
        self.mismatches: List[str] = []
        self.opened = 0
        self._index = recording.ioctl_index()
        self._lock = threading.RLock()
        # _IOW numbers recorded without any bytes in take their argument by value (EVIOCGRAB): declared so,
        # CUSE hands the value over instead of copying _IOC_SIZE bytes from it (an EFAULT for 1)
        self.ioctls = {op.cmd: Arg(None) for ops in self._index.values() for op in ops
                       if ioc_dir(op.cmd) == IOC_WRITE and not op.in_data and not op.data}

    # ------------------------------------------------------------------ open / release
    def open(self, ctx: Context) -> None:
        with self._lock:
            n = self.opened
            self.opened += 1
        opens = self.recording.opens
        script = opens[n % len(opens)] if self.opens_policy == "cycle" else opens[0]
        if script.error:
            raise OSError(script.error, "the recorded open failed so")
        ctx.state = _Cursor(script)

    def release(self, ctx: Context) -> None:
        cur: _Cursor = ctx.state
        with self._lock:
            cur.closed = True
            if cur.timer is not None:
                cur.timer.cancel()
            waiting, cur.waiting = cur.waiting, []
        for handle in waiting:
            handle.error(errno.EBADF)

    # ------------------------------------------------------------------ read
    def read(self, ctx: Context, size: int, offset: int) -> Any:
        cur: _Cursor = ctx.state
        with self._lock:
            if not cur.waiting:
                got = self._take(cur, size, ctx.nonblock)
                if got is not None:
                    return got
            if ctx.nonblock:
                raise BlockingIOError(errno.EAGAIN, "nothing recorded is due yet")
            handle = ctx.defer(on_interrupt=lambda h: self._forget(cur, h))
            cur.waiting.append(handle)
            self._schedule(cur)
            return DEFER

    def _take(self, cur: _Cursor, size: int, nonblock: bool) -> Any:
        """The next answer for a read of ``size`` now: bytes, b"" (end), or None (wait); raises errors."""
        while True:
            if cur.leftover:
                out, cur.leftover = cur.leftover[:size], cur.leftover[size:]
                return out
            op = cur.peek()
            if op is None:
                return b"" if self.at_end == "eof" else None
            if op.error == errno.EAGAIN:
                cur.read_pos += 1
                if nonblock:
                    raise BlockingIOError(errno.EAGAIN, "recorded: nothing to read")
                continue
            if cur.due_in(op, self.timing) > 0:
                return None
            cur.read_pos += 1
            if op.error:
                raise OSError(op.error, "recorded read error")
            out, cur.leftover = op.data[:size], op.data[size:]
            return out

    def _forget(self, cur: _Cursor, handle: ReplyHandle) -> None:
        with self._lock:
            if handle in cur.waiting:
                cur.waiting.remove(handle)

    def _schedule(self, cur: _Cursor) -> None:
        """With timing: wake up when the next recorded read is due (blocked reads, poll waiters)."""
        if not self.timing or cur.timer is not None or cur.closed:
            return
        op = cur.peek()
        if op is None:
            return
        cur.timer = threading.Timer(cur.due_in(op, True) + 0.001, self._due, (cur,))
        cur.timer.daemon = True
        cur.timer.start()

    def _due(self, cur: _Cursor) -> None:
        answers = []
        with self._lock:
            cur.timer = None
            if cur.closed:
                return
            while cur.waiting:
                handle = cur.waiting[0]
                try:
                    got = self._take(cur, handle.size, False)
                except OSError as exc:
                    cur.waiting.pop(0)
                    answers.append((handle, exc))
                    continue
                if got is None:
                    break
                cur.waiting.pop(0)
                answers.append((handle, got))
            self._schedule(cur)
        for handle, value in answers:
            if isinstance(value, OSError):
                handle.error(value)
            else:
                handle.reply(value)
        self.notify_poll()

    # ------------------------------------------------------------------ write
    def write(self, ctx: Context, data: bytes, offset: int) -> int:
        cur: _Cursor = ctx.state
        with self._lock:
            if cur.write_pos < len(cur.writes):
                want = cur.writes[cur.write_pos].data
                cur.write_pos += 1
                if bytes(data) != want:
                    self.mismatches.append(f"write {cur.write_pos}: {bytes(data)[:32]!r}, recorded {want[:32]!r}")
        return len(data)

    # ------------------------------------------------------------------ poll
    def poll(self, ctx: Context, events: int) -> int:
        """The recorded poll answers in turn (a recorded wakeup is sent again), plus what reads have ready."""
        cur: _Cursor = ctx.state
        wake_in: Optional[float] = None
        with self._lock:
            mask = POLLOUT | POLLWRNORM
            if cur.poll_pos < len(cur.polls):
                recorded = cur.polls[cur.poll_pos]
                cur.poll_pos += 1
                mask = recorded.mask
                if recorded.wake_t is not None:
                    wake_in = max(0.0, recorded.wake_t - (time.monotonic() - cur.t0)) if self.timing else 0.0
            nxt = cur.peek()
            if cur.leftover or (nxt is not None and nxt.error != errno.EAGAIN and cur.due_in(nxt, self.timing) == 0):
                mask |= POLLIN | POLLRDNORM
            elif nxt is None and self.at_end == "eof":
                mask |= POLLIN | POLLRDNORM  # end of file is readable
            self._schedule(cur)
        if wake_in is not None:
            timer = threading.Timer(wake_in + 0.001, self.notify_poll)  # after this answer has gone out
            timer.daemon = True
            timer.start()
        return mask

    # ------------------------------------------------------------------ ioctl
    def _find(self, cur: _Cursor, cmd: int) -> Optional[Op]:
        key = ioctl_key(cmd)
        ops = cur.script.ops
        for i in range(cur.ioctl_pos, len(ops)):
            op = ops[i]
            if op.kind == IOCTL and ioctl_key(op.cmd) == key:
                cur.ioctl_pos = i + 1
                cur.last[key] = op
                return op
        if key in cur.last:
            return cur.last[key]
        seen = self._index.get(key)
        return seen[-1] if seen else None

    def ioctl(self, ctx: Context, cmd: int, arg: Any, out_size: int) -> Any:
        cur: _Cursor = ctx.state
        arg = arg if isinstance(arg, (bytes, bytearray)) else b""  # None for a declared by-value number
        with self._lock:
            op = self._find(cur, cmd)
        if op is None:
            answer = errno.errorcode.get(self.mismatch_errno, str(self.mismatch_errno))
            self.mismatches.append(f"ioctl {cmd:#x}: never recorded (answered {answer})")
            raise OSError(self.mismatch_errno, f"ioctl {cmd:#x} is not in the recording")
        retry = self._retry(ctx, cmd, op, arg, out_size)
        if retry is not None:
            return retry
        if op.error:
            raise OSError(op.error, "recorded ioctl error")
        if not out_size:
            return op.result
        out = op.data[:out_size] + bytes(max(0, out_size - len(op.data)))
        result = op.result
        if 0 < result <= len(op.data) and result > out_size:
            result = out_size  # a length (EVIOCGNAME and friends): what fits the caller's buffer
        return result, out

    def _retry(self, ctx: Context, cmd: int, op: Op, arg: bytes, out_size: int) -> Optional[IoctlRetry]:
        """CUSE, a number without size: ask for the recorded ranges again, at the caller's address."""
        if ioc_size(cmd) or not (op.in_iovs or op.out_iovs) or getattr(ctx.session, "kind", "") != "cuse":
            return None
        want_in = sum(n for _, n in op.in_iovs)
        want_out = sum(n for _, n in op.out_iovs)
        if len(arg) >= want_in and out_size >= want_out:
            return None  # this round has the data
        moved = []
        for base, n in op.in_iovs + op.out_iovs:
            if not 0 <= base - op.arg < _REBASE_WINDOW:
                self.mismatches.append(f"ioctl {cmd:#x}: a recorded range at {base:#x} is not in the argument")
                raise OSError(self.mismatch_errno, "recorded pointer ranges cannot be moved to this caller")
            moved.append((ctx.ioctl_arg + base - op.arg, n))
        return IoctlRetry(moved[:len(op.in_iovs)], moved[len(op.in_iovs):])


__all__ = ["EmulatedDevice"]
