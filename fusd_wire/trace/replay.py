"""Replay: play the kernel's side of a capture to a device and diff its replies.

    python -m fusd_wire replay session.pcapng --device mymod:MyDevice [--name NAME]

A regression tool for device authors: record a session (``Server(record=...)``,
``fusd serve --record``), change the device, replay the recording against the new
code and see every reply that changed, field by field.

How it works, and why:

- **The real runtime, not a model of it.**  A fresh ``FuseSession`` (or
  ``CuseSession``) of ``fusd_runtime`` serves the device on one end of an
  ``AF_UNIX``/``SOCK_SEQPACKET`` socketpair instead of ``/dev/fuse``: the session
  only ``os.readv``\\s and ``os.writev``\\s its fd, and SEQPACKET keeps one message
  per read and write like the device does.  So the bytes compared are the ones
  the runtime would send the kernel.  One reader thread: requests are handled in
  capture order, which a replay must do to be repeatable.
- **Only the device's traffic is played.**  On FUSE the capture also holds the
  runtime's little file system (LOOKUP, GETATTR, READDIR, ...), whose replies carry
  mount times and node numbers of that run; those requests are skipped.  Played:
  INIT (the captured kernel INIT, so the session negotiates the captured protocol),
  then OPEN/READ/WRITE/IOCTL/POLL/FLUSH/FSYNC/RELEASE on the device's node (found
  from the captured LOOKUP of ``--name``), and INTERRUPTs of those.  CUSE
  connections serve one device: everything is played.
- **Handles are the session's own.**  The captured ``fh`` of each OPEN reply is
  mapped to the one the replayed session answers, and rewritten in every later
  request (``fh`` is the first field of each of those request structs: checked at
  import); the node id is rewritten to the replayed registry's.  Uniques are kept.
- **Deferred replies.**  A captured reply may come after later requests (a blocked
  read answered by a write).  Each request is sent, then the replay waits — up to
  ``timeout`` — only for the replies and notifications that the capture shows
  before the *next* request; all replies are paired by unique whenever they come.
  At the end the session is stopped like a server stops (pending calls answered
  ENODEV), so a capture that ended with a blocked read replays the same.
- **Comparison** decodes both replies with the codec (the protocol each side
  negotiated) and compares the decoded Containers field by field; bytes fields
  report the first differing offset.  Poll notifications (``NOTIFY_POLL``) are
  compared in the order they come, as part of the request whose handling sent
  them.

Timing is not compared: a reply that comes later or sooner than captured is the
same if its content is.
"""

from __future__ import annotations

import errno
import itertools
import os
import re
import socket
import threading
from dataclasses import dataclass, field
from typing import Any, Dict, Iterable, List, Optional, Set, Tuple, Union

from .. import constants as C
from ..codec import IN_HEADER_SIZE, OUT_HEADER_SIZE, Codec, Conversation, Notification, Reply, Request, errno_name
from ..errors import WireError
from ..fastpath import FAST
from .decode import NOTIFY, REPLY, REQUEST, Decoder, Event
from .pcapng import CaptureError
from .reader import Capture, Source, open_capture
from .records import Connection

OP = C.fuse_opcode
_IN_HEADER = FAST.fuse_in_header
_OUT_HEADER = FAST.fuse_out_header
_U64 = FAST.fuse_interrupt_in.struct  # one uint64: the fh at the start of a request body

#: Requests whose body starts with the file handle, mapped from captured to replayed fh values.
FH_OPS: Dict[int, str] = {
    OP.FUSE_READ: "fuse_read_in", OP.FUSE_WRITE: "fuse_write_in", OP.FUSE_RELEASE: "fuse_release_in",
    OP.FUSE_FLUSH: "fuse_flush_in", OP.FUSE_FSYNC: "fuse_fsync_in", OP.FUSE_IOCTL: "fuse_ioctl_in",
    OP.FUSE_POLL: "fuse_poll_in",
}
for _name in FH_OPS.values():  # the rewrite below assumes it; fail at import, not with wrong results
    assert getattr(FAST, _name).fields[0] == "fh", _name
assert FAST.fuse_open_out.fields[0] == "fh" and _U64.size == 8

#: What a device file does (the base Session's handlers): played on the device's node.
DEVICE_OPS = frozenset([OP.FUSE_OPEN, *FH_OPS])
#: fh for a request whose OPEN the replayed device refused: no session has it, so it gets EBADF.
NO_FH = (1 << 64) - 1
#: Uniques of the replay's own requests (end-of-replay barrier, stop): never a kernel's.
_OWN_UNIQUE = 1 << 63
#: A recording by the fusd runtime names its connection after the session: ``fuse:7``, ``cuse:5``.
_RUNTIME_CONN = re.compile(r"^(fuse|cuse):\d+$")

SAME, DIFFERS, MISSING = "same", "differs", "missing"


class ReplayError(Exception):
    """The capture cannot be replayed (damaged, another daemon's, no such device or connection)."""


