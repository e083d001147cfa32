"""Shared fixtures: real kernel round trips need root and /dev/fuse; nothing may be left mounted."""

from __future__ import annotations

import os
import pathlib
import shutil
import stat
import subprocess
import sys
import tempfile
import textwrap
import time
from typing import Callable

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)


def wait_for(predicate: Callable[[], bool], timeout: float = 15.0) -> bool:
    """Poll ``predicate`` until it holds or ``timeout`` passes; its last value (no sleeps in tests)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.01)
    return predicate()


def client(code: str, *args: str, timeout: float = 30, check: bool = True,
           isolated: bool = False) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh Python process: a real, separate client of the device.

    ``isolated`` skips the site import (``-S``): ~10x faster startup in the CUSE guest.
    """
    flags = ["-S"] if isolated else []
    proc = subprocess.run([sys.executable, *flags, "-c", textwrap.dedent(code), *args], capture_output=True,
                          text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"client failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


#: A client that blocks in read() on argv[1]; SIGUSR1's handler raises, so it prints "interrupted".
BLOCKED_READER = """
import os, signal, sys
class Interrupted(Exception):
    pass
def handler(sig, frame):
    raise Interrupted()
signal.signal(signal.SIGUSR1, handler)
fd = os.open(sys.argv[1], os.O_RDONLY)
print("ready", flush=True)
try:
    os.read(fd, 100)
    print("read returned")
except Interrupted:
    print("interrupted")
"""


#: A client that writes 100 bytes to argv[1]; SIGUSR1 interrupts the write (no restart): prints what write() returned.
INTERRUPTED_WRITER = """
import os, signal, sys
signal.signal(signal.SIGUSR1, lambda *a: None)
signal.siginterrupt(signal.SIGUSR1, True)
fd = os.open(sys.argv[1], os.O_WRONLY)
print("ready", flush=True)
print(os.write(fd, b"x" * 100))
"""


def line_with(stream, needle: str, max_lines: int = 20) -> str:
    """The first line of ``stream`` (a program's stderr, say) that contains ``needle``; '' if none comes."""
    for _ in range(max_lines):
        line = stream.readline()
        if not line or needle in line:
            return line
    return ""


def fuse_available() -> bool:
    return os.path.exists("/dev/fuse") and os.geteuid() == 0


needs_fuse = pytest.mark.skipif(not fuse_available(), reason="needs root and /dev/fuse (kernel FUSE tier)")


def _our_mounts() -> set:
    """Mount points this test process mounted that are still mounted (other processes' are theirs)."""
    from fusd_runtime.mount import Mount, is_mounted
    return {m for m in Mount.history if is_mounted(m)}


@pytest.fixture
def no_leftover_mounts():
    """Fails the test if it leaves a mount of its own behind."""
    before = _our_mounts()
    yield
    after = _our_mounts() - before
    assert not after, f"test left mounts behind: {after}"


def uring_skip_reason() -> str:
    """Why the FUSE-over-io_uring transport cannot be tested here ('' if it can)."""
    if not fuse_available():
        return "needs root and /dev/fuse (kernel FUSE tier)"
    from fusd_runtime.uring import enable_uring_parameter
    if enable_uring_parameter() is None:
        return "the kernel has no FUSE-over-io_uring (no /sys/module/fuse/parameters/enable_uring)"
    return ""


def start_server(transport: str = "fuse", **kwargs):
    """A started Server; for "uring" with enable_uring Y while it starts (restored right after:
    the connection keeps io_uring), and checked to really serve through the rings."""
    from fusd_runtime import Server
    srv = Server(transport=transport, **kwargs)
    if transport == "uring":
        from fusd_runtime.uring import uring_enabled
        with uring_enabled():
            srv.start()
        if srv.transport != "uring":
            srv.stop()
            raise AssertionError("the kernel offered no FUSE-over-io_uring although enable_uring was Y")
    else:
        srv.start()
    return srv


@pytest.fixture(params=["fuse", "uring"])
def server(request, no_leftover_mounts):
    """A started FUSE Server in a temp dir, once per channel (read/write, io_uring); stopped
    (and unmounted) after the test."""
    if not fuse_available():
        pytest.skip("needs root and /dev/fuse (kernel FUSE tier)")
    if request.param == "uring" and uring_skip_reason():
        pytest.skip(uring_skip_reason())
    srv = start_server(request.param)
    try:
        yield srv
    finally:
        srv.stop()


#: the unprivileged user of the fusermount3 tests, and an interpreter outside /root it can run
NOBODY = 65534
SYSTEM_PYTHON = "/usr/bin/python3"


@pytest.fixture
def nobody_env():
    """A mountpoint owned by nobody and an environment in which nobody can import our packages."""
    # Not pytest's tmp_path: its parent /tmp/pytest-of-root is 0700, closed to nobody.
    tmp_path = pathlib.Path(tempfile.mkdtemp(prefix="fusd-nobody-"))
    mode = os.stat("/dev/fuse").st_mode
    os.chmod("/dev/fuse", 0o666)
    site = tmp_path / "site"
    import construct
    shutil.copytree(os.path.dirname(construct.__file__), site / "construct")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    for pkg in ("fusd_wire", "fusd_runtime"):
        shutil.copytree(os.path.join(root, pkg), site / pkg, ignore=shutil.ignore_patterns("__pycache__"))
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    os.chown(mnt, NOBODY, NOBODY)
    os.chmod(tmp_path, 0o755)
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(site), "HOME": "/", "PYTHONDONTWRITEBYTECODE": "1"}
    try:
        yield str(mnt), env
    finally:
        os.chmod("/dev/fuse", stat.S_IMODE(mode))
        subprocess.run(["fusermount3", "-u", "-z", "-q", str(mnt)], stderr=subprocess.DEVNULL)
        shutil.rmtree(tmp_path, ignore_errors=True)
