"""Records from ``strace -f -xx -e trace=read,readv,write,writev -s 1048576`` output of ANY FUSE daemon.

strace sees every message a daemon reads from or writes to ``/dev/fuse`` whatever the
daemon is written in, so this turns any daemon's run into a capture.  Two passes:

1. parse every line (``-f`` pid prefixes, ``[pid N]``, ``-t/-tt/-ttt/-r`` timestamps,
   ``<unfinished ...>``/``<... resumed>`` pairs, ``-y`` fd paths, C escapes of ``-x``/
   ``-xx``) into syscalls, and find which fds are FUSE devices:
   - the fd ``openat(..., "/dev/fuse"|"/dev/cuse", ...)`` returned, the ``fd=N`` of a
     ``mount(...)``, an fd whose ``-y`` path is ``/dev/fuse``, an ``ioctl(N,
     FUSE_DEV_IOC_CLONE, ...)`` fd (these need those syscalls in ``-e trace=``);
   - an fd whose ``read()`` returned a valid ``FUSE_INIT``/``CUSE_INIT`` request;
   - an fd on which every read (at least two) returned a plausible FUSE request whose
     ``len`` equals the byte count (a clone fd, or a trace attached mid-session);
2. turn reads of those fds into inbound records and writes into outbound records.

Connections: each INIT starts one; other FUSE fds (clones) join the latest.  Timestamps
are kept when the log has them (``-ttt`` recommended: latencies need them).  Limitation:
fds are keyed by number alone (threads share them; two daemons in one log that reuse a
number are told apart only by their INITs).
"""

from __future__ import annotations

import codecs
import re
from dataclasses import dataclass
from typing import Dict, Iterator, List, Optional, Set, Tuple

from ..codec import IN_HEADER_SIZE
from ..constants import fuse_opcode
from ..opcodes import OPS
from .pcapng import INBOUND, OUTBOUND, CaptureError
from .reader import Capture
from .records import Connection, ProblemHandler, Record

_PREFIX = re.compile(rb"^(?:\[pid +(\d+)\] +|(\d+) +)?(?:(\d+(?:[:.]\d+)+|\d{9,}) +)?")
_CALL = re.compile(rb"^(\w+)\((.*)\)\s+=\s+(-?\d+|\?|0x[0-9a-fA-F]+)(?:\s+(E\w+))?", re.S)
_UNFINISHED = b" <unfinished ...>"
_RESUMED = re.compile(rb"^<\.\.\. (\w+) resumed>\s?")
_FD = re.compile(rb"^\s*(-?\d+)(<[^>]*>)?")
_STR = re.compile(rb'"((?:[^"\\]|\\.)*)"(\.\.\.)?')
_IOV = re.compile(rb'iov_base="((?:[^"\\]|\\.)*)"(\.\.\.)?')
_HEX_ONLY = re.compile(rb"^(?:\\x[0-9a-fA-F]{2})*$")
_MOUNT_FD = re.compile(rb"(?:^|,)fd=(\d+)")
_DEVICES = (b"/dev/fuse", b"/dev/cuse")
_INIT_OPS = (fuse_opcode.FUSE_INIT, fuse_opcode.CUSE_INIT)
_IO_CALLS = {b"read": INBOUND, b"readv": INBOUND, b"write": OUTBOUND, b"writev": OUTBOUND}


def unescape(s: bytes) -> bytes:
    """The bytes of a strace string literal body (``-xx`` hex, ``-x``, or default C escapes)."""
    if _HEX_ONLY.match(s):
        return bytes.fromhex(s.replace(b"\\x", b"").decode())
    return codecs.escape_decode(s)[0]


@dataclass
class _Call:
    """One completed system call of interest."""

    name: bytes
    fd: int
    fd_path: bytes
    data: Optional[bytes]
    ret: int
    errname: str
    ts: Optional[int]
    line: int
    offset: int
    args: bytes


