"""umockdev and evemu recordings served by fusd emulate, to clients umockdev cannot reach.

The files in tests/data/interop/ were made by the unmodified tools
(``tools/make_interop_samples.py``, in the CUSE guest): ``umockdev-record`` of
``evemu-describe`` (kbd.ioctl) and of ``evtest`` (kbd.events, kbd.script, with
evtest's own output in evtest-umockdev.txt), and ``evemu-record`` (kbd.evemu), all
of the gallery keyboard while "hi" was typed.  Served again by ``fusd emulate``,
``evtest`` must print what it printed then, and a statically linked client
(busybox, which no LD_PRELOAD reaches) must read the recorded events.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Iterator, List

import pytest
from conftest import ROOT

from fusd_runtime.emulate import EmulatedDevice, load_recording
from fusd_runtime.emulate.evemu import INPUT_EVENT
from fusd_runtime.emulate.evemu import parse as parse_evemu
from fusd_runtime.emulate.umockdev import parse_ioctl_file, parse_script_file, unescape
from fusd_runtime.ioctl import IOR
from fusd_runtime.testing import serve

DATA = Path(ROOT) / "tests" / "data" / "interop"
FUSE_ROOT = os.geteuid() == 0 and os.path.exists("/dev/fuse")
EV_SYN, EV_KEY, EV_LED, EV_REP = 0, 1, 0x11, 0x14
KEY_H, KEY_I = 35, 23
TYPED = [(EV_KEY, KEY_H, 1), (EV_SYN, 0, 0), (EV_KEY, KEY_H, 0), (EV_SYN, 0, 0),
         (EV_KEY, KEY_I, 1), (EV_SYN, 0, 0), (EV_KEY, KEY_I, 0), (EV_SYN, 0, 0)]


def events(data: bytes) -> List[tuple]:
    return [INPUT_EVENT.unpack_from(data, i)[2:] for i in range(0, len(data) - len(data) % 24, 24)]


# ---------------------------------------------------------------------- the formats
def test_umockdev_ioctl_file() -> None:
    ops, dev = parse_ioctl_file((DATA / "kbd.ioctl").read_text(), "kbd.ioctl")
    assert dev == "/dev/fusd-kbd-rec"
    by_cmd = {op.cmd: op for op in ops}
    name = by_cmd[IOR("E", 0x06, 255)]  # EVIOCGNAME(0) with 255 bytes of data (libevdev's): the size is the data's
    assert name.data.rstrip(b"\0") == b"fusd virtual keyboard" and name.result == 22
    keys = by_cmd[IOR("E", 0x20 + EV_KEY, 96)]  # EVIOCGBIT(1): EV_KEY's 96-byte code bitmap
    assert keys.data[KEY_H // 8] & (1 << KEY_H % 8)
    assert by_cmd[IOR("E", 0x03, 8)].data == struct.pack("<2I", 250, 33)  # EVIOCGREP
    assert by_cmd[IOR("E", 0x02, 8)].data == struct.pack("<4H", 6, 0x1D6B, 0x104, 1)  # EVIOCGID


def test_umockdev_script_escapes() -> None:
    assert unescape(b"a^@b^J^`c^^") == b"a\0b\n^c\x1e"
    ops = parse_script_file((DATA / "kbd.script").read_bytes(), "kbd.script")
    reads = b"".join(op.data for op in ops if op.kind == "read")
    assert events(reads) == TYPED


def test_evemu_file() -> None:
    desc, evs = parse_evemu((DATA / "kbd.evemu").read_text(), "kbd.evemu")
    assert desc.name == "fusd virtual keyboard" and desc.ident == (6, 0x1D6B, 0x104, 1)
    assert [(t, c, v) for _, t, c, v in evs] == TYPED
    ops = desc.ioctls()
    types = next(op for op in ops if op.cmd == IOR("E", 0x20, 8)).data  # EVIOCGBIT(0): the event types
    assert [t for t in range(32) if types[t // 8] & (1 << t % 8)] == [EV_SYN, EV_KEY, EV_LED, EV_REP]


def test_bad_files_name_the_line() -> None:
    from fusd_runtime.emulate import RecordingError

    with pytest.raises(RecordingError) as exc:
        parse_ioctl_file("EVIOCGID 0 0600\nFROBNICATE 0 00\n", "x.ioctl")
    assert "x.ioctl:2" in str(exc.value) and "FROBNICATE" in str(exc.value)
    with pytest.raises(RecordingError) as exc:
        parse_ioctl_file("USBDEVFS_REAPURB 0 1 2 3 4 5 6 7\n", "usb.ioctl")
    assert "not supported" in str(exc.value) or "not an umockdev" in str(exc.value)
    with pytest.raises(RecordingError):
        parse_evemu("E: 1.5 zz 0001 1\n", "bad.evemu")


# ---------------------------------------------------------------------- served (loopback: no root)
@pytest.mark.parametrize("files", [["kbd.ioctl", "kbd.events"], ["kbd.ioctl", "kbd.script"], ["kbd.evemu"]])
def test_recordings_on_the_loopback(files: List[str]) -> None:
    rec = load_recording([str(DATA / f) for f in files])
    with serve(EmulatedDevice(rec), "kbd", backend="loopback", transport="fuse") as dev, dev.open(os.O_RDONLY) as f:
        name = f.ioctl(IOR("E", 0x06, 64), bytes(64))  # another size than recorded: re-sliced
        assert name.rstrip(b"\0") == b"fusd virtual keyboard"
        got = b""
        while len(got) < 8 * 24:
            got += f.read(24 * 64)
        assert events(got) == TYPED


# ---------------------------------------------------------------------- served to unmodified clients
@contextlib.contextmanager
def emulating(*files: str) -> Iterator[str]:
    """``fusd emulate FILES`` on a FUSE mount; yields the device path; Ctrl-C at the end."""
    mnt = tempfile.mkdtemp(prefix="fusd-interop-")
    proc = subprocess.Popen([sys.executable, "-m", "fusd_runtime", "emulate", *files, "--transport", "fuse",
                             "--mountpoint", mnt], stderr=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        assert proc.stderr is not None
        line = proc.stderr.readline()
        assert "serving at" in line, line + (proc.stderr.read() if proc.poll() is not None else "")
        yield line.split("serving at ")[1].split(" (")[0]
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
        os.rmdir(mnt)  # fails if the mount were left


def evtest(path: str) -> List[str]:
    proc = subprocess.Popen(["evtest", path], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    time.sleep(2)
    proc.send_signal(signal.SIGINT)
    out = proc.communicate(timeout=30)[0]
    return _described(out.splitlines())


def _described(lines: List[str]) -> List[str]:
    """evtest's description and events, without its grab warning box: EVIOCGRAB's argument is a value,
    which a FUSE file cannot take (EFAULT; the recording was made on a CUSE node, where grabbing works)."""
    out, box = [], False
    for line in lines:
        if "*****" in line:
            box = not box
            continue
        if not box and line.startswith(("Input", "  ", "Event:", "Properties")):
            out.append(line)
    return out


needs_evtest = pytest.mark.skipif(shutil.which("evtest") is None, reason="needs evtest")
needs_mount = pytest.mark.skipif(not FUSE_ROOT, reason="needs root and /dev/fuse")


@needs_mount
@needs_evtest
@pytest.mark.parametrize("files", [["kbd.ioctl", "kbd.events"], ["kbd.ioctl", "kbd.script"]])
def test_umockdev_recordings_give_evtest_its_recorded_session(files: List[str]) -> None:
    reference = _described((DATA / "evtest-umockdev.txt").read_text().splitlines())
    with emulating(*(str(DATA / f) for f in files)) as path:
        got = evtest(path)
    if files[1] == "kbd.script":  # evtest's run under --script read different key times
        got = [line for line in got if not line.startswith("Event:")]
        reference = [line for line in reference if not line.startswith("Event:")]
    assert got == reference


@needs_mount
@needs_evtest
def test_an_evemu_file_gives_evtest_the_device_and_its_events() -> None:
    with emulating(str(DATA / "kbd.evemu")) as path:
        got = evtest(path)
    assert 'Input device name: "fusd virtual keyboard"' in got
    assert "Input device ID: bus 0x6 vendor 0x1d6b product 0x104 version 0x1" in got
    assert "    Event code 35 (KEY_H)" in got and "  Event type 17 (EV_LED)" in got
    assert sum("code 23 (KEY_I), value" in line for line in got) == 2


@needs_mount
@pytest.mark.skipif(shutil.which("busybox") is None, reason="needs busybox (static: Debian busybox-static)")
def test_a_static_client_reads_the_umockdev_recording() -> None:
    """busybox is statically linked: umockdev's LD_PRELOAD cannot reach it; a device file can."""
    with emulating(str(DATA / "kbd.ioctl"), str(DATA / "kbd.events")) as path:
        out = subprocess.run(["busybox", "od", "-A", "n", "-v", "-t", "x1", "-N", str(8 * 24), path],
                             capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    raw = bytes(int(b, 16) for b in out.stdout.split())
    assert events(raw) == TYPED
