r"""Replay's plan: which captured requests are played, in which order, and what to wait for.

How a capture becomes a list of :class:`Step`\s, and why:

- **Only the device's traffic is played.**  On FUSE the capture also holds the
  runtime's little file system (LOOKUP, GETATTR, READDIR, ...), whose replies carry
  mount times and node numbers of that run; those requests are skipped.  Played:
  INIT (the captured kernel INIT, so the session negotiates the captured protocol),
  then OPEN/READ/WRITE/IOCTL/POLL/FLUSH/FSYNC/RELEASE on the device's node (found
  from the captured LOOKUP of ``--name``), and INTERRUPTs of those.  CUSE
  connections serve one device: everything is played.
- **Deferred replies.**  A captured reply may come after later requests (a blocked
  read answered by a write).  Each step records the replies and notifications the
  capture shows before the *next* request; the runner waits only for those.
- **Processing order**: with two reader threads the recording session may have
  handled two requests in the other order than they came; the capture shows it and
  the plan swaps them (the replay has one reader).
"""

from __future__ import annotations

import errno
import re
from dataclasses import dataclass, field
from typing import Any, Dict, Iterable, List, Optional, Set, Tuple, Union

from fusd_wire import constants as C
from fusd_wire.trace.decode import NOTIFY, REPLY, REQUEST, Decoder, Event
from fusd_wire.trace.pcapng import CaptureError
from fusd_wire.trace.reader import Capture, Source, open_capture
from fusd_wire.trace.records import Connection

OP = C.fuse_opcode
#: A recording by the fusd runtime names its connection after the session: ``fuse:7``, ``cuse:5``.
_RUNTIME_CONN = re.compile(r"^(fuse|cuse):\d+$")
#: What a device file does (the base Session's handlers): played on the device's node.
DEVICE_OPS = frozenset([OP.FUSE_OPEN, OP.FUSE_READ, OP.FUSE_WRITE, OP.FUSE_RELEASE, OP.FUSE_FLUSH, OP.FUSE_FSYNC,
                        OP.FUSE_IOCTL, OP.FUSE_POLL])


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
        """The captured request's unique (kept in the replay)."""
        return self.request.message.header.unique  # type: ignore[union-attr]

    @property
    def opcode(self) -> int:
        """The captured request's opcode."""
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
        """One line for messages: the connection, its kind and its devices."""
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


__all__ = ["ConnInfo", "DEVICE_OPS", "ReplayError", "Step", "build_steps", "choose", "load"]
