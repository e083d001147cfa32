"""Replay's comparison: captured and replayed replies, decoded, field by field.

Both replies are decoded with the codec (the protocol each side negotiated) and
the decoded Containers compared recursively; bytes fields report the first
differing offset.  Poll notifications (NOTIFY_POLL) are compared in the order
they come, as part of the request whose handling sent them.  Timing is not
compared: a reply that comes later or sooner than captured is the same if its
content is.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, List, Optional, Set, Union

from fusd_wire import constants as C
from fusd_wire.codec import Notification, Reply, errno_name
from fusd_wire.errors import WireError

from .plan import ConnInfo, Step

OP = C.fuse_opcode
#: an outcome: the replayed reply (and notifications) equal the captured ones
SAME = "same"
#: an outcome: a field, the error, a notification or the presence of a reply differs
DIFFERS = "differs"
#: an outcome: the capture has a reply, the replayed device never sent one
MISSING = "missing"


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
        """How many reported outcomes are ``result`` (SAME, DIFFERS, MISSING)."""
        return sum(o.result == result for o in self.reported)

    @property
    def reported(self) -> List[Outcome]:
        """The outcomes selected for the report (``--opcode``); all are played."""
        return [o for o in self.outcomes if o.step.reported]

    @property
    def ok(self) -> bool:
        """True when every reported outcome is SAME."""
        return all(o.result == SAME for o in self.reported)

    def summary(self) -> str:
        """``N requests, N same, N differ, N missing``."""
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


def _reply_text(msg: Any) -> str:
    if isinstance(msg, WireError):
        return f"undecodable: {msg}"
    return "success" if not msg.error else f"error {msg.error} ({errno_name(msg.error)})"


__all__ = ["DIFFERS", "Diff", "MISSING", "Outcome", "ReplayResult", "SAME", "compare_reply"]
