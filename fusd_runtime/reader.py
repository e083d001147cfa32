"""Reader threads: read a request, check it, hand it to its handler, write the answer; and their end.

Each reader blocks in ``read(2)`` on its own fd (FUSE clones one per reader with
FUSE_DEV_IOC_CLONE; CUSE readers share the one fd) into one preallocated buffer.
The reader trusts nothing: the byte count ``read(2)`` returned must equal the
header's ``len``, and must cover the opcode's fixed request struct (handlers
check their own trailing data); a message that lies is answered EIO and logged
once, and no device ever sees bytes of another request.  A 0-byte read is the end
of the channel (a closed socket peer), not a request.

**The session's life follows the channel's.**  ``read(2)`` failing with ENODEV
(unmounted), ECONNABORTED (aborted through fusectl), EBADF, or EOF ends the
session: :meth:`ReaderLoop.end` is called once with the reason, and the server
stops with one log line.  Answers that come too late (ENOENT: the caller was
interrupted or died) are normal and ignored.

**A stuck callback cannot starve the channel.**  Sync callbacks run in the reader
that read their request.  If every reader is inside a callback that does not come
back (a device sleeping without deferring), nobody would read the next request —
so a supervisor on the event loop looks every ``SUPERVISE_EVERY`` seconds at each
reader's state in ``/proc/self/task/<tid>/syscall`` (blocked in ``read`` on its own
buffer = idle; costs nothing per request) and starts one more reader when none is
idle and one has been busy with the same request for ``STUCK_TICKS`` periods (at most
``MAX_EXTRA_READERS`` more; an added reader stays, idle in ``read``, until the session ends).
"""

from __future__ import annotations

import errno
import fcntl
import io
import logging
import os
import threading
from typing import Any, List, Optional

from fusd_wire import constants as C

from .deferred import Deferrals
from .state import IN_HEADER, OP, RequestBuffer

log = logging.getLogger("fusd")

#: seconds between two looks of the supervisor at the readers
SUPERVISE_EVERY = 0.05
#: readers the supervisor may add to a session's own (each only when all others were stuck)
MAX_EXTRA_READERS = 8
#: supervisor periods a reader must be busy with one request before it counts as stuck (a busy,
#: preempted or slow machine makes single periods of 50 ms common: don't add readers for those)
STUCK_TICKS = 2
_NO_REPLY = frozenset({int(OP.FUSE_FORGET), int(OP.FUSE_BATCH_FORGET), int(OP.FUSE_NOTIFY_REPLY),
                       int(OP.FUSE_INTERRUPT)})
#: opcodes 0..CUSE_INIT (4096): the readers' dispatch list
DISPATCH_SIZE = 4097
_KEEP_WHILE_STOPPING = frozenset({int(OP.FUSE_RELEASE), int(OP.FUSE_RELEASEDIR), int(OP.FUSE_FORGET),
                                  int(OP.FUSE_BATCH_FORGET), int(OP.FUSE_INTERRUPT), int(OP.FUSE_NOTIFY_REPLY)})
_ENDED = (errno.ENODEV, errno.ECONNABORTED, errno.EBADF, errno.EPIPE, errno.ECONNRESET, errno.ENOTCONN)


class ChannelEnded(Exception):
    """The kernel channel is gone (unmounted, aborted, closed): the reader leaves."""

    def __init__(self, reason: str, cause: Optional[BaseException] = None) -> None:
        super().__init__(reason)
        self.reason, self.cause = reason, cause


class Reader:
    """One reader thread: its fd, its buffer, and what the supervisor saw last."""

    __slots__ = ("index", "fd", "buf", "thread", "tid", "address", "last_unique", "busy_ticks")

    def __init__(self, index: int, fd: int, bufsize: int) -> None:
        self.index, self.fd = index, fd
        self.buf = RequestBuffer(bufsize)
        self.thread: Optional[threading.Thread] = None
        self.tid = 0
        import ctypes
        self.address = ctypes.addressof(ctypes.c_char.from_buffer(self.buf))
        self.last_unique = -1
        self.busy_ticks = 0

    def in_read(self) -> Optional[bool]:
        """True if blocked in read(2) on its buffer, False if not, None if we cannot tell."""
        try:
            with open(f"/proc/self/task/{self.tid}/syscall", "rb") as f:
                fields = f.read().split()
        except OSError:
            return None
        # "nr arg0 arg1 ... sp pc" while in a syscall; "running" or "-1 sp pc" otherwise
        return len(fields) >= 3 and fields[1] == b"0x%x" % self.fd and fields[2] == b"0x%x" % self.address

    def current_unique(self) -> int:
        return int.from_bytes(self.buf[8:16], "little")


