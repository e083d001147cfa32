"""The runtime against the real kernel FUSE: real clients in other processes, real syscalls.

Each test serves devices from a Server in this process (a temporary mount) and
drives them with subprocesses doing open/read/write/ioctl/poll, dd and cat, and
with signals.  No mocks: what passes here is what a user's program sees.
"""

from __future__ import annotations

import errno
import fcntl
import os
import select
import signal
import struct
import subprocess
import sys
import textwrap
import threading
import time

import pytest
from conftest import BLOCKED_READER, client, needs_fuse, wait_for

from fusd_runtime import DEFER, POLLOUT, POLLPRI, Context, Device, Server
from fusd_runtime.examples import COUNTER_ADD, COUNTER_GET, Counter, Faulty, Hello, PipeDevice
from fusd_runtime.ioctl import IO, IOR, IOW, IOWR

pytestmark = needs_fuse






class Recorder(Device):
    """Remembers who called what, with per-open state."""

    def __init__(self) -> None:
        self.calls: list = []

    def open(self, ctx: Context) -> None:
        ctx.state = {"opened_by": ctx.pid, "reads": 0}
        self.calls.append(("open", ctx.pid, ctx.uid, ctx.gid, ctx.flags & os.O_ACCMODE))

    def read(self, ctx: Context, size: int, offset: int) -> bytes:
        ctx.state["reads"] += 1
        return f"fh={ctx.fh} reads={ctx.state['reads']} pid={ctx.pid} uid={ctx.uid}\n".encode()[:size]

    def write(self, ctx: Context, data: bytes, offset: int) -> int:
        self.calls.append(("write", data))
        return len(data)

    def flush(self, ctx: Context) -> None:
        self.calls.append(("flush", ctx.pid))

    def release(self, ctx: Context) -> None:
        self.calls.append(("release", ctx.fh))


def test_open_read_write_close_from_another_process(server: Server) -> None:
    dev = server.add(Recorder(), "rec")
    out = client("""
        import os, sys
        fd = os.open(sys.argv[1], os.O_RDWR)
        print(os.read(fd, 100).decode(), end="")
        print(os.read(fd, 100).decode(), end="")
        assert os.write(fd, b"hello device") == 12
        os.close(fd)
        print(os.getpid())
    """, server.path("rec")).stdout.splitlines()
    pid = int(out[-1])
    assert out[0].startswith("fh=") and "reads=1" in out[0] and f"pid={pid}" in out[0]
    assert "reads=2" in out[1]
    assert ("write", b"hello device") in dev.calls
    assert ("open", pid, 0, 0, os.O_RDWR) in dev.calls
    assert wait_for(lambda: any(c[0] == "release" for c in dev.calls))
    assert dev.open_count == 0


def test_several_opens_have_separate_state(server: Server) -> None:
    server.add(Recorder(), "rec")
    a = os.open(server.path("rec"), os.O_RDONLY)
    b = os.open(server.path("rec"), os.O_RDONLY)
    try:
        assert b"reads=1" in os.read(a, 100)
        assert b"reads=2" in os.read(a, 100)
        assert b"reads=1" in os.read(b, 100)
    finally:
        os.close(a)
        os.close(b)


def test_cat_and_dd(server: Server, tmp_path) -> None:
    server.add(Hello(b"0123456789" * 100), "hello")
    assert subprocess.run(["cat", server.path("hello")], capture_output=True, check=True).stdout == \
        b"0123456789" * 100
    pipe = server.add(PipeDevice(), "pipe")
    src = tmp_path / "src"
    src.write_bytes(os.urandom(64 * 1024))
    subprocess.run(["dd", f"if={src}", f"of={server.path('pipe')}", "bs=4096", "status=none"], check=True)
    assert bytes(pipe.buf) == src.read_bytes()
    got = subprocess.run(["dd", f"if={server.path('pipe')}", "bs=8192", "count=8", "status=none"],
                         capture_output=True, check=True).stdout
    assert got == src.read_bytes()


