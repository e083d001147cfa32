"""Runs one documentation code block as process 1 of its own pid and mount namespaces.

``tests/test_docs.py`` starts it with ``unshare --mount --propagation private --pid
--fork --mount-proc``.  Here, /tmp is a fresh tmpfs (a block may use /tmp/devs like
a reader would, without meeting another run's), the block runs in the page's work
directory with the project's interpreter and ``fusd`` first on PATH, and afterwards
anything it left behind — processes, FUSE mounts — is reported (then killed and
unmounted).  When this process exits the kernel ends whatever is still in the
namespace, so nothing a block does can outlive it.

    python doc_sandbox.py WORKDIR TIMEOUT RESULT.json python|sh SCRIPT
"""

from __future__ import annotations

import ctypes
import json
import os
import signal
import subprocess
import sys
import time

#: how long processes a block started may take to go away after it ends (a server seeing its unmount)
GRACE = 5.0


def _others() -> list:
    me = os.getpid()
    pids = [int(p) for p in os.listdir("/proc") if p.isdigit() and int(p) != me]
    return [p for p in pids if _state(p) != "Z"]


def _state(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0]
    except OSError:
        return "Z"


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return "?"


def _reap() -> None:
    try:
        while os.waitpid(-1, os.WNOHANG)[0] > 0:
            pass
    except ChildProcessError:
        pass


def _fuse_mounts() -> dict:
    """FUSE mounts of this namespace: mount id -> "mountpoint (type)"."""
    with open("/proc/self/mountinfo") as f:
        rows = [line.split() for line in f]
    out = {}
    for row in rows:
        fstype = row[row.index("-") + 1]
        if fstype.startswith(("fuse.", "fuseblk")) or fstype == "fuse":
            out[row[0]] = f"{row[4]} ({fstype})"
    return out


_libc = ctypes.CDLL(None, use_errno=True)
MS_BIND = 4096


def _private_tmp(workdir: str) -> None:
    """A fresh tmpfs on /tmp, keeping what the block needs from the old one (a venv or checkout under /tmp).

    CI's venv lives in /tmp: hiding it would hide the interpreter and ``fusd``.
    """
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    keep = sorted({p for p in (os.path.realpath(sys.prefix), os.path.realpath(here), os.path.realpath(workdir))
                   if p.startswith("/tmp/")})
    old = os.open("/tmp", os.O_RDONLY | os.O_DIRECTORY)
    try:
        subprocess.run(["mount", "-t", "tmpfs", "fusd-docs-tmp", "/tmp"], check=True)
        for path in keep:  # mount(2) itself: mount(8) would canonicalize the /proc/self/fd path to the new /tmp
            os.makedirs(path, exist_ok=True)
            source = f"/proc/self/fd/{old}/{os.path.relpath(path, '/tmp')}".encode()
            if _libc.mount(source, path.encode(), None, MS_BIND, None) != 0:
                raise OSError(ctypes.get_errno(), f"bind {path} into the private /tmp")
    finally:
        os.close(old)


def main(argv: list) -> int:
    workdir, timeout, result_path, lang, script = argv
    before = _fuse_mounts()  # the machine's own, copied into our namespace: not the block's
    _private_tmp(workdir)
    env = dict(os.environ, PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""))
    env.pop("PYTHONSAFEPATH", None)
    cmd = [sys.executable, script] if lang == "python" else ["bash", "-e", "-o", "pipefail", script]
    out_path = script + ".out"
    timed_out = False
    with open(out_path, "wb") as out:
        proc = subprocess.Popen(cmd, cwd=workdir, env=env, stdin=subprocess.DEVNULL, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
        try:
            status = proc.wait(float(timeout))
        except subprocess.TimeoutExpired:
            timed_out = True
            os.killpg(proc.pid, signal.SIGKILL)
            status = proc.wait()
    deadline = time.monotonic() + GRACE
    while _others() and time.monotonic() < deadline:
        _reap()
        time.sleep(0.05)
    leftovers = [f"{p}: {_cmdline(p)}" for p in _others()]
    for p in _others():
        try:
            os.kill(p, signal.SIGKILL)
        except OSError:
            pass
    _reap()
    mounts = [where for mount_id, where in _fuse_mounts().items() if mount_id not in before]
    with open(out_path, "rb") as f:
        output = f.read().decode(errors="replace")
    with open(result_path, "w") as f:
        json.dump({"status": status, "timed_out": timed_out, "output": output[-6000:],
                   "leftover_processes": leftovers, "leftover_mounts": mounts}, f)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
