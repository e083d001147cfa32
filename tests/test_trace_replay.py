"""Replay: a real recorded session played back to a device class, diffed reply by reply.

The recording is made once per module by a real ``Server(record=...)`` with
devices from ``fusd_runtime.examples``, driven by real system calls: write,
read, an O_NONBLOCK read (EAGAIN), poll woken by a notification, a blocking read
answered by another thread's write (a deferred reply), a read interrupted by a
signal in a child process (INTERRUPT), ioctls, and a read still blocked when the
server stops (ENODEV).  Replaying it against the same classes must find every
reply the same; changed classes must be reported field by field.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import select
import signal
import struct
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Callable, Dict, Iterator, List

import pytest
from conftest import fuse_available, needs_fuse

from fusd_runtime import Server
from fusd_runtime.examples import COUNTER_ADD, COUNTER_GET, Counter, Hello, PipeDevice
from fusd_runtime.ioctl import IOR
from fusd_runtime.replay import DIFFERS, MISSING, SAME, ReplayError, replay
from fusd_wire import constants as C
from fusd_wire.trace import INBOUND, Decoder, Recorder, open_capture

ROOT = Path(__file__).resolve().parent.parent
OP = C.fuse_opcode
SUMMARY = re.compile(r"^(\d+) requests, (\d+) same, (\d+) differ, (\d+) missing$")


def wait_until(predicate: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    """Synchronise with the device's state (a reader is blocked in it); not a timing assertion."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for {what}")
        time.sleep(0.005)


def drive(srv: Server, pipe: PipeDevice) -> List[threading.Thread]:
    """Real system calls on the three devices; returns the thread left blocked in a read."""
    fd = os.open(srv.path("pipe"), os.O_RDWR)
    os.write(fd, b"first")
    assert os.read(fd, 64) == b"first"
    nb = os.open(srv.path("pipe"), os.O_RDONLY | os.O_NONBLOCK)
    with pytest.raises(BlockingIOError):
        os.read(nb, 16)
    os.close(nb)

    # poll, woken by a write from another thread once the kernel waits (NOTIFY_POLL)
    poller = select.poll()
    poller.register(fd, select.POLLIN)

    def write_when_polled() -> None:
        session = srv.session
        assert session is not None
        wait_until(lambda: any(ctx.poll_kh is not None for ctx in session.by_device.get(pipe, ())), "the poll")
        os.write(fd, b"wake")
    writer = threading.Thread(target=write_when_polled)
    writer.start()
    assert poller.poll(30_000)
    writer.join()
    assert os.read(fd, 64) == b"wake"

    # a blocking read, answered later by another thread's write (a deferred reply)
    def write_when_blocked() -> None:
        wait_until(lambda: len(pipe.readers) == 1, "the blocked read")
        os.write(fd, b"late data")
    writer = threading.Thread(target=write_when_blocked)
    writer.start()
    assert os.read(fd, 64) == b"late data"
    writer.join()

    # a read interrupted by a signal: the kernel sends INTERRUPT, the runtime answers EINTR
    child = subprocess.Popen([sys.executable, "-c", textwrap.dedent("""
        import os, signal, sys
        class Interrupted(Exception):
            pass
        def handler(*_):
            raise Interrupted
        signal.signal(signal.SIGUSR1, handler)
        fd = os.open(sys.argv[1], os.O_RDONLY)
        try:
            os.read(fd, 64)
        except Interrupted:
            print("interrupted")
        """), srv.path("pipe")], stdout=subprocess.PIPE, text=True)
    try:
        wait_until(lambda: len(pipe.readers) == 1, "the child's blocked read")
        child.send_signal(signal.SIGUSR1)
        out, _ = child.communicate(timeout=60)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    assert out.strip() == "interrupted"
    assert not pipe.readers
    os.close(fd)

    cfd = os.open(srv.path("counter"), os.O_RDWR)
    assert fcntl.ioctl(cfd, COUNTER_ADD, struct.pack("<Q", 5)) == struct.pack("<Q", 5)
    assert fcntl.ioctl(cfd, COUNTER_ADD, struct.pack("<Q", 7)) == struct.pack("<Q", 12)
    assert fcntl.ioctl(cfd, COUNTER_GET, bytes(8)) == struct.pack("<Q", 12)
    with pytest.raises(OSError) as info:
        fcntl.ioctl(cfd, IOR("C", 9, 8), bytes(8))
    assert info.value.errno == 25  # ENOTTY
    assert os.pread(cfd, 64, 0) == b"12\n"
    os.close(cfd)

    with open(srv.path("hello"), "rb") as f:
        assert f.read() == b"hello, replay\n"

    # a read still blocked when the server stops: the runtime answers it ENODEV
    # (it closes its fd only once the server is gone: a close racing with the stop would
    # send FLUSH/RELEASE that the stopping runtime refuses, which a replay cannot reproduce)
    errors: List[int] = []
    stopped = threading.Event()

    def blocked_reader() -> None:
        rfd = os.open(srv.path("pipe"), os.O_RDONLY)
        try:
            os.read(rfd, 64)
        except OSError as exc:
            errors.append(exc.errno or 0)
        stopped.wait(60)
        os.close(rfd)
    reader = threading.Thread(target=blocked_reader)
    reader.start()
    wait_until(lambda: len(pipe.readers) == 1, "the last blocked read")
    reader.errors = errors  # type: ignore[attr-defined]
    reader.stopped = stopped  # type: ignore[attr-defined]
    return [reader]