def test_credentials_can_refuse_access(server: Server) -> None:
    class RootOnly(Device):
        mode = 0o666
        seekable = True

        def open(self, ctx: Context) -> None:
            if ctx.uid != 0:
                raise PermissionError(errno.EACCES, "root only")

        def read(self, ctx: Context, size: int, offset: int) -> bytes:
            return b"secret"[offset:offset + size]

    server.add(RootOnly(), "rootonly")
    path = server.path("rootonly")
    with open(path, "rb") as f:
        assert f.read() == b"secret"
    proc = subprocess.run(["cat", path], capture_output=True, text=True, user=65534, group=65534)
    assert proc.returncode != 0 and "Permission denied" in proc.stderr


def test_file_mode_uid_gid(server: Server) -> None:
    server.add(Hello(), "private", mode=0o600, uid=0, gid=0)
    st = os.stat(server.path("private"))
    assert (st.st_mode & 0o777, st.st_uid, st.st_gid) == (0o600, 0, 0)
    proc = subprocess.run(["cat", server.path("private")], capture_output=True, text=True, user=65534,
                          group=65534)
    assert "Permission denied" in proc.stderr  # the kernel checks the mode (default_permissions)


def test_blocking_read_woken_by_a_write_from_another_process(server: Server) -> None:
    server.add(PipeDevice(), "pipe")
    path = server.path("pipe")
    reader = subprocess.Popen([sys.executable, "-c", "import os,sys; fd=os.open(sys.argv[1], os.O_RDONLY); "
                               "sys.stdout.buffer.write(os.read(fd, 100))", path], stdout=subprocess.PIPE)
    time.sleep(0.3)
    assert reader.poll() is None, "the reader should be blocked"
    client("import os,sys; fd=os.open(sys.argv[1], os.O_WRONLY); os.write(fd, b'wake up')", path)
    out, _ = reader.communicate(timeout=10)
    assert out == b"wake up"


def test_nonblocking_read_gets_eagain(server: Server) -> None:
    server.add(PipeDevice(), "pipe")
    fd = os.open(server.path("pipe"), os.O_RDONLY | os.O_NONBLOCK)
    try:
        with pytest.raises(BlockingIOError):
            os.read(fd, 10)
        os.set_blocking(fd, True)  # fcntl(F_SETFL): later reads arrive without O_NONBLOCK
        threading.Timer(0.2, lambda: _write(server.path("pipe"), b"x")).start()
        assert os.read(fd, 10) == b"x"
    finally:
        os.close(fd)


def _write(path: str, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)



def test_signal_interrupts_a_blocked_read(server: Server) -> None:
    pipe = server.add(PipeDevice(), "pipe")
    proc = subprocess.Popen([sys.executable, "-c", BLOCKED_READER, server.path("pipe")], stdout=subprocess.PIPE,
                            text=True)
    assert proc.stdout.readline().strip() == "ready"
    assert wait_for(lambda: len(pipe.readers) == 1)
    proc.send_signal(signal.SIGUSR1)
    out, _ = proc.communicate(timeout=10)
    assert out.strip() == "interrupted"
    assert wait_for(lambda: not pipe.readers), "the interrupted read must leave the wait list"
    assert not server.session.deferred
    assert wait_for(lambda: pipe.open_count == 0)


def test_sigkill_while_blocked_leaks_nothing(server: Server) -> None:
    pipe = server.add(PipeDevice(), "pipe")
    proc = subprocess.Popen([sys.executable, "-c", BLOCKED_READER, server.path("pipe")], stdout=subprocess.PIPE,
                            text=True)
    assert proc.stdout.readline().strip() == "ready"
    assert wait_for(lambda: len(pipe.readers) == 1)
    assert pipe.open_count == 1
    proc.kill()
    proc.wait(timeout=10)
    assert wait_for(lambda: pipe.open_count == 0), "RELEASE must arrive after SIGKILL"
    assert not pipe.readers and not server.session.deferred
    _write(server.path("pipe"), b"still serving")
    assert bytes(pipe.buf) == b"still serving"


