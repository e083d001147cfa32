"""Live views of a running server: ``Server(debug=True)`` / ``fusd serve -d`` print each request
and its reply as served; ``-v`` logs the lifecycle; a recording is readable while it is made.

All against the real kernel (FUSE on this machine; the CUSE side is in tests/cuse/).
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import needs_fuse, wait_for

from fusd_runtime import Server
from fusd_runtime.examples import Hello, PipeDevice
from fusd_wire.trace import INBOUND, OUTBOUND, Recorder, open_capture
from fusd_wire.trace.live import DebugSink

ROOT = Path(__file__).resolve().parent.parent


class Lines(logging.Handler):
    """Collects what the ``fusd.debug`` logger emits."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.messages: list = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@pytest.fixture
def debug_log():
    dlog = logging.getLogger("fusd.debug")
    handler = Lines()
    old_level = dlog.level
    dlog.addHandler(handler)
    dlog.setLevel(logging.DEBUG)
    yield handler
    dlog.removeHandler(handler)
    dlog.setLevel(old_level)


@needs_fuse
@pytest.mark.kernel
def test_debug_prints_each_request_and_its_reply_as_served(debug_log, no_leftover_mounts):
    with Server(debug=True) as srv:
        srv.add(Hello(b"hi there\n"), "hello")
        with open(srv.path("hello"), "rb") as f:
            assert f.read() == b"hi there\n"
        # served: the messages are there before stop (not written at the end)
        text = "\n".join(debug_log.messages)
        assert "opcode: INIT (26)" in text
        assert 'name: "hello"' in text
    reads = [m for m in debug_log.messages if ", opcode: READ (15), nodeid: 2" in m]
    assert reads, text
    head = reads[0].splitlines()[0]
    assert head.startswith("unique: ") and ", insize: 80, pid: " in head  # libfuse -d's header line
    replies = [m for m in debug_log.messages if m.lstrip().startswith("unique: ") and "reply to READ" in m]
    assert 'data: "hi there\\n"' in replies[0]
    assert ", success, outsize: 25, reply to READ, latency: " in replies[0]
    # one log record per message, each request before its reply
    unique = head.split(",")[0]
    assert debug_log.messages.index(reads[0]) < next(
        i for i, m in enumerate(debug_log.messages) if m.startswith("   " + unique + ","))


@needs_fuse
@pytest.mark.kernel
def test_debug_shows_errors_and_deferred_replies(debug_log, no_leftover_mounts):
    with Server(debug=True) as srv:
        srv.add(PipeDevice(), "pipe")
        nb = os.open(srv.path("pipe"), os.O_RDONLY | os.O_NONBLOCK)
        with pytest.raises(BlockingIOError):
            os.read(nb, 16)
        os.close(nb)
        fd = os.open(srv.path("pipe"), os.O_RDWR)
        os.write(fd, b"x")
        assert os.read(fd, 16) == b"x"
        os.close(fd)
    text = "\n".join(debug_log.messages)
    assert "error: -11 (EAGAIN), outsize: 16, reply to READ" in text
    assert 'data: "x"' in text


@needs_fuse
@pytest.mark.kernel
def test_without_debug_the_session_does_no_extra_work(no_leftover_mounts):
    """debug=False (the default) leaves the hot path as it was: no sink, the plain os.writev."""
    with Server() as srv:
        srv.add(Hello(), "hello")
        assert srv.recorder is None
        assert srv.session is not None and srv.session.recorder is None
        assert srv.session.writev is os.writev


@needs_fuse
@pytest.mark.kernel
def test_debug_level_raised_while_serving_stops_the_decoding(debug_log, no_leftover_mounts):
    with Server(debug=True) as srv:
        srv.add(Hello(), "hello")
        with open(srv.path("hello"), "rb") as f:
            f.read()
        n = len(debug_log.messages)
        logging.getLogger("fusd.debug").setLevel(logging.INFO)
        with open(srv.path("hello"), "rb") as f:
            f.read()
        assert len(debug_log.messages) == n
        logging.getLogger("fusd.debug").setLevel(logging.DEBUG)
        with open(srv.path("hello"), "rb") as f:
            f.read()
        assert len(debug_log.messages) > n


@needs_fuse
@pytest.mark.kernel
def test_debug_and_record_together(tmp_path, debug_log, no_leftover_mounts):
    cap = tmp_path / "s.pcapng"
    mine = Recorder(tmp_path / "mine.pcapng")
    with Server(debug=True, record=str(cap)) as srv:
        srv.add(Hello(), "hello")
        with open(srv.path("hello"), "rb") as f:
            f.read()
    assert any("reply to READ" in m for m in debug_log.messages)
    recs = list(open_capture(str(cap)))
    assert {r.direction for r in recs} == {INBOUND, OUTBOUND}
    assert sum(1 for m in debug_log.messages if not m.startswith(" ")) == sum(r.inbound for r in recs)
    # a Recorder the caller passes in stays the caller's to close
    with Server(debug=True, record=mine) as srv:
        srv.add(Hello(), "hello")
    assert not mine.closed
    mine.close()
    assert any(r.inbound for r in open_capture(str(tmp_path / "mine.pcapng")))