class ReaderLoop(Deferrals):
    """Reader threads and the life of the channel (see the module docstring)."""

    nreaders: int
    clone: bool
    bufsize: int
    readers: List[Reader]
    dispatch: List[Any]
    _ended: bool
    _fatal: Optional[BaseException]
    end_reason: Optional[str]
    on_end: Any

    # ------------------------------------------------------------------ starting
    def start_readers(self) -> None:
        """Start the reader threads (cloning fds for all but the first when ``clone``)."""
        if not os.get_blocking(self.fd):  # readinto() would return None instead of waiting
            raise ValueError(f"{self.kind}: the channel fd {self.fd} must be blocking (readers wait in read(2))")
        self.build_dispatch()
        for _ in range(self.nreaders):
            self._add_reader()

    def build_dispatch(self) -> None:
        """The readers' dispatch list from ``handlers``: indexed by opcode (list indexing costs ~400
        instructions less per request than ``dict.get``).  Call again after changing ``handlers``."""
        table: List[Any] = [None] * (DISPATCH_SIZE)
        for opcode, handler in self.handlers.items():
            if 0 <= opcode < DISPATCH_SIZE:
                table[opcode] = handler
        self.dispatch[:] = table  # in place: running readers hold this list

    def _add_reader(self) -> Reader:
        index = len(self.readers)
        fd = self.fd if index == 0 or not self.clone else self._clone_fd()
        reader = Reader(index, fd, self.bufsize)
        started = threading.Event()
        reader.thread = threading.Thread(target=self._reader, args=(reader, started),
                                         name=f"fusd-{self.kind}-reader-{index}", daemon=True)
        self.readers.append(reader)
        reader.thread.start()
        started.wait(5)
        return reader

    @property
    def threads(self) -> List[threading.Thread]:
        return [r.thread for r in self.readers if r.thread is not None]

    @property
    def fds(self) -> List[int]:
        return [r.fd for r in self.readers]

    def _clone_fd(self) -> int:
        fd = os.open("/dev/fuse", os.O_RDWR | os.O_CLOEXEC)
        try:
            fcntl.ioctl(fd, C.FUSE_DEV_IOC_CLONE, self.fd.to_bytes(4, "little"))
        except OSError:
            os.close(fd)
            raise
        return fd

    # ------------------------------------------------------------------ the loop
    def _reader(self, reader: Reader, started: threading.Event) -> None:
        reader.tid = threading.get_native_id()
        started.set()
        fd, buf = reader.fd, reader.buf
        # FileIO.readinto: one read(2) into the buffer, ~0.1 µs per request cheaper than
        # os.readv (no iovec list to convert); closefd=False: the fd stays ours to close.
        readinto = io.FileIO(fd, "r", closefd=False).readinto
        unpack_header = IN_HEADER.unpack_from
        dispatch = self.dispatch
        min_length = self.min_length
        rec = self.recorder
        writev = self.writev
        try:
            while True:
                try:
                    n = readinto(buf)
                except OSError as exc:
                    if exc.errno in (errno.EINTR, errno.EAGAIN, errno.ENOENT):
                        continue  # ENOENT: the request was interrupted before we got it
                    raise ChannelEnded(_why(exc), exc) from None
                if rec is not None:
                    rec.record(self.conn_id, 1, memoryview(buf)[:n])  # INBOUND: kernel -> daemon
                length, opcode, unique, nodeid, uid, gid, pid, _, _ = unpack_header(buf)
                try:
                    # Trust nothing: the header's len must be what read(2) gave, and cover the
                    # opcode's fixed struct (``& 4095``: CUSE_INIT 4096 -> 0, unknown opcodes ≥ 40).
                    if length != n or n < min_length[opcode & 4095]:
                        self.malformed(fd, buf, n, length, opcode, unique)
                        continue
                    # Stopping empties ``dispatch``: the hot path needs no check of its own.
                    try:
                        handler = dispatch[opcode]
                    except IndexError:  # an opcode past CUSE_INIT: unknown
                        handler = None
                    if handler is None:
                        parts = self.unhandled(fd, opcode, unique)
                    else:
                        parts = handler(fd, buf, n, unique, nodeid, uid, gid, pid)
                    if parts is not None:
                        writev(fd, parts)
                except OSError as exc:  # writing the answer
                    if exc.errno in (errno.ENOENT, errno.EINTR):
                        continue  # our answer came too late: the caller was interrupted or died
                    if exc.errno in _ENDED:
                        raise ChannelEnded(_why(exc), exc) from None
                    self._report(exc)
                except ChannelEnded:
                    raise
                except Exception as exc:  # a bug in the runtime itself: keep serving, say it once
                    self._log_once(f"runtime.{opcode}", "fusd: internal error while serving opcode %s", opcode, exc)
                    self.answer_error(fd, unique, errno.EIO)
        except ChannelEnded as end:
            self.end(end.reason)
        except BaseException as exc:  # noqa: B036 - e.g. SystemExit raised by runtime code: stop, don't vanish
            self.fatal(exc)

    def malformed(self, chan: Any, buf: Any, n: int, length: int, opcode: int, unique: int) -> None:
        """A message that lies about its size: answer EIO (if it has a header), log once, go on."""
        if n == 0:
            raise ChannelEnded("end of file on the channel")
        if n < 40:
            self._log_once("malformed.short", "fusd: malformed message: %d bytes, shorter than fuse_in_header "
                           "(40); ignored", n, None)
            return
        if length != n:
            what = f"header says len {length}, {n} bytes were read"
        else:
            what = f"{n} bytes, its fixed request struct needs {self.min_length[opcode & 4095]}"
        self._log_once(f"malformed.{opcode}", "fusd: malformed message (opcode %d, unique %d, offset 0): %s; "
                       "answering EIO", opcode, unique, what, None)
        if opcode not in _NO_REPLY:
            self.answer_error(chan, unique, errno.EIO)

    def unhandled(self, chan: Any, opcode: int, unique: int) -> Optional[List[Any]]:
        """No handler: ENOSYS (or, while stopping, ENODEV/ENOENT and the reader leaves)."""
        if self.stopping:
            if opcode not in _NO_REPLY:
                self.answer_error(chan, unique, errno.ENODEV if opcode == OP.FUSE_OPEN else errno.ENOENT)
            raise ChannelEnded("stopping")
        if opcode not in _NO_REPLY:
            self.answer_error(chan, unique, errno.ENOSYS)
        return None

    # ------------------------------------------------------------------ the end
    def end(self, reason: str) -> None:
        """The channel ended (or the session stops): tell the owner once."""
        with self.state_lock:
            if self._ended:
                return
            self._ended = True
            self.end_reason = reason
        if self.stopping:
            return  # we are the ones stopping it: nothing to report
        log.warning("fusd: %s session ended: %s", self.kind, reason)
        on_end = self.on_end
        if on_end is not None:
            on_end(self, reason, None)

    def fatal(self, exc: BaseException) -> None:
        """A callback raised SystemExit/KeyboardInterrupt (already answered EIO): stop, re-raise later."""
        with self.state_lock:
            if self._fatal is not None:
                return
            self._fatal = exc
        log.error("fusd: a device callback raised %s; stopping the server", type(exc).__name__)
        on_end = self.on_end
        if on_end is not None:
            on_end(self, f"a device callback raised {type(exc).__name__}", exc)

    # ------------------------------------------------------------------ the supervisor
    def supervise(self) -> None:
        """One look at the readers (event loop, every SUPERVISE_EVERY s): add one if all are stuck."""
        if self.stopping or self._ended:
            return
        self.prune_interrupts()
        stuck = 0
        for reader in self.readers:
            state = reader.in_read()
            if state is None:
                return  # /proc not readable here: no supervision
            if state:
                reader.busy_ticks = 0
                reader.last_unique = -1
                return  # an idle reader: requests are being read
            unique = reader.current_unique()
            if unique == reader.last_unique:
                reader.busy_ticks += 1
            else:
                reader.last_unique, reader.busy_ticks = unique, 0
            if reader.busy_ticks >= STUCK_TICKS:
                stuck += 1
        if stuck and len(self.readers) < self.nreaders + MAX_EXTRA_READERS:
            log.info("fusd: every %s reader is busy in a callback (one for %.2f s): starting reader %d",
                     self.kind, SUPERVISE_EVERY * STUCK_TICKS, len(self.readers))
            self._add_reader()

    # ------------------------------------------------------------------ stopping
    def wake_reader(self) -> None:
        """Make the kernel send one request so one blocked reader notices ``stopping``."""
        raise NotImplementedError

    def stop_readers(self, timeout: float = 5.0) -> None:
        """Stop every reader thread: each exits on the next request it reads."""
        self.stopping = True
        # Every request but the cleanup ones now takes the readers' slow path, which sees
        # ``stopping``; a RELEASE still in flight from a last close() still reaches the device.
        for opcode in list(self.handlers):
            if opcode not in _KEEP_WHILE_STOPPING:
                self.handlers.pop(opcode, None)
        self.build_dispatch()
        self.fail_pending()
        import time
        deadline = time.monotonic() + timeout
        me = threading.current_thread()
        while any(t.is_alive() and t is not me for t in self.threads) and time.monotonic() < deadline:
            waker = threading.Thread(target=self._wake_quietly, daemon=True)
            waker.start()
            waker.join(0.5)
            for t in self.threads:
                if t is not me:
                    t.join(0.01)

    def _wake_quietly(self) -> None:
        try:
            self.wake_reader()
        except OSError:
            pass

    def close_fds(self) -> None:
        """Close the cloned fds (the main fd belongs to the transport)."""
        for reader in self.readers:
            if reader.fd != self.fd:
                try:
                    os.close(reader.fd)
                except OSError:
                    pass
                reader.fd = -1


def _why(exc: OSError) -> str:
    if exc.errno == errno.ENODEV:
        return "the kernel closed the connection (unmounted)"
    if exc.errno == errno.ECONNABORTED:
        return "the connection was aborted (fusectl abort)"
    return f"{os.strerror(exc.errno or 0)} on the channel"