def test_interrupt_of_deferred_request_answers_eintr_in_process(server: Server) -> None:
    """A thread blocked in read() of this process gets EINTR when the kernel interrupts it."""

    class Never(Device):
        def __init__(self) -> None:
            self.interrupted = []

        def read(self, ctx: Context, size: int, offset: int):
            ctx.defer(on_interrupt=self.interrupted.append)
            return DEFER

    dev = server.add(Never(), "never")
    proc = subprocess.Popen([sys.executable, "-c", BLOCKED_READER, server.path("never")], stdout=subprocess.PIPE,
                            text=True)
    assert proc.stdout.readline().strip() == "ready"
    assert wait_for(lambda: len(server.session.deferred) == 1)
    proc.send_signal(signal.SIGUSR1)
    assert proc.communicate(timeout=10)[0].strip() == "interrupted"
    assert wait_for(lambda: len(dev.interrupted) == 1)
    assert dev.interrupted[0].done and not dev.interrupted[0].reply(b"late")


def test_poll_select_epoll_wake_when_readable(server: Server) -> None:
    pipe = server.add(PipeDevice(), "pipe")
    fd = os.open(server.path("pipe"), os.O_RDWR)
    try:
        p = select.poll()
        p.register(fd, select.POLLIN)
        assert p.poll(0) == []
        threading.Timer(0.2, lambda: _write(server.path("pipe"), b"data")).start()
        assert p.poll(5000) == [(fd, select.POLLIN)]
        os.read(fd, 10)
        ep = select.epoll()
        ep.register(fd, select.EPOLLIN)
        assert ep.poll(0) == []
        threading.Timer(0.2, lambda: _write(server.path("pipe"), b"more")).start()
        assert ep.poll(5) == [(fd, select.EPOLLIN)]
        ep.close()
        os.read(fd, 10)
        threading.Timer(0.2, lambda: _write(server.path("pipe"), b"sel")).start()
        assert select.select([fd], [], [], 5)[0] == [fd]
        os.read(fd, 10)
        # POLLOUT: writable while there is room
        assert select.select([], [fd], [], 0)[1] == [fd]
        # POLLHUP
        threading.Timer(0.2, pipe.hangup).start()
        p2 = select.poll()
        p2.register(fd, select.POLLIN)
        events = p2.poll(5000)
        assert events and events[0][1] & select.POLLHUP
    finally:
        os.close(fd)


def test_pollpri_and_pollout_masks(server: Server) -> None:
    class Alarm(Device):
        def __init__(self) -> None:
            self.urgent = False

        def poll(self, ctx: Context, events: int) -> int:
            return POLLOUT | (POLLPRI if self.urgent else 0)

    alarm = server.add(Alarm(), "alarm")
    fd = os.open(server.path("alarm"), os.O_RDONLY)
    try:
        p = select.poll()
        p.register(fd, select.POLLPRI)
        assert p.poll(0) == []

        def fire() -> None:
            alarm.urgent = True
            alarm.notify_poll()

        threading.Timer(0.2, fire).start()
        assert p.poll(5000) == [(fd, select.POLLPRI)]
        p.register(fd, select.POLLOUT | select.POLLPRI)
        assert p.poll(0) == [(fd, select.POLLOUT | select.POLLPRI)]
    finally:
        os.close(fd)


def test_restricted_ioctls(server: Server) -> None:
    class Ioctls(Device):
        def __init__(self) -> None:
            self.reset = 0
            self.value = b""

        def ioctl(self, ctx: Context, cmd: int, arg: bytes, out_size: int):
            if cmd == IO("T", 0):
                self.reset += 1
                return 7
            if cmd == IOW("T", 1, 16):
                self.value = arg
                return 0
            if cmd == IOR("T", 2, 16):
                return self.value[::-1]
            if cmd == IOWR("T", 3, 4):
                return struct.pack("<i", struct.unpack("<i", arg)[0] * 2)
            raise OSError(errno.ENOTTY, "unknown")

    dev = server.add(Ioctls(), "ioctls")
    out = client(f"""
        import fcntl, os, struct, sys, errno
        fd = os.open(sys.argv[1], os.O_RDWR)
        print(fcntl.ioctl(fd, {IO('T', 0)}))
        fcntl.ioctl(fd, {IOW('T', 1, 16)}, b"0123456789abcdef")
        print(fcntl.ioctl(fd, {IOR('T', 2, 16)}, bytes(16)).decode())
        print(struct.unpack("<i", fcntl.ioctl(fd, {IOWR('T', 3, 4)}, struct.pack("<i", 21)))[0])
        try:
            fcntl.ioctl(fd, {IOR('T', 9, 4)}, bytes(4))
        except OSError as e:
            print(errno.errorcode[e.errno])
    """, server.path("ioctls")).stdout.split()
    assert out == ["7", "fedcba9876543210", "42", "ENOTTY"]
    assert dev.reset == 1 and dev.value == b"0123456789abcdef"


