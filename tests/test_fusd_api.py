"""The FUSD-compatible procedural API and the ``fusd`` command, against the real kernel."""

from __future__ import annotations

import errno
import fcntl
import os
import subprocess
import sys
import threading
import time

import pytest
from conftest import needs_fuse

from fusd_runtime import Server, fusd
from fusd_runtime.ioctl import IOWR

pytestmark = needs_fuse


def test_register_read_write_ioctl_unregister(no_leftover_mounts) -> None:
    written = []
    ops = {
        "open": lambda file: 0 if file.device_info == "info" else -errno.EINVAL,
        "read": lambda file, length, offset: b"fusd says hi"[:length],
        "write": lambda file, data, offset: written.append(bytes(data)) or len(data),
        "ioctl": lambda file, cmd, arg: arg[::-1] if cmd == IOWR("f", 1, 4) else -errno.ENOTTY,
        "close": lambda file: written.append(b"closed"),
    }
    srv = Server()
    h = fusd.register("greeter", 0o644, ops, device_info="info", server=srv)
    assert h > 0 and fusd.register("greeter", 0o644, ops, server=srv) == -errno.EEXIST
    with srv:
        path = fusd.path(h)
        assert os.stat(path).st_mode & 0o777 == 0o644
        fd = os.open(path, os.O_RDWR)
        try:
            assert os.read(fd, 100) == b"fusd says hi"
            assert os.write(fd, b"abc") == 3
            assert fcntl.ioctl(fd, IOWR("f", 1, 4), b"1234") == b"4321"
            with pytest.raises(OSError) as exc:
                fcntl.ioctl(fd, IOWR("f", 2, 4), b"1234")
            assert exc.value.errno == errno.ENOTTY
        finally:
            os.close(fd)
        deadline = time.monotonic() + 10
        while b"closed" not in written and time.monotonic() < deadline:  # RELEASE comes after close()
            time.sleep(0.01)
        assert fusd.unregister(h) == 0 and fusd.unregister(h) == -errno.EBADF
    assert written == [b"abc", b"closed"]


def test_noreply_and_fusd_return_from_another_thread(no_leftover_mounts) -> None:
    pending = []

    def read(file, length, offset):
        pending.append(file)
        return -fusd.FUSD_NOREPLY

    srv = Server()
    h = fusd.register("later", 0o666, {"read": read}, server=srv)
    with srv:
        fd = os.open(fusd.path(h), os.O_RDONLY)
        try:
            def answer() -> None:
                while not pending:
                    threading.Event().wait(0.01)
                assert fusd.fusd_return(pending[0], b"answered later") == 0

            threading.Thread(target=answer).start()
            assert os.read(fd, 100) == b"answered later"
            pending.clear()
            threading.Thread(target=lambda: (threading.Event().wait(0.1), fusd.fusd_return(
                pending[0], -errno.EIO))).start()
            with pytest.raises(OSError) as exc:
                os.read(fd, 100)
            assert exc.value.errno == errno.EIO
        finally:
            os.close(fd)


def test_fusd_serve_command_serves_a_user_class(tmp_path, no_leftover_mounts) -> None:
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    mod = tmp_path / "mydev.py"
    mod.write_text("from fusd_runtime import Device\n"
                   "class Shout(Device):\n"
                   "    def write(self, ctx, data, offset):\n"
                   "        self.last = data.upper()\n"
                   "    def read(self, ctx, size, offset):\n"
                   "        return getattr(self, 'last', b'')[:size]\n")
    proc = subprocess.Popen([sys.executable, "-m", "fusd_runtime", "serve", "-f", f"{mod}:Shout", "--transport", "fuse",
                             "--mountpoint", str(mnt)], stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stderr.readline()
        assert "serving Shout" in line, line
        path = mnt / "shout"
        fd = os.open(path, os.O_RDWR)
        os.write(fd, b"quiet")
        assert os.read(fd, 10) == b"QUIET"
        os.close(fd)
        proc.terminate()
        assert proc.wait(timeout=20) == 0
        assert not os.path.exists(path)
    finally:
        proc.kill()
        proc.wait()
        proc.stderr.close()


def test_fusd_demo_runs_and_cleans_up(no_leftover_mounts) -> None:
    out = subprocess.run([sys.executable, "-m", "fusd_runtime", "demo", "--transport", "fuse", "--iterations",
                          "200"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    for expected in ("transport: fuse", "blocking read: woke", "poll: not ready at first; woke with POLLIN",
                     "-> 42; get -> 42", "latency", "nothing left mounted"):
        assert expected in out.stdout


def test_server_records_a_capture_the_decoder_reads(tmp_path, no_leftover_mounts) -> None:
    from fusd_runtime.examples import Hello
    cap = tmp_path / "session.pcapng"
    with Server(record=str(cap)) as srv:
        srv.add(Hello(b"recorded"), "hello")
        with open(srv.path("hello"), "rb") as f:
            assert f.read() == b"recorded"
    out = subprocess.run([sys.executable, "-m", "fusd_wire", "decode", str(cap)], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    for expected in ("opcode: INIT (26)", "opcode: LOOKUP (1)", "opcode: OPEN (14)", "opcode: READ (15)",
                     "opcode: RELEASE (18)"):
        assert expected in out.stdout
    assert "b'recorded'" in out.stdout or "recorded" in out.stdout