# ---------------------------------------------------------------------- the plan
@dataclass
class Step:
    """One captured request that is played, and what the capture shows for it.

    Attributes:
        index: position among played requests.
        request: the captured request event.
        reply: its captured reply (paired by unique), None if it has none.
        notes: captured notifications sent while this request was the last one played.
        wait_uniques: replies (to this or earlier steps) the capture shows before the
            next played request: the replay waits for these before going on.
        notes_before_next: captured notifications up to the next played request.
        reported: selected by ``--opcode`` (all steps are played either way).
    """

    index: int
    request: Event
    reply: Optional[Event] = None
    notes: List[Event] = field(default_factory=list)
    wait_uniques: List[int] = field(default_factory=list)
    notes_before_next: int = 0
    reported: bool = True
    reply_pos: int = -1  # where the captured reply is among the connection's events

    @property
    def unique(self) -> int:
        return self.request.message.header.unique  # type: ignore[union-attr]

    @property
    def opcode(self) -> int:
        return self.request.message.header.opcode  # type: ignore[union-attr]


@dataclass
class ConnInfo:
    """What one connection of the capture is: its kind, its devices, its events."""

    id: int
    connection: Connection
    events: List[Event] = field(default_factory=list)
    kind: str = "fuse"  # from the first request: INIT (fuse) or CUSE_INIT (cuse)
    paths: Dict[int, str] = field(default_factory=lambda: {C.FUSE_ROOT_ID: ""})  # nodeid -> path (LOOKUPs)
    opened: List[str] = field(default_factory=list)  # device paths OPENed, in order
    devname: Optional[str] = None  # CUSE: DEVNAME of the CUSE_INIT reply

    def describe(self) -> str:
        what = f"device {self.devname}" if self.kind == "cuse" else \
            "devices " + (", ".join(self.opened) if self.opened else "(none opened)")
        return f"connection {self.id} ({self.connection.name}, {self.kind}): {what}"


def _scan(events: Iterable[Event], connections: Dict[int, Connection]) -> Dict[int, ConnInfo]:
    """Group events by connection; learn each one's kind, node paths and opened devices."""
    infos: Dict[int, ConnInfo] = {}
    for ev in events:
        cid = ev.record.conn
        info = infos.get(cid)
        if info is None:
            info = infos[cid] = ConnInfo(cid, connections.get(cid) or Connection(cid, f"connection {cid}"))
        if not info.events and ev.kind == REQUEST and ev.opcode == OP.CUSE_INIT:
            info.kind = "cuse"
        info.events.append(ev)
        if ev.kind == REPLY and ev.request is not None and not ev.error and ev.message is not None:
            req = ev.request
            if req.opcode == OP.FUSE_LOOKUP and "fuse_entry_out" in ev.message.body:
                parent = info.paths.get(req.header.nodeid)
                if parent is not None and "name" in req.body:
                    name = req.body.name.decode("utf-8", "surrogateescape")
                    info.paths[ev.message.body.fuse_entry_out.nodeid] = f"{parent}/{name}" if parent else name
            elif req.opcode == OP.CUSE_INIT:
                info.devname = dict(ev.message.body.get("info") or {}).get("DEVNAME")
        if ev.kind == REQUEST and ev.opcode == OP.FUSE_OPEN and info.kind == "fuse":
            path = info.paths.get(ev.message.header.nodeid)  # type: ignore[union-attr]
            if path is not None and path not in info.opened:
                info.opened.append(path)
    return infos


def _device_nodeids(info: ConnInfo, name: str) -> Set[int]:
    return {nodeid for nodeid, path in info.paths.items() if path == name}


