"""CUSE: real /dev/NAME nodes served by this process, driven by real clients.

Read/write/cat/dd/other processes, O_NONBLOCK, poll wakeups, interrupts,
SIGKILL, callbacks that raise, node attributes, several devices, removal.
"""

from __future__ import annotations

import errno
import os
import select
import signal
import stat
import subprocess
import sys
import threading

import pytest
from conftest import BLOCKED_READER

from fusd_runtime import POLLIN, POLLRDNORM, Context, Device
from fusd_runtime.cuse import CuseServer, cuse_available, open_server
from fusd_runtime.examples import Faulty, Hello, PipeDevice

from .conftest import client, needs_cuse, unique_name, wait_for

pytestmark = needs_cuse


class Recorder(Device):
    """Answers each read with who asked; remembers writes and releases."""

    def __init__(self) -> None:
        self.writes: list = []
        self.released = 0

    def open(self, ctx: Context) -> None:
        ctx.state = 0

    def read(self, ctx: Context, size: int, offset: int) -> bytes:
        ctx.state += 1
        return f"read {ctx.state} by pid {ctx.pid}\n".encode()[:size]

    def write(self, ctx: Context, data: bytes, offset: int) -> int:
        self.writes.append((ctx.pid, data))
        return len(data)

    def release(self, ctx: Context) -> None:
        self.released += 1


def test_node_name_mode_owner_and_read_write_from_another_process(cuse: CuseServer) -> None:
    name = unique_name("rec")
    dev = cuse.add(Recorder(), name, mode=0o640, uid=65534, gid=65534)
    path = cuse.path(name)
    assert path == "/dev/" + name and cuse.path(dev) == path
    st = os.stat(path)
    assert stat.S_ISCHR(st.st_mode), "CUSE makes a real character device"
    assert stat.S_IMODE(st.st_mode) == 0o640 and (st.st_uid, st.st_gid) == (65534, 65534)
    out = client("""
        import os, sys
        fd = os.open(sys.argv[1], os.O_RDWR)
        print(os.read(fd, 100).decode(), end="")
        print(os.read(fd, 100).decode(), end="")
        print(os.write(fd, b"from a client"))
        os.close(fd)
        print(os.getpid())
    """, path).stdout.splitlines()
    pid = int(out[-1])
    assert out[:3] == [f"read 1 by pid {pid}", f"read 2 by pid {pid}", "13"]
    assert dev.writes == [(pid, b"from a client")]
    assert wait_for(lambda: dev.released == 1 and dev.open_count == 0)


def test_cat_and_dd(cuse: CuseServer, tmp_path) -> None:
    hello = unique_name("hello")
    cuse.add(Hello(b"0123456789" * 50), hello)
    cat = subprocess.run(["cat", cuse.path(hello)], capture_output=True, check=True, timeout=120)
    assert cat.stdout == b"0123456789" * 50
    # CUSE is a stream: offsets are always 0; dd's reads are served in order by the device
    pipe_name = unique_name("pipe")
    pipe = cuse.add(PipeDevice(), pipe_name)
    src = tmp_path / "src"
    src.write_bytes(os.urandom(32 * 1024))
    subprocess.run(["dd", f"if={src}", f"of={cuse.path(pipe_name)}", "bs=4096", "status=none"], check=True,
                   timeout=120)
    assert bytes(pipe.buf) == src.read_bytes()
    got = subprocess.run(["dd", f"if={cuse.path(pipe_name)}", "bs=8192", "count=4", "status=none"],
                         capture_output=True, check=True, timeout=120).stdout
    assert got == src.read_bytes()


def test_nonblocking_read_gets_eagain_and_blocking_read_is_woken(cuse: CuseServer) -> None:
    name = unique_name("pipe")
    pipe = cuse.add(PipeDevice(), name)
    fd = os.open(cuse.path(name), os.O_RDONLY | os.O_NONBLOCK)
    try:
        with pytest.raises(BlockingIOError):
            os.read(fd, 10)
        os.set_blocking(fd, True)
        writer = threading.Thread(target=_write_when, args=(lambda: len(pipe.readers) == 1, cuse.path(name), b"x"))
        writer.start()
        assert os.read(fd, 10) == b"x"  # deferred reply, answered by the write
        writer.join()
    finally:
        os.close(fd)


def _write_when(cond, path: str, data: bytes) -> None:
    wait_for(cond)
    fd = os.open(path, os.O_WRONLY)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)


