"""The unmount watchdog (``fusd_runtime.mount``) starts lean, and still unmounts.

The watchdog is a second interpreter started at mount time, on the server's CPU
when the server is pinned; what it does before it blocks on its pipe is CPU taken
from the first requests (issue 18: a client starting right after the mount lost
~2 µs per call over its first 10,000 calls).  So it must block before importing
anything heavy (ctypes, and ctypes.util's subprocess/re/shutil, is only needed to
unmount), and the mount waits until it has started.  That it unmounts after a
SIGKILL is tested in test_runtime_fuse.py and test_unprivileged.py.
"""

from __future__ import annotations

import os
import signal

from conftest import needs_fuse, wait_for

from fusd_runtime.mount import Mount, is_mounted

pytestmark = needs_fuse


def _blocked_on_its_pipe(pid: int) -> bool:
    with open(f"/proc/{pid}/wchan") as f:
        return "pipe" in f.read()  # pipe_read (6.1) / anon_pipe_read (6.18)


def test_watchdog_blocks_without_loading_ctypes_and_unmounts_on_close(tmp_path) -> None:
    mnt = str(tmp_path)
    mount = Mount(mnt)
    try:
        proc = mount._watch_proc
        assert proc is not None, "root mounts get a watchdog"
        assert wait_for(lambda: _blocked_on_its_pipe(proc.pid)), "the watchdog never blocked on its pipe"
        with open(f"/proc/{proc.pid}/maps") as f:
            maps = f.read()
        assert "_ctypes" not in maps, "the watchdog loaded ctypes before it had anything to unmount"
        assert is_mounted(mnt)
    finally:
        mount.close()
    assert not is_mounted(mnt)
    assert proc.poll() is not None, "close() reaps the watchdog"
    assert os.listdir(mnt) == []


def test_the_mount_returns_once_the_watchdog_has_started(tmp_path) -> None:
    """Its start-up is over before anything is served: it already ignores the terminal's signals.

    The watchdog sets SIGINT/SIGTERM/SIGHUP/SIGQUIT to SIG_IGN first thing, then tells the
    mount it is up; a mount that did not wait returns while it is still a bare exec.
    """
    mount = Mount(str(tmp_path))
    try:
        proc = mount._watch_proc
        assert proc is not None
        with open(f"/proc/{proc.pid}/status") as f:
            ignored = int(next(line for line in f if line.startswith("SigIgn:")).split()[1], 16)
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT):
            assert ignored & (1 << (sig - 1)), f"the watchdog was not up yet when the mount returned ({sig!r})"
    finally:
        mount.close()
    assert not is_mounted(str(tmp_path))