def build_steps(info: ConnInfo, name: str, opcodes: Optional[Set[int]] = None) -> Tuple[List[Step], int]:
    """The requests of ``info`` to play against device ``name``, and how many were skipped."""
    nodeids = _device_nodeids(info, name) if info.kind == "fuse" else set()
    steps: List[Step] = []
    by_unique: Dict[int, Step] = {}
    skipped = 0
    notes_seen = 0
    khs: Set[int] = set()  # poll handles the kernel gave with this device's POLLs
    current: Optional[Step] = None
    for pos, ev in enumerate(info.events):
        msg = ev.message
        if ev.kind == REQUEST:
            if msg is None:
                continue
            h = msg.header
            if info.kind == "cuse" or h.opcode == OP.FUSE_INIT:
                played = True
            elif h.opcode == OP.FUSE_INTERRUPT:
                played = "fuse_interrupt_in" in msg.body and msg.body.fuse_interrupt_in.unique in by_unique
            else:
                played = h.opcode in DEVICE_OPS and h.nodeid in nodeids
            if not played:
                skipped += 1
                continue
            if current is not None:
                current.notes_before_next = notes_seen
            if h.opcode == OP.FUSE_POLL and "fuse_poll_in" in msg.body:
                khs.add(msg.body.fuse_poll_in.kh)
            current = Step(len(steps), ev, reported=opcodes is None or h.opcode in opcodes)
            steps.append(current)
            by_unique[h.unique] = current
        elif ev.kind == REPLY:
            step = by_unique.get(ev.unique) if ev.unique is not None else None
            if step is None or step.reply is not None:
                continue
            step.reply = ev
            step.reply_pos = pos
            if current is not None:
                current.wait_uniques.append(step.unique)
        elif ev.kind == NOTIFY and msg is not None and msg.header.error == C.fuse_notify_code.FUSE_NOTIFY_POLL:
            # Poll wakeups are what a device sends (Device.notify_poll); the others are the server's.
            # Only this device's: the kernel's poll handle (kh) came with one of its POLLs.
            body = msg.body.get("fuse_notify_poll_wakeup_out") or {}
            if current is not None and (info.kind == "cuse" or body.get("kh") in khs):
                current.notes.append(ev)
                notes_seen += 1
    if current is not None:
        current.notes_before_next = notes_seen
    # A CUSE server stops a reader by opening its node: trailing OPENs answered ENODEV are
    # those wakeups, not the device's traffic (FUSE wakes with a LOOKUP, skipped anyway).
    while info.kind == "cuse" and len(steps) > 1 and steps[-1].opcode == OP.FUSE_OPEN \
            and _answered_enodev(steps[-1].reply):
        gone = steps.pop()
        skipped += 1
        current = steps[-1]
        current.wait_uniques += [u for u in gone.wait_uniques if u != gone.unique]
        current.notes += gone.notes
        current.notes_before_next = gone.notes_before_next
    if current is not None:
        # A reply that came after the last request with ENODEV is the server stopping
        # (Session.fail_pending): the replay produces it the same way, by stopping.
        current.wait_uniques = [u for u in current.wait_uniques
                                if not _answered_enodev(by_unique[u].reply)]
    return _in_processing_order(steps), skipped


def _answered_enodev(reply: Any) -> bool:
    """True for a captured reply that is ENODEV (the server stopping answers pending calls so)."""
    return reply is not None and getattr(reply, "error", 0) == -errno.ENODEV


def _in_processing_order(steps: List[Step]) -> List[Step]:
    """Swap two requests that the recording session handled in the other order than they came.

    With two reader threads (the default) the second request read can take the callback
    lock first.  The capture shows it: both were in flight, and the later request's reply
    comes first, both before the next request.  (A deferred earlier request answered by
    the later one has its reply written *before* the later one's, so it is not swapped.)
    The replay has one reader, so it must send them in the order they were handled.
    """
    out = list(steps)
    i = 0
    while i + 1 < len(out):
        a, b = out[i], out[i + 1]
        if (a.reply is not None and b.reply is not None and a.unique not in a.wait_uniques
                and a.unique in b.wait_uniques and b.unique in b.wait_uniques and b.reply_pos < a.reply_pos
                and a.opcode != OP.FUSE_INTERRUPT and b.opcode != OP.FUSE_INTERRUPT):
            # b first: it waits for its own reply and notifications; a then for the rest
            a_wait = [u for u in b.wait_uniques if u == a.unique]
            b.wait_uniques = [u for u in b.wait_uniques if u != a.unique]
            a.wait_uniques, a.notes_before_next = a_wait, b.notes_before_next
            out[i], out[i + 1] = b, a
            i += 2
        else:
            i += 1
    return out


# ---------------------------------------------------------------------- the kernel's end
class _Channel:
    """The kernel's end of the socketpair: sends requests, collects what the session writes.

    ``log`` keeps both directions in the order they happened (a request is logged before
    it is sent), so the replayed traffic can be decoded afterwards with one Conversation
    exactly like a capture.
    """

    BUFSIZE = 4 << 20

    def __init__(self) -> None:
        self.kernel, self.daemon = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        for s in (self.kernel, self.daemon):
            try:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, self.BUFSIZE)
            except OSError:
                pass
        self.cond = threading.Condition()
        self.log: List[Tuple[str, bytes, int]] = []  # ("in"|"out", message, step index when it came)
        self.replies: Dict[int, int] = {}  # unique -> position in log of its (first) reply
        self.notes = 0
        self.step = -1  # index of the last step sent
        self.stopping = False
        self.stop_positions: Set[int] = set()  # log positions of messages that came after the stop began
        self.own_uniques = itertools.count(_OWN_UNIQUE)
        self.own_replies: Set[int] = set()
        self.thread = threading.Thread(target=self._receive, name="fusd-replay-kernel", daemon=True)
        self.thread.start()

    def _receive(self) -> None:
        buf = bytearray(self.BUFSIZE)
        while True:
            try:
                n = self.kernel.recv_into(buf)
            except OSError:
                break
            if n == 0:
                break  # the daemon end was closed
            data = bytes(buf[:n])
            unique = _OUT_HEADER.unpack_from(data)[2] if n >= OUT_HEADER_SIZE else None
            with self.cond:
                if unique is not None and unique >= _OWN_UNIQUE:
                    self.own_replies.add(unique)
                else:
                    pos = len(self.log)
                    self.log.append(("out", data, self.step))
                    if self.stopping:
                        self.stop_positions.add(pos)
                    if unique == 0:
                        self.notes += 1
                    elif unique is not None:
                        self.replies.setdefault(unique, pos)
                self.cond.notify_all()

    def send(self, data: bytes, step: int) -> None:
        with self.cond:
            self.step = step
            self.log.append(("in", data, step))
        self.kernel.send(data)

    def send_own(self, opcode: int, nodeid: int = 0) -> int:
        """Send a request of our own (no body, answered without the device); returns its unique."""
        unique = next(self.own_uniques)
        self.kernel.send(_IN_HEADER.pack(IN_HEADER_SIZE, opcode, unique, nodeid, 0, 0, 0, 0, 0))
        return unique

    def wait(self, uniques: Iterable[int], notes: int, timeout: float) -> bool:
        wanted = list(uniques)
        with self.cond:
            return self.cond.wait_for(lambda: all(u in self.replies for u in wanted) and self.notes >= notes,
                                      timeout)

    def wait_own(self, unique: int, timeout: float) -> bool:
        with self.cond:
            return self.cond.wait_for(lambda: unique in self.own_replies, timeout)

    def close(self) -> None:
        """Close both ends; the receiver sees end of file and exits."""
        try:
            self.daemon.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.daemon.close()
        self.thread.join(10)
        self.kernel.close()


