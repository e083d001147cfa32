"""One FUSE-over-io_uring queue: its ring, its entries (the reply channels) and its thread.

The kernel keeps one queue per possible CPU and hands a request to the queue of
the CPU the calling process runs on.  A queue here is an io_uring of its own,
served by one thread pinned to that CPU, holding ``entries``: buffer pairs
registered with FUSE_IO_URING_CMD_REGISTER.  The kernel fills a free entry with a
request and completes its command; the thread answers by writing the reply into
the same buffers and submitting FUSE_IO_URING_CMD_COMMIT_AND_FETCH, which also
makes the entry free for the next request.  So one ``io_uring_enter`` per round
trip both commits the last reply and waits for the next request.

**Entries are channels.**  A :class:`RingEntry` is what the session's handlers get
where the read/write transport passes a /dev/fuse fd: ``session.send(entry,
parts)`` answers the request the entry holds.  A deferred reply keeps its entry
and may answer from any thread.

**Only the queue's own thread submits to its ring.**  The kernel delivers the
next request of an entry as task work to the thread that submitted the entry's
last command (and cancels the entry when that thread exits), so a reply from
another thread (a deferred read woken by a device thread, an EINTR from the
/dev/fuse reader) is handed over: queued with the entry, then an eventfd write
wakes the queue thread (an IORING_OP_READ of the eventfd is always in flight),
which commits it.  No lock on the hot path, no kernel work on foreign threads.

**Sizing.**  A deferred call (a blocking read, a queued or async call) holds its
entry until it is answered.  A request that finds no free entry waits in the
kernel -- and the kernel hands such waiting requests out only when some entry of
the queue commits, *not* when new entries register (fs/fuse/dev_uring.c): if every
entry is held by deferred calls that wait for a request that is itself waiting,
nothing moves until some other call on that CPU is answered.  So a queue keeps at
least as many entries free as deferred calls hold (and :data:`LOW_WATER`): when a
deferral leaves fewer, it doubles its entries, up to ``max_entries`` (2048 per CPU
by default; beyond that, or after a burst faster than the queue could grow, a
warning says that requests from that CPU may wait for a held call to be answered).
The payload buffers are virtual memory until touched (an mmap'd arena, below), so a
thousand blocked readers cost their 288-byte headers, not 128 KiB each.

Buffers per entry: the 288-byte ``fuse_uring_req_header`` (a bytearray) and a
slot of the queue's *arena*, one anonymous mmap for all its entries: the slot's
byte 80 on is the payload buffer the kernel reads and writes (at least its
max payload, 128 KiB), and costs memory only where pages are touched, so a queue
can hold thousands of entries blocked in deferred calls.  The 80 bytes before the
payload let a WRITE be handed to the handlers in the layout the read/write
transport produces (``fuse_in_header``-sized gap, fuse_write_in at byte 40, the
data right after) and a reply be staged as one copy of the handler's
header+struct bytes at byte 64 (the fuse_out_header lands at 64..80, the reply
body at 80).  Requests without payload are handed over in place: a view of the
header buffer starting 40 bytes before ``op_in``; other requests with payload
(LOOKUP's name, an ioctl's input: small) as a bytearray copy.
"""

from __future__ import annotations

import collections
import ctypes
import errno
import logging
import mmap
import os
import struct
import threading
from typing import Any, Deque, List, Optional, Sequence, Tuple

from fusd_wire import FAST
from fusd_wire import constants as C

from . import abi
from .ring import Ring, address_of, errno_cell, syscall

log = logging.getLogger("fusd")

#: free entries below which a queue always registers more (after a call deferred)
LOW_WATER = 4
#: payloads up to this size (not WRITE's) are staged in the entry's own small buffer
SMALL_PAYLOAD = 4096

_HDR = FAST.fuse_uring_req_header
_IN_HEADER = FAST.fuse_in_header
_OP_IN = _HDR.offsets["op_in"]  # 128
_PAYLOAD_SZ = _HDR.offsets["ring_ent_in_out.payload_sz"]  # 272
_OP_MAX = C.FUSE_URING_OP_IN_OUT_SZ
_IN_SIZE = _IN_HEADER.size  # 40
_OUT_SIZE = FAST.fuse_out_header.size  # 16
#: the request as the kernel wrote it, one unpack: fuse_in_header up to pid (total_extlen and
#: padding skipped: no extensions are negotiated) and ring_ent_in_out.payload_sz
_PID_END = _IN_HEADER.offsets["pid"] + 4
_REQUEST = struct.Struct(_IN_HEADER.struct.format[:_IN_HEADER.struct.format.index("HH")]
                         + f"{_PAYLOAD_SZ - _PID_END}x" + "I")
