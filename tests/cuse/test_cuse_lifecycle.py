"""CUSE specifics of the serving model: close waits for RELEASE, partial answers, stuck callbacks.

On CUSE the kernel never sends FLUSH or FSYNC; the last ``close(2)`` of a file
waits for the answer to its RELEASE (fs/fuse/cuse.c ``cuse_release`` calls
``fuse_sync_release``), so a device that must drain — a sound card — can defer
``release()`` and answer when done.  An interrupted write can report how much it
took: ``on_interrupt`` answers the call itself.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import threading

from conftest import INTERRUPTED_WRITER

from fusd_runtime import DEFER, Context, Device
from fusd_runtime.cuse import CuseServer
from fusd_runtime.examples import Hello

from .conftest import client, needs_cuse, unique_name, wait_for

pytestmark = needs_cuse


class Draining(Device):
    """release() defers; the 'hardware' finishes draining a while later (a timer) and answers."""

    def __init__(self) -> None:
        self.events: list = []

    def write(self, ctx: Context, data: bytes, offset: int) -> int:
        self.events.append(("write", len(data)))
        return len(data)

    def release(self, ctx: Context):
        handle = ctx.defer()
        self.events.append("release")

        def drained() -> None:
            self.events.append("drained")
            handle.reply(None)
        self.call_later(0.5, drained)
        return DEFER


def test_close_waits_for_a_deferred_release(cuse: CuseServer) -> None:
    name = unique_name("drain")
    dev = cuse.add(Draining(), name)
    out = client("""
        import os, sys
        fd = os.open(sys.argv[1], os.O_WRONLY)
        os.write(fd, b"x" * 100)
        os.close(fd)
        print("closed")
    """, cuse.path(name)).stdout
    assert out.strip() == "closed"
    # close(2) returned only after the device answered its RELEASE
    assert dev.events == [("write", 100), "release", "drained"]


class PartialWriter(Device):
    def __init__(self) -> None:
        self.waiting = threading.Event()

    def write(self, ctx: Context, data: bytes, offset: int):
        ctx.defer(on_interrupt=lambda handle: handle.reply(42))  # interrupted: "I took 42 bytes"
        self.waiting.set()
        return DEFER


def test_an_interrupted_write_answers_its_partial_count(cuse: CuseServer) -> None:
    name = unique_name("partial")
    dev = cuse.add(PartialWriter(), name)
    proc = subprocess.Popen([sys.executable, "-S", "-c", INTERRUPTED_WRITER, cuse.path(name)],
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "ready"
    assert dev.waiting.wait(60)
    assert wait_for(lambda: len(cuse.sessions[name].deferred) == 1)
    proc.send_signal(signal.SIGUSR1)
    assert proc.communicate(timeout=120)[0].strip() == "42"


class Stuck(Device):
    def __init__(self) -> None:
        self.release_it = threading.Event()
        self.inside = threading.Event()

    def read(self, ctx: Context, size: int, offset: int) -> bytes:
        self.inside.set()
        self.release_it.wait(120)
        return b"done\n"


def test_a_stuck_callback_of_one_device_does_not_stop_another(cuse: CuseServer) -> None:
    stuck_name, other_name = unique_name("stuck"), unique_name("other")
    stuck = cuse.add(Stuck(), stuck_name)
    cuse.add(Hello(b"the other device\n"), other_name)
    blocked = subprocess.Popen([sys.executable, "-S", "-c", "import os,sys; fd=os.open(sys.argv[1], os.O_RDONLY);"
                                " print(os.read(fd, 10))", cuse.path(stuck_name)], stdout=subprocess.PIPE)
    try:
        assert stuck.inside.wait(60)
        out = client("import os,sys; fd=os.open(sys.argv[1], os.O_RDONLY); print(os.read(fd, 100).decode(), end='')",
                     cuse.path(other_name)).stdout
        assert out == "the other device\n" and blocked.poll() is None
    finally:
        stuck.release_it.set()
    assert blocked.communicate(timeout=120)[0].strip() == b"b'done\\n'"


class LateTable(Device):
    """A seekable device whose reads answer later (a timer): the open file's position still moves."""

    seekable = True
    TABLE = b"0123456789"

    def read(self, ctx: Context, size: int, offset: int):
        handle = ctx.defer()
        self.call_later(0.05, handle.reply, self.TABLE[offset:offset + min(size, 4)])
        return DEFER


def test_a_deferred_answer_moves_a_seekable_devices_position(cuse: CuseServer) -> None:
    name = unique_name("late")
    cuse.add(LateTable(), name)
    out = client("""
        import os, sys
        fd = os.open(sys.argv[1], os.O_RDONLY)
        print([os.read(fd, 4) for _ in range(4)])
    """, cuse.path(name)).stdout
    assert out.strip() == "[b'0123', b'4567', b'89', b'']"
