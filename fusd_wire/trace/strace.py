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

from typing import Dict, Iterable, Iterator, Optional, Tuple, Union

from .pcapng import CaptureError
from .reader import Capture, Input, Source
from .records import ProblemHandler, Record
from .strace_calls import Calls
from .strace_state import is_init, plausible_request
from .strace_syntax import (
    Syntax,
    prefix,
    ts_ns,
)

#: The trace set the decoder needs (docs/traces.md explains each).
TRACE_SET = ("read,readv,write,writev,splice,vmsplice,tee,pipe,pipe2,close,openat,open,dup,dup2,dup3,fcntl,"
             "mount,ioctl,clone,clone3,fork,vfork")
DEFAULT_S = 2097152
"""The ``-s`` we recommend: 2 MiB holds the largest message under the kernel's default
limits (max_pages_limit 256: a 1 MiB WRITE is 1,048,656 bytes) with room to spare."""
RECOMMENDED = f"strace -f -ttt -xx -s {DEFAULT_S} -e trace={TRACE_SET} -o daemon.strace DAEMON ARGS"

_UNFINISHED = b" <unfinished ...>"
_MAX_RW = (1 << 63) - 1  # no system call returns more (ssize_t)


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


class _Reader(Calls):
    """The line loop: lines to calls (``<unfinished ...>`` joined), calls to their handlers."""

    def __init__(self, cap: StraceCapture) -> None:
        super().__init__(cap)
        self.capture = cap

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
                self.capture.has_timestamps = True
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
