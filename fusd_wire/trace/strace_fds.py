"""What a traced daemon's file descriptors are, as far as its strace log tells: FUSE devices and pipes.

A FUSE daemon's messages do not all go through ``read``/``write`` on /dev/fuse: libfuse
(``fuse_reply_data``, splice reads) and fuse-overlayfs move them through a pipe --
``vmsplice`` of the header into the pipe, the payload ``write``n or ``splice``d in from a
file, then ``splice`` from the pipe to /dev/fuse; requests ``splice``d from /dev/fuse
into a pipe and ``read`` out of it.  To see whole messages the reader must follow the
bytes through the pipe, so this module keeps, per fd table:

- ``FuseDev``: an open /dev/fuse (or /dev/cuse) file description; ``dup`` copies share it;
- ``Pipe``: a byte FIFO of segments -- bytes the log shows, runs of bytes it does not
  (spliced in from a file), and the bytes of a request spliced in from /dev/fuse that the
  daemon has yet to read out (an ``Assembly``, complete once all of it left the pipe);
- ``OTHER``: an fd the log shows to be something else (a file, EOF on /dev/fuse).

Fds are numbers in a table; a table belongs to one process and its threads (``clone``
with ``CLONE_FILES`` shares it; ``fork`` copies it).  The state machine itself (which
call does what) is ``strace.StraceCapture``.
"""

from __future__ import annotations

from collections import deque
from typing import Deque, Dict, List, Optional, Tuple, Union

PIPE_LIMIT = 16 << 20
"""Bytes a pipe may hold here before the oldest are forgotten (a log missing its reads)."""


class FuseDev:
    """One open /dev/fuse or /dev/cuse (an open file description, shared by dup copies)."""

    __slots__ = ("conn", "dead", "cuse")

    def __init__(self, cuse: bool = False) -> None:
        self.conn: Optional[int] = None  # connection id, once its traffic says which
        self.dead = False  # ENODEV seen: the connection is gone
        self.cuse = cuse


class Other:
    """An fd that is known not to be a FUSE device (or no longer is one)."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "OTHER"


OTHER = Other()


class Suspect:
    """An fd not yet known to be /dev/fuse whose first read looked like a request: its records wait.

    A trace attached mid-session shows no open of /dev/fuse and no INIT; an fd whose
    first two reads are plausible requests (len = bytes read, a known opcode) is taken
    for one, and what it held is emitted then.
    """

    __slots__ = ("dev", "held")

    def __init__(self) -> None:
        self.dev = FuseDev()
        self.held: List[tuple] = []


class Assembly:
    """A request ``splice``d from /dev/fuse into a pipe: its bytes as they are read out again."""

    __slots__ = ("dev", "fd", "size", "parts", "known", "taken", "gap", "ts", "line", "offset", "done", "unique",
                 "where_to")

    def __init__(self, dev: FuseDev, fd: int, size: int, ts: Optional[int], line: int, offset: int) -> None:
        self.dev = dev
        self.fd = fd
        self.size = size
        self.parts: List[bytes] = []
        self.known = 0  # bytes of the contiguous prefix read out (shown in the log)
        self.taken = 0  # bytes that left the pipe (read out, or spliced on to something else)
        self.gap = False  # some bytes left without being shown: the rest of parts is not contiguous
        self.ts = ts
        self.line = line
        self.offset = offset
        self.done = False  # emitted (early, or complete)
        self.unique: Optional[int] = None
        self.where_to = ""  # where unshown bytes went ("spliced on to fd 9")

    def data(self) -> bytes:
        return b"".join(self.parts)


class Segment:
    """A run of bytes in a pipe: ``data`` (known) or None (not in the log), maybe part of a request."""

    __slots__ = ("size", "data", "asm")

    def __init__(self, size: int, data: Optional[bytes], asm: Optional[Assembly] = None) -> None:
        self.size = size
        self.data = data
        self.asm = asm


class Pipe:
    """A pipe's contents as the log shows them: a FIFO of segments."""

    __slots__ = ("segs", "held", "refs", "ident", "writer")

    def __init__(self, ident: str) -> None:
        self.segs: Deque[Segment] = deque()
        self.held = 0
        self.refs = 0  # fds referring to it (both ends, all tables)
        self.ident = ident
        self.writer: Optional[bytes] = None  # pid that last wrote into it (pairing an unknown read end)

    def push(self, size: int, data: Optional[bytes], asm: Optional[Assembly] = None) -> bool:
        """Append ``size`` bytes (``data`` if the log shows them).  False if old bytes had to be forgotten."""
        if size <= 0:
            return True
        self.segs.append(Segment(size, data, asm))
        self.held += size
        if self.held <= PIPE_LIMIT:
            return True
        while self.held > PIPE_LIMIT and self.segs:
            old = self.segs.popleft()
            self.held -= old.size
            if old.asm is not None:
                old.asm.gap = True
                old.asm.taken += old.size
        return False

    def take(self, size: int) -> List[Segment]:
        """Remove the first ``size`` bytes (fewer if the pipe holds fewer), as segments."""
        out: List[Segment] = []
        segs = self.segs
        while size > 0 and segs:
            s = segs[0]
            if s.size <= size:
                segs.popleft()
                out.append(s)
                size -= s.size
                self.held -= s.size
            else:
                head = Segment(size, s.data[:size] if s.data is not None else None, s.asm)
                if s.data is not None:
                    s.data = s.data[size:]
                s.size -= size
                self.held -= size
                out.append(head)
                size = 0
        return out

    def peek(self, size: int) -> List[Segment]:
        """The first ``size`` bytes as segments, left in place (``tee``); no request attached."""
        out: List[Segment] = []
        for s in self.segs:
            if size <= 0:
                break
            n = min(size, s.size)
            out.append(Segment(n, s.data[:n] if s.data is not None else None))
            size -= n
        return out


