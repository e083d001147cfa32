"""What an emulated device answers from: a recording as a list of opens, each a list of operations.

Every source (a fusd capture, umockdev's ioctl/script files, evemu files) is
turned into this one model, and ``device.EmulatedDevice`` serves it:

- :class:`Recording`: the device's name and its recorded :class:`OpenScript`\\s,
  in the order the device was opened.
- :class:`OpenScript`: one open file's history: the open's flags or error, then
  its :class:`Op`\\s in the order they were answered, each with its time since
  the open (for ``--timing``).
- :class:`Op`: a read (the bytes the device gave, or an errno), a write (what
  was written, what the device took), an ioctl (command, bytes in and out,
  result, and on CUSE the memory ranges its FUSE_IOCTL_RETRY asked for), a poll
  (the events asked, the mask answered).

ioctls are matched by :func:`ioctl_key`: the command's type, number and
direction without its size, so ``EVIOCGNAME(256)`` answers ``EVIOCGNAME(64)``
(the answer is cut or zero-padded to the caller's size).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

from ..ioctl import ioc_dir, ioc_nr, ioc_type

READ, WRITE, IOCTL, POLL = "read", "write", "ioctl", "poll"


def ioctl_key(cmd: int) -> Tuple[int, int, int]:
    """An ioctl number without its size: ``(_IOC_DIR, _IOC_TYPE, _IOC_NR)``."""
    return ioc_dir(cmd), ioc_type(cmd), ioc_nr(cmd)


@dataclass
class Op:
    """One recorded operation (see the module doc); ``t`` is seconds since the open."""

    kind: str
    t: float = 0.0
    data: bytes = b""  # read: the answer; write: what was written; ioctl: the bytes copied out
    error: int = 0  # a positive errno, or 0
    size: int = 0  # read: bytes asked; write: bytes the device took
    nonblock: bool = False  # the call was made with O_NONBLOCK
    cmd: int = 0
    arg: int = 0  # ioctl: the recorded caller's argument (an address on CUSE)
    in_data: bytes = b""  # ioctl: the bytes copied in
    result: int = 0  # ioctl: its return value
    in_iovs: List[Tuple[int, int]] = field(default_factory=list)  # CUSE: the last RETRY's ranges
    out_iovs: List[Tuple[int, int]] = field(default_factory=list)
    events: int = 0  # poll: asked
    mask: int = 0  # poll: answered
    wake_t: Optional[float] = None  # poll: when the device sent its waiter a wakeup (NOTIFY_POLL), if it did

    def describe(self) -> str:
        """One line for messages."""
        if self.kind == IOCTL:
            return f"ioctl {self.cmd:#x} -> {self.result if not self.error else -self.error}, {len(self.data)} bytes"
        what = f"{len(self.data)} bytes" if not self.error else f"errno {self.error}"
        return f"{self.kind} at {self.t:.3f} s: {what}"


@dataclass
class OpenScript:
    """One recorded open: its flags (or the errno it failed with) and its operations."""

    flags: int = 0
    error: int = 0
    ops: List[Op] = field(default_factory=list)

    def count(self, kind: str) -> int:
        """How many operations of ``kind`` (READ, WRITE, IOCTL, POLL) this open has."""
        return sum(op.kind == kind for op in self.ops)


@dataclass
class Recording:
    """A device's recorded opens, ready to be served (``EmulatedDevice``)."""

    name: str
    opens: List[OpenScript] = field(default_factory=list)
    transport: str = "fuse"  # the transport it was recorded on
    source: str = ""
    mode: int = 0o666

    def ioctl_index(self) -> Dict[Tuple[int, int, int], List[Op]]:
        """Every recorded ioctl by :func:`ioctl_key`, in recording order (for answers across opens)."""
        index: Dict[Tuple[int, int, int], List[Op]] = {}
        for script in self.opens:
            for op in script.ops:
                if op.kind == IOCTL:
                    index.setdefault(ioctl_key(op.cmd), []).append(op)
        return index

    def summary(self) -> str:
        """``NAME: N open(s); N reads, ... (from SOURCE)``."""
        ops = [op for s in self.opens for op in s.ops]
        kinds = ", ".join(f"{sum(op.kind == k for op in ops)} {k}s" for k in (READ, WRITE, IOCTL, POLL))
        return f"{self.name}: {len(self.opens)} open(s); {kinds} (from {self.source or 'memory'})"


def first_open(recording: Recording) -> OpenScript:
    """The first open that succeeded (or an empty one)."""
    for script in recording.opens:
        if not script.error:
            return script
    return OpenScript()


__all__ = ["IOCTL", "Op", "OpenScript", "POLL", "READ", "Recording", "WRITE", "first_open", "ioctl_key"]
