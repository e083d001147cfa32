"""What ``fusd bench`` points its client at: server processes (fusd, references) and kernel floors.

Every server runs in its own process, in its own session, pinned as the
placement mode asks, and keeps the contract of ``bench_refs/README.md``: it
prints ``READY dev0=PATH [name=PATH ...] readers=N`` once it serves, exits 3 after
a ``SKIP: reason`` line when it cannot run here, and stops (unmounting) on
SIGTERM.  fusd's ``perfserver`` keeps the same contract, so one class,
:class:`ServerProcess`, starts, waits for and stops all of them, and whatever
is left (a mount, a process) is cleaned up on every way out.
"""

from __future__ import annotations

import os
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from typing import Dict, List, Optional, Sequence

from .bench_refs import EXIT_SKIP


class Unavailable(RuntimeError):
    """A server cannot run here (its SKIP line), or failed to start; the message says which and why."""

    def __init__(self, message: str, skipped: bool) -> None:
        super().__init__(message)
        self.skipped = skipped


class ServerProcess:
    """One server process under the bench contract; a context manager.

    Args:
        name: how the report calls it.
        argv: the command; for FUSE the mount point is appended (a fresh directory).
        transport: ``fuse`` (a mount point is made and removed) or ``cuse``.
        cpu: pin the process (and its threads) to this CPU; None: unpinned.
        timeout: seconds to wait for READY (and for a CUSE node to appear).
        cuse_name: for CUSE, the device name appended to ``argv``.
    """

    def __init__(self, name: str, argv: Sequence[str], *, transport: str = "fuse", cpu: Optional[int] = None,
                 timeout: float = 20.0, cuse_name: Optional[str] = None) -> None:
        self.name, self.argv, self.transport, self.cpu, self.timeout = name, list(argv), transport, cpu, timeout
        self.cuse_name = cuse_name
        self.proc: Optional[subprocess.Popen[str]] = None
        self.mountpoint: Optional[str] = None
        self.paths: Dict[str, str] = {}
        self.readers = 0
        self._stderr: Optional[object] = None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def __enter__(self) -> ServerProcess:
        try:
            self._start()
        except BaseException:
            self.__exit__()
            raise
        return self

    def _start(self) -> None:
        argv = list(self.argv)
        if self.transport == "fuse":
            self.mountpoint = tempfile.mkdtemp(prefix=f"fusd-bench-{self.name}-")
            argv.append(self.mountpoint)
        elif self.cuse_name:
            argv.append(self.cuse_name)
        cpu = self.cpu
        pre = (lambda: os.sched_setaffinity(0, {cpu})) if cpu is not None else None
        err = tempfile.TemporaryFile(mode="w+")
        self._stderr = err
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=err, text=True,
                                     preexec_fn=pre, start_new_session=True)
        line = self._read_ready()
        if line is None or not line.startswith("READY"):
            code = self.proc.poll()
            if line == "" and code is None:  # end of its stdout: it is exiting
                try:
                    code = self.proc.wait(5)
                except subprocess.TimeoutExpired:
                    pass
            text = self._stderr_text()
            skip = [x[5:].strip() for x in text.splitlines() if x.startswith("SKIP:")]
            if code == EXIT_SKIP and skip:
                raise Unavailable(skip[0], skipped=True)
            tail = " / ".join(text.strip().splitlines()[-3:])
            why = f"exit status {code}" if code is not None else f"no READY line within {self.timeout:g} s"
            raise Unavailable(f"did not start ({why}){': ' + tail if tail else ''}", skipped=False)
        fields = dict(kv.split("=", 1) for kv in line.split()[1:] if "=" in kv)
        self.readers = int(fields.pop("readers", "0") or 0)
        self.paths = fields
        if "dev0" not in self.paths:
            raise Unavailable(f"its READY line names no dev0: {line.strip()!r}", skipped=False)
        deadline = time.monotonic() + self.timeout
        while not os.path.exists(self.paths["dev0"]):  # a CUSE node may appear just after READY
            if time.monotonic() > deadline:
                raise Unavailable(f"{self.paths['dev0']} did not appear", skipped=False)
            time.sleep(0.01)

    def _read_ready(self) -> Optional[str]:
        """The first line of its stdout ("" at end of file), None if none came within the timeout."""
        assert self.proc is not None and self.proc.stdout is not None
        sel = selectors.DefaultSelector()
        sel.register(self.proc.stdout, selectors.EVENT_READ)
        try:
            if sel.select(self.timeout):
                return self.proc.stdout.readline()  # the line comes whole (one flushed printf)
            return None
        finally:
            sel.close()

    def _stderr_text(self) -> str:
        err = self._stderr
        if err is None:
            return ""
        try:
            err.seek(0)  # type: ignore[attr-defined]
            return str(err.read())  # type: ignore[attr-defined]
        except (OSError, ValueError):
            return ""

    def __exit__(self, *exc: object) -> None:
        proc = self.proc
        if proc is not None:
            if proc.poll() is None:
                try:
                    os.kill(proc.pid, signal.SIGTERM)  # the contract: unmount, exit 0
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)  # its own session: the group is its own
                    proc.wait()
                except ProcessLookupError:
                    pass
            if proc.stdout is not None:
                proc.stdout.close()
            self.proc = None
        if self._stderr is not None:
            self._stderr.close()  # type: ignore[attr-defined]
            self._stderr = None
        if self.mountpoint:
            if is_mountpoint(self.mountpoint):
                lazy_unmount(self.mountpoint)
            try:
                os.rmdir(self.mountpoint)
            except OSError:
                pass
            self.mountpoint = None