#: a reply's fuse_out_header (the first 16 bytes of its first part: 's' takes a prefix) and
#: payload_sz in one pack_into (the bytes between, op_in's, are zeroed: nothing reads them then)
_OUT_AND_PSZ = struct.Struct(f"<{_OUT_SIZE}s{_PAYLOAD_SZ - _OUT_SIZE}xI")
_OUT_UNIQUE = struct.Struct("<Q")  # fuse_out_header.unique, at its offset in a reply's first part
_OUT_UNIQUE_AT = FAST.fuse_out_header.offsets["unique"]
#: An entry holds an unanswered request while in_out still has the kernel's fuse_in_header:
#: its second word is then the opcode (> 0); a committed reply put fuse_out_header.error
#: (<= 0) there.  So the buffer itself says, at no cost on the hot path.
_HELD = struct.Struct("<4xiQ")
if ((FAST.fuse_in_header.offsets["opcode"], FAST.fuse_in_header.offsets["unique"]) != (4, 8)
        or (FAST.fuse_out_header.offsets["error"], _OUT_UNIQUE_AT) != (4, 8)):
    raise AssertionError("fuse_in_header/fuse_out_header moved: _HELD needs a look")

# Where the handlers find things in a request buffer (the read/write layout).
_STAGE_OP = _IN_SIZE  # the fixed request struct at 40
_STAGE_PAYLOAD = 2 * _IN_SIZE  # the payload at 80 when the struct has fuse_read_in/fuse_write_in's 40 bytes
_STAGE_REPLY = _STAGE_PAYLOAD - _OUT_SIZE  # a reply's header is staged at 64..80, its body at 80
_HDR_VIEW_AT = _OP_IN - _IN_SIZE  # a view of the header buffer from here has op_in at 40

# The SQE of an entry: IORING_OP_URING_CMD on fixed file 0 (/dev/fuse), fuse_uring_cmd_req in ``cmd``.
# (pack_into writes pad bytes as zeros: the whole 128-byte SQE is written, unused fields zero.)
_SQE = abi.io_uring_sqe
_CMD_AT = _SQE.offset["cmd"]
_CMD_REQ = FAST.fuse_uring_cmd_req
_SQE_URING_CMD = struct.Struct(
    _SQE.struct("opcode", "flags", "fd", "cmd_op", "addr", "len", "user_data", size=_CMD_AT).format
    + _CMD_REQ.struct.format[1:] + f"{abi.SQE128_CMD_SIZE - _CMD_REQ.size}x")
_SQE_READ = _SQE.struct("opcode", "fd", "off", "addr", "len", "user_data", size=abi.SQE128_SIZE)
# A commit rewrites two fields of the entry's SQE in place: cmd_op (once, after the REGISTER)
# and fuse_uring_cmd_req.commit_id.
_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")
_CMD_OP_AT = _SQE.offset["cmd_op"]
_COMMIT_ID_AT = _CMD_AT + _CMD_REQ.offsets["commit_id"]
_CQE = abi.io_uring_cqe.struct("user_data", "res", "flags")
_IOVEC2 = struct.Struct("<QQQQ")  # two struct iovec: headers, payload

REGISTER = int(C.fuse_uring_cmd.FUSE_IO_URING_CMD_REGISTER)
COMMIT = int(C.fuse_uring_cmd.FUSE_IO_URING_CMD_COMMIT_AND_FETCH)
#: user_data of the eventfd read (entries use their index)
WAKE = 1 << 62
_GETEVENTS = abi.IORING_ENTER_GETEVENTS
_NO_REPLY = frozenset((C.fuse_opcode.FUSE_FORGET, C.fuse_opcode.FUSE_BATCH_FORGET,
                       C.fuse_opcode.FUSE_NOTIFY_REPLY, C.fuse_opcode.FUSE_INTERRUPT))
_GONE = (errno.ENOTCONN, errno.ECONNABORTED, errno.ECANCELED, errno.ENODEV)


