"""Record a device through the pass-through proxy, then emulate it to an unmodified client.

End to end, as a user runs it: a gallery device plays the "real" hardware (the
evdev keyboard, the RTC); ``fusd record --proxy`` serves a proxy of it and records
the session while ``evtest``/``hwclock`` use the proxy; then ``fusd emulate`` serves
the capture and the same client, run again against the emulation with the real
device gone, must print what it printed through the proxy.  A pty is the real
device every machine has (read/write/poll forwarding, no fusd on the other side).
The emulation rules themselves (cursors, ioctl matching and re-slicing, the
mismatch errno, timing) are tested on the loopback kernel, as an ordinary user.
"""

from __future__ import annotations

import contextlib
import errno
import os
import select
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Iterator, Tuple

import pytest
from conftest import ROOT, wait_for

import examples.input_device as gallery
from examples.rtc import Rtc
from fusd_runtime.emulate import EmulatedDevice, Op, OpenScript, Recording, load_recording
from fusd_runtime.ioctl import IOR
from fusd_runtime.proxy import ProxyDevice
from fusd_runtime.testing import serve

FUSE_ROOT = os.geteuid() == 0 and os.path.exists("/dev/fuse")
needs_mount = pytest.mark.skipif(not FUSE_ROOT, reason="needs root and /dev/fuse (the proxy and emulation are mounted)")


