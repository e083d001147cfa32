"""Replay of a recorded CUSE session (one connection per device, CUSE_INIT, FUSE_IOCTL_RETRY rounds)."""

from __future__ import annotations

import fcntl
import os
import struct
from pathlib import Path

from fusd_runtime.cuse import CuseServer
from fusd_runtime.examples import COUNTER_ADD, Counter, PipeDevice
from fusd_runtime.replay import replay
from fusd_wire import constants as C

from .conftest import needs_cuse, unique_name


@needs_cuse
def test_recorded_cuse_session_replays_the_same(tmp_path: Path) -> None:
    cap = tmp_path / "cuse.pcapng"
    counter_name, pipe_name = unique_name("counter"), unique_name("pipe")
    with CuseServer(record=str(cap), readers=1) as server:
        server.add(Counter(), counter_name)
        server.add(PipeDevice(), pipe_name)
        fd = os.open(server.path(counter_name), os.O_RDWR)
        assert fcntl.ioctl(fd, COUNTER_ADD, struct.pack("<Q", 3)) == struct.pack("<Q", 3)
        os.close(fd)
        fd = os.open(server.path(pipe_name), os.O_RDWR)
        os.write(fd, b"cuse")
        assert os.read(fd, 16) == b"cuse"
        os.close(fd)
    counter = replay(str(cap), Counter(), name=counter_name)
    assert counter.ok, [(o.step.unique, o.diffs) for o in counter.outcomes if o.diffs]
    assert counter.connection.kind == "cuse"
    ops = [o.step.opcode for o in counter.outcomes]
    assert ops[0] == C.fuse_opcode.CUSE_INIT and ops.count(C.fuse_opcode.FUSE_IOCTL) >= 2  # RETRY, then data
    pipe = replay(str(cap), PipeDevice(), name=pipe_name)
    assert pipe.ok and pipe.connection.id != counter.connection.id
    changed = Counter()
    changed.value = 100
    diff = replay(str(cap), changed, name=counter_name)
    assert not diff.ok and any(d.field == "data" for o in diff.outcomes for d in o.diffs)