def test_poll_woken_by_the_device(cuse: CuseServer) -> None:
    name = unique_name("pipe")
    pipe = cuse.add(PipeDevice(), name)
    fd = os.open(cuse.path(name), os.O_RDONLY | os.O_NONBLOCK)
    try:
        p = select.poll()
        p.register(fd, select.POLLIN)
        assert p.poll(0) == []
        # the device says "readable now" from another thread: notify_poll wakes the sleeping poll()
        t = threading.Timer(0.2, cuse.call_soon_threadsafe, (pipe.write, None, b"ping", 0))
        t.start()
        assert p.poll(60000) == [(fd, select.POLLIN)]
        assert pipe.poll(None, 0) & (POLLIN | POLLRDNORM)
        assert os.read(fd, 10) == b"ping"
        t.join()
    finally:
        os.close(fd)



def test_blocked_reader_interrupted_by_a_signal(cuse: CuseServer) -> None:
    name = unique_name("pipe")
    pipe = cuse.add(PipeDevice(), name)
    proc = subprocess.Popen([sys.executable, "-S", "-c", BLOCKED_READER, cuse.path(name)], stdout=subprocess.PIPE,
                            text=True)
    assert proc.stdout.readline().strip() == "ready"
    assert wait_for(lambda: len(pipe.readers) == 1)
    proc.send_signal(signal.SIGUSR1)
    out, _ = proc.communicate(timeout=60)
    assert out.strip() == "interrupted"  # the kernel sent INTERRUPT, the runtime answered EINTR
    assert wait_for(lambda: not pipe.readers), "the interrupted read must leave the wait list"
    assert not cuse.sessions[name].deferred
    assert wait_for(lambda: pipe.open_count == 0)


def test_blocked_reader_sigkilled_leaks_nothing(cuse: CuseServer) -> None:
    name = unique_name("pipe")
    pipe = cuse.add(PipeDevice(), name)
    proc = subprocess.Popen([sys.executable, "-S", "-c", BLOCKED_READER, cuse.path(name)], stdout=subprocess.PIPE,
                            text=True)
    assert proc.stdout.readline().strip() == "ready"
    assert wait_for(lambda: len(pipe.readers) == 1)
    proc.kill()
    proc.wait(timeout=60)
    assert wait_for(lambda: pipe.open_count == 0), "RELEASE must arrive after SIGKILL"
    assert not pipe.readers and not cuse.sessions[name].deferred
    _write_when(lambda: True, cuse.path(name), b"still serving")
    assert bytes(pipe.buf) == b"still serving"


def test_callback_that_raises_answers_eio_and_keeps_serving(cuse: CuseServer, caplog) -> None:
    name = unique_name("faulty")
    cuse.add(Faulty(), name)
    fd = os.open(cuse.path(name), os.O_RDWR)
    try:
        for _ in range(2):
            with pytest.raises(OSError) as exc:
                os.read(fd, 10)
            assert exc.value.errno == errno.EIO
        with pytest.raises(OSError) as exc:
            os.write(fd, b"x")
        assert exc.value.errno == errno.ENOSPC  # an OSError's own errno goes through
    finally:
        os.close(fd)
    assert sum("broken on purpose" in r.getMessage() for r in caplog.records) == 1, "logged once"
    hello = unique_name("hello")
    cuse.add(Hello(b"alive"), hello)
    with open(cuse.path(hello), "rb") as f:
        assert f.read() == b"alive"


def test_two_devices_and_removing_one_leaves_the_other(cuse: CuseServer) -> None:
    a, b = unique_name("a"), unique_name("b")
    cuse.add(Hello(b"I am a"), a)
    cuse.add(Hello(b"I am b"), b)
    with open(cuse.path(a), "rb") as fa, open(cuse.path(b), "rb") as fb:
        assert fa.read() == b"I am a" and fb.read() == b"I am b"
    held = os.open(cuse.path(a), os.O_RDONLY)
    try:
        cuse.remove(a)
        assert not os.path.exists("/dev/" + a), "removing a device removes its node"
        with pytest.raises(OSError):
            os.read(held, 10)  # the open file of the removed device fails
    finally:
        os.close(held)
    with open(cuse.path(b), "rb") as fb:
        assert fb.read() == b"I am b"
    assert a not in cuse.devices() and b in cuse.devices()


def test_nodes_exist_while_served_and_disappear_after_stop() -> None:
    names = [unique_name("x"), unique_name("y")]
    server = open_server("auto")
    assert isinstance(server, CuseServer) and server.transport == "cuse" and cuse_available()
    server.add(Hello(), names[0], mode=0o604)
    with server:
        assert stat.S_IMODE(os.stat("/dev/" + names[0]).st_mode) == 0o604
        server.add(PipeDevice(), names[1])  # added while running
        assert all(os.path.exists("/dev/" + n) for n in names)
        with pytest.raises(FileExistsError):
            _start_clash(names[0])  # the name is taken: refused before asking the kernel
    assert not any(os.path.exists("/dev/" + n) for n in names), "stop removes every node"


def _start_clash(name: str) -> None:
    other = CuseServer()
    other.add(Hello(), name)
    try:
        other.start()
    finally:
        other.stop()
