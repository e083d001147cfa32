"""The serving model on the real kernel: faults, slow callbacks, the server's life, interrupts, timers.

Each test here is an edge a user meets on the first day: a callback that raises
SystemExit or returns the wrong type, one that sleeps without deferring, an
external ``umount`` or a fusectl abort, a signal while a callback still runs, a
device that needs a timer.  The servers that must *exit* run in a subprocess
(``serve_forever`` in its main thread, as a user's program would).
"""

from __future__ import annotations

import errno
import logging
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import pytest
from conftest import INTERRUPTED_WRITER, ROOT, client, needs_fuse, wait_for

from fusd_runtime import DEFER, Context, Device, Server
from fusd_runtime.examples import Hello, PipeDevice
from fusd_runtime.mount import is_mounted

pytestmark = needs_fuse


# ---------------------------------------------------------------------- a server in its own process
SERVER = """
import sys, threading, time
sys.path.insert(0, {root!r})
from fusd_runtime import Device, Server
from fusd_runtime.examples import Hello
{extra}
server = Server(sys.argv[1])
server.add(Hello(b"hello\\n"), "hello")
{adds}
server.serve_forever(ready=lambda: print("READY", flush=True))
print("serve_forever returned", flush=True)
"""


def start_server(tmp_path, extra: str = "", adds: str = "") -> subprocess.Popen:
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    code = SERVER.format(root=ROOT, extra=textwrap.dedent(extra), adds=textwrap.dedent(adds))
    proc = subprocess.Popen([sys.executable, "-c", code, str(mnt)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    line = proc.stdout.readline()
    if line.strip() != "READY":
        proc.kill()
        raise AssertionError(f"server did not start: {line!r} {proc.stderr.read()}")
    proc.mnt = str(mnt)  # type: ignore[attr-defined]
    return proc


def finish(proc: subprocess.Popen, timeout: float = 20) -> tuple:
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        subprocess.run(["umount", "-l", proc.mnt], capture_output=True)  # type: ignore[attr-defined]
        raise AssertionError(f"the server did not exit:\n{out}\n{err}") from None
    return proc.returncode, out, err


def read_errno(path: str) -> str:
    out = client("""
        import errno, os, sys
        fd = os.open(sys.argv[1], os.O_RDONLY)
        try:
            print(os.read(fd, 100))
        except OSError as e:
            print(errno.errorcode[e.errno])
    """, path)
    return out.stdout.strip()


# ---------------------------------------------------------------------- faults
def test_systemexit_in_a_callback_answers_eio_stops_cleanly_and_reraises(tmp_path) -> None:
    proc = start_server(tmp_path, extra="""
        class Quitter(Device):
            def read(self, ctx, size, offset):
                raise SystemExit("the device asked to quit")
    """, adds='server.add(Quitter(), "quit")')
    assert read_errno(os.path.join(proc.mnt, "quit")) == "EIO"
    rc, out, err = finish(proc)
    assert rc == 1 and "the device asked to quit" in err  # serve_forever re-raised it, after cleaning up
    assert "serve_forever returned" not in out
    assert not is_mounted(proc.mnt)


def test_keyboardinterrupt_in_a_callback_surfaces_from_wait_and_no_reader_dies(no_leftover_mounts) -> None:
    class Interrupter(Device):
        def read(self, ctx: Context, size: int, offset: int) -> bytes:
            raise KeyboardInterrupt

    server = Server(readers=1)
    server.start()
    try:
        server.add(Interrupter(), "int")
        server.add(Hello(b"still here\n"), "hello")
        assert read_errno(server.path("int")) == "EIO"  # answered (a lone reader that died could not)
        with pytest.raises(KeyboardInterrupt):
            server.wait(10)
        assert server.stopped and not is_mounted(server.mountpoint)
    finally:
        server.stop()


def test_a_wrong_return_type_is_reported_as_the_devices_bug(server: Server, caplog) -> None:
    class Wrong(Device):
        def __init__(self) -> None:
            self.calls = 0

        def read(self, ctx: Context, size: int, offset: int):
            self.calls += 1
            return "a str, not bytes" if self.calls == 1 else b"fixed\n"

    server.add(Wrong(), "wrong")
    with caplog.at_level(logging.WARNING, logger="fusd"):
        fd = os.open(server.path("wrong"), os.O_RDONLY)
        try:
            with pytest.raises(OSError) as info:
                os.read(fd, 100)
            assert info.value.errno == errno.EIO
            assert os.read(fd, 100) == b"fixed\n"  # the next call is served
        finally:
            os.close(fd)
    text = caplog.text
    assert "device 'wrong': read() returned str 'a str, not bytes'" in text and "expected bytes" in text
    assert "internal error" not in text


# ---------------------------------------------------------------------- a slow callback
class Stuck(Device):
    """read() sleeps (without deferring) until released: the device of a careless author."""

    def __init__(self) -> None:
        self.release_it = threading.Event()
        self.inside = threading.Event()
        self.order: list = []

    def read(self, ctx: Context, size: int, offset: int) -> bytes:
        self.order.append(("start", ctx.pid))
        self.inside.set()
        self.release_it.wait(60)
        self.order.append(("end", ctx.pid))
        return b"finally\n"

    def write(self, ctx: Context, data: bytes, offset: int) -> int:
        self.order.append(("write", data))
        return len(data)


@pytest.mark.parametrize("readers", [1, 2])
def test_a_stuck_callback_blocks_only_its_own_device(readers: int, no_leftover_mounts) -> None:
    stuck = Stuck()
    with Server(readers=readers) as server:
        server.add(stuck, "stuck")
        server.add(Hello(b"other device\n"), "other")
        server.add(PipeDevice(), "pipe")
        blocked = subprocess.Popen([sys.executable, "-c", "import os,sys; fd=os.open(sys.argv[1], os.O_RDONLY); "
                                    "print(os.read(fd, 100))", server.path("stuck")], stdout=subprocess.PIPE)
        try:
            assert stuck.inside.wait(20)
            # Everything else answers while stuck.read still sleeps: other devices, the directory, OPENs.
            out = client("""
                import os, sys
                mnt = sys.argv[1]
                print(sorted(os.listdir(mnt)))
                print(os.stat(os.path.join(mnt, "other")).st_mode & 0o777)
                with open(os.path.join(mnt, "other"), "rb") as f:
                    print(f.read().decode(), end="")
                fd = os.open(os.path.join(mnt, "pipe"), os.O_RDWR)
                os.write(fd, b"ping")
                print(os.read(fd, 10).decode())
                os.close(fd)
            """, server.mountpoint, timeout=30).stdout.splitlines()
            assert out == ["['other', 'pipe', 'stuck']", "438", "other device", "ping"]
            assert not stuck.release_it.is_set() and blocked.poll() is None
        finally:
            stuck.release_it.set()
        assert blocked.communicate(timeout=20)[0].strip() == b"b'finally\\n'"


def test_calls_of_one_device_run_one_at_a_time_in_arrival_order(server: Server) -> None:
    stuck = server.add(Stuck(), "stuck")
    fds = [os.open(server.path("stuck"), os.O_WRONLY) for _ in range(3)]  # opened before it gets stuck
    try:
        first = threading.Thread(target=lambda: open(server.path("stuck"), "rb", buffering=0).read(10))
        first.start()
        assert stuck.inside.wait(20)
        writers = []
        for fd, word in zip(fds, (b"one", b"two", b"three")):
            t = threading.Thread(target=os.write, args=(fd, word))
            t.start()
            writers.append(t)
            time.sleep(0.05)  # to make the arrival order (nothing asserts on time)
        time.sleep(0.2)
        assert [o for o in stuck.order if o[0] == "write"] == []  # queued behind the running read, not beside it
        stuck.release_it.set()
        first.join(20)
        for t in writers:
            t.join(20)
    finally:
        for fd in fds:
            os.close(fd)
    kinds = [o[0] for o in stuck.order]
    assert kinds[:2] == ["start", "end"] and [o[1] for o in stuck.order[2:]] == [b"one", b"two", b"three"]


def _write(path: str, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)


# ---------------------------------------------------------------------- the server's life follows the kernel's
def test_an_external_umount_stops_the_server_with_a_message(tmp_path) -> None:
    proc = start_server(tmp_path)
    subprocess.run(["umount", proc.mnt], check=True)
    rc, out, err = finish(proc)
    assert rc == 0 and "serve_forever returned" in out
    assert "unmounted" in err and err.count("\n") <= 3  # one clear line (or two), no traceback
    assert "Traceback" not in err
    assert not is_mounted(proc.mnt)


def _fuse_connection(mnt: str) -> str:
    if not os.path.isdir("/sys/fs/fuse/connections") or not os.listdir("/sys/fs/fuse/connections"):
        subprocess.run(["mount", "-t", "fusectl", "none", "/sys/fs/fuse/connections"], capture_output=True)
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            if fields[4] == mnt:
                return fields[2].split(":")[1]
    raise AssertionError(f"{mnt} is not mounted")


def test_a_fusectl_abort_stops_the_server_with_a_message(tmp_path) -> None:
    proc = start_server(tmp_path)
    conn = _fuse_connection(proc.mnt)
    with open(f"/sys/fs/fuse/connections/{conn}/abort", "w") as f:
        f.write("1")
    rc, out, err = finish(proc)
    assert rc == 0 and "serve_forever returned" in out
    assert "aborted" in err and "Traceback" not in err
    assert not is_mounted(proc.mnt)


def test_a_background_server_stops_itself_when_unmounted(no_leftover_mounts) -> None:
    server = Server()
    server.start()
    try:
        server.add(Hello(), "hello")
        subprocess.run(["umount", server.mountpoint], check=True)
        assert server.wait(10) and "unmounted" in (server.end_reason or "")
    finally:
        server.stop()


# ---------------------------------------------------------------------- interrupts
def test_an_interrupt_during_a_running_callback_is_read_once_not_spun(tmp_path, no_leftover_mounts) -> None:
    """The kernel re-queues an INTERRUPT answered EAGAIN at once: it must be remembered instead."""
    from fusd_wire import constants as C
    from fusd_wire.trace import decode_records, open_capture

    class Slow(Device):
        def __init__(self) -> None:
            self.inside = threading.Event()

        def read(self, ctx: Context, size: int, offset: int) -> bytes:
            self.inside.set()
            time.sleep(1.0)  # a sync callback that takes a while (no defer)
            return b"late"

    capture = tmp_path / "c.pcapng"
    slow = Slow()
    with Server(record=str(capture), readers=2) as server:
        server.add(slow, "slow")
        proc = subprocess.Popen([sys.executable, "-c", textwrap.dedent("""
            import os, signal, sys
            signal.signal(signal.SIGUSR1, lambda *a: None)
            signal.siginterrupt(signal.SIGUSR1, True)
            fd = os.open(sys.argv[1], os.O_RDONLY)
            print("ready", flush=True)
            print(os.read(fd, 10))
        """), server.path("slow")], stdout=subprocess.PIPE, text=True)
        assert proc.stdout.readline().strip() == "ready"
        assert slow.inside.wait(20)
        proc.send_signal(signal.SIGUSR1)
        out, _ = proc.communicate(timeout=20)
        assert out.strip() == "b'late'"  # the answer came: the interrupt was not lost, nor answered EINTR
    interrupts = [e for e in decode_records(open_capture(str(capture)))
                  if e.kind == "request" and e.opcode == C.fuse_opcode.FUSE_INTERRUPT]
    assert len(interrupts) == 1


class PartialWriter(Device):
    """write() waits; when the caller is interrupted it answers how much it took so far."""

    def __init__(self) -> None:
        self.waiting = threading.Event()

    def write(self, ctx: Context, data: bytes, offset: int):
        def took_some(handle):  # on_interrupt: answer the call ourselves
            handle.reply(42)
        ctx.defer(on_interrupt=took_some)
        self.waiting.set()
        return DEFER


def test_on_interrupt_may_answer_a_partial_count(server: Server) -> None:
    dev = server.add(PartialWriter(), "partial")
    proc = subprocess.Popen([sys.executable, "-c", INTERRUPTED_WRITER, server.path("partial")],
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "ready"
    assert dev.waiting.wait(20)
    assert wait_for(lambda: len(server.session.deferred) == 1)  # type: ignore[union-attr]
    proc.send_signal(signal.SIGUSR1)
    out, _ = proc.communicate(timeout=20)
    assert out.strip() == "42"


# ---------------------------------------------------------------------- timers for devices
class Ticker(Device):
    """A periodic device: a line per tick, produced by its own timer (no thread, no lock)."""

    seekable = False

    def __init__(self, period: float = 0.05) -> None:
        self.period = period
        self.lines: list = []
        self.count = 0
        self.timer = None
        self.running_in: set = set()

    def start(self) -> None:
        self.timer = self.call_later(self.period, self.tick)

    def tick(self) -> None:
        self.running_in.add(threading.current_thread().name)
        self.count += 1
        self.lines.append(f"tick {self.count}\n".encode())
        self.notify_poll()
        if self.count < 5:
            self.timer = self.call_later(self.period, self.tick)

    def read(self, ctx: Context, size: int, offset: int) -> bytes:
        return self.lines.pop(0) if self.lines else b""


def test_a_device_timer_runs_as_device_code(server: Server) -> None:
    ticker = server.add(Ticker(), "ticker")
    with pytest.raises(RuntimeError, match="not being served"):
        Ticker().call_later(1, print)
    ticker.start()
    assert wait_for(lambda: ticker.count == 5)
    fd = os.open(server.path("ticker"), os.O_RDONLY)
    try:
        assert os.read(fd, 100) == b"tick 1\n"
    finally:
        os.close(fd)
    cancelled = ticker.call_later(0.05, ticker.tick)
    cancelled.cancel()
    time.sleep(0.2)
    assert ticker.count == 5 and ticker.running_in <= {"fusd-loop"}


def test_call_soon_from_a_thread_of_ours_runs_under_the_devices_strand(server: Server) -> None:
    stuck = server.add(Stuck(), "stuck")
    threading.Thread(target=lambda: open(server.path("stuck"), "rb", buffering=0).read(10), daemon=True).start()
    assert stuck.inside.wait(20)
    ran = threading.Event()
    stuck.call_soon(lambda: (stuck.order.append(("soon", None)), ran.set()))
    assert not ran.wait(0.3)  # the device's read is still running: call_soon waits its turn
    stuck.release_it.set()
    assert ran.wait(20) and [o[0] for o in stuck.order] == ["start", "end", "soon"]


def test_server_abort_frees_clients_and_stops_the_server(no_leftover_mounts) -> None:
    stuck = Stuck()
    server = Server()
    server.start()
    try:
        server.add(stuck, "stuck")
        code = textwrap.dedent("""
            import errno, os, sys
            fd = os.open(sys.argv[1], os.O_RDONLY)
            try:
                os.read(fd, 10)
            except OSError as e:
                print(errno.errorcode[e.errno])
        """)
        blocked = subprocess.Popen([sys.executable, "-c", code, server.path("stuck")], stdout=subprocess.PIPE,
                                   text=True)
        assert stuck.inside.wait(20)
        server.abort()  # the operator's way out for clients stuck on a server that stopped answering
        assert blocked.communicate(timeout=20)[0].strip() == "ECONNABORTED"
        assert server.wait(10) and "aborted" in (server.end_reason or "")
        assert not is_mounted(server.mountpoint)
    finally:
        stuck.release_it.set()
        server.stop()