@pytest.fixture(scope="module")
def capture(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """One real recorded session (see the module doc)."""
    if not fuse_available():
        pytest.skip("needs root and /dev/fuse (kernel FUSE tier)")
    path = tmp_path_factory.mktemp("replay") / "session.pcapng"
    pipe = PipeDevice()
    with Server(record=str(path)) as srv:
        srv.add(pipe, "pipe")
        srv.add(Counter(), "counter")
        srv.add(Hello(b"hello, replay\n"), "hello")
        threads = drive(srv, pipe)
    for t in threads:
        t.stopped.set()  # type: ignore[attr-defined]
        t.join(30)
        assert t.errors == [19]  # type: ignore[attr-defined]  # ENODEV: the server stopped
    yield path


def run(*args: str) -> subprocess.CompletedProcess:
    """``fusd replay ARGS`` (``python -m fusd_runtime replay``) as a user runs it."""
    return subprocess.run([sys.executable, "-m", "fusd_runtime", "replay", *args], capture_output=True, text=True,
                          cwd=ROOT, timeout=300)


def summary(stdout: str) -> Dict[str, int]:
    m = SUMMARY.match(stdout.strip().splitlines()[-1])
    assert m, stdout
    return dict(zip(("requests", "same", "differ", "missing"), map(int, m.groups())))


CHANGED = '''
import errno
import struct
from fusd_runtime import DEFER
from fusd_runtime.examples import Counter, PipeDevice


class LastByte(PipeDevice):
    """Immediate reads end in '!' instead of their last byte."""
    def read(self, ctx, size, offset):
        result = super().read(ctx, size, offset)
        return result[:-1] + b"!" if isinstance(result, bytes) and result else result


class LoudEmpty(PipeDevice):
    """A non-blocking read of an empty pipe answers EIO instead of EAGAIN."""
    def read(self, ctx, size, offset):
        if not self.buf and ctx.nonblock:
            raise OSError(errno.EIO, "changed")
        return super().read(ctx, size, offset)


class Mute(PipeDevice):
    """Never answers a read that would block (and keeps no handle)."""
    def read(self, ctx, size, offset):
        if not self.buf and not ctx.nonblock:
            return DEFER
        return super().read(ctx, size, offset)


class OffByOne(Counter):
    """COUNTER_GET reports one more than the value."""
    def ioctl(self, ctx, cmd, arg, out_size):
        result = super().ioctl(ctx, cmd, arg, out_size)
        if cmd == 0x80084301:
            return struct.pack("<Q", self.value + 1)
        return result
'''


@pytest.fixture(scope="module")
def changed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("devices") / "changed.py"
    path.write_text(CHANGED)
    return path


# ---------------------------------------------------------------------- the same classes
@needs_fuse
def test_same_class_replays_every_reply_the_same(capture: Path) -> None:
    proc = run(str(capture), "--device", "fusd_runtime.examples:PipeDevice", "--name", "pipe")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    counts = summary(proc.stdout)
    assert counts["same"] == counts["requests"] and counts["differ"] == counts["missing"] == 0
    lines = proc.stdout.splitlines()[:-1]
    assert lines and all(line.endswith(": same") or ": same (" in line for line in lines), proc.stdout
    played = " ".join(lines)
    for opcode in ("INIT", "OPEN", "WRITE", "READ", "POLL", "INTERRUPT", "RELEASE"):
        assert f"opcode: {opcode} (" in played, f"{opcode} not replayed:\n{proc.stdout}"


@needs_fuse
def test_same_class_covers_deferred_replies_interrupts_notifications_and_stop(capture: Path) -> None:
    result = replay(str(capture), PipeDevice(), name="pipe")
    assert result.ok and not result.errors, [(o.step.unique, o.result, o.diffs) for o in result.outcomes]
    by_op: Dict[int, list] = {}
    for o in result.outcomes:
        by_op.setdefault(o.step.opcode, []).append(o)
    reads = [o.step.reply.message for o in by_op[OP.FUSE_READ]]
    errors = {r.header.error for r in reads}
    # answered data, EAGAIN (O_NONBLOCK), EINTR (interrupted) and ENODEV (server stopped): all compared
    assert {0, -11, -4, -19} <= errors
    assert any(o.step.reply.message.body.data == b"late data" for o in by_op[OP.FUSE_READ] if o.step.reply.error == 0)
    # the poll wakeup notification was part of the comparison
    assert any(o.step.notes for o in result.outcomes)
    # INTERRUPT has no reply of its own, the interrupted READ got EINTR
    assert all(o.step.reply is None for o in by_op[OP.FUSE_INTERRUPT])
    # the captured OPEN fhs were mapped to the replayed session's
    assert all("fh " in o.note for o in by_op[OP.FUSE_OPEN])
    assert result.skipped > 0  # LOOKUP/GETATTR of the mount are not the device's


@needs_fuse
def test_fusd_replay_passthrough_and_opcode_filter(capture: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "fusd_runtime", "replay", str(capture), "--device",
                           "fusd_runtime.examples:Counter"], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr  # --name defaults to the class name: counter
    assert "opcode: IOCTL (39): same" in proc.stdout
    counts = summary(proc.stdout)
    assert counts["requests"] == counts["same"] > 0
    only = run(str(capture), "--device", "fusd_runtime.examples:Counter", "--name", "counter", "--opcode", "IOCTL",
               "--json")
    assert only.returncode == 0, only.stderr
    objs = [json.loads(line) for line in only.stdout.splitlines()]
    assert {o["opcode"] for o in objs[:-1]} == {"IOCTL"} and len(objs) - 1 == 4
    assert objs[-1] == {"type": "summary", "requests": 4, "same": 4, "differ": 0, "missing": 0}


@needs_fuse
def test_a_device_instance_with_arguments_through_the_api(capture: Path) -> None:
    same = replay(str(capture), Hello(b"hello, replay\n"), name="hello")
    assert same.ok, [(o.step.unique, o.diffs) for o in same.outcomes]
    other = replay(str(capture), Hello(b"hello, world!\n"), name="hello")
    diff = [d for o in other.outcomes for d in o.diffs]
    assert [(d.field, d.captured, d.replayed, d.offset) for d in diff] == [
        ("data", b"hello, replay\n", b"hello, world!\n", 7)]


# ---------------------------------------------------------------------- changed classes
@needs_fuse
def test_changed_data_is_reported_with_field_and_offset(capture: Path, changed: Path) -> None:
    proc = run(str(capture), "--device", f"{changed}:LastByte", "--name", "pipe")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert ('   data: captured 5 bytes "first", replayed 5 bytes "firs!", first difference at offset 4'
            in proc.stdout), proc.stdout
    assert '   data: captured 4 bytes "wake", replayed 4 bytes "wak!", first difference at offset 3' in proc.stdout
    counts = summary(proc.stdout)
    assert counts["differ"] == 2 and counts["missing"] == 0 and counts["same"] == counts["requests"] - 2

    js = run(str(capture), "--device", f"{changed}:LastByte", "--name", "pipe", "--json")
    assert js.returncode == 1
    objs = [json.loads(line) for line in js.stdout.splitlines()]
    first = [o for o in objs if o.get("result") == "differs"][0]
    assert first["opcode"] == "READ"
    assert first["diffs"] == [{"field": "data", "captured": b"first".hex(), "replayed": b"firs!".hex(), "offset": 4}]
    assert objs[-1]["type"] == "summary" and objs[-1]["differ"] == 2


@needs_fuse
def test_changed_errno_is_reported(capture: Path, changed: Path) -> None:
    proc = run(str(capture), "--device", f"{changed}:LoudEmpty", "--name", "pipe", "--only-diffs")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    assert re.match(r"unique: \d+, opcode: READ \(15\): differs$", lines[0]), lines
    assert lines[1] == "   error: captured -11 (EAGAIN), replayed -5 (EIO)"
    assert summary(proc.stdout)["differ"] == 1


@needs_fuse
def test_changed_ioctl_result(capture: Path, changed: Path) -> None:
    proc = run(str(capture), "--device", f"{changed}:OffByOne", "--name", "counter", "--only-diffs")
    assert proc.returncode == 1
    assert re.search(r"opcode: IOCTL \(39\): differs\n   data: captured 8 bytes \"\\x0c\\0\\0\\0\\0\\0\\0\\0\", "
                     r"replayed 8 bytes \"\\x0d\\0\\0\\0\\0\\0\\0\\0\", first difference at offset 0", proc.stdout), \
        proc.stdout


@needs_fuse
def test_a_reply_that_never_comes_is_missing(capture: Path, changed: Path) -> None:
    result = replay(str(capture), _load(changed, "Mute"), name="pipe", timeout=0.2)
    assert not result.ok
    missing = [o for o in result.outcomes if o.result == MISSING]
    # the read a write answered later, and the one pending at stop (no handle: no ENODEV either)
    assert [(o.step.opcode, o.step.reply.error) for o in missing] == [(OP.FUSE_READ, 0), (OP.FUSE_READ, -19)]
    # the signalled read now finds the data the unanswered read left: data instead of EINTR
    eintr = [o for o in result.outcomes if o.step.reply is not None and o.step.reply.error == -4]
    assert len(eintr) == 1 and eintr[0].result == DIFFERS
    assert (eintr[0].diffs[0].field, eintr[0].diffs[0].captured, eintr[0].diffs[0].replayed) == ("error", -4, 0)
    # with nothing deferred, the INTERRUPT is remembered for when the call defers, never answered
    # EAGAIN (the kernel would re-queue it at once and spin a reader): as in the capture, no reply
    interrupt = [o for o in result.outcomes if o.step.opcode == OP.FUSE_INTERRUPT]
    assert len(interrupt) == 1 and not [d for d in interrupt[0].diffs if d.field == "reply"]
    assert "2 missing" in result.summary()


def _load(path: Path, name: str):  # type: ignore[no-untyped-def]
    from fusd_runtime.cli import load_device_class
    return load_device_class(f"{path}:{name}")()


# ---------------------------------------------------------------------- captures that cannot be replayed
@needs_fuse
def test_truncated_capture_is_refused_with_the_place(capture: Path, tmp_path: Path) -> None:
    data = capture.read_bytes()
    cut = tmp_path / "cut.pcapng"
    cut.write_bytes(data[:len(data) * 2 // 3])
    proc = run(str(cut), "--device", "fusd_runtime.examples:PipeDevice", "--name", "pipe")
    assert proc.returncode == 2
    assert "cannot replay: the capture is damaged" in proc.stderr
    assert re.search(r"block \d+, offset \d+", proc.stderr), proc.stderr
    assert proc.stdout == ""


@needs_fuse
def test_another_daemons_capture_is_refused(capture: Path, tmp_path: Path) -> None:
    # The same traffic, as the live tap of a libfuse daemon records it (connection "tap MOUNTPOINT").
    other = tmp_path / "tap.pcapng"
    with Recorder(str(other)) as rec:
        conn = rec.connection("tap /mnt/sshfs")
        for r in open_capture(str(capture)):
            rec.record(conn, r.direction, r.data, r.timestamp_ns)
    proc = run(str(other), "--device", "fusd_runtime.examples:PipeDevice", "--name", "pipe")
    assert proc.returncode == 2
    assert "'tap /mnt/sshfs') was not recorded by the fusd runtime" in proc.stderr
    forced = run(str(other), "--device", "fusd_runtime.examples:PipeDevice", "--name", "pipe", "--force")
    assert forced.returncode == 0, forced.stderr  # it is our traffic after all


@needs_fuse
def test_unknown_device_name_and_garbage(capture: Path, tmp_path: Path) -> None:
    proc = run(str(capture), "--device", "fusd_runtime.examples:PipeDevice", "--name", "nosuch")
    assert proc.returncode == 2
    assert "no device 'nosuch' is opened in connection 0; opened there: pipe, counter, hello" in proc.stderr
    junk = tmp_path / "junk.pcapng"
    junk.write_bytes(b"\x00" * 100)
    proc = run(str(junk), "--device", "fusd_runtime.examples:PipeDevice")
    assert proc.returncode == 2 and "cannot replay" in proc.stderr
    proc = run(str(capture), "--device", "fusd_runtime.examples:NoSuchClass")
    assert proc.returncode == 2 and "has no NoSuchClass" in proc.stderr


@needs_fuse
def test_several_connections_choose_by_name_or_number(tmp_path: Path, no_leftover_mounts: None) -> None:
    path = tmp_path / "two.pcapng"
    with Recorder(str(path)) as rec:
        for name, device in (("alpha", Hello(b"alpha\n")), ("beta", Hello(b"beta\n"))):
            with Server(record=rec) as srv:
                srv.add(device, name)
                with open(srv.path(name), "rb") as f:
                    assert f.read() == f"{name}\n".encode()
    assert {r.conn for r in open_capture(str(path)) if r.direction == INBOUND} == {0, 1}
    assert replay(str(path), Hello(b"beta\n"), name="beta").connection.id == 1
    assert replay(str(path), Hello(b"alpha\n"), connection=0).ok
    with pytest.raises(ReplayError, match="several connections; choose one with --connection N"):
        replay(str(path), Hello(b"x"))
    proc = run(str(path), "--device", "fusd_runtime.examples:Hello", "--connection", "7")
    assert proc.returncode == 2 and "no connection 7 in the capture" in proc.stderr
    assert SAME == "same"


@needs_fuse
def test_two_requests_handled_in_the_other_order_are_replayed_in_that_order(capture: Path, tmp_path: Path) -> None:
    """With two reader threads a WRITE read after a POLL may take the lock first.

    The capture then shows POLL in, WRITE in, WRITE's reply, POLL's reply (readable,
    no wakeup: the session had no poll handle yet).  Made here from the real capture by
    moving the first POLL's reply after the WRITE that follows it, as that race writes it.
    """
    from fusd_wire import Codec
    records = list(open_capture(str(capture)))
    events = list(Decoder(records))
    poll = next(i for i, ev in enumerate(events) if ev.kind == "request" and ev.opcode == OP.FUSE_POLL)
    assert events[poll + 1].kind == "reply" and events[poll + 1].unique == events[poll].unique
    write = poll + 2
    assert events[write].opcode == OP.FUSE_WRITE
    notify = next(i for i in range(write, len(events)) if events[i].kind == "notify")
    write_reply = next(i for i in range(write, len(events)) if events[i].kind == "reply"
                       and events[i].unique == events[write].unique)
    raced = Codec().encode_reply(OP.FUSE_POLL, {"fuse_poll_out": {"revents": 0x145}},
                                 unique=events[poll].unique)
    moved = {poll + 1, write, notify, write_reply}
    order = records[:poll + 1] + [records[write], records[write_reply]]
    order.append(type(records[0])(records[0].conn, records[poll + 1].direction, None, raced))
    order += [r for i, r in enumerate(records) if i > poll and i not in moved]
    path = tmp_path / "raced.pcapng"
    with Recorder(str(path)) as rec:
        conn = rec.connection("fuse:9")
        for r in order:
            rec.record(conn, r.direction, r.data)
    result = replay(str(path), PipeDevice(), name="pipe")
    assert result.ok, [(o.step.unique, o.diffs) for o in result.outcomes if o.diffs]
    played = [o.step.opcode for o in result.outcomes]
    i = played.index(OP.FUSE_WRITE, played.index(OP.FUSE_OPEN, 2))  # the raced WRITE came first
    assert played[i + 1] == OP.FUSE_POLL
