"""The strace reader's system calls: what each one shown in a log does to fds, pipes and messages.

One method per call (read/readv, write/writev, splice, vmsplice, tee, pipe/pipe2, close,
openat/open, dup/dup2/dup3, fcntl, mount, ioctl, clone/clone3/fork/vfork), each
``(pid, line, args start, args end, result, errno name, start time, end time)``;
docs/traces.md says what each means for the messages.
"""

from __future__ import annotations

from typing import Callable, Dict, Optional, Tuple

from .pcapng import INBOUND, OUTBOUND
from .reader import Capture
from .strace_fds import OTHER, Assembly, Entry, FuseDev, Pipe, Suspect, known_prefix
from .strace_state import DEVICES, INIT_CODES, ReaderState, is_init, plausible_request
from .strace_syntax import Syntax, fd_at, int_at, iov_strings, split_args, string_at, string_end

_HELD_LIMIT = 1000  # records held for an fd that is not yet known to be FUSE


class Calls(ReaderState):
    """``ReaderState`` plus a handler per system call (``handlers``: name -> method)."""

    def __init__(self, cap: Capture) -> None:
        super().__init__(cap)
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
            dev = FuseDev(cuse=data[4:8] == INIT_CODES[1])
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
        if path in DEVICES:
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


__all__ = ["Calls"]
