"""The strace reader's state: fd tables, connections, and the records it hands on.

``strace_calls.Calls`` (one method per system call) changes this state; ``strace``
runs the line loop.  Split so each file has one job: here, what the log has shown so
far and how a message becomes a ``Record`` (its connection, INIT, the -s advice, the
requests still in pipes).
"""

from __future__ import annotations

from typing import Dict, List, Optional, Tuple

from ..codec import IN_HEADER_SIZE, OUT_HEADER_SIZE
from ..constants import InitFlags, fuse_opcode
from ..fastpath import FAST
from ..opcodes import OPS
from .pcapng import INBOUND, CaptureError
from .reader import Capture
from .records import Connection, Record
from .strace_fds import OTHER, Assembly, Entry, FuseDev, Pipe, Tables
from .strace_syntax import fd_at

DEVICES = (b"/dev/fuse", b"/dev/cuse")
INIT_CODES = (fuse_opcode.FUSE_INIT.to_bytes(4, "little"), fuse_opcode.CUSE_INIT.to_bytes(4, "little"))
_INIT_OPS = (fuse_opcode.FUSE_INIT, fuse_opcode.CUSE_INIT)
_PAGE = 4096
_DEFAULT_MAX_PAGES = 32  # FUSE_DEFAULT_MAX_PAGES_PER_REQ: without FUSE_MAX_PAGES
_WRITE_HEADER = IN_HEADER_SIZE + FAST.fuse_write_in.size


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


class Line:
    """Where the call being handled is in the log."""

    __slots__ = ("no", "offset")

    def __init__(self) -> None:
        self.no = 0
        self.offset = 0


class ConnInfo:
    """What the reader learns about one connection: its INIT (for the -s advice)."""

    __slots__ = ("max_message", "cuse")

    def __init__(self) -> None:
        self.max_message: Optional[int] = None  # largest message the negotiated limits allow
        self.cuse = False


class ReaderState:
    """One pass over a log: what the fds are, and the records ready to hand on (``out``)."""

    def __init__(self, cap: Capture) -> None:
        self.cap = cap
        self.tables = Tables()
        self.out: List[Record] = []
        self.at = Line()
        self.conns: Dict[int, ConnInfo] = {}
        self.latest: Optional[int] = None
        self.found = False
        self.asm_index: Dict[Tuple[int, int], Assembly] = {}  # (conn, unique) -> request still in a pipe
        self.asms: Dict[int, Assembly] = {}  # every assembly not yet emitted, by id
        self.init_wait: Dict[int, int] = {}  # conn -> unique of its INIT, until the reply is seen
        self.cut_first: Optional[Tuple[int, int]] = None  # (line, offset) of the first message cut by -s
        self.cut_count = 0
        self.cut_size = 0  # the -s the log was made with (length of a cut string)

    # ------------------------------------------------------------------ reporting
    def problem(self, msg: str, line: Optional[int] = None, offset: Optional[int] = None) -> None:
        self.cap.problem(CaptureError(msg, block=self.at.no if line is None else line,
                                      offset=self.at.offset if offset is None else offset, where="line"))

    # ------------------------------------------------------------------ records
    def _connection(self, dev: FuseDev, fd: int, data: bytes, inbound: bool) -> int:
        if inbound and data[4:8] in INIT_CODES and is_init(data):
            conn = len(self.cap.connections)
            cuse = data[4:8] == INIT_CODES[1]
            self.cap.connections[conn] = Connection(conn, f"strace fd {fd}", "cuse" if cuse else "fuse")
            info = self.conns[conn] = ConnInfo()
            info.cuse = cuse
            self.init_wait[conn] = int.from_bytes(data[8:16], "little")
            dev.conn = self.latest = conn
            return conn
        if dev.conn is None:
            if self.latest is None:
                conn = self.latest = len(self.cap.connections)
                self.cap.connections[conn] = Connection(conn, f"strace fd {fd}")
                self.conns[conn] = ConnInfo()
            dev.conn = self.latest
        return dev.conn

    def _record(self, dev: FuseDev, fd: int, direction: int, ts: Optional[int], data: bytes, missing: int = 0,
                why: str = "", comment: str = "", where: Optional[Tuple[int, int]] = None) -> None:
        """A message on /dev/fuse: assign its connection, note INIT, queue the record."""
        conn = dev.conn
        if direction == INBOUND:
            if conn is None or not missing and data[4:8] in INIT_CODES:
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
    def _note_init_reply(info: ConnInfo, data: bytes) -> None:
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
        if path.startswith(DEVICES):
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


__all__ = ["ConnInfo", "DEVICES", "INIT_CODES", "Line", "ReaderState", "is_init", "plausible_request"]
