"""The unmount watchdog (``fusd_runtime.mount``) starts lean, and still unmounts.

The watchdog is a second interpreter started at mount time, on the server's CPU
when the server is pinned; what it does before it blocks on its pipe is CPU taken
from the first requests (issue 18: a client starting right after the mount lost
~2 µs per call over its first 10,000 calls).  So it must block before importing
anything heavy: ctypes (and ctypes.util's subprocess/re/shutil) is only needed to
unmount.  That it unmounts after a SIGKILL is tested in test_runtime_fuse.py and
test_unprivileged.py.
"""

from __future__ import annotations

import os

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