def test_debug_sink_decodes_pushed_messages_without_a_kernel():
    """The sink alone (what the runtime plugs in): decodes, pairs and passes everything on."""
    from fusd_wire import Codec
    codec = Codec()
    lines = []
    sink = DebugSink(lines.append)
    conn = sink.connection("fuse:3")
    req = codec.encode_request(15, {"fuse_read_in": {"fh": 1, "size": 10}}, unique=7, nodeid=2, pid=42)
    sink.record(conn, INBOUND, memoryview(bytearray(req)))
    sink.record(conn, OUTBOUND, [codec.encode_reply(15, {"data": b"abc"}, unique=7)[:16], b"abc"])
    sink.record(conn, OUTBOUND, [b"\x10\x00\x00\x00\xfe\xff\xff\xff" + (99).to_bytes(8, "little")])
    assert lines[0].splitlines()[0] == "unique: 7, opcode: READ (15), nodeid: 2, insize: 80, pid: 42"
    assert lines[1].startswith("   unique: 7, success, outsize: 19, reply to READ, latency: ")
    assert lines[1].splitlines()[1] == '      data: "abc"'
    assert "answers no request" in lines[2]  # problems are shown under the message, never dropped


# ---------------------------------------------------------------------------------- the command line
SERVE = [sys.executable, "-m", "fusd_runtime"]


def _serve(args, mnt):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.Popen([*SERVE, *args, "--transport", "fuse", "--mountpoint", str(mnt)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env,
                            start_new_session=True)


def _stop(proc):
    proc.send_signal(signal.SIGINT)
    try:
        _, err = proc.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        _, err = proc.communicate(timeout=10)
    return proc.returncode, err


def _mounted(path) -> bool:
    with open("/proc/self/mountinfo") as f:
        return any(line.split()[4] == str(path) for line in f)


@needs_fuse
@pytest.mark.kernel
def test_fusd_serve_d_and_v(tmp_path):
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    proc = _serve(["-v", "serve", "fusd_runtime.examples:Hello", "-d"], mnt)
    try:
        assert wait_for(lambda: os.path.exists(mnt / "hello") or proc.poll() is not None, 30)
        assert (mnt / "hello").read_bytes() == Hello().text
    finally:
        status, err = _stop(proc)
    assert not _mounted(mnt)
    assert status == 0, err
    assert f"fusd: serving {mnt} (FUSE 7." in err  # -v: the lifecycle
    assert "fusd: device hello added (Hello, mode 666)" in err
    assert "opcode: READ (15), nodeid: 2, insize: 80" in err  # -d: every request and reply
    assert 'data: "Hello from a Python device!\\n"' in err


@needs_fuse
@pytest.mark.kernel
def test_fusd_serve_without_flags_is_quiet(tmp_path):
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    proc = _serve(["serve", "-f", "fusd_runtime.examples:Hello"], mnt)
    try:
        assert wait_for(lambda: os.path.exists(mnt / "hello") or proc.poll() is not None, 30)
        (mnt / "hello").read_bytes()
    finally:
        status, err = _stop(proc)
    assert status == 0, err
    assert "opcode:" not in err and "fusd: serving /" not in err


# ---------------------------------------------------------------------------------- readable while recording
def test_recorder_flushes_by_time(tmp_path):
    from fusd_wire import Codec
    req = Codec().encode_request(15, {"fuse_read_in": {"size": 4}}, unique=3, nodeid=2)
    path = tmp_path / "live.pcapng"
    rec = Recorder(path, flush_interval=0.05)
    conn = rec.connection("fuse:9")
    rec.record(conn, INBOUND, req)
    try:
        assert wait_for(lambda: path.stat().st_size > 0 and len(list(open_capture(str(path)))) == 1, 10)
        assert list(open_capture(str(path)))[0].data == req
    finally:
        rec.close()
    held = tmp_path / "held.pcapng"
    rec = Recorder(held, flush_interval=None)  # the old behaviour: nothing on disk before 64 KiB
    rec.record(rec.connection("fuse:9"), INBOUND, req)
    time.sleep(0.2)  # not a timing assertion: nothing may arrive, however long we wait
    assert held.stat().st_size == 0
    rec.close()
    assert len(list(open_capture(str(held)))) == 1
    with pytest.raises(ValueError):
        Recorder(tmp_path / "x.pcapng", flush_interval=0)


@needs_fuse
@pytest.mark.kernel
def test_a_recording_is_readable_while_the_server_runs(tmp_path, no_leftover_mounts):
    cap = tmp_path / "running.pcapng"
    with Server(record=str(cap)) as srv:
        srv.add(Hello(), "hello")
        with open(srv.path("hello"), "rb") as f:
            f.read()

        def has_read_reply() -> bool:
            from fusd_wire.trace import Decoder
            try:
                return any(ev.kind == "reply" and ev.opcode == 15 for ev in Decoder(open_capture(str(cap))))
            except Exception:
                return False  # read in the middle of a write: try again
        assert wait_for(has_read_reply, 10)
        assert srv.session is not None  # still serving
