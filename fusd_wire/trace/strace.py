"""Records from the strace log of ANY FUSE daemon -- every message, or a report of what is missing.

strace sees every message a daemon reads from or writes to ``/dev/fuse`` whatever the
daemon is written in, so this turns any daemon's run into a capture.  Recommended::

    strace -f -ttt -xx -s 2097152 -o daemon.strace -e trace=read,readv,write,writev,\\
    splice,vmsplice,tee,pipe,pipe2,close,openat,open,dup,dup2,dup3,fcntl,mount,ioctl,\\
    clone,clone3,fork,vfork  DAEMON -f MOUNTPOINT

(``TRACE_SET``; the trace list is one word, without the line breaks.)

The log is read as a stream, line by line (``-f`` pid prefixes, ``[pid N]``,
``-t/-tt/-ttt/-r`` timestamps, ``<unfinished ...>``/``<... resumed>`` pairs, ``-y`` fd
paths, ``-x``/``-xx``/default escapes), and each message is yielded as soon as it is
complete.  What the daemon's fds are (``strace_fds``):

- /dev/fuse fds: ``openat``/``open`` of /dev/fuse or /dev/cuse, ``mount(..."fd=N"...)``,
  a ``-y`` path, ``ioctl(FUSE_DEV_IOC_CLONE)``; a ``read`` that returns a valid
  ``FUSE_INIT``/``CUSE_INIT``; or (a trace attached mid-session) an fd whose first two
  reads return plausible requests.  ``dup``/``dup2``/``dup3``/``fcntl(F_DUPFD)`` copy
  what an fd is; ``close``, an ``openat`` returning the number, ``read() = 0`` (EOF: no
  /dev/fuse returns that) and ENODEV end it.  Per process (``clone`` without
  ``CLONE_FILES``, ``fork``: a copy of the table).
- pipes (``pipe``/``pipe2``, ``-y`` ``pipe:[N]``): bytes ``write``n or ``vmsplice``d in,
  ``splice``d in from a file (not in the log), ``tee``d, ``splice``d out.  A reply
  ``splice``d from a pipe to /dev/fuse is the bytes that went in (``vmsplice`` of the
  header + ``write`` of the payload: complete; payload spliced from a file: the header
  and ``missing`` = the rest, "written with splice(2): body not in the log").  A request
  ``splice``d from /dev/fuse into a pipe is assembled from the reads that take it out.

Connections: each INIT starts one; other FUSE fds (clones) join the latest.  Every
message the log cannot show whole is still a record, with ``Record.missing`` and
``Record.why``, so the decoder reports it with its unique and exits 1.  Limits: one
``-o`` file (not ``-ff``); FUSE-over-io_uring traffic never passes through system calls
strace decodes; fds passed over sockets (``SCM_RIGHTS``) are found by their INIT.
"""

from __future__ import annotations

from typing import Callable, Dict, Iterable, Iterator, List, Optional, Tuple, Union

from ..codec import IN_HEADER_SIZE, OUT_HEADER_SIZE
from ..constants import InitFlags, fuse_opcode
from ..fastpath import FAST
from ..opcodes import OPS
from .pcapng import INBOUND, OUTBOUND, CaptureError
from .reader import Capture, Input, Source
from .records import Connection, ProblemHandler, Record
from .strace_fds import OTHER, Assembly, Entry, FuseDev, Pipe, Suspect, Tables, known_prefix
from .strace_syntax import (
    Syntax,
    fd_at,
    int_at,
    iov_strings,
    prefix,
    split_args,
    string_at,
    string_end,
    ts_ns,
)

#: The trace set the decoder needs (docs/traces.md explains each).
TRACE_SET = ("read,readv,write,writev,splice,vmsplice,tee,pipe,pipe2,close,openat,open,dup,dup2,dup3,fcntl,"
             "mount,ioctl,clone,clone3,fork,vfork")
DEFAULT_S = 2097152
"""The ``-s`` we recommend: 2 MiB holds the largest message under the kernel's default
limits (max_pages_limit 256: a 1 MiB WRITE is 1,048,656 bytes) with room to spare."""
RECOMMENDED = f"strace -f -ttt -xx -s {DEFAULT_S} -e trace={TRACE_SET} -o daemon.strace DAEMON ARGS"