def _make_session(kind: str, device: Any, name: str, channel: _Channel, recorder: Any,
                  errors: List[BaseException]) -> Any:
    """A fusd_runtime session for ``device`` on the daemon end of ``channel``.

    The runtime is imported here, not at module level: ``fusd_wire`` stays usable
    (decode, tap) without it, and only replay runs a device.
    """
    from fusd_runtime.cuse import CuseSession
    from fusd_runtime.fusefs import FuseSession
    from fusd_runtime.ioctl import check_ioctls
    from fusd_runtime.registry import Registry

    def wake(self: Any) -> None:
        # A stopping reader leaves after the next request it reads: send one (the real
        # transports provoke a LOOKUP or an OPEN from the kernel for the same purpose).
        channel.send_own(OP.FUSE_STATFS)

    fd = channel.daemon.fileno()
    check_ioctls(device, kind)
    if kind == "cuse":
        cls = type("ReplayCuseSession", (CuseSession,), {"wake_reader": wake})
        session = cls(device, name, fd=fd, readers=1, recorder=recorder, on_error=errors.append)
    else:
        registry = Registry(os.geteuid(), os.getegid())
        registry.add(name, device, device.mode, os.geteuid() if device.uid is None else device.uid,
                     os.getegid() if device.gid is None else device.gid)
        cls = type("ReplayFuseSession", (FuseSession,), {"wake_reader": wake})
        session = cls(fd, registry, "<replay>", readers=1, recorder=recorder, on_error=errors.append)
        session.replay_nodeid = registry.find(device).nodeid  # type: ignore[union-attr]
    device.name = name
    device.session = session
    return session


# ---------------------------------------------------------------------- results
@dataclass
class Diff:
    """One field that differs.  ``offset``: for bytes, the first byte that differs."""

    field: str
    captured: Any
    replayed: Any
    offset: Optional[int] = None


@dataclass
class Outcome:
    """What became of one played request: ``same``, ``differs`` or ``missing`` (no reply came)."""

    step: Step
    result: str
    diffs: List[Diff] = field(default_factory=list)
    note: str = ""


@dataclass
class ReplayResult:
    """Outcomes of every played request; ``ok`` when all reported ones are the same."""

    outcomes: List[Outcome]
    connection: ConnInfo
    name: str
    skipped: int
    errors: List[BaseException] = field(default_factory=list)

    def count(self, result: str) -> int:
        return sum(o.result == result for o in self.reported)

    @property
    def reported(self) -> List[Outcome]:
        return [o for o in self.outcomes if o.step.reported]

    @property
    def ok(self) -> bool:
        return all(o.result == SAME for o in self.reported)

    def summary(self) -> str:
        return (f"{len(self.reported)} requests, {self.count(SAME)} same, {self.count(DIFFERS)} differ, "
                f"{self.count(MISSING)} missing")


def _diff(path: str, a: Any, b: Any, out: List[Diff], ignore: Set[str]) -> None:
    """Compare decoded values recursively; construct internals (``_io``) are not fields."""
    if path in ignore:
        return
    if isinstance(a, dict) and isinstance(b, dict):
        for key in list(dict.fromkeys([*a.keys(), *b.keys()])):
            if key.startswith("_"):
                continue
            sub = f"{path}.{key}" if path else key
            if key not in a or key not in b:
                out.append(Diff(sub, a.get(key), b.get(key)))
            else:
                _diff(sub, a[key], b[key], out, ignore)
        return
    if isinstance(a, (bytes, bytearray, memoryview)) and isinstance(b, (bytes, bytearray, memoryview)):
        a, b = bytes(a), bytes(b)
        if a != b:
            offset = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
            out.append(Diff(path, a, b, offset))
        return
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        if len(a) != len(b):
            out.append(Diff(f"{path}.length", len(a), len(b)))
        for i, (x, y) in enumerate(zip(a, b)):
            _diff(f"{path}[{i}]", x, y, out, ignore)
        return
    if a != b:
        out.append(Diff(path, a, b))