def test_counter_example_ioctls(server: Server) -> None:
    server.add(Counter(), "counter")
    fd = os.open(server.path("counter"), os.O_RDONLY)
    try:
        assert struct.unpack("<Q", fcntl.ioctl(fd, COUNTER_ADD, struct.pack("<Q", 5)))[0] == 5
        assert struct.unpack("<Q", fcntl.ioctl(fd, COUNTER_GET, bytes(8)))[0] == 5
    finally:
        os.close(fd)


def test_callback_that_raises_answers_eio_and_server_keeps_serving(server: Server, caplog) -> None:
    server.add(Faulty(), "faulty")
    server.add(Hello(), "hello")
    fd = os.open(server.path("faulty"), os.O_RDWR)
    try:
        for _ in range(3):
            with pytest.raises(OSError) as exc:
                os.read(fd, 10)
            assert exc.value.errno == errno.EIO
        with pytest.raises(OSError) as exc:
            os.write(fd, b"x")
        assert exc.value.errno == errno.ENOSPC
    finally:
        os.close(fd)
    assert sum("broken on purpose" in r.getMessage() or "raised" in r.getMessage() for r in caplog.records) == 1
    with open(server.path("hello"), "rb") as f:
        assert f.read().startswith(b"Hello")


def test_devices_added_and_removed_while_running(server: Server) -> None:
    server.add(Hello(b"one"), "one")
    assert os.listdir(server.mountpoint) == ["one"]
    server.add(Hello(b"two"), "sub/two")
    assert sorted(os.listdir(server.mountpoint)) == ["one", "sub"]
    with open(server.path("sub/two"), "rb") as f:
        assert f.read() == b"two"
    fd = os.open(server.path("one"), os.O_RDONLY)
    server.remove("one")
    assert wait_for(lambda: not os.path.exists(server.path("one")))
    with pytest.raises(OSError) as exc:
        os.read(fd, 10)
    assert exc.value.errno == errno.ENODEV
    os.close(fd)
    server.remove("sub/two")
    assert wait_for(lambda: os.listdir(server.mountpoint) == [])


def test_load_8_processes_10000_ops_each(server: Server) -> None:
    """4 writers and 4 readers, 10,000 fixed-size records each, through one pipe device."""
    server.add(PipeDevice(capacity=1 << 22), "pipe")
    path = server.path("pipe")
    writer = """
        import os, sys
        fd = os.open(sys.argv[1], os.O_WRONLY)
        w = int(sys.argv[2])
        for i in range(10000):
            rec = b"%02d:%08d:...\\n" % (w, i)
            while True:
                try:
                    assert os.write(fd, rec) == 16
                    break
                except BlockingIOError:
                    pass
    """
    reader = """
        import os, sys
        fd = os.open(sys.argv[1], os.O_RDONLY)
        out = []
        for i in range(10000):
            rec = os.read(fd, 16)
            assert len(rec) == 16, rec
            out.append(rec)
        sys.stdout.buffer.write(b"".join(out))
    """
    readers = [subprocess.Popen([sys.executable, "-c", textwrap.dedent(reader), path], stdout=subprocess.PIPE)
               for _ in range(4)]
    writers = [subprocess.Popen([sys.executable, "-c", textwrap.dedent(writer), path, str(w)]) for w in range(4)]
    for w in writers:
        assert w.wait(timeout=300) == 0
    outputs = [r.communicate(timeout=300)[0] for r in readers]
    assert all(r.returncode == 0 for r in readers)
    seen = {w: [] for w in range(4)}
    for out in outputs:
        per_writer = {w: -1 for w in range(4)}
        for k in range(0, len(out), 16):
            w, i = int(out[k:k + 2]), int(out[k + 3:k + 11])
            assert i > per_writer[w], "records of one writer were reordered"
            per_writer[w] = i
            seen[w].append(i)
    for w in range(4):
        assert sorted(seen[w]) == list(range(10000)), f"writer {w}: lost or duplicated records"
    with open(path, "wb", buffering=0) as f:
        f.write(b"alive")