_DEVICES = (b"/dev/fuse", b"/dev/cuse")
_INIT_OPS = (fuse_opcode.FUSE_INIT, fuse_opcode.CUSE_INIT)
_INIT_CODES = (fuse_opcode.FUSE_INIT.to_bytes(4, "little"), fuse_opcode.CUSE_INIT.to_bytes(4, "little"))
_UNFINISHED = b" <unfinished ...>"
_PAGE = 4096
_DEFAULT_MAX_PAGES = 32  # FUSE_DEFAULT_MAX_PAGES_PER_REQ: without FUSE_MAX_PAGES
_WRITE_HEADER = IN_HEADER_SIZE + FAST.fuse_write_in.size
_HELD_LIMIT = 1000  # records held for an fd that is not yet known to be FUSE
_MAX_RW = (1 << 63) - 1  # no system call returns more (ssize_t)


def plausible_request(data: bytes) -> bool:
    """A FUSE request header whose len is the message size and whose opcode is known."""
    if len(data) < IN_HEADER_SIZE:
        return False
    length = int.from_bytes(data[0:4], "little")
    opcode = int.from_bytes(data[4:8], "little")
    unique = int.from_bytes(data[8:16], "little")
    return length == len(data) and (opcode in OPS) and (unique != 0 or opcode == fuse_opcode.FUSE_FORGET)


def is_init(data: bytes) -> bool:
    """A complete FUSE_INIT or CUSE_INIT request from a protocol-7 kernel."""
    return (len(data) >= IN_HEADER_SIZE + 8 and int.from_bytes(data[0:4], "little") == len(data)
            and int.from_bytes(data[4:8], "little") in _INIT_OPS
            and int.from_bytes(data[IN_HEADER_SIZE:IN_HEADER_SIZE + 4], "little") == 7)


class _Line:
    """Where the call being handled is in the log."""

    __slots__ = ("no", "offset")

    def __init__(self) -> None:
        self.no = 0
        self.offset = 0


class _Conn:
    """What the reader learns about one connection: its INIT (for the -s advice)."""

    __slots__ = ("max_message", "cuse")

    def __init__(self) -> None:
        self.max_message: Optional[int] = None  # largest message the negotiated limits allow
        self.cuse = False


class StraceCapture(Capture):
    """Records of the FUSE traffic in an strace log (a path, bytes or a binary file), streamed."""

    format = "strace"

    def __init__(self, source: Union[Input, Source], on_problem: Optional[ProblemHandler] = None) -> None:
        super().__init__(on_problem)
        self.input = source if isinstance(source, Input) else Input(source)
        self.has_timestamps = False

    def __iter__(self) -> Iterator[Record]:
        f = self.input.open()
        try:
            lines = f.splitlines(keepends=True) if isinstance(f, bytes) else f
            yield from _Reader(self).run(lines)
        finally:
            self.input.close(f)