def _note_text(note: Union[Notification, Any]) -> str:
    body = getattr(note, "body", None) or {}
    fields = " ".join(f"{k}={v}" for part in body.values() if isinstance(part, dict)
                      for k, v in part.items() if not k.startswith("_"))
    return f"NOTIFY_{C.notify_name(note.header.error)}" + (f" {fields}" if fields else "")


def compare_reply(captured: Reply, replayed: Reply, opcode: int) -> List[Diff]:
    """Field-level differences between a captured and a replayed reply to the same request."""
    diffs: List[Diff] = []
    if captured.error != replayed.error:
        diffs.append(Diff("error", captured.error, replayed.error))
        return diffs  # an error reply has no body to compare
    ignore = {"fuse_open_out.fh"} if opcode == OP.FUSE_OPEN else set()  # mapped, not compared
    _diff("", captured.body or {}, replayed.body or {}, diffs, ignore)
    return diffs


# ---------------------------------------------------------------------- the replay
class Replayer:
    """Play ``steps`` to ``device`` through a real session and compare (see the module doc)."""

    def __init__(self, info: ConnInfo, steps: List[Step], device: Any, name: str, *, timeout: float = 1.0,
                 recorder: Any = None) -> None:
        self.info = info
        self.steps = steps
        self.device = device
        self.name = name
        self.timeout = timeout
        self.recorder = recorder
        self.fh_map: Dict[int, int] = {}
        self.errors: List[BaseException] = []
        self.late: Dict[int, str] = {}  # unique -> why we went on without its reply

    def run(self) -> List[Outcome]:
        channel = _Channel()
        session = None
        try:
            session = _make_session(self.info.kind, self.device, self.name, channel, self.recorder, self.errors)
            session.start_readers()
            for step in self.steps:
                channel.send(self._patched(step, channel, session), step.index)
                if not channel.wait(step.wait_uniques, step.notes_before_next, self.timeout):
                    with channel.cond:
                        for u in step.wait_uniques:
                            if u not in channel.replies:
                                self.late.setdefault(u, f"no reply within {self.timeout:g} s of the point where "
                                                        "the capture had it")
            # Barrier: our own request is answered by the session itself, after every request
            # sent before it (one reader, in order), so synchronous replies are all in.
            channel.wait_own(channel.send_own(OP.FUSE_STATFS, C.FUSE_ROOT_ID), self.timeout)
            rest = [s.unique for s in self.steps if s.reply is not None and s.reply.error != -errno.ENODEV]
            channel.wait(rest, 0, self.timeout)  # replies a device sends from its own threads
            with channel.cond:
                channel.stopping = True
            session.stop_readers(timeout=max(self.timeout, 1.0))  # pending calls get ENODEV, as at server stop
        finally:
            if session is not None:
                self.device.session = None
                session.stopping = True
            channel.close()
        return self._compare(channel)

    # -- requests
    def _map_fh(self, channel: _Channel, captured_fh: int) -> int:
        if captured_fh not in self.fh_map:
            # OPEN replies that came since: learn captured fh -> replayed fh
            with channel.cond:
                for step in self.steps:
                    if step.opcode != OP.FUSE_OPEN or step.reply is None or step.reply.error:
                        continue
                    pos = channel.replies.get(step.unique)
                    if pos is None:
                        continue
                    data = channel.log[pos][1]
                    if _OUT_HEADER.unpack_from(data)[1] == 0 and len(data) >= OUT_HEADER_SIZE + 8:
                        cap = step.reply.message.body.fuse_open_out.fh  # type: ignore[union-attr]
                        self.fh_map[cap] = _U64.unpack_from(data, OUT_HEADER_SIZE)[0]
        return self.fh_map.get(captured_fh, NO_FH)

    def _patched(self, step: Step, channel: _Channel, session: Any) -> bytes:
        """The captured request with the replayed session's node id and file handle."""
        data = bytearray(step.request.record.data)
        h = list(_IN_HEADER.unpack_from(data))
        if self.info.kind == "fuse" and step.opcode != OP.FUSE_INIT and h[3] != 0:
            h[3] = session.replay_nodeid
            _IN_HEADER.pack_into(data, 0, *h)
        if step.opcode in FH_OPS and len(data) >= IN_HEADER_SIZE + 8:
            _U64.pack_into(data, IN_HEADER_SIZE, self._map_fh(channel, _U64.unpack_from(data, IN_HEADER_SIZE)[0]))
        return bytes(data)

    # -- comparison
    def _decode_replayed(self, channel: _Channel) -> Tuple[Dict[int, Any], Dict[int, List[Any]]]:
        """Decode the replayed traffic in order: replies by unique, notifications by step."""
        conv = Conversation(Codec(strict=False))
        replies: Dict[int, Any] = {}
        notes: Dict[int, List[Any]] = {}
        opcodes: Dict[int, int] = {}  # unique -> opcode of every request sent
        for pos, (direction, data, step) in enumerate(channel.log):
            if direction == "in":
                h = _IN_HEADER.unpack_from(data)
                opcodes[h[2]] = h[1]
                try:
                    conv.request(data)
                except WireError:
                    pass  # the captured request was decodable; the rewritten one is the same shape
                continue
            unique = _OUT_HEADER.unpack_from(data)[2] if len(data) >= OUT_HEADER_SIZE else None
            try:
                if unique and unique not in conv.pending and unique in opcodes:
                    # a reply to a request that gets none (INTERRUPT answered EAGAIN): decode it anyway
                    msg: Any = conv.codec.decode_reply(data, opcodes[unique])
                else:
                    msg, _ = conv.from_daemon(data)
            except WireError as exc:
                msg = exc
            if unique == 0:
                if pos not in channel.stop_positions:
                    notes.setdefault(step, []).append(msg)
            elif unique is not None and unique not in replies:
                replies[unique] = (msg, pos in channel.stop_positions)
        return replies, notes

    def _compare(self, channel: _Channel) -> List[Outcome]:
        replies, notes = self._decode_replayed(channel)
        outcomes = []
        for step in self.steps:
            diffs: List[Diff] = []
            result = SAME
            note = ""
            got = replies.get(step.unique)
            captured = step.reply.message if step.reply is not None else None
            if captured is None:
                if got is not None and not got[1]:  # (a reply made by our stopping does not count)
                    result = DIFFERS
                    diffs.append(Diff("reply", None, _reply_text(got[0])))
            elif got is None:
                result = MISSING
                note = self.late.get(step.unique, "the device never answered")
            elif isinstance(got[0], WireError):
                result = DIFFERS
                diffs.append(Diff("reply", "decodable", f"undecodable: {got[0]}"))
            else:
                diffs = compare_reply(captured, got[0], step.opcode)  # type: ignore[arg-type]
                ok = not getattr(captured, "error", 0) and not getattr(got[0], "error", 0)
                if step.opcode == OP.FUSE_OPEN and ok:
                    note = f"fh {captured.body.fuse_open_out.fh} -> {got[0].body.fuse_open_out.fh}"
            cap_notes = [ev.message for ev in step.notes]
            rep_notes = notes.get(step.index, [])
            for i in range(max(len(cap_notes), len(rep_notes))):
                c = cap_notes[i] if i < len(cap_notes) else None
                r = rep_notes[i] if i < len(rep_notes) else None
                label = f"notify[{i}]"
                if c is None or r is None or isinstance(r, WireError):
                    diffs.append(Diff(label, None if c is None else _note_text(c),
                                      None if r is None else str(r) if isinstance(r, WireError) else _note_text(r)))
                elif c.header.error != r.header.error:
                    diffs.append(Diff(f"{label}.code", _note_text(c), _note_text(r)))
                else:
                    _diff(label, c.body or {}, r.body or {}, diffs, set())
            if diffs and result == SAME:
                result = DIFFERS
            outcomes.append(Outcome(step, result, diffs, note))
        return outcomes


