"""A server run by an ordinary user mounts through fusermount3 (SCM_RIGHTS) and cleans up.

These machines ship /dev/fuse as 0600 (distributions make it 0666) and fusermount3
opens it with the caller's rights, so the test opens it up as root first, as the
issue says.  The unprivileged processes use the system interpreter with a copy of
construct, because the development interpreter lives under /root.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import textwrap

import pytest
from conftest import NOBODY, SYSTEM_PYTHON, fuse_available

pytestmark = pytest.mark.skipif(
    not (fuse_available() and shutil.which("fusermount3") and os.path.exists(SYSTEM_PYTHON)),
    reason="needs root (to set up), /dev/fuse, fusermount3 (fuse3 package) and /usr/bin/python3")

SERVER = """
import os, sys
from fusd_runtime import Server
from fusd_runtime.examples import PipeDevice, Hello
srv = Server(sys.argv[1])
srv.add(Hello(b"hello from nobody"), "hello")
srv.add(PipeDevice(), "pipe")
def ready():
    print("method", srv.mount.method, flush=True)
srv.serve_forever(ready=ready)
print("clean exit", flush=True)
"""

CLIENT = """
import os, sys
mnt = sys.argv[1]
print(open(os.path.join(mnt, "hello"), "rb").read().decode())
fd = os.open(os.path.join(mnt, "pipe"), os.O_RDWR)
os.write(fd, b"through the pipe")
print(os.read(fd, 100).decode())
"""


def _mounted(path: str) -> bool:
    with open("/proc/mounts") as f:
        return any(line.split()[1] == path for line in f)


def test_unprivileged_server_mounts_with_fusermount3(nobody_env) -> None:
    mnt, env = nobody_env
    proc = subprocess.Popen([SYSTEM_PYTHON, "-c", textwrap.dedent(SERVER), mnt], user=NOBODY, group=NOBODY,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        assert line.strip() == "method fusermount", line + proc.stderr.read() if proc.poll() is not None else line
        assert _mounted(mnt)
        out = subprocess.run([SYSTEM_PYTHON, "-c", textwrap.dedent(CLIENT), mnt], user=NOBODY, group=NOBODY,
                             env=env, capture_output=True, text=True, timeout=30)
        assert out.stdout.split("\n")[:2] == ["hello from nobody", "through the pipe"], out.stderr
        proc.terminate()
        assert "clean exit" in proc.communicate(timeout=20)[0]
        assert not _mounted(mnt)
    finally:
        proc.kill()
        proc.wait()


def test_unprivileged_server_killed_leaves_no_mount(nobody_env) -> None:
    mnt, env = nobody_env
    proc = subprocess.Popen([SYSTEM_PYTHON, "-c", textwrap.dedent(SERVER), mnt], user=NOBODY, group=NOBODY,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        assert proc.stdout.readline().strip() == "method fusermount"
        assert _mounted(mnt)
        proc.kill()
        proc.wait(timeout=10)
        import time
        deadline = time.monotonic() + 15
        while _mounted(mnt) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not _mounted(mnt), "fusermount3's auto_unmount must clean up"
    finally:
        proc.kill()
        proc.wait()