def test_with_block_exit_on_exception_unmounts(no_leftover_mounts) -> None:
    srv = Server()
    with pytest.raises(ZeroDivisionError):
        with srv:
            srv.add(Hello(), "hello")
            mnt = srv.mountpoint
            assert os.path.exists(os.path.join(mnt, "hello"))
            raise ZeroDivisionError("an exception inside the with block")
    assert not os.path.exists(mnt)


SERVER_SCRIPT = """
import sys
from fusd_runtime import Server
from fusd_runtime.examples import Hello
srv = Server(sys.argv[1])
srv.add(Hello(), "hello")
srv.serve_forever(ready=lambda: print("serving", flush=True))
print("clean exit", flush=True)
"""


def _mounted(path: str) -> bool:
    with open("/proc/mounts") as f:
        return any(line.split()[1] == path for line in f)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_server_process_stops_cleanly_on_signal(tmp_path, sig) -> None:
    mnt = str(tmp_path / "mnt")
    os.mkdir(mnt)
    proc = subprocess.Popen([sys.executable, "-c", SERVER_SCRIPT, mnt], stdout=subprocess.PIPE, text=True,
                            env=dict(os.environ, PYTHONPATH=os.getcwd()))
    try:
        assert proc.stdout.readline().strip() == "serving"
        assert _mounted(mnt)
        proc.send_signal(sig)
        out, _ = proc.communicate(timeout=20)
        assert "clean exit" in out
        assert not _mounted(mnt)
    finally:
        proc.kill()
        proc.wait()


def test_sigkilled_server_leaves_no_stale_mount(tmp_path) -> None:
    mnt = str(tmp_path / "mnt")
    os.mkdir(mnt)
    proc = subprocess.Popen([sys.executable, "-c", SERVER_SCRIPT, mnt], stdout=subprocess.PIPE, text=True,
                            env=dict(os.environ, PYTHONPATH=os.getcwd()))
    try:
        assert proc.stdout.readline().strip() == "serving"
        assert _mounted(mnt)
        proc.kill()
        proc.wait(timeout=10)
        assert wait_for(lambda: not _mounted(mnt), timeout=15), "the watchdog must unmount"
        assert os.listdir(mnt) == []
    finally:
        proc.kill()
        proc.wait()


def test_close_sends_flush_only_to_devices_with_a_flush_callback(server: Server) -> None:
    """FOPEN_NOFLUSH for devices without ``flush``: close(2) skips a round trip; with it, FLUSH arrives."""
    from fusd_wire.constants import fuse_opcode
    flushes: list = []
    handlers = server.session.handlers
    original = handlers[fuse_opcode.FUSE_FLUSH]
    handlers[fuse_opcode.FUSE_FLUSH] = lambda *args: (flushes.append(args[3]), original(*args))[1]
    server.session.build_dispatch()  # the readers dispatch through a list made from ``handlers``
    server.add(Hello(), "plain")
    rec = server.add(Recorder(), "rec")
    for name in ("plain", "plain", "rec"):
        fd = os.open(server.path(name), os.O_RDONLY)
        os.close(fd)
    assert len(flushes) == 1
    assert any(c[0] == "flush" for c in rec.calls)


def test_default_readers_follow_cpu_affinity() -> None:
    """2 readers by default; 1 when the server may only run on one CPU (a second could never help)."""
    if len(os.sched_getaffinity(0)) < 2:
        pytest.skip("needs two CPUs to tell the defaults apart")
    code = """
import os, sys, threading
from fusd_runtime import Server
from fusd_runtime.examples import Hello
if sys.argv[1] == "pinned":
    os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
with Server() as srv:
    srv.add(Hello(), "hello")
    with open(srv.path("hello"), "rb") as f:
        assert f.read() == Hello().text
    print(srv.readers, sum(t.name.startswith("fusd-fuse-reader") for t in threading.enumerate()))
"""
    assert client(code, "pinned").stdout.split() == ["1", "1"]
    assert client(code, "free").stdout.split() == ["2", "2"]