def _reply_text(msg: Any) -> str:
    if isinstance(msg, WireError):
        return f"undecodable: {msg}"
    return "success" if not msg.error else f"error {msg.error} ({errno_name(msg.error)})"


# ---------------------------------------------------------------------- entry point
def load(capture: Union[Source, Capture], *, format: Optional[str] = None) -> Dict[int, ConnInfo]:
    """Read and decode a whole capture; any damage is a ReplayError (its replies cannot be trusted)."""
    problems: List[CaptureError] = []
    cap = capture if isinstance(capture, Capture) else open_capture(capture, problems.append, format=format)
    if isinstance(capture, Capture):
        cap.on_problem = problems.append
    events = list(Decoder(cap, problems.append))
    if problems:
        shown = "\n".join(f"  {p}" for p in problems[:10])
        more = f"\n  ... and {len(problems) - 10} more" if len(problems) > 10 else ""
        raise ReplayError(f"the capture is damaged ({len(problems)} problem(s)); a replay of it would compare "
                          f"against replies that are not all there:\n{shown}{more}")
    if not events:
        raise ReplayError("the capture holds no FUSE messages")
    return _scan(events, cap.connections)


def choose(infos: Dict[int, ConnInfo], name: Optional[str], connection: Optional[int],
           default_name: str, force: bool = False) -> Tuple[ConnInfo, str]:
    """Pick the connection and the device name to replay (see ``replay``)."""
    if connection is not None:
        if connection not in infos:
            raise ReplayError(f"no connection {connection} in the capture; it has: "
                              + "; ".join(i.describe() for i in infos.values()))
        info = infos[connection]
    elif len(infos) == 1:
        info = next(iter(infos.values()))
    else:
        wanted = name or default_name
        matching = [i for i in infos.values() if (i.devname == wanted if i.kind == "cuse" else wanted in i.opened)]
        if len(matching) != 1:
            raise ReplayError("the capture has several connections; choose one with --connection N:\n"
                              + "\n".join(f"  {i.describe()}" for i in infos.values()))
        info = matching[0]
    if not force and not _RUNTIME_CONN.match(info.connection.name):
        raise ReplayError(f"connection {info.id} ({info.connection.name!r}) was not recorded by the fusd runtime "
                          "(Server(record=...), fusd serve --record): replay compares a fusd device with its own "
                          "recording, and another daemon's replies would differ everywhere (--force tries anyway)")
    first = info.events[0]
    if first.kind != REQUEST or first.opcode not in (OP.FUSE_INIT, OP.CUSE_INIT):
        raise ReplayError(f"connection {info.id} does not start with INIT (recording started mid-session?): "
                          "the session cannot be brought to the captured protocol state")
    if info.kind == "cuse":
        if info.devname is None:
            raise ReplayError(f"connection {info.id}: CUSE_INIT got no successful reply in the capture")
        return info, name or info.devname
    if name is None:
        name = default_name
        if name not in info.opened and len(info.opened) == 1:
            name = info.opened[0]  # one device in the capture: that is the one
    if name not in info.opened:
        raise ReplayError(f"no device {name!r} is opened in connection {info.id}; opened there: "
                          + (", ".join(info.opened) or "none") + " (choose with --name)")
    return info, name