@contextlib.contextmanager
def fusd(word: str, *args: str) -> Iterator[subprocess.Popen]:
    """``fusd ARGS`` until its ready line (containing ``word``); stopped with Ctrl-C (SIGINT) at the end."""
    proc = subprocess.Popen([sys.executable, "-m", "fusd_runtime", *args], stderr=subprocess.PIPE, text=True,
                            cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        assert proc.stderr is not None
        line = proc.stderr.readline()
        assert word in line, f"not ready: {line}{proc.stderr.read() if proc.poll() is not None else ''}"
        yield proc
    finally:
        stop(proc, check=False)


def stop(proc: subprocess.Popen, check: bool = True) -> str:
    """Ctrl-C, as a user stops it (it unmounts); killed if it does not end."""
    if proc.poll() is not None:
        return ""
    proc.send_signal(signal.SIGINT)
    try:
        _, err = proc.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        _, err = proc.communicate()
    if check:
        assert proc.returncode == 0, err
    return err


@pytest.fixture
def dirs() -> Iterator[Tuple[str, str, Path]]:
    with tempfile.TemporaryDirectory() as a, tempfile.TemporaryDirectory() as b, \
            tempfile.TemporaryDirectory() as c:
        yield a, b, Path(c)
    # (the servers unmounted on SIGINT; a leftover mount would make the rmdir above fail loudly)


def evtest_until(path: str, done: threading.Event, timeout: float = 30) -> str:
    proc = subprocess.Popen(["evtest", path], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        done.wait(timeout)
        time.sleep(0.3)  # let it print what it read
    finally:
        proc.send_signal(signal.SIGINT)
        out = proc.communicate(timeout=15)[0]
    return out


@needs_mount
@pytest.mark.skipif(shutil.which("evtest") is None, reason="needs evtest")
def test_a_recorded_keyboard_replays_to_evtest(dirs: Tuple[str, str, Path]) -> None:
    proxy_dir, emu_dir, tmp = dirs
    capture = tmp / "kbd.pcapng"
    with serve(gallery.VirtualKeyboard(), "event0", backend="kernel", transport="fuse") as real:
        kb = real.device
        with fusd("proxying", "record", "--proxy", real.path, "--name", "kbd", "-o", str(capture),
                  "--transport", "fuse", "--mountpoint", proxy_dir) as rec:
            typed = threading.Event()

            def type_when_open() -> None:
                assert wait_for(lambda: kb.open_count == 1)  # evtest -> proxy -> the real keyboard
                time.sleep(0.3)
                kb.type_text("ab")
                assert wait_for(lambda: all(not c.queue for c in kb.clients.values()))
                typed.set()
            t = threading.Thread(target=type_when_open)
            t.start()
            through_proxy = evtest_until(os.path.join(proxy_dir, "kbd"), typed)
            t.join()
            stop(rec)
    assert "Event code 30 (KEY_A)" in through_proxy and "code 48 (KEY_B), value 1" in through_proxy

    with fusd("serving", "emulate", str(capture), "--name", "kbd", "--transport", "fuse", "--mountpoint",
              emu_dir) as emu:
        shown = threading.Event()
        shown.set()  # no live typing: the recorded events are there at once
        emulated = evtest_until(os.path.join(emu_dir, "kbd"), shown)
        err = stop(emu)
    assert "not in the recording" not in err, err
    # the same description and the same events, to the microsecond (the timestamps are the recorded ones)
    norm = [line.replace(proxy_dir, "DIR") for line in through_proxy.splitlines()
            if "Testing ..." not in line and line.strip()]
    norm_emu = [line.replace(emu_dir, "DIR") for line in emulated.splitlines()
                if "Testing ..." not in line and line.strip()]
    assert norm_emu == norm, "\n".join(norm_emu)
    assert sum("SYN_REPORT" in line for line in norm_emu) == 4


@needs_mount
@pytest.mark.skipif(shutil.which("hwclock") is None, reason="needs util-linux hwclock")
def test_a_recorded_rtc_replays_to_hwclock(dirs: Tuple[str, str, Path]) -> None:
    from test_gallery_rtc import hwclock, shown_time

    proxy_dir, emu_dir, tmp = dirs
    capture = tmp / "rtc.pcapng"
    offset = 5 * 365 * 86400.0
    with serve(Rtc(offset=offset), "rtc", backend="kernel", transport="fuse") as real:
        try:
            with fusd("proxying", "record", "--proxy", real.path, "--name", "rtc", "-o", str(capture),
                      "--transport", "fuse", "--mountpoint", proxy_dir) as rec:
                first = shown_time(hwclock(os.path.join(proxy_dir, "rtc"), "--show"))
                stop(rec)
        finally:
            real.device.stop()
    assert abs(first - (time.time() + offset)) < 10
    with fusd("serving", "emulate", str(capture), "--transport", "fuse", "--mountpoint", emu_dir) as emu:
        again = shown_time(hwclock(os.path.join(emu_dir, "rtc"), "--show"))  # select() woken as recorded
        stop(emu)
    assert abs(again - first) < 3  # the recorded RTC_RD_TIME answer, five years ahead of the host
    assert abs(again - time.time()) > 4 * 365 * 86400


def test_a_pty_through_the_proxy() -> None:
    """The proxy forwards read/write/poll (and blocking reads) to a real device: a pty."""
    import tty

    master, slave = os.openpty()
    tty.setraw(slave)
    proxy = ProxyDevice(os.ttyname(slave))
    try:
        with serve(proxy, "tty", backend="loopback", transport="fuse") as dev, dev.open() as f:
            assert f.write(b"AT\r") == 3
            assert os.read(master, 10) == b"AT\r"
            assert f.poll(select.POLLIN, 0) == 0
            threading.Timer(0.1, os.write, (master, b"OK\r\n")).start()
            assert f.poll(select.POLLIN, 30) & select.POLLIN  # the real fd became readable: a notification
            assert f.read(10) == b"OK\r\n"
            threading.Timer(0.1, os.write, (master, b"RING")).start()
            assert f.read(10) == b"RING"  # blocked in the proxy's watcher until the pty had data
            f.set_blocking(False)
            with pytest.raises(BlockingIOError):
                f.read(10)
    finally:
        proxy.stop()
        os.close(master)
        os.close(slave)


# ---------------------------------------------------------------------- the emulation rules (loopback)
EVIOCGNAME = lambda n: IOR("E", 0x06, n)  # noqa: E731  (EVIOCGNAME(len))


def _recording() -> Recording:
    reads = [Op("read", t=0.0, data=b"first-"), Op("read", t=0.0, data=b"second"),
             Op("read", t=0.0, error=errno.EAGAIN), Op("read", t=0.3, data=b"later")]
    ioctls = [Op("ioctl", cmd=EVIOCGNAME(256), data=b"recorded name\0" + bytes(242), result=14),
              Op("ioctl", cmd=IOR("X", 1, 4), data=struct.pack("<i", 1)),
              Op("ioctl", cmd=IOR("X", 1, 4), data=struct.pack("<i", 2))]
    return Recording("dev", opens=[OpenScript(ops=ioctls + reads)])


def test_emulation_cursors_reslicing_and_mismatches() -> None:
    device = EmulatedDevice(_recording(), mismatch_errno=errno.EPROTO)
    with serve(device, "dev", backend="loopback", transport="fuse") as dev:
        with dev.open(os.O_RDONLY) as a, dev.open(os.O_RDONLY | os.O_NONBLOCK) as b:
            # EVIOCGNAME(256) recorded, EVIOCGNAME(8) asked: cut to 8 bytes, the length with it
            buf = bytearray(8)
            assert a.ioctl(EVIOCGNAME(8), buf) == 8 and buf == b"recorded"
            assert a.ioctl(EVIOCGNAME(64), bytes(64))[:14] == b"recorded name\0"
            # the same command again: the next recorded answer, then the last one again
            assert [a.ioctl(IOR("X", 1, 4), bytes(4)) for _ in range(3)] == [struct.pack("<i", v) for v in (1, 2, 2)]
            with pytest.raises(OSError) as exc:
                a.ioctl(IOR("Y", 9, 4), bytes(4))  # never recorded: the configured errno, not an abort
            assert exc.value.errno == errno.EPROTO
            # reads re-sliced to the caller's size; each open has its own cursor
            assert a.read(3) == b"fir" and a.read(100) == b"st-" and a.read(100) == b"second"
            assert b.read(100) == b"first-"
            b.read(100)
            with pytest.raises(BlockingIOError):
                b.read(100)  # the recorded EAGAIN, for a non-blocking caller
            assert a.read(100) == b"later"  # a blocking caller skips it
            call = a.start_read(10)  # the recording is used up: blocks (at_end="block") until a signal
            dev.wait_for(lambda: any(c.waiting for c in [_cursor(device)] if c), what="the blocked read")
            assert call.interrupt()
            with pytest.raises(OSError) as exc:
                call.result(10)
            assert exc.value.errno == errno.EINTR
    assert any("never recorded" in m for m in device.mismatches)


def _cursor(device: EmulatedDevice) -> object:
    session = device.session
    ctxs = session.by_device.get(device, ()) if session is not None else ()
    return next((c.state for c in ctxs if c.state is not None and c.state.waiting), None)


def test_timing_delivers_reads_when_they_are_due() -> None:
    device = EmulatedDevice(_recording(), timing=True)
    with serve(device, "dev", backend="loopback", transport="fuse") as dev, dev.open(os.O_RDONLY | os.O_NONBLOCK) as f:
        assert f.read(100) == b"first-" and f.read(100) == b"second"
        with pytest.raises(BlockingIOError):
            f.read(100)  # the recorded EAGAIN
        with pytest.raises(BlockingIOError):
            f.read(100)  # "later" is recorded 0.3 s after the open: not yet
        assert f.poll(select.POLLIN, 30) & select.POLLIN  # woken when it is due
        assert f.read(100) == b"later"


def test_load_recording_refuses_what_it_cannot_read(tmp_path: Path) -> None:
    from fusd_runtime.emulate import RecordingError

    bad = tmp_path / "x.bin"
    bad.write_bytes(b"\x00\x01garbage")
    with pytest.raises(RecordingError) as exc:
        load_recording(str(bad))
    assert "neither a fusd capture" in str(exc.value)
    proc = subprocess.run([sys.executable, "-m", "fusd_runtime", "emulate", str(bad)], capture_output=True, text=True,
                          cwd=ROOT, timeout=60)
    assert proc.returncode == 1 and "fusd emulate: " in proc.stderr and "x.bin" in proc.stderr