class RingEntry:
    """One registered request slot of a queue; also the reply channel of the request it holds.

    ``send(parts)`` answers that request (``parts``: the fuse_out_header + body pieces a
    handler would ``writev``), from any thread; ``OSError(ENOENT)`` if the entry no
    longer holds the request the header names (answered already: a late reply).
    """

    __slots__ = ("queue", "idx", "hdr", "req", "hdr_view", "op40_src", "op40_dst", "held", "sqe_off",
                 "commit_at", "cmd", "iov", "small", "_exports")

    def __init__(self, queue: FuseQueue, idx: int, req: memoryview, req_address: int, payload_size: int) -> None:
        self.queue = queue
        self.idx = idx
        self.hdr = bytearray(_HDR.size)
        # the arena slot: exactly the payload after the staging bytes, so a reply that would
        # not fit the kernel's payload buffer cannot be written here either (ValueError)
        self.req = req
        self.hdr_view = memoryview(self.hdr)[_HDR_VIEW_AT:]
        self.op40_src = memoryview(self.hdr)[_OP_IN:_OP_IN + _STAGE_PAYLOAD - _STAGE_OP]
        self.op40_dst = req[_STAGE_OP:_STAGE_PAYLOAD]
        self.held = False  # held by a deferred call
        self.small: Optional[bytearray] = None  # staging for small payloads (LOOKUP's name), made on first use
        self.sqe_off = idx * queue.ring.sqe_size
        self.commit_at = self.sqe_off + _COMMIT_ID_AT  # where the SQE holds fuse_uring_cmd_req.commit_id
        self.cmd = REGISTER
        self.iov = bytearray(_IOVEC2.size)
        _IOVEC2.pack_into(self.iov, 0, address_of(self.hdr), _HDR.size, req_address + _STAGE_PAYLOAD,
                          payload_size)
        self._exports = (self.hdr_view, self.op40_src, self.op40_dst, req)

    def holding(self) -> int:
        """The unique of the unanswered request this entry holds, or 0."""
        opcode, unique = _HELD.unpack_from(self.hdr)
        return unique if opcode > 0 else 0

    def send(self, parts: Sequence[Any]) -> int:
        """Answer the held request with ``parts`` (header first); any thread."""
        return self.queue.send(self, parts)

    def release(self) -> None:
        """Drop the views into the buffers (queue teardown)."""
        for view in self._exports:
            view.release()

    def __repr__(self) -> str:
        return f"<RingEntry q{self.queue.qid}#{self.idx} holding={self.holding()}>"