def _ts_ns(text: bytes) -> Tuple[int, bool]:
    """(nanoseconds, is_absolute) of a strace timestamp: 12:34:56[.ffffff] or 1700000000.123456 or -r 0.000123."""
    s = text.decode()
    if ":" in s:
        hms, _, frac = s.partition(".")
        h, m, sec = (int(x) for x in hms.split(":"))
        ns = int((frac + "000000000")[:9]) if frac else 0
        return ((h * 60 + m) * 60 + sec) * 1_000_000_000 + ns, True
    whole, _, frac = s.partition(".")
    ns = int(whole) * 1_000_000_000 + (int((frac + "000000000")[:9]) if frac else 0)
    return ns, int(whole) >= 100_000_000  # small numbers are -r deltas


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


class StraceCapture(Capture):
    """Records of the FUSE traffic in an strace log (bytes of the whole log)."""

    format = "strace"

    def __init__(self, data: bytes, on_problem: Optional[ProblemHandler] = None) -> None:
        super().__init__(on_problem)
        self.data = data
        self.has_timestamps = False

    def _problem(self, msg: str, line: int, offset: int) -> None:
        self.problem(CaptureError(msg, block=line, offset=offset, where="line"))

    # ------------------------------------------------------------------ pass 1: syscalls
    def _calls(self) -> List[_Call]:
        calls: List[_Call] = []
        pending: Dict[bytes, Tuple[bytes, Optional[int], int, int]] = {}
        offset = 0
        rel_clock = 0
        for lineno, raw in enumerate(self.data.splitlines(keepends=True), 1):
            line_off = offset
            offset += len(raw)
            line = raw.rstrip(b"\r\n")
            if not line.strip():
                continue
            m = _PREFIX.match(line)
            assert m is not None  # every part of _PREFIX is optional: it always matches
            pid = m.group(1) or m.group(2) or b""
            ts: Optional[int] = None
            if m.group(3):
                ts, absolute = _ts_ns(m.group(3))
                if not absolute:
                    rel_clock += ts
                    ts = rel_clock
                self.has_timestamps = True
            rest = line[m.end():]
            if rest.startswith((b"+++", b"---", b"strace:", b"????")):
                continue
            if rest.endswith(_UNFINISHED):
                pending[pid] = (rest[:-len(_UNFINISHED)], ts, lineno, line_off)
                continue
            r = _RESUMED.match(rest)
            call_ts = ts
            if r:
                start = pending.pop(pid, None)
                if start is None:
                    self._problem(f"'{r.group(1).decode()} resumed' without its unfinished start; skipped",
                                  lineno, line_off)
                    continue
                if r.group(1) in (b"write", b"writev"):
                    call_ts = start[1] if start[1] is not None else ts
                rest = start[0] + rest[r.end():]
            c = _CALL.match(rest)
            if c is None:
                if rest[:1].isalpha() and b"(" in rest and rest.split(b"(", 1)[0] in _IO_CALLS:
                    self._problem("cannot parse this system call line (cut off?); skipped", lineno, line_off)
                continue
            call = self._call(c, call_ts, lineno, line_off)
            if call is not None:
                calls.append(call)
        for text, _, lineno, line_off in pending.values():
            if text.split(b"(", 1)[0] in _IO_CALLS:
                self._problem("system call never resumed (log cut off?)", lineno, line_off)
        return calls

    def _call(self, c: re.Match[bytes], ts: Optional[int], lineno: int, offset: int) -> Optional[_Call]:
        name, args, ret_text, errname = c.group(1), c.group(2), c.group(3), c.group(4)
        ret = -1 if ret_text == b"?" else int(ret_text, 0)
        err = errname.decode() if errname else ""
        if name in (b"openat", b"open"):
            strings = _STR.findall(args)
            path = unescape(strings[0][0]) if strings else b""
            return _Call(name, ret, path, None, ret, err, ts, lineno, offset, b"")
        if name == b"mount":
            return _Call(name, -1, b"", None, ret, err, ts, lineno, offset,
                         b"\0".join(unescape(s) for s, _ in _STR.findall(args)))
        fdm = _FD.match(args)
        if fdm is None:
            return None
        fd = int(fdm.group(1))
        fd_path = unescape(fdm.group(2)[1:-1]) if fdm.group(2) else b""
        if name in (b"ioctl", b"close"):
            return _Call(name, fd, fd_path, None, ret, err, ts, lineno, offset, args)
        if name not in _IO_CALLS:
            return None
        data: Optional[bytes] = None
        if ret >= 0 or name in (b"write", b"writev"):
            found = _IOV.findall(args) if name.endswith(b"v") else _STR.findall(args[fdm.end():])[:1]
            if found:
                cut = any(dots for _, dots in found) or args.rstrip().endswith(b"...]")
                data = b"".join(unescape(s) for s, _ in found)
                if cut:
                    err = err or "CUT"
        return _Call(name, fd, fd_path, data, ret, err, ts, lineno, offset, b"")

    # ------------------------------------------------------------------ fd detection
    @staticmethod
    def activates(c: _Call) -> Optional[int]:
        """The fd this call shows to be a FUSE device from now on, if any."""
        if c.name in (b"openat", b"open"):
            return c.ret if c.fd_path in _DEVICES and c.ret >= 0 else None
        if c.name == b"mount":
            m = _MOUNT_FD.search(c.args)
            return int(m.group(1)) if m else None
        if c.fd_path.startswith(_DEVICES):
            return c.fd
        if c.name == b"ioctl" and b"FUSE_DEV_IOC_CLONE" in c.args:
            return c.fd
        if c.name in (b"read", b"readv") and c.data is not None and c.ret > 0 and is_init(c.data):
            return c.fd
        return None

    @staticmethod
    def attached_fds(calls: List[_Call]) -> Set[int]:
        """Fds on which every read (at least two) is a plausible FUSE request, and no call
        says what they are: FUSE from the start (clone fds, a trace attached mid-session)."""
        reads: Dict[int, List[bool]] = {}
        explained: Set[int] = set()
        for c in calls:
            if c.name in (b"openat", b"open") and c.ret >= 0:
                explained.add(c.ret)
            if StraceCapture.activates(c) is not None:
                explained.add(StraceCapture.activates(c))  # type: ignore[arg-type]
            if c.name in (b"read", b"readv") and c.data is not None and c.ret > 0:
                reads.setdefault(c.fd, []).append(plausible_request(c.data))
        return {fd for fd, ok in reads.items() if len(ok) >= 2 and all(ok) and fd not in explained}

    # ------------------------------------------------------------------ pass 2: records
    def __iter__(self) -> Iterator[Record]:
        calls = self._calls()
        active = self.attached_fds(calls)
        session: Dict[int, int] = {}
        latest: Optional[int] = None
        found = False
        for c in calls:
            fd = self.activates(c)
            if fd is None and c.name in (b"openat", b"open", b"close") and c.ret >= 0:
                gone = c.ret if c.name != b"close" else c.fd
                active.discard(gone)  # the number now names something else
                session.pop(gone, None)
            elif fd is not None:
                active.add(fd)
            if c.fd not in active or c.name not in _IO_CALLS:
                continue
            found = True
            direction = _IO_CALLS[c.name]
            if c.data is None:
                continue  # failed read (ENODEV at unmount, EINTR, EAGAIN): no message
            if c.errname == "CUT":
                self._problem(f"{c.name.decode()}() data was cut by strace -s (rerun with -s 1048576); "
                              "message skipped", c.line, c.offset)
                continue
            if direction == INBOUND and c.ret != len(c.data):
                self._problem(f"{c.name.decode()}() returned {c.ret} but shows {len(c.data)} bytes",
                              c.line, c.offset)
            if (direction == INBOUND and is_init(c.data)) or c.fd not in session and latest is None:
                latest = session[c.fd] = len(self.connections)
                self.connections[latest] = Connection(latest, f"strace fd {c.fd}")
            elif c.fd not in session:
                session[c.fd] = latest  # type: ignore[assignment]
            comment = f"{c.name.decode()}({c.fd}) = {c.ret}" + (f" {c.errname}" if c.errname else "")
            yield Record(session[c.fd], direction, c.ts, c.data, c.line, c.offset, "line", comment)
        if not found:
            self.problem(CaptureError("no /dev/fuse traffic found in this strace log (was it run with "
                                      "-e trace=read,readv,write,writev -xx -s 1048576 on the daemon?)",
                                      block=0, offset=0, where="line"))