class _Reader:
    """One pass over a log: the state machine of fds and pipes, and the records it yields."""

    def __init__(self, cap: StraceCapture) -> None:
        self.cap = cap
        self.tables = Tables()
        self.out: List[Record] = []
        self.at = _Line()
        self.conns: Dict[int, _Conn] = {}
        self.latest: Optional[int] = None
        self.found = False
        self.asm_index: Dict[Tuple[int, int], Assembly] = {}  # (conn, unique) -> request still in a pipe
        self.asms: Dict[int, Assembly] = {}  # every assembly not yet emitted, by id
        self.init_wait: Dict[int, int] = {}  # conn -> unique of its INIT, until the reply is seen
        self.cut_first: Optional[Tuple[int, int]] = None  # (line, offset) of the first message cut by -s
        self.cut_count = 0
        self.cut_size = 0  # the -s the log was made with (length of a cut string)
        self.handlers: Dict[bytes, Callable[..., None]] = {
            b"read": self._read, b"readv": self._read,
            b"write": self._write, b"writev": self._write,
            b"splice": self._splice, b"vmsplice": self._vmsplice, b"tee": self._tee,
            b"pipe": self._pipe, b"pipe2": self._pipe,
            b"close": self._close, b"openat": self._open, b"open": self._open, b"creat": self._open,
            b"dup": self._dup, b"dup2": self._dup, b"dup3": self._dup, b"fcntl": self._fcntl, b"fcntl64": self._fcntl,
            b"mount": self._mount, b"ioctl": self._ioctl,
            b"clone": self._clone, b"clone3": self._clone, b"fork": self._clone, b"vfork": self._clone,
        }

    # ------------------------------------------------------------------ reporting
    def problem(self, msg: str, line: Optional[int] = None, offset: Optional[int] = None) -> None:
        self.cap.problem(CaptureError(msg, block=self.at.no if line is None else line,
                                      offset=self.at.offset if offset is None else offset, where="line"))

    # ------------------------------------------------------------------ the line loop
    def run(self, lines: Iterable[bytes]) -> Iterator[Record]:
        pending: Dict[bytes, Tuple[bytes, Optional[int], int, int]] = {}
        handlers = self.handlers
        out = self.out
        at = self.at
        offset = 0
        lineno = 0
        rel_clock = 0
        for raw in lines:
            lineno += 1
            line_off = offset
            offset += len(raw)
            line = raw[:-1] if raw[-1:] == b"\n" else raw
            if line[-1:] == b"\r":
                line = line[:-1]
            if not line:
                continue
            pid, tstext, start = prefix(line)
            ts: Optional[int] = None
            if tstext is not None:
                try:
                    ts, absolute = ts_ns(tstext)
                except Syntax as exc:
                    self.problem(f"{exc}; line skipped", lineno, line_off)
                    continue
                if not absolute:
                    rel_clock += ts
                    ts = rel_clock
                self.cap.has_timestamps = True
            first = line[start:start + 1]
            if first == b"+" or first == b"-" or first == b"?":  # +++ exited, --- SIGCHLD, ????
                continue
            start_ts = ts
            if line.endswith(_UNFINISHED):
                pending[pid] = (line[start:-len(_UNFINISHED)], ts, lineno, line_off)
                continue
            if line.startswith(b"<... ", start):
                name_end = line.find(b" resumed>", start)
                if name_end < 0:
                    continue
                name = line[start + 5:name_end]
                begun = pending.pop(pid, None)
                if begun is None:
                    if name in handlers:
                        self.problem(f"'{name.decode(errors='replace')} resumed' without its unfinished start; "
                                     "skipped", lineno, line_off)
                    continue
                text = begun[0] + line[name_end + 9:]
                start_ts = begun[1] if begun[1] is not None else ts
                line, start = text, 0
            paren = line.find(b"(", start)
            if paren <= start:
                continue
            handler = handlers.get(line[start:paren])
            if handler is None:
                continue
            at.no, at.offset = lineno, line_off  # a resumed call: the line with its result and data
            call = _parse_result(line, paren)
            if call is None:
                self.problem("cannot parse this system call line (cut off?); skipped")
                continue
            a1, ret, err = call
            if ret > _MAX_RW:
                self.problem(f"{line[start:paren].decode(errors='replace')} returned {ret}, more than a system call "
                             "can; skipped")
                continue
            try:
                handler(pid, line, paren + 1, a1, ret, err, start_ts, ts)
            except Syntax as exc:
                self.problem(f"{line[start:paren].decode(errors='replace')}: {exc}; skipped")
            except (ValueError, IndexError) as exc:  # a line strace cannot have printed
                self.problem(f"{line[start:paren].decode(errors='replace')}: cannot parse the arguments ({exc}); "
                             "skipped")
            if out:
                yield from out
                out.clear()
        for text, _, no, off in pending.values():
            paren = text.find(b"(")
            if paren > 0 and text[:paren] in handlers:
                self.problem("system call never resumed (log cut off?)", no, off)
        yield from self._finish()

    def _finish(self) -> Iterator[Record]:
        for asm in list(self.asms.values()):
            self._emit_assembly(asm, "read with splice(2) into a pipe; the log ends before the pipe is read")
        yield from self.out
        self.out.clear()
        if self.cut_count and self.cut_first is not None:
            need = max((c.max_message for c in self.conns.values() if c.max_message), default=None)
            advice = f"-s {need} or more (the largest message the negotiated limits allow)" if need else \
                f"-s {DEFAULT_S} (or more, if the daemon raised max_pages)"
            self.problem(f"{self.cut_count} message(s) were cut by strace -s {self.cut_size} (the first here): "
                         f"rerun strace with {advice}", *self.cut_first)
        if not self.found:
            self.cap.problem(CaptureError(
                "no /dev/fuse traffic found in this strace log (was it made with the recommended command? "
                f"{RECOMMENDED})", block=0, offset=0, where="line"))

    # ------------------------------------------------------------------ records
    def _connection(self, dev: FuseDev, fd: int, data: bytes, inbound: bool) -> int:
        if inbound and data[4:8] in _INIT_CODES and is_init(data):
            conn = len(self.cap.connections)
            cuse = data[4:8] == _INIT_CODES[1]
            self.cap.connections[conn] = Connection(conn, f"strace fd {fd}", "cuse" if cuse else "fuse")
            info = self.conns[conn] = _Conn()
            info.cuse = cuse
            self.init_wait[conn] = int.from_bytes(data[8:16], "little")
            dev.conn = self.latest = conn
            return conn
        if dev.conn is None:
            if self.latest is None:
                conn = self.latest = len(self.cap.connections)
                self.cap.connections[conn] = Connection(conn, f"strace fd {fd}")
                self.conns[conn] = _Conn()
            dev.conn = self.latest
        return dev.conn

    def _record(self, dev: FuseDev, fd: int, direction: int, ts: Optional[int], data: bytes, missing: int = 0,
                why: str = "", comment: str = "", where: Optional[Tuple[int, int]] = None) -> None:
        """A message on /dev/fuse: assign its connection, note INIT, queue the record."""
        conn = dev.conn
        if direction == INBOUND:
            if conn is None or not missing and data[4:8] in _INIT_CODES:
                conn = self._connection(dev, fd, data, True)
        else:
            if conn is None:
                conn = self._connection(dev, fd, data, False)
            if (self.asm_index or self.init_wait) and len(data) >= OUT_HEADER_SIZE:
                unique = int.from_bytes(data[8:16], "little")
                asm = self.asm_index.pop((conn, unique), None)
                if asm is not None and not asm.done:
                    self._emit_assembly(asm, "read with splice(2) into a pipe; answered before the rest of it was "
                                             "read out of the pipe")
                if self.init_wait.get(conn) == unique and not missing:
                    del self.init_wait[conn]
                    self._note_init_reply(self.conns[conn], data)
        line, offset = where if where is not None else (self.at.no, self.at.offset)
        self.found = True
        self.out.append(Record(conn, direction, ts, data, line, offset, "line", comment, missing, why))

    @staticmethod
    def _note_init_reply(info: _Conn, data: bytes) -> None:
        body = data[OUT_HEADER_SIZE:]
        if info.cuse:
            fs = FAST.cuse_init_out
            out = fs.decode(body[:fs.size] + bytes(max(0, fs.size - len(body))))
            info.max_message = max(out.max_write + _WRITE_HEADER, out.max_read + OUT_HEADER_SIZE)
            return
        fs = FAST.fuse_init_out
        out = fs.decode(body[:fs.size] + bytes(max(0, fs.size - len(body))))
        pages = out.max_pages if out.flags & InitFlags.FUSE_MAX_PAGES and out.max_pages else _DEFAULT_MAX_PAGES
        info.max_message = max(out.max_write + _WRITE_HEADER, pages * _PAGE + OUT_HEADER_SIZE)

    def _cut(self, shown: int) -> str:
        """Why a message is incomplete when strace -s cut it (and remember it for the advice)."""
        self.cut_count += 1
        self.cut_size = max(self.cut_size, shown)
        if self.cut_first is None:
            self.cut_first = (self.at.no, self.at.offset)
        return f"cut by strace -s (the log shows {shown} bytes)"

    # ------------------------------------------------------------------ fd tables
    def _set(self, table: Dict[int, Entry], fd: int, ent: Optional[Entry]) -> None:
        self._drop(table, fd)
        if ent is None:
            return
        table[fd] = ent
        if isinstance(ent, Pipe):
            ent.refs += 1

    def _drop(self, table: Dict[int, Entry], fd: int) -> None:
        old = table.pop(fd, None)
        if isinstance(old, Pipe):
            old.refs -= 1
            if old.refs <= 0:
                self._pipe_gone(old)

    def _pipe_gone(self, pipe: Pipe) -> None:
        for seg in pipe.segs:
            if seg.asm is not None and not seg.asm.done:
                self._emit_assembly(seg.asm, "read with splice(2) into a pipe; the pipe was closed before all of it "
                                             "was read out")
        pipe.segs.clear()
        pipe.held = 0

    def _decorated(self, table: Dict[int, Entry], fd: int, path: bytes) -> Optional[Entry]:
        """What a ``-y`` path says fd is, made true in the table."""
        ent = table.get(fd)
        if path.startswith(_DEVICES):
            if not isinstance(ent, FuseDev):
                ent = FuseDev(cuse=path.startswith(b"/dev/cuse"))
                self._set(table, fd, ent)
        elif path.startswith(b"pipe:["):
            pipe = self.tables.pipe_for_inode(path)
            if ent is not pipe:
                self._set(table, fd, pipe)
            ent = pipe
        elif ent is not None and ent is not OTHER:
            self._set(table, fd, OTHER)
            ent = OTHER
        return ent

    def _fd(self, table: Dict[int, Entry], line: bytes, pos: int) -> Tuple[int, Optional[Entry], int]:
        fd, path, p = fd_at(line, pos)
        ent = self._decorated(table, fd, path) if path is not None else table.get(fd)
        return fd, ent, p

    # ------------------------------------------------------------------ read, readv
    def _read(self, pid: bytes, line: bytes, a0: int, a1: int, ret: int, err: str, start_ts: Optional[int],
              ts: Optional[int]) -> None:
        table = self.tables.table(pid)
        fd, ent, p = self._fd(table, line, a0)
        if ret <= 0:
            if isinstance(ent, FuseDev) and (ret == 0 or err == "ENODEV"):
                # EOF cannot come from /dev/fuse: the number is something else now.  ENODEV:
                # the connection is gone (unmounted, aborted); failed replies may still follow.
                if ret == 0:
                    self._set(table, fd, OTHER)
                else:
                    ent.dead = True
            elif isinstance(ent, Suspect) and ret == 0:
                self._set(table, fd, OTHER)
            return
        data, cut = self._data(line, p, a1)
        if isinstance(ent, FuseDev):
            if ent.dead:
                self._set(table, fd, OTHER)  # a dead /dev/fuse returns no data: the fd was reused
                return self._read_unknown(table, fd, OTHER, line, data, ret, ts)
            self._inbound(ent, fd, data, cut, ret, ts)
        elif isinstance(ent, Pipe):
            self._pipe_read(ent, data, ret)
        else:
            self._read_unknown(table, fd, ent, line, data, ret, ts)

    def _data(self, line: bytes, p: int, a1: int) -> Tuple[Optional[bytes], bool]:
        """The buffer of a read/write (after the fd at ``p``): bytes and cut flag; None if not shown."""
        q = line.find(b'"', p, p + 3)
        if q >= 0:
            data, cut, _ = string_at(line, q)
            return data, cut
        if line.startswith(b", [", p):
            data, cut, _ = iov_strings(line, p, a1)
            return data, cut
        return None, False  # an address: strace did not (could not) show the buffer

    def _inbound(self, dev: FuseDev, fd: int, data: Optional[bytes], cut: bool, ret: int,
                 ts: Optional[int]) -> None:
        if data is None:
            self._record(dev, fd, INBOUND, ts, b"", ret, "read: its bytes are not shown in the log")
        elif len(data) < ret:
            self._record(dev, fd, INBOUND, ts, data, ret - len(data), self._cut(len(data)))
        else:
            if len(data) > ret:
                self.problem(f"read returned {ret} but shows {len(data)} bytes; the first {ret} taken")
                data = data[:ret]
            self._record(dev, fd, INBOUND, ts, data)

    def _read_unknown(self, table: Dict[int, Entry], fd: int, ent: Optional[Entry], line: bytes,
                      data: Optional[bytes], ret: int, ts: Optional[int]) -> None:
        if data is None or len(data) != ret:
            if ent is None:
                self._set(table, fd, OTHER)
            return
        if is_init(data):
            dev = FuseDev(cuse=data[4:8] == _INIT_CODES[1])
            self._set(table, fd, dev)
            self._record(dev, fd, INBOUND, ts, data)
            return
        if ent is None:
            if plausible_request(data):
                sus = Suspect()
                sus.held.append((INBOUND, ts, data, self.at.no, self.at.offset))
                self._set(table, fd, sus)
            else:
                self._set(table, fd, OTHER)
        elif isinstance(ent, Suspect):
            sus = ent
            if plausible_request(data):  # the second plausible request: it is /dev/fuse
                self._set(table, fd, sus.dev)
                for direction, t, d, no, off in sus.held:
                    self._record(sus.dev, fd, direction, t, d, where=(no, off))
                self._record(sus.dev, fd, INBOUND, ts, data)
            else:
                self._set(table, fd, OTHER)

    # ------------------------------------------------------------------ write, writev
    def _write(self, pid: bytes, line: bytes, a0: int, a1: int, ret: int, err: str, start_ts: Optional[int],
               ts: Optional[int]) -> None:
        table = self.tables.table(pid)
        fd, ent, p = self._fd(table, line, a0)
        if isinstance(ent, FuseDev):
            if ent.dead and ret >= 0:
                self._set(table, fd, OTHER)  # a write to a dead /dev/fuse fails: the fd was reused
                return
            data, cut, expected = self._written(line, p, a1, ret)
            comment = f"= -1 {err}" if ret < 0 else ""
            if data is None:
                self._record(ent, fd, OUTBOUND, start_ts, b"", expected, "write: its bytes are not shown in the log",
                             comment)
            elif len(data) < expected:
                self._record(ent, fd, OUTBOUND, start_ts, data, expected - len(data), self._cut(len(data)), comment)
            else:
                self._record(ent, fd, OUTBOUND, start_ts, data[:expected] if expected else data, comment=comment)
        elif isinstance(ent, Pipe):
            if ret > 0:
                data, cut, _ = self._written(line, p, a1, ret)
                self._pipe_write(ent, data, ret, pid)
        elif isinstance(ent, Suspect):
            data, cut, expected = self._written(line, p, a1, ret)
            if data is not None and len(data) >= expected:
                ent.held.append((OUTBOUND, start_ts, data[:expected], self.at.no, self.at.offset))
                if len(ent.held) > _HELD_LIMIT:
                    self._set(table, fd, OTHER)

    def _written(self, line: bytes, p: int, a1: int, ret: int) -> Tuple[Optional[bytes], bool, int]:
        """(bytes shown, cut, message length) of a write/writev/vmsplice at ``p`` (after the fd)."""
        q = line.find(b'"', p, p + 3)
        if q >= 0:
            data, cut, after = string_at(line, q)
            if ret > 0:
                return data, cut, ret
            count = int_at(line, after + 2)[0] if line.startswith(b", ", after) else len(data)
            return data, cut, count
        if line.startswith(b", [", p):
            data, cut, total = iov_strings(line, p, a1)
            return data, cut, ret if ret > 0 else total
        if ret > 0:
            return None, False, ret
        parts = split_args(line[p:a1].lstrip(b", "))
        try:
            return None, False, int(parts[1]) if len(parts) > 1 else 0
        except ValueError:
            return None, False, 0

    # ------------------------------------------------------------------ pipes
    def _pipe_write(self, pipe: Pipe, data: Optional[bytes], ret: int, pid: bytes) -> None:
        pipe.writer = pid
        if data is None:
            ok = pipe.push(ret, None, None)
        elif len(data) >= ret:
            ok = pipe.push(ret, data[:ret] if len(data) > ret else data)
        else:
            ok = pipe.push(len(data), data) and pipe.push(ret - len(data), None)
        if not ok:
            self.problem(f"{pipe.ident} holds more than {16} MiB that the log never shows leaving it (reads "
                         "missing from the trace?); the oldest bytes are forgotten")

    def _pipe_read(self, pipe: Pipe, data: Optional[bytes], ret: int) -> None:
        """Bytes read out of a pipe: they complete the requests spliced into it."""
        pos = 0
        for seg in pipe.take(ret):
            asm = seg.asm
            if asm is not None and not asm.done:
                chunk = data[pos:pos + seg.size] if data is not None else b""
                self._feed(asm, chunk, seg.size, "read from the pipe but not shown in the log")
            pos += seg.size

    def _feed(self, asm: Assembly, chunk: bytes, size: int, lost: str) -> None:
        if not asm.gap:
            if chunk:
                asm.parts.append(chunk)
                asm.known += len(chunk)
            if len(chunk) < size:
                asm.gap = True
                asm.where_to = asm.where_to or lost
        asm.taken += size
        if asm.unique is None and asm.known >= 16 and asm.dev.conn is not None:
            head = asm.data()
            asm.unique = int.from_bytes(head[8:16], "little")
            self.asm_index[(asm.dev.conn, asm.unique)] = asm
        if asm.taken >= asm.size:
            self._emit_assembly(asm, f"read with splice(2): {asm.size - asm.known} bytes of its body were "
                                     f"{asm.where_to or 'not shown'}, not in the log")

    def _emit_assembly(self, asm: Assembly, why: str) -> None:
        if asm.done:
            return
        asm.done = True
        self.asms.pop(id(asm), None)
        if asm.unique is not None and asm.dev.conn is not None:
            self.asm_index.pop((asm.dev.conn, asm.unique), None)
        data = asm.data()
        missing = asm.size - len(data)
        self._record(asm.dev, asm.fd, INBOUND, asm.ts, data, missing, why if missing else "",
                     where=(asm.line, asm.offset))

    def _pipe_of(self, table: Dict[int, Entry], fd: int, ent: Optional[Entry], pid: bytes) -> Optional[Pipe]:
        """The pipe an fd used as a splice/vmsplice pipe end is; an fd the log did not create becomes one."""
        if isinstance(ent, Pipe):
            return ent
        if ent is None or ent is OTHER:
            pipe = self.tables.new_pipe()
            self._set(table, fd, pipe)
            return pipe
        return None

    def _vmsplice(self, pid: bytes, line: bytes, a0: int, a1: int, ret: int, err: str, start_ts: Optional[int],
                  ts: Optional[int]) -> None:
        if ret <= 0:
            return
        table = self.tables.table(pid)
        fd, ent, p = self._fd(table, line, a0)
        pipe = self._pipe_of(table, fd, ent, pid)
        if pipe is None:
            return
        data, cut, _ = self._written(line, p, a1, ret)
        self._pipe_write(pipe, data, ret, pid)

    def _splice(self, pid: bytes, line: bytes, a0: int, a1: int, ret: int, err: str, start_ts: Optional[int],
                ts: Optional[int]) -> None:
        table = self.tables.table(pid)
        args = split_args(line[a0:a1])
        if len(args) < 5:
            raise Syntax("splice needs 6 arguments")
        fd_in, ent_in, _ = self._fd(table, args[0], 0)
        fd_out, ent_out, _ = self._fd(table, args[2], 0)
        length = int(args[4])
        if isinstance(ent_in, FuseDev):  # a request read with splice, into a pipe
            if ret <= 0:
                if ret == 0:
                    self._set(table, fd_in, OTHER)
                elif err == "ENODEV":
                    ent_in.dead = True
                return
            pipe = self._pipe_of(table, fd_out, ent_out, pid)
            if pipe is None:
                return
            dev = ent_in
            if dev.conn is None:
                self._connection(dev, fd_in, b"", False)
            asm = Assembly(dev, fd_in, ret, ts, self.at.no, self.at.offset)
            self.asms[id(asm)] = asm
            pipe.push(ret, None, asm)
            return
        if isinstance(ent_out, FuseDev):  # a reply (or notification) written with splice, from a pipe
            dev = ent_out
            if dev.dead and ret >= 0:
                self._set(table, fd_out, OTHER)
                return
            size = ret if ret > 0 else length
            if not isinstance(ent_in, Pipe):
                self._record(dev, fd_out, OUTBOUND, start_ts, b"", size,
                             f"written with splice(2) from fd {fd_in}, a pipe whose content is not in the log",
                             "" if ret >= 0 else f"= -1 {err}")
                return
            segs = ent_in.take(size)
            data, held = known_prefix(segs)
            missing = size - len(data)
            if ret == size < 1 << 32 and len(data) >= 4 and int.from_bytes(data[:4], "little") != size:
                # libfuse fixes the header's len after the vmsplice (a short read of the
                # payload); the kernel took the message only because len == the spliced count
                data = size.to_bytes(4, "little") + data[4:]
            why = ""
            if missing:
                why = "written with splice(2): body not in the log" if held >= size else \
                    f"written with splice(2) from a pipe that holds only {held} of its bytes in the log"
            self._record(dev, fd_out, OUTBOUND, start_ts, data, missing, why, "" if ret >= 0 else f"= -1 {err}")
            return
        if ret <= 0:
            return
        if isinstance(ent_in, Pipe) and isinstance(ent_out, Pipe):
            for seg in ent_in.take(ret):
                ent_out.push(seg.size, seg.data, seg.asm)
        elif isinstance(ent_in, Pipe):  # out of the pipe to a file or socket: bytes leave without being shown
            for seg in ent_in.take(ret):
                if seg.asm is not None and not seg.asm.done:
                    self._feed(seg.asm, b"", seg.size, f"spliced on to fd {fd_out}")
        elif isinstance(ent_out, Pipe) or ent_out is None:
            pipe = self._pipe_of(table, fd_out, ent_out, pid)
            if pipe is not None:
                pipe.writer = pid
                pipe.push(ret, None)

    def _tee(self, pid: bytes, line: bytes, a0: int, a1: int, ret: int, err: str, start_ts: Optional[int],
             ts: Optional[int]) -> None:
        if ret <= 0:
            return
        table = self.tables.table(pid)
        args = split_args(line[a0:a1])
        fd_in, ent_in, _ = self._fd(table, args[0], 0)
        fd_out, ent_out, _ = self._fd(table, args[1], 0)
        pipe_out = self._pipe_of(table, fd_out, ent_out, pid)
        if pipe_out is None:
            return
        if isinstance(ent_in, Pipe):
            for seg in ent_in.peek(ret):
                pipe_out.push(seg.size, seg.data)
        else:
            pipe_out.push(ret, None)

    def _pipe(self, pid: bytes, line: bytes, a0: int, a1: int, ret: int, err: str, start_ts: Optional[int],
              ts: Optional[int]) -> None:
        if ret != 0 or line[a0:a0 + 1] != b"[":
            return
        table = self.tables.table(pid)
        close = line.find(b"]", a0)
        ends = split_args(line[a0 + 1:close])
        fds = [fd_at(e, 0) for e in ends[:2]]
        inode = fds[0][1] if fds and fds[0][1] is not None and fds[0][1].startswith(b"pipe:[") else None
        pipe = self.tables.pipe_for_inode(inode) if inode is not None else self.tables.new_pipe()
        for fd, _, _ in fds:
            self._set(table, fd, pipe)

    # ------------------------------------------------------------------ fd lifetimes
    def _close(self, pid: bytes, line: bytes, a0: int, a1: int, ret: int, err: str, start_ts: Optional[int],
               ts: Optional[int]) -> None:
        if err == "EBADF":
            return  # it was not open
        table = self.tables.table(pid)
        fd, _, _ = fd_at(line, a0)
        self._drop(table, fd)

    def _open(self, pid: bytes, line: bytes, a0: int, a1: int, ret: int, err: str, start_ts: Optional[int],
              ts: Optional[int]) -> None:
        if ret < 0:
            return
        table = self.tables.table(pid)
        q = line.find(b'"', a0, a1)
        path = string_at(line, q)[0] if q >= 0 else b""
        if path in _DEVICES:
            self._set(table, ret, FuseDev(cuse=path == b"/dev/cuse"))
        else:
            self._set(table, ret, OTHER)

    def _dup(self, pid: bytes, line: bytes, a0: int, a1: int, ret: int, err: str, start_ts: Optional[int],
             ts: Optional[int]) -> None:
        if ret < 0:
            return
        table = self.tables.table(pid)
        old, ent, _ = self._fd(table, line, a0)
        if old != ret:
            self._set(table, ret, ent)

    def _fcntl(self, pid: bytes, line: bytes, a0: int, a1: int, ret: int, err: str, start_ts: Optional[int],
               ts: Optional[int]) -> None:
        if ret < 0:
            return
        args = split_args(line[a0:a1])
        if len(args) >= 2 and args[1] in (b"F_DUPFD", b"F_DUPFD_CLOEXEC"):
            self._dup(pid, line, a0, a1, ret, err, start_ts, ts)

    def _mount(self, pid: bytes, line: bytes, a0: int, a1: int, ret: int, err: str, start_ts: Optional[int],
               ts: Optional[int]) -> None:
        table = self.tables.table(pid)
        pos = a0
        while True:
            q = line.find(b'"', pos, a1)
            if q < 0:
                return
            e = string_end(line, q)
            if e < 0:
                return
            value = string_at(line, q)[0]
            for opt in value.split(b","):
                if opt.startswith(b"fd=") and opt[3:].isdigit():
                    fd = int(opt[3:])
                    if not isinstance(table.get(fd), FuseDev):
                        self._set(table, fd, FuseDev())
                    return
            pos = e + 1

    def _ioctl(self, pid: bytes, line: bytes, a0: int, a1: int, ret: int, err: str, start_ts: Optional[int],
               ts: Optional[int]) -> None:
        if ret < 0 or b"FUSE_DEV_IOC_CLONE" not in line[a0:a1]:
            return
        table = self.tables.table(pid)
        fd, ent, _ = self._fd(table, line, a0)
        if not isinstance(ent, FuseDev):
            ent = FuseDev()
            self._set(table, fd, ent)
        if ent.conn is None and self.latest is not None:
            ent.conn = self.latest  # strace does not show which fd it clones: the latest connection

    def _clone(self, pid: bytes, line: bytes, a0: int, a1: int, ret: int, err: str, start_ts: Optional[int],
               ts: Optional[int]) -> None:
        if ret <= 0:
            return
        self.tables.cloned(pid, str(ret).encode(), share=b"CLONE_FILES" in line[a0:a1])


def _parse_result(line: bytes, paren: int) -> Optional[Tuple[int, int, str]]:
    """(end of the arguments, return value, errno name) of ``name(args) = result``; None if not so."""
    eq = line.rfind(b" = ")
    if eq < paren:
        return None
    j = eq
    while line[j - 1] == 32:  # strace pads short calls: "close(3)      = 0"
        j -= 1
    if line[j - 1] != 41:  # ')'
        return None
    r = eq + 3
    k = r
    n = len(line)
    while k < n and line[k] not in b" <":
        k += 1
    tok = line[r:k]
    if tok == b"?":
        return j - 1, -1, "?"
    try:
        ret = int(tok, 0)
    except ValueError:
        return None
    if ret >= 0:
        return j - 1, ret, ""
    f = line.find(b" ", k + 1)
    word = line[k + 1:f if f > 0 else n]
    return j - 1, ret, word.decode("ascii", "replace") if word[:1] == b"E" else ""


__all__ = ["DEFAULT_S", "RECOMMENDED", "TRACE_SET", "StraceCapture", "is_init", "plausible_request"]