class FuseQueue:
    """The queue ``qid`` of a FUSE connection: a ring, its entries and the thread serving them.

    Args:
        session: the UringFuseSession whose handlers answer the requests.
        qid: the queue (= CPU) number.
        devfd: the /dev/fuse fd of the connection.
        payload_size: payload buffer bytes per entry (at least the kernel's max payload).
        depth: entries registered at start; ``max_entries``: the most it grows to.
        cpu: the CPU to pin the thread to, or None (the process's affinity).
    """

    def __init__(self, session: Any, qid: int, devfd: int, payload_size: int, depth: int = 128,
                 max_entries: int = 2048, cpu: Optional[int] = None) -> None:
        self.session = session
        self.qid = qid
        self.cpu = cpu
        self.payload_size = payload_size
        self.depth = depth
        self.max_entries = max(depth, max_entries)
        self.devfd = devfd
        self.ring: Ring = None  # type: ignore[assignment]  # made by the queue thread (it alone submits)
        self.efd = os.eventfd(0, os.EFD_CLOEXEC)
        # every entry's staging bytes + payload buffer, virtual until touched
        self.stride = -(-(_STAGE_PAYLOAD + payload_size) // mmap.PAGESIZE) * mmap.PAGESIZE
        self.arena = mmap.mmap(-1, self.max_entries * self.stride,
                               flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | getattr(mmap, "MAP_NORESERVE", 0))
        anchor = ctypes.c_char.from_buffer(self.arena)
        self.arena_address = ctypes.addressof(anchor)
        del anchor  # (the export would keep the arena from closing; its address stays put)
        self.arena_view = memoryview(self.arena)
        self.wake_slot = 0
        self.wake_buf = bytearray(8)
        self.entries: List[RingEntry] = []
        #: per entry, what the loop needs of it in one tuple: (entry, hdr, hdr_view, req, commit_at)
        self.fast: List[Tuple[RingEntry, bytearray, memoryview, memoryview, int]] = []
        #: entries whose REGISTER is published: their SQE becomes a COMMIT once it was submitted
        self.registering: List[RingEntry] = []
        #: replies from other threads, committed by this one
        self.pending: Deque[Tuple[RingEntry, Sequence[Any]]] = collections.deque()
        #: SQE slots published outside the serving loop's own commits (it moves them to the SQ)
        self.outbox: List[int] = []
        # SQ bookkeeping (this thread only): SQEs put in the SQ array / submitted, unmasked
        self.sq_t = 0
        self.submitted = 0
        self.held = 0
        self.dead = 0
        self.tid: Optional[int] = None
        self.thread: Optional[threading.Thread] = None
        self.stopping = False
        self.finished = False
        #: set once the ring exists (or ``error``); ``go()`` then lets the thread register
        self.prepared = threading.Event()
        self.registered = threading.Event()
        self._go = threading.Event()
        self._cancelled = False
        self._close_lock = threading.Lock()
        self.error: Optional[OSError] = None
        #: why the kernel ended this queue (None while serving, or when we stopped it)
        self.end_reason: Optional[str] = None
        self._warned_full = False
        self._warned_empty = False

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        """Start the queue thread: it makes its ring (``prepared``), waits for ``go()`` (after the
        INIT reply: a REGISTER before it fails EAGAIN), registers its entries (``registered``,
        or ``error``) and serves."""
        self.thread = threading.Thread(target=self._run, name=f"fusd-uring-q{self.qid}", daemon=True)
        self.thread.start()

    def go(self, cancel: bool = False) -> None:
        """Let the prepared thread register its entries (``cancel``: exit instead)."""
        self._cancelled = cancel
        self._go.set()

    def stop(self) -> None:
        """Ask the thread to commit what is pending and exit (any thread)."""
        self.stopping = True
        self._wake()

    def join(self, timeout: float) -> bool:
        """Wait for the thread; True if it is gone."""
        if self.thread is None:
            return True
        self.thread.join(timeout)
        return not self.thread.is_alive()

    def close(self) -> None:
        """Close the ring (the kernel cancels the entries still registered) and the eventfd.

        Called by the queue thread when it leaves, and by the session after stopping it;
        a thread that did not leave (stuck in a device callback) gets its ring retired
        under it: an open ring would keep the connection alive and make the unmount wait.
        """
        with self._close_lock:
            thread = self.thread
            alive = thread is not None and thread.is_alive() and thread is not threading.current_thread()
            for ent in self.entries:
                ent.release()
            if self.ring is not None:
                if alive:
                    self.ring.retire()
                else:
                    self.ring.close()
            if self.efd >= 0 and not alive:
                os.close(self.efd)
                self.efd = -1
            if not alive and self.arena is not None:
                self.arena_view.release()
                try:
                    self.arena.close()
                except BufferError:
                    pass  # a view a callback kept (in a traceback, say): unmapped when it goes
                self.arena = None  # type: ignore[assignment]

    def _wake(self) -> None:
        efd = self.efd
        if efd < 0:
            return  # closed: the thread is gone
        try:
            os.eventfd_write(efd, 1)
        except (OSError, ValueError):
            pass

    # ------------------------------------------------------------------ submission (queue thread only)
    def _publish(self, slot: int) -> None:
        """Queue SQE ``slot`` for the next enter."""
        self.outbox.append(slot)

    def _flush(self, t: int) -> int:
        """Move the outbox into the SQ array from position ``t``; returns the new position."""
        array, mask = self.ring.sq_array, self.ring.sq_mask
        for slot in self.outbox:
            array[t & mask] = slot
            t += 1
        self.outbox.clear()
        return t

    def _submit(self, min_complete: int = 0, flags: int = 0) -> int:
        """io_uring_enter for what was published (outside the serving loop)."""
        t = self.sq_t = self._flush(self.sq_t)
        self.ring.sq_tail[0] = t & 0xFFFFFFFF
        n = self.ring.enter(t - self.submitted, min_complete, flags)
        self.submitted += n
        return n

    def _add_entries(self, n: int) -> int:
        """Create and publish REGISTER for up to ``n`` new entries; returns how many."""
        n = min(n, self.max_entries - len(self.entries))
        for _ in range(n):
            idx = len(self.entries)
            at = idx * self.stride
            ent = RingEntry(self, idx, self.arena_view[at:at + _STAGE_PAYLOAD + self.payload_size],
                            self.arena_address + at, self.payload_size)
            self.entries.append(ent)
            self.fast.append((ent, ent.hdr, ent.hdr_view, ent.req, ent.commit_at))
            self._register(ent)
        return n

    def _register(self, ent: RingEntry) -> None:
        ent.cmd = REGISTER
        ent.hdr[:_OUT_SIZE] = bytes(_OUT_SIZE)  # holds nothing until the kernel fills it
        self.registering.append(ent)
        _SQE_URING_CMD.pack_into(self.ring.sqes, ent.sqe_off, abi.IORING_OP_URING_CMD, abi.IOSQE_FIXED_FILE, 0,
                                 REGISTER, address_of(ent.iov), 2, ent.idx, 0, 0, self.qid, *([0] * 6))
        self._publish(ent.idx)

    def _registered(self) -> None:
        """The REGISTERs published were submitted: their SQEs now serve as the entries' commits."""
        if self.outbox or self.submitted != self.sq_t:
            return  # not all submitted yet (the kernel took fewer): next time
        sqes = self.ring.sqes
        for ent in self.registering:
            ent.cmd = COMMIT
            _U32.pack_into(sqes, ent.sqe_off + _CMD_OP_AT, COMMIT)
        self.registering.clear()

    def _arm_wake(self) -> None:
        _SQE_READ.pack_into(self.ring.sqes, self.wake_slot * self.ring.sqe_size, abi.IORING_OP_READ, self.efd,
                            0, address_of(self.wake_buf), 8, WAKE)
        self._publish(self.wake_slot)

    def commit(self, ent: RingEntry, parts: Sequence[Any]) -> None:
        """Write the reply into ``ent``'s buffers and publish its COMMIT_AND_FETCH (queue thread only).

        The serving loop does the same inline for the common shapes; ValueError if the
        reply does not fit.
        """
        unique = ent.holding()
        req = ent.req
        p0 = parts[0]
        n0 = len(p0)
        size = n0 - _OUT_SIZE
        for part in parts[1:]:
            size += len(part)
        if n0 < _OUT_SIZE or size > self.payload_size:
            raise ValueError(f"a {size}-byte reply does not fit the {self.payload_size}-byte ring payload")
        if n0 > _OUT_SIZE:
            req[_STAGE_REPLY:_STAGE_REPLY + n0] = p0  # the header lands before the payload, the body in it
        pos = _STAGE_REPLY + n0
        for part in parts[1:]:
            m = len(part)
            req[pos:pos + m] = part
            pos += m
        _OUT_AND_PSZ.pack_into(ent.hdr, 0, p0, size)
        _U64.pack_into(self.ring.sqes, ent.commit_at, unique)
        if ent.held:
            ent.held = False
            self.held -= 1
        self._publish(ent.idx)

    def send(self, ent: RingEntry, parts: Sequence[Any]) -> int:
        """A reply for ``ent`` from a handler or a deferred call (any thread)."""
        if self.finished:
            raise OSError(errno.ENODEV, "the ring queue has stopped")
        if threading.get_ident() == self.tid:
            self._commit_checked(ent, parts)
        else:
            self.pending.append((ent, parts))
            self._wake()
        return sum(len(p) for p in parts)

    def _commit_checked(self, ent: RingEntry, parts: Sequence[Any]) -> None:
        unique = _OUT_UNIQUE.unpack_from(parts[0], _OUT_UNIQUE_AT)[0]
        held = ent.holding()
        if not held or unique != held:
            raise OSError(errno.ENOENT, f"{ent!r} does not hold request {unique} (answered already)")
        self._recorded(parts)
        try:
            self.commit(ent, parts)
        except ValueError as exc:
            self.session._log_once("uring-reply-size", "fusd: %s; answering EIO", exc, None)
            self.commit(ent, [FAST.fuse_out_header.pack(_OUT_SIZE, -errno.EIO, unique)])

    def _drain(self) -> None:
        pending = self.pending
        while pending:
            ent, parts = pending.popleft()
            try:
                self._commit_checked(ent, parts)
            except OSError as exc:
                if exc.errno != errno.ENOENT:
                    self.session._report(exc)
            except Exception as exc:
                self.session._log_once("uring-drain", "fusd: a deferred reply could not be committed", exc)

    def _recorded(self, parts: Sequence[Any]) -> None:
        rec = self.session.recorder
        if rec is not None:
            rec.record(self.session.conn_id, 2, list(parts))

    # ------------------------------------------------------------------ the thread
    def _make_ring(self) -> Ring:
        # One SQE per entry (at its index) and one for the eventfd read.  Only this thread
        # submits, which lets the kernel run the completion work (the FUSE request copy)
        # inside our wait instead of through a task-work signal (DEFER_TASKRUN, 6.1+: about
        # 0.4 µs less per round trip here, measured with bench_refs/uring_fuse.c).
        size = self.max_entries + 1
        try:
            return Ring(size, abi.IORING_SETUP_SQE128 | abi.IORING_SETUP_SINGLE_ISSUER |
                        abi.IORING_SETUP_DEFER_TASKRUN)
        except OSError as exc:
            if exc.errno != errno.EINVAL:
                raise
            return Ring(size, abi.IORING_SETUP_SQE128)

    def _run(self) -> None:
        self.tid = threading.get_ident()
        try:
            if self.cpu is not None:
                os.sched_setaffinity(0, {self.cpu})
            self.ring = self._make_ring()
            self.ring.register_files([self.devfd])
            self.wake_slot = self.ring.sq_entries - 1
            self.sq_t = self.submitted = self.ring.sq_tail[0]
        except OSError as exc:
            self.error = exc
        self.prepared.set()
        if self.error is None:
            self._go.wait()
            if self._cancelled:
                self.error = OSError(errno.ECANCELED, "not used")
        if self.error is None:
            try:
                self._arm_wake()
                self._add_entries(self.depth)
                self._submit()
                self._submit(0, abi.IORING_ENTER_GETEVENTS)  # run deferred completion work
                self._registered()
                self._check_registered()
            except OSError as exc:
                self.error = exc
        self.registered.set()
        try:
            if self.error is None:
                self._loop()
        except (ValueError, OSError):
            if not self.stopping:  # else: retired under us while stuck in a callback
                log.exception("fusd: ring queue %d failed", self.qid)
        except BaseException as exc:  # never silently: a dead queue would block its CPU's callers
            log.exception("fusd: ring queue %d failed", self.qid)
            self.session._report(exc)
        finally:
            self.finished = True
            self.close()  # before anything else: an open ring keeps the connection (and an unmount) waiting
        self.session._queue_finished(self, self.end_reason)

    def _check_registered(self) -> None:
        """After the first submit: a REGISTER that failed has already completed with its error.

        Only looks: the CQ head stays where it is.  Requests the kernel delivered in the
        meantime (callers that waited for the ring to become ready are woken by the
        REGISTER that makes it so) are completions too, and the loop serves them.
        """
        ring = self.ring
        head, tail = ring.cq_head[0], ring.cq_tail[0]
        while head != tail:
            user_data, res, _ = _CQE.unpack_from(ring.cq, ring.cqes + (head & ring.cq_mask) * ring.cqe_size)
            head = (head + 1) & 0xFFFFFFFF
            if user_data < WAKE and res < 0:
                self.error = OSError(-res, f"FUSE_IO_URING_CMD_REGISTER on queue {self.qid}: {os.strerror(-res)}")
                raise self.error

    def _loop(self) -> None:
        """Serve: one io_uring_enter commits the replies published and waits for the next request.

        Every line here runs once per request: the common case (a request without payload,
        answered with a header and its fixed struct, or a header and data) is inline, with
        the SQ position ``t`` and the submitted count in locals; anything else leaves
        through ``_slow``/``commit``, whose SQEs wait in ``outbox`` until the next enter.
        """
        session = self.session
        ring = self.ring
        ringfd = ring.fd
        sq_tail, sq_array, sq_mask = ring.sq_tail, ring.sq_array, ring.sq_mask
        sqes = ring.sqes
        cq, cq_head, cq_tail, cq_mask, cqes = ring.cq, ring.cq_head, ring.cq_tail, ring.cq_mask, ring.cqes
        if ring.cqe_size != abi.io_uring_cqe.size:
            raise AssertionError("the loop reads 16-byte CQEs")
        head = cq_head[0]  # only this thread moves the CQ head: kept here, written back per batch
        t, submitted = self.sq_t, self.submitted
        fast = self.fast
        outbox = self.outbox
        registering = self.registering
        handlers = session.handlers
        min_length = session.min_length
        unpack_cqe = _CQE.unpack_from
        unpack_request = _REQUEST.unpack_from
        out_and_psz = _OUT_AND_PSZ.pack_into
        pack_u64 = _U64.pack_into
        err_cell = errno_cell()
        slow = self._slow
        stage = self._stage
        enter, getevents = abi.SYS_io_uring_enter, _GETEVENTS
        # the largest request served inline: one whose fixed struct fits op_in (when recording,
        # none: every request goes through _slow, which records it)
        small = _IN_SIZE + _OP_MAX if session.recorder is None else -1
        reply_at, payload_at, out_size = _STAGE_REPLY, _STAGE_PAYLOAD, _OUT_SIZE
        mask32 = 0xFFFFFFFF
        while True:
            if outbox:
                t = self._flush(t)
            sq_tail[0] = t & mask32
            # exactly the SQEs published: asked for more, the kernel returns without waiting
            n = syscall(enter, ringfd, t - submitted, 1, getevents, None, None)
            if n < 0:
                err = err_cell.value
                if err in (errno.EINTR, errno.EAGAIN, errno.EBUSY):
                    continue
                self.sq_t, self.submitted = t, submitted
                raise OSError(err, f"io_uring_enter: {os.strerror(err)}")
            submitted += n
            if registering:
                self.sq_t, self.submitted = t, submitted
                self._registered()
            tail = cq_tail[0]
            while head != tail:
                user_data, res, _ = unpack_cqe(cq, cqes + ((head & cq_mask) << 4))
                head = (head + 1) & mask32
                if res:  # not a request: the eventfd read (res 8) or an entry's error
                    if self._special(user_data, res):
                        cq_head[0] = head
                        self.sq_t, self.submitted = t, submitted
                        return
                    continue
                ent, hdr, hdr_view, req, commit_at = fast[user_data]
                length, opcode, unique, nodeid, uid, gid, pid, psz = unpack_request(hdr)
                if psz:  # WRITE's data (in place), LOOKUP's name, an ioctl's input (staged)
                    buf = stage(ent, length, psz)
                    if buf is None or small < 0 or length < min_length[opcode & 4095]:
                        slow(ent, length, opcode, unique, nodeid, uid, gid, pid, psz)
                        continue
                elif small < length or length < min_length[opcode & 4095]:  # recording, or sizes that lie
                    slow(ent, length, opcode, unique, nodeid, uid, gid, pid, psz)
                    continue
                else:
                    buf = hdr_view
                handler = handlers.get(opcode)
                try:
                    parts = handler(ent, buf, length, unique, nodeid, uid, gid, pid) if handler is not None \
                        else self._unhandled(ent, opcode, unique)
                    if parts is None:
                        self._answered_or_deferred(ent)
                        continue
                    # The reply: its header to in_out (with payload_sz), the body to the payload.
                    # (req ends where the kernel's payload buffer does: a reply too long for it
                    # raises ValueError here, answered EIO below)
                    p0 = parts[0]
                    n0 = len(p0)
                    if len(parts) == 1:  # header (+ its fixed struct): the header at 64, the body at 80
                        req[reply_at:reply_at + n0] = p0
                        size = n0 - out_size
                    elif len(parts) == 2:
                        data = parts[1]
                        m = len(data)
                        if n0 == out_size:  # header and data (READ)
                            req[payload_at:payload_at + m] = data
                            size = m
                        else:  # header, fixed struct and data (IOCTL)
                            req[reply_at:reply_at + n0] = p0
                            end = reply_at + n0
                            req[end:end + m] = data
                            size = n0 - out_size + m
                    else:
                        self.commit(ent, parts)
                        continue
                    out_and_psz(hdr, 0, p0, size)
                    pack_u64(sqes, commit_at, unique)
                    sq_array[t & sq_mask] = user_data
                    t += 1
                except OSError as exc:
                    if exc.errno not in (errno.ENOENT, errno.EINTR):
                        session._report(exc)
                    self._unstick(ent)
                except Exception as exc:  # a bug in the runtime itself: keep serving, say it once
                    session._log_once("uring-runtime", "fusd: internal error while serving opcode %s", opcode, exc)
                    self._unstick(ent)
            cq_head[0] = head

    def _slow(self, ent: RingEntry, length: int, opcode: int, unique: int, nodeid: int, uid: int, gid: int,
              pid: int, psz: int) -> None:
        """A request whose sizes do not add up (answered EIO), or any request while recording."""
        session = self.session
        buf: Any = self._stage(ent, length, psz) if psz else ent.hdr_view if length - _IN_SIZE <= _OP_MAX else None
        if buf is None or length < session.min_length[opcode & 4095]:
            self._bad_request(ent, opcode, length, psz, unique)
            return
        if session.recorder is not None:
            self._record_request(ent, length, psz)
        handler = session.handlers.get(opcode)
        try:
            parts = handler(ent, buf, length, unique, nodeid, uid, gid, pid) if handler is not None \
                else self._unhandled(ent, opcode, unique)
            if parts is None:
                self._answered_or_deferred(ent)
                return
            self._recorded(parts)
            self.commit(ent, parts)
        except OSError as exc:
            if exc.errno not in (errno.ENOENT, errno.EINTR):
                session._report(exc)
            self._unstick(ent)
        except Exception as exc:  # a bug in the runtime itself: keep serving, say it once
            session._log_once("uring-runtime", "fusd: internal error while serving opcode %s", opcode, exc)
            self._unstick(ent)

    def _answered_or_deferred(self, ent: RingEntry) -> None:
        """The handler returned no parts: it answered through the entry itself, or deferred."""
        if ent.holding() and not ent.held:  # deferred: the entry stays ours until the call is answered
            ent.held = True
            self.held += 1
            n = len(self.entries)
            if n - self.held < max(LOW_WATER, self.held):  # keep as many free as held
                self._grow()
            elif n == self.held and not self._warned_empty:
                self._warned_empty = True
                log.warning("fusd: ring queue %d: every entry was held by a deferred call for a moment; a "
                            "request that came then waits until another call from CPU %d is answered",
                            self.qid, self.qid)

    def _stage(self, ent: RingEntry, length: int, psz: int) -> Any:
        """A request with payload, laid out for the handlers: struct at 40, payload right after."""
        opsize = length - _IN_SIZE - psz
        req = ent.req
        if not 0 <= opsize <= _OP_MAX or psz > self.payload_size:
            return None
        if opsize == _STAGE_PAYLOAD - _STAGE_OP:  # fuse_write_in: the payload is where it belongs
            ent.op40_dst[:] = ent.op40_src
            return req
        # anything else (LOOKUP's name, an ioctl's input; small): a bytearray in the read/write layout
        # (the entry's own for up to SMALL_PAYLOAD bytes; the handler reads only the request's n)
        end = _STAGE_OP + opsize + psz
        if psz <= SMALL_PAYLOAD:
            buf = ent.small
            if buf is None:
                buf = ent.small = bytearray(_STAGE_OP + _OP_MAX + SMALL_PAYLOAD)
        else:
            buf = bytearray(end)
        if opsize:
            buf[_STAGE_OP:_STAGE_OP + opsize] = ent.hdr[_OP_IN:_OP_IN + opsize]
        buf[_STAGE_OP + opsize:end] = req[_STAGE_PAYLOAD:_STAGE_PAYLOAD + psz]
        return buf

    def _bad_request(self, ent: RingEntry, opcode: int, length: int, psz: int, unique: int) -> None:
        """Sizes that do not add up (the reader trusts nothing): say so once, answer EIO."""
        self.session._log_once("uring-bad-request", "fusd: ring queue %d: opcode %d request of %d bytes with %d "
                               "bytes of payload does not add up; answering EIO", self.qid, opcode, length, psz, None)
        self.commit(ent, [FAST.fuse_out_header.pack(_OUT_SIZE, -errno.EIO, unique)])

    def _record_request(self, ent: RingEntry, length: int, psz: int) -> None:
        """The request as /dev/fuse would have carried it, for the capture."""
        opsize = length - _IN_SIZE - psz
        raw = bytes(ent.hdr[:_IN_SIZE]) + bytes(ent.hdr[_OP_IN:_OP_IN + max(opsize, 0)])
        if psz:
            raw += bytes(ent.req[_STAGE_PAYLOAD:_STAGE_PAYLOAD + psz])
        self.session.recorder.record(self.session.conn_id, 1, raw)

    def _unhandled(self, ent: RingEntry, opcode: int, unique: int) -> Optional[List[Any]]:
        """No handler: stopping (ENODEV/ENOENT, as on read/write), a no-reply opcode (empty
        commit: the entry must come back), or an unknown opcode (ENOSYS)."""
        if self.session.stopping and opcode not in _NO_REPLY:
            err = errno.ENODEV if opcode == C.fuse_opcode.FUSE_OPEN else errno.ENOENT
            return [FAST.fuse_out_header.pack(_OUT_SIZE, -err, unique)]
        if opcode in _NO_REPLY:
            return [FAST.fuse_out_header.pack(_OUT_SIZE, 0, unique)]
        return [FAST.fuse_out_header.pack(_OUT_SIZE, -errno.ENOSYS, unique)]

    def _unstick(self, ent: RingEntry) -> None:
        """After an error while serving: the entry must not stay held by a request nobody answers."""
        unique = ent.holding()
        if unique and not ent.held:
            try:
                self.commit(ent, [FAST.fuse_out_header.pack(_OUT_SIZE, -errno.EIO, unique)])
            except Exception:  # pragma: no cover - commit of a 16-byte reply cannot fail
                pass

    def _grow(self) -> None:
        added = self._add_entries(max(self.depth, len(self.entries)))
        if added:
            log.info("fusd: ring queue %d: %d of %d entries held by deferred calls; registered %d more",
                     self.qid, self.held, len(self.entries) - added, added)
        elif not self._warned_full:
            self._warned_full = True
            log.warning("fusd: ring queue %d: all %d entries are held by deferred calls; further requests "
                        "from CPU %d wait until one is answered", self.qid, len(self.entries), self.qid)

    def _special(self, user_data: int, res: int) -> bool:
        """A CQE that is not a new request; True when the queue is done."""
        if user_data == WAKE:
            self._drain()
            if self.stopping or res < 0:
                return True
            self._arm_wake()
            return False
        ent = self.entries[user_data]
        err = -res
        if err in (errno.EAGAIN, errno.EINTR):  # not taken: submit the same command again
            self._publish(ent.idx)
            return False
        if err in _GONE:  # the connection is gone (unmount, abort) or the ring is being torn down
            self.dead += 1
            if self.dead >= len(self.entries) - self.held:
                self.end_reason = ("the connection was aborted (fusectl abort)" if err == errno.ECONNABORTED
                                   else "the kernel closed the connection (unmounted)")
                return True
            return False
        self.session._log_once(f"uring-cqe-{err}", "fusd: ring queue %d: command %d of entry %d failed: %s; "
                               "registering the entry again", self.qid, ent.cmd, ent.idx, os.strerror(err), None)
        if ent.cmd == COMMIT:
            self._register(ent)
        else:
            self.dead += 1
        return False
