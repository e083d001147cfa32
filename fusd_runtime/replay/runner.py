"""Replay's runner: the captured requests played to a fresh device on the loopback kernel.

- **The real runtime, not a model of it.**  The device is served by a fresh
  ``FuseSession``/``CuseSession`` on the loopback kernel's socketpair
  (``fusd_runtime.loopback``), started without INIT: the captured INIT is the
  first request played, so the session negotiates the captured protocol.  One
  reader thread: requests are handled in capture order, which a replay must do
  to be repeatable.  The loopback kernel also checks every reply as the kernel
  would (its violations are reported with the session's errors).
- **Handles are the session's own.**  The captured ``fh`` of each OPEN reply is
  mapped to the one the replayed session answers, and rewritten in every later
  request (``fh`` is the first field of each of those request structs: checked at
  import); the node id is rewritten to the replayed registry's.  Uniques are kept.
- **Waiting**: each request is sent, then the replay waits — up to ``timeout`` —
  only for the replies and notifications the capture shows before the *next*
  request.  At the end the kernel stops like a server stops (pending calls
  answered ENODEV), so a capture that ended with a blocked read replays the same.
"""

from __future__ import annotations

import errno
from typing import Any, Callable, Dict, List, Optional, Set, Tuple, Union

from fusd_wire import FAST, Codec, Conversation, WireError
from fusd_wire import constants as C
from fusd_wire.codec import IN_HEADER_SIZE, OUT_HEADER_SIZE
from fusd_wire.trace.reader import Capture, Source

from ..loopback import LoopbackKernel
from .compare import (
    DIFFERS,
    MISSING,
    SAME,
    Diff,
    Outcome,
    ReplayResult,
    _diff,
    _note_text,
    _reply_text,
    compare_reply,
)
from .plan import ConnInfo, Step, build_steps, choose, load

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

#: fh for a request whose OPEN the replayed device refused: no session has it, so it gets EBADF.
NO_FH = (1 << 64) - 1
#: Requests that get no reply at all (the kernel sends them and forgets).
_NO_REPLY = frozenset([OP.FUSE_FORGET, OP.FUSE_BATCH_FORGET, OP.FUSE_INTERRUPT, OP.FUSE_NOTIFY_REPLY])


class Replayer:
    """Play ``steps`` to ``device`` through a real session on the loopback kernel, and compare."""

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
        self.kernel: Optional[LoopbackKernel] = None

    def run(self) -> List[Outcome]:
        """Play every step on a fresh loopback kernel and session; the outcomes, in step order."""
        kernel = LoopbackKernel(self.info.kind, timeout=self.timeout, recorder=self.recorder)
        kernel.requeue_interrupts = False  # play exactly the captured INTERRUPTs
        kernel.add(self.device, self.name)
        self.kernel = kernel
        try:
            kernel.start(negotiate=False)
            nodeid = kernel.session.registry.find(self.device).nodeid if self.info.kind == "fuse" else 0
            for step in self.steps:
                kernel.send_raw(self._patched(step, kernel, nodeid), reply=step.opcode not in _NO_REPLY)
                if not kernel.wait_for(_arrived(kernel, step.wait_uniques, step.notes_before_next), self.timeout):
                    for u in step.wait_uniques:
                        if u not in kernel.reply_pos:
                            self.late.setdefault(u, f"no reply within {self.timeout:g} s of the point where "
                                                    "the capture had it")
            # Barrier: our own request is answered by the session itself, after every request
            # sent before it (one reader, in order), so synchronous replies are all in.
            kernel.barrier(self.timeout)
            rest = [s.unique for s in self.steps if s.reply is not None and s.reply.error != -errno.ENODEV]
            kernel.wait_for(lambda: all(u in kernel.reply_pos for u in rest), self.timeout)  # from device threads
        finally:
            kernel.stop()  # pending calls get ENODEV, as at server stop
            self.errors.extend(kernel.session_errors)
            self.errors.extend(AssertionError(f"protocol: {v}") for v in kernel.violations)
        return self._compare(kernel)

    # -- requests
    def _map_fh(self, kernel: LoopbackKernel, captured_fh: int) -> int:
        if captured_fh not in self.fh_map:
            # OPEN replies that came since: learn captured fh -> replayed fh
            for step in self.steps:
                if step.opcode != OP.FUSE_OPEN or step.reply is None or step.reply.error:
                    continue
                pos = kernel.reply_pos.get(step.unique)
                if pos is None:
                    continue
                data = kernel.log[pos][1]
                if _OUT_HEADER.unpack_from(data)[1] == 0 and len(data) >= OUT_HEADER_SIZE + 8:
                    cap = step.reply.message.body.fuse_open_out.fh  # type: ignore[union-attr]
                    self.fh_map[cap] = _U64.unpack_from(data, OUT_HEADER_SIZE)[0]
        return self.fh_map.get(captured_fh, NO_FH)

    def _patched(self, step: Step, kernel: LoopbackKernel, nodeid: int) -> bytes:
        """The captured request with the replayed session's node id and file handle."""
        data = bytearray(step.request.record.data)
        h = list(_IN_HEADER.unpack_from(data))
        if self.info.kind == "fuse" and step.opcode != OP.FUSE_INIT and h[3] != 0:
            h[3] = nodeid
            _IN_HEADER.pack_into(data, 0, *h)
        if step.opcode in FH_OPS and len(data) >= IN_HEADER_SIZE + 8:
            _U64.pack_into(data, IN_HEADER_SIZE, self._map_fh(kernel, _U64.unpack_from(data, IN_HEADER_SIZE)[0]))
        return bytes(data)

    # -- comparison
    def _decode_replayed(self, kernel: LoopbackKernel) -> Tuple[Dict[int, Any], Dict[int, List[Any]]]:
        """Decode the replayed traffic in order: replies by unique, notifications by step."""
        conv = Conversation(Codec(strict=False))
        replies: Dict[int, Any] = {}
        notes: Dict[int, List[Any]] = {}
        opcodes: Dict[int, int] = {}  # unique -> opcode of every request sent
        stop = kernel.stop_mark if kernel.stop_mark is not None else len(kernel.log)
        step = -1
        for pos, (direction, data) in enumerate(kernel.log):
            if direction == "in":
                step += 1
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
                if pos < stop:
                    notes.setdefault(step, []).append(msg)
            elif unique is not None and unique not in replies:
                replies[unique] = (msg, pos >= stop)
        return replies, notes

    def _compare(self, kernel: LoopbackKernel) -> List[Outcome]:
        replies, notes = self._decode_replayed(kernel)
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


def _arrived(kernel: LoopbackKernel, uniques: List[int], notes: int) -> Callable[[], bool]:
    """A predicate: the replies to ``uniques`` and ``notes`` notifications have come."""
    return lambda: all(u in kernel.reply_pos for u in uniques) and kernel.notes_count >= notes


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
        from fusd_wire.trace.recorder import Recorder
        recorder = record if hasattr(record, "record") else Recorder(record)
    try:
        replayer = Replayer(info, steps, device, name, timeout=timeout, recorder=recorder)
        outcomes = replayer.run()
    finally:
        if recorder is not None and recorder is not record:
            recorder.close()
    return ReplayResult(outcomes, info, name, skipped, replayer.errors)