def replay(capture: Union[Source, Capture], device: Any, *, name: Optional[str] = None,
           connection: Optional[int] = None, timeout: float = 1.0, opcodes: Optional[Set[int]] = None,
           force: bool = False, record: Any = None, format: Optional[str] = None) -> ReplayResult:
    """Replay one connection of ``capture`` to ``device`` (a fresh ``fusd_runtime.Device``).

    Args:
        name: the device's name in the capture (FUSE: its path under the mount; CUSE:
            DEVNAME).  Default: ``device.name``, else the class name lowercased, else
            the only device of the connection; CUSE: the captured DEVNAME.
        connection: which connection (pcapng interface), when there are several.
        timeout: seconds to wait for a reply the capture shows before the next request.
        opcodes: report and count only these (all are still played).
        force: replay a connection that the fusd runtime did not record.
        record: a path or Recorder: also record the replayed session (to decode it).

    Raises ReplayError when the capture cannot be replayed.
    """
    infos = load(capture, format=format)
    default_name = getattr(device, "name", "") or type(device).__name__.lower()
    info, name = choose(infos, name, connection, default_name, force)
    steps, skipped = build_steps(info, name, opcodes)
    recorder = None
    if record is not None:
        from .recorder import Recorder
        recorder = record if hasattr(record, "record") else Recorder(record)
    try:
        replayer = Replayer(info, steps, device, name, timeout=timeout, recorder=recorder)
        outcomes = replayer.run()
    finally:
        if recorder is not None and recorder is not record:
            recorder.close()
    return ReplayResult(outcomes, info, name, skipped, replayer.errors)


__all__ = ["Diff", "Outcome", "ReplayError", "ReplayResult", "Replayer", "Step", "build_steps", "choose",
           "compare_reply", "load", "replay", "REPLY", "Request"]


# ---------------------------------------------------------------------- the command
def add_replay_arguments(p: Any) -> None:
    """Options of ``python -m fusd_wire replay`` (and ``fusd replay``)."""
    p.add_argument("file", help="capture recorded by the fusd runtime (Server(record=...), fusd serve --record)")
    p.add_argument("--device", required=True, metavar="module:Class",
                   help="the device class to replay against (module:Class or path/file.py:Class); "
                        "a fresh instance is made with no arguments")
    p.add_argument("--name", help="the device's name in the capture (FUSE: path under the mount; CUSE: DEVNAME); "
                                  "default: the class name lowercased, or the only device opened")
    p.add_argument("--connection", type=int, metavar="N", help="which connection, when the capture has several")
    p.add_argument("--json", action="store_true", help="one JSON object per request, then a summary object")
    p.add_argument("--opcode", help="report only these opcodes (names or numbers, comma-separated); "
                                    "every request is still played")
    p.add_argument("--timeout", type=float, default=1.0, metavar="S",
                   help="seconds to wait for a reply the capture shows before the next request (default 1)")
    p.add_argument("--only-diffs", action="store_true", help="text form: do not list requests that are the same")
    p.add_argument("--record", metavar="OUT.pcapng", help="also record the replayed session (decode it to compare)")
    p.add_argument("--force", action="store_true", help="replay a connection not recorded by the fusd runtime")
    p.add_argument("--format", choices=("pcapng", "strace"), help="input format (default: detect)")
    p.add_argument("--max-bytes", type=int, default=32, metavar="N",
                   help="bytes shown around a difference in a data field (default 32)")