Entry = Union[FuseDev, Pipe, Other, Suspect]


def known_prefix(segs: List[Segment]) -> Tuple[bytes, int]:
    """(the bytes shown up to the first unshown run, total size) of taken segments."""
    parts: List[bytes] = []
    total = 0
    contiguous = True
    for s in segs:
        total += s.size
        if contiguous:
            if s.data is None:
                contiguous = False
            else:
                parts.append(s.data)
    return b"".join(parts), total


class Tables:
    """Fd tables per process: pid -> table (threads share one; forks copy)."""

    def __init__(self) -> None:
        self.by_pid: Dict[bytes, Dict[int, Entry]] = {}
        self.default: Optional[Dict[int, Entry]] = None
        self.pipes_by_inode: Dict[bytes, Pipe] = {}
        self.npipes = 0

    def table(self, pid: bytes) -> Dict[int, Entry]:
        t = self.by_pid.get(pid)
        if t is None:
            # A pid the log has not introduced by clone/fork (not traced, or its lines come
            # before the clone returns): it shares the first process's table, as threads do.
            if self.default is None:
                self.default = {}
            t = self.by_pid[pid] = self.default
        return t

    def cloned(self, parent: bytes, child: bytes, share: bool) -> None:
        """``child`` came from ``parent`` by clone/fork: same table (CLONE_FILES) or a copy."""
        pt = self.table(parent)
        if share:
            self.by_pid[child] = pt
            return
        copy = dict(pt)
        for ent in copy.values():
            if isinstance(ent, Pipe):
                ent.refs += 1
        self.by_pid[child] = copy

    def new_pipe(self, inode: Optional[bytes] = None) -> Pipe:
        self.npipes += 1
        p = Pipe(f"pipe {self.npipes}" if inode is None else inode.decode("ascii", "replace"))
        if inode is not None:
            self.pipes_by_inode[inode] = p
        return p

    def pipe_for_inode(self, inode: bytes) -> Pipe:
        """The pipe a ``-y`` decoration ``pipe:[N]`` names (the same object for both ends)."""
        p = self.pipes_by_inode.get(inode)
        return p if p is not None else self.new_pipe(inode)


__all__ = ["Assembly", "Entry", "FuseDev", "OTHER", "Other", "PIPE_LIMIT", "Pipe", "Segment", "Suspect", "Tables",
           "known_prefix"]