def is_mountpoint(path: str) -> bool:
    """``path`` is mounted (from /proc/self/mountinfo, never a stat that could hang)."""
    with open("/proc/self/mountinfo") as f:
        return any(line.split()[4] == path for line in f)


def lazy_unmount(path: str) -> None:
    """Detach a mount a server left behind (umount -l as root, else fusermount3 -u -z)."""
    from .mount import umount
    try:
        umount(path)
    except OSError:
        if shutil.which("fusermount3"):
            subprocess.run(["fusermount3", "-u", "-z", "-q", path], capture_output=True)


#: runs this very fusd_runtime's perfserver: ``python -m`` would put the working directory first on
#: sys.path, and a bench started inside another checkout would measure that checkout's server
_PERFSERVER = ("import sys; sys.path.insert(0, sys.argv.pop(1)); "
               "from fusd_runtime.perfserver import main; sys.exit(main())")


def fusd_argv(*, device: Optional[str], transport: str, readers: Optional[int]) -> List[str]:
    """The perfserver command: ``dev0`` (PerfFile or ``device``), ``pipe0`` and ``counter0``.

    The server imports the same ``fusd_runtime`` as this bench; ``--device`` modules
    are still found in the working directory.
    """
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    argv = [sys.executable, "-c", _PERFSERVER, here, "--pipe", "--transport", transport]
    if readers is not None:  # else the server's default: 2, or 1 when pinned to one CPU
        argv += ["--readers", str(readers)]
    if device:
        argv += ["--device", device]
    return argv


class Floors:
    """The kernel-only targets: ``/dev/null``, ``/dev/zero``, a 64 KiB tmpfs file, a pipe (``-``)."""

    def __enter__(self) -> Floors:
        base = "/dev/shm" if os.path.isdir("/dev/shm") else None
        fd, self.tmpfile = tempfile.mkstemp(prefix="fusd-bench-", dir=base)
        os.write(fd, b"a" * 65536)
        os.close(fd)
        self.targets = {"null": "/dev/null", "zero": "/dev/zero", "tmpfs": self.tmpfile, "pipe": "-"}
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            os.unlink(self.tmpfile)
        except OSError:
            pass