def _opcode_numbers(text: Optional[str], parser: Any) -> Optional[Set[int]]:
    if text is None:
        return None
    known = {C.opcode_name(op): int(op) for op in C.fuse_opcode}
    out: Set[int] = set()
    for word in (w.strip().upper() for w in text.split(",") if w.strip()):
        if word.isdigit():
            out.add(int(word))
            continue
        word = word[5:] if word.startswith("FUSE_") else word
        if word not in known:
            parser.error(f"--opcode: unknown opcode {word!r}")
        out.add(known[word])
    return out


def _fmt(key: str, value: Any, limit: int, offset: Optional[int] = None) -> str:
    from .render import _fmt_bytes, _fmt_value
    if value is None:
        return "none"
    if isinstance(value, bytes):
        if offset is None or len(value) <= limit:
            return f"{len(value)} bytes {_fmt_bytes(value, limit)}"
        start = max(0, offset - limit // 4)
        window = _fmt_bytes(value[start:start + limit], -1)
        return f"{len(value)} bytes {'...' if start else ''}{window}{'...' if start + limit < len(value) else ''}"
    if key == "error" and isinstance(value, int):
        return f"{value} ({errno_name(value)})"
    return _fmt_value(key.rsplit(".", 1)[-1], value, limit)


def outcome_lines(o: Outcome, limit: int = 32) -> List[str]:
    """Text form of one outcome: a header line, then one line per differing field."""
    h = o.step.request.message.header  # type: ignore[union-attr]
    head = f"unique: {h.unique}, opcode: {C.opcode_name(h.opcode)} ({h.opcode}): {o.result}"
    if o.note:
        head += f" ({o.note})"
    lines = [head]
    for d in o.diffs:
        where = f", first difference at offset {d.offset}" if d.offset is not None else ""
        lines.append(f"   {d.field}: captured {_fmt(d.field, d.captured, limit, d.offset)}, "
                     f"replayed {_fmt(d.field, d.replayed, limit, d.offset)}{where}")
    return lines


def outcome_json(o: Outcome) -> Dict[str, Any]:
    """JSON form of one outcome (bytes as hex, like the decoder's JSON)."""
    from .render import jsonable
    h = o.step.request.message.header  # type: ignore[union-attr]
    obj: Dict[str, Any] = {"type": "request", "unique": h.unique, "opcode": C.opcode_name(h.opcode),
                           "opcode_num": h.opcode, "nodeid": h.nodeid, "result": o.result,
                           "where": o.step.request.record.location()}
    if o.note:
        obj["note"] = o.note
    if o.diffs:
        obj["diffs"] = []
        for d in o.diffs:
            item = {"field": d.field, "captured": jsonable(d.captured), "replayed": jsonable(d.replayed)}
            if d.offset is not None:
                item["offset"] = d.offset
            obj["diffs"].append(item)
    return obj


def run_replay(args: Any, parser: Any, out: Any = None, err: Any = None) -> int:
    """The replay command: 0 all replies the same, 1 some differ or are missing, 2 cannot replay."""
    import json
    import sys

    from fusd_runtime.cli import load_device_class

    out = out or sys.stdout
    err = err or sys.stderr
    opcodes = _opcode_numbers(args.opcode, parser)
    try:
        cls = load_device_class(args.device)
    except SystemExit as exc:
        print(str(exc.code) if exc.code is not None else f"cannot load {args.device}", file=err)
        return 2
    try:
        device = cls()
    except Exception as exc:
        print(f"fusd replay: cannot make a {args.device} with no arguments: {exc}", file=err)
        return 2
    try:
        result = replay(args.file, device, name=args.name, connection=args.connection, timeout=args.timeout,
                        opcodes=opcodes, force=args.force, record=args.record, format=args.format)
    except ReplayError as exc:
        print(f"{args.file}: cannot replay: {exc}", file=err)
        return 2
    except (OSError, ValueError) as exc:
        print(f"{args.file}: {exc}", file=err)
        return 2
    info = result.connection
    print(f"replay: {args.file} connection {info.id} ({info.connection.name}), device {result.name!r} "
          f"-> {cls.__name__}: {len(result.outcomes)} requests played, {result.skipped} of the file system "
          "skipped", file=err)
    for problem in result.errors:
        print(f"replay: session error: {problem}", file=err)
    for o in result.reported:
        if args.json:
            out.write(json.dumps(outcome_json(o)) + "\n")
        elif o.result != SAME or not args.only_diffs:
            out.write("\n".join(outcome_lines(o, args.max_bytes)) + "\n")
    if args.json:
        out.write(json.dumps({"type": "summary", "requests": len(result.reported), "same": result.count(SAME),
                              "differ": result.count(DIFFERS), "missing": result.count(MISSING)}) + "\n")
    else:
        out.write(result.summary() + "\n")
    return 0 if result.ok and not result.errors else 1
