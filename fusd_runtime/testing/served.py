"""Serve one device for one test: on the real kernel where the machine allows it, else on the loopback.

    from fusd_runtime.testing import serve

    with serve(Mailbox(), "mailbox") as dev:          # backend/transport "auto"
        with dev.open(os.O_RDWR) as f:
            f.write(b"hi")
            assert f.read(10) == b"hi"

Two choices make a backend:

- ``transport``: "fuse" (a file of a FUSE mount; restricted ioctls) or "cuse" (a
  character device node; unrestricted ioctls that follow pointers).
- ``backend``: "kernel" (the real kernel: a FUSE mount in a temporary directory,
  or a ``/dev`` node through CUSE) or "loopback" (``fusd_runtime.loopback``: the
  real session on a socketpair, no root, no /dev/fuse).

"auto" picks, in this order: CUSE on the kernel where ``/dev/cuse`` exists and
we are root; FUSE on the kernel where ``/dev/fuse`` can be mounted (root, or
``fusermount3``) and the device's declared ioctls fit FUSE; else the loopback,
with CUSE if the device declares ioctls only CUSE can serve (pointers, flexible
arrays, tty numbers), FUSE otherwise.  An explicit choice the machine cannot
honour raises :class:`Unavailable` (the pytest plugin turns it into a skip).

Every device is recorded (a ``fusd_wire.trace.Recorder`` on a memory buffer):
``trace()`` decodes what it saw, which the plugin prints when a test fails.
Teardown stops the server, which unmounts (every exit path) or removes the node;
``close()`` then checks that the mount is really gone.
"""

from __future__ import annotations

import errno
import io
import itertools
import os
import shutil
import subprocess
import sys
import time
from typing import Any, Dict, List, Optional, Sequence, Union

from ..cuse import CuseServer, cuse_available
from ..device import Device
from ..ioctl import check_ioctls
from ..loopback import Credentials, LoopbackKernel, Region
from ..mount import is_mounted
from ..server import Server
from .client import Buffer, DeviceFile, LoopFile, OsFile

BACKENDS = ("loopback", "kernel")
TRANSPORTS = ("fuse", "cuse")
_names = itertools.count()


class Unavailable(RuntimeError):
    """The backend or transport asked for cannot run here (the message says why)."""


def fuse_kernel_available() -> Optional[str]:
    """None if a FUSE mount can be made here, else why not."""
    if not os.path.exists("/dev/fuse"):
        return "no /dev/fuse (no FUSE in this kernel or container)"
    if os.geteuid() != 0:
        if shutil.which("fusermount3") is None:
            return "not root and no fusermount3 (package fuse3)"
        if not os.access("/dev/fuse", os.R_OK | os.W_OK):
            return "not root and /dev/fuse is not read-writable"
    return None


def cuse_kernel_available() -> Optional[str]:
    """None if a CUSE node can be made here, else why not."""
    if not cuse_available():
        return "needs /dev/cuse (a kernel with CONFIG_CUSE) and root"
    return None


def needs_cuse(device: Device) -> Optional[str]:
    """Why FUSE cannot serve ``device``'s declared ioctls (None: it can)."""
    try:
        check_ioctls(device, "fuse")
    except ValueError as exc:
        return str(exc)
    return None


def choose(device: Device, backend: str = "auto", transport: str = "auto") -> tuple:
    """``(backend, transport)`` for ``device`` here (see the module doc); :class:`Unavailable` if impossible."""
    if backend not in ("auto",) + BACKENDS:
        raise ValueError(f"backend must be 'auto', 'loopback' or 'kernel', not {backend!r}")
    if transport not in ("auto",) + TRANSPORTS:
        raise ValueError(f"transport must be 'auto', 'fuse' or 'cuse', not {transport!r}")
    cuse_only = needs_cuse(device)
    if transport == "fuse" and cuse_only:
        raise Unavailable(f"the device cannot be served over FUSE: {cuse_only}")
    if backend == "loopback":
        return "loopback", transport if transport != "auto" else ("cuse" if cuse_only else "fuse")
    reasons: Dict[str, Optional[str]] = {"cuse": cuse_kernel_available(), "fuse": fuse_kernel_available()}
    if cuse_only:
        reasons["fuse"] = cuse_only
    wanted = [transport] if transport != "auto" else ["cuse", "fuse"]
    for t in wanted:
        if reasons[t] is None:
            return "kernel", t
    if backend == "kernel":
        raise Unavailable("no kernel transport here: " + "; ".join(f"{t}: {reasons[t]}" for t in wanted))
    return "loopback", transport if transport != "auto" else ("cuse" if cuse_only else "fuse")


class ServedDevice:
    """A device being served for a test (see :func:`serve`).

    Attributes:
        device: the Device object (its state is the test's to inspect).
        name: its name (FUSE: the file's name under the mount; CUSE: the node's, under /dev).
        backend: "kernel" or "loopback"; ``transport``: "fuse" or "cuse".
        kernel: the LoopbackKernel (loopback), else None; ``server``: the Server/CuseServer (kernel).
    """

    def __init__(self, device: Device, name: str, backend: str, transport: str, *, mode: Optional[int] = None,
                 timeout: float = 30.0, minor: Optional[int] = None) -> None:
        from fusd_wire.trace import Recorder

        self.device = device
        self.name = name
        self.backend = backend
        self.transport = transport
        self._buffer = io.BytesIO()
        self.recorder = Recorder(self._buffer)
        self.kernel: Optional[LoopbackKernel] = None
        self.server: Any = None
        self._files: List[DeviceFile] = []
        self._closed = False
        if backend == "loopback":
            kw: Dict[str, Any] = {} if minor is None else {"minor": minor}
            self.kernel = LoopbackKernel(transport, timeout=timeout, recorder=self.recorder, **kw)
            self.kernel.add(device, name, mode=mode)
            self.kernel.start()
        elif transport == "cuse":
            if os.path.lexists("/dev/" + name):
                raise FileExistsError(errno.EEXIST, f"/dev/{name} exists: a CUSE node needs a free name", name)
            self.server = CuseServer(record=self.recorder)
            self.server.add(device, name, mode=mode)
            self.server.start()
        else:
            self.server = Server(record=self.recorder)
            self.server.add(device, name, mode=mode)
            self.server.start()

    # ------------------------------------------------------------------ clients
    @property
    def path(self) -> str:
        """The device file a separate client opens (kernel backends only)."""
        if self.server is None:
            raise Unavailable("a loopback device has no path: an external client needs the kernel backend "
                              "(mark the test @pytest.mark.fusd(backend='kernel'))")
        return str(self.server.path(self.name))

    @property
    def mountpoint(self) -> Optional[str]:
        """The FUSE mount's directory (kernel FUSE only)."""
        return getattr(self.server, "mountpoint", None)

    def open(self, flags: int = os.O_RDWR, *, uid: Optional[int] = None, gid: Optional[int] = None,
             pid: Optional[int] = None) -> DeviceFile:
        """Open the device in this process; ``uid``/``gid``/``pid`` set the caller on the loopback only."""
        if self.kernel is not None:
            creds = None
            if uid is not None or gid is not None or pid is not None:
                base = self.kernel.creds
                creds = Credentials(base.uid if uid is None else uid, base.gid if gid is None else gid,
                                    base.pid if pid is None else pid, base.groups)
            f: DeviceFile = LoopFile(self.kernel.open(self.name, flags, creds=creds))
        else:
            if uid is not None or gid is not None or pid is not None:
                raise Unavailable("another caller identity needs the loopback backend (or a subprocess)")
            f = OsFile(self.path, flags)
        self._files.append(f)
        return f

    def alloc(self, size_or_data: Union[int, bytes, bytearray]) -> Union[Buffer, Region]:
        """Memory for an ioctl argument that points elsewhere: ``.addr``, ``.read()``, ``.write()``."""
        if self.kernel is not None:
            return self.kernel.memory.alloc(size_or_data)
        return Buffer(size_or_data)

    def wait_opened(self, count: int = 1, timeout: float = 30.0) -> None:
        """Wait until ``count`` files of the device are open (a client got through ``open(2)``)."""
        deadline = time.monotonic() + timeout
        while self.device.open_count < count:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.name}: {self.device.open_count} open file(s) after {timeout} s, "
                                   f"waited for {count}")
            time.sleep(0.005)

    def wait_for(self, predicate: Any, timeout: float = 30.0, what: str = "the condition") -> None:
        """Wait until ``predicate()`` holds (device state a client caused); TimeoutError after ``timeout``."""
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.name}: gave up waiting for {what} after {timeout} s")
            time.sleep(0.005)

    def at(self, target: str) -> PathBinding:
        """The device at the path a client hard-codes (``/dev/ttyUSB0``), for subprocesses (kernel, root)."""
        if os.geteuid() != 0:
            raise Unavailable("binding a device at another path needs root (a private mount namespace)")
        return PathBinding(self.path, target)

    # ------------------------------------------------------------------ trace
    def trace(self, limit: int = 400, max_bytes: int = 64) -> str:
        """The decoded messages so far (the last ``limit``), as ``fusd decode`` prints them."""
        from fusd_wire.trace import Decoder, open_capture
        from fusd_wire.trace.render import text_lines

        self.recorder.flush()
        data = self._buffer.getvalue()
        problems: List[str] = []
        lines: List[str] = []
        try:
            for ev in Decoder(open_capture(data, lambda e: problems.append(str(e))), lambda e: problems.append(str(e))):
                lines.extend(text_lines(ev, limit=max_bytes))
        except Exception as exc:  # the trace is for a failure report: never hide the failure behind this
            problems.append(f"cannot decode the trace: {exc!r}")
        if len(lines) > limit:
            lines = [f"... {len(lines) - limit} earlier lines left out ..."] + lines[-limit:]
        return "\n".join(lines + [f"!! {p}" for p in problems])

    # ------------------------------------------------------------------ teardown
    def close(self) -> None:
        """Close the files the test left open, stop serving, check nothing is left mounted.  Idempotent."""
        if self._closed:
            return
        self._closed = True
        for f in self._files:
            if not f.closed:
                try:
                    f.close()
                except OSError:
                    pass
        problems: List[str] = []
        if self.kernel is not None:
            self.kernel.stop()
            problems += [str(v) for v in self.kernel.violations]
        elif self.server is not None:
            mountpoint = self.mountpoint
            node = f"/dev/{self.name}" if self.transport == "cuse" else None
            self.server.stop()
            if mountpoint and is_mounted(mountpoint):
                problems.append(f"{mountpoint} is still mounted after stop")
            if node and os.path.exists(node):
                problems.append(f"{node} still exists after stop")
            problems += [f"channel error: {e!r}" for e in self.server.errors]
        self.recorder.close()
        if problems:
            raise AssertionError(f"{self.name} ({self.backend}-{self.transport}): " + "; ".join(problems))

    def __enter__(self) -> ServedDevice:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<ServedDevice {self.name} {self.backend}-{self.transport}>"


class PathBinding:
    """The device bind-mounted at ``target`` in a private mount namespace, for the commands run here.

    ``run``/``popen`` take a command list (and ``subprocess`` keywords); ``argv``
    gives the wrapped command line itself.  See ``nsbind`` for how, and why
    nothing outside the command's namespace ever sees the binding.
    """

    def __init__(self, source: str, target: str) -> None:
        self.source, self.target = source, target

    def argv(self, cmd: Sequence[str]) -> List[str]:
        """``cmd`` wrapped so that it sees the device at ``target``."""
        return [sys.executable, "-m", "fusd_runtime.testing.nsbind", f"{self.source}:{self.target}", "--", *cmd]

    def run(self, cmd: Sequence[str], **kw: Any) -> subprocess.CompletedProcess:
        """``subprocess.run`` of the wrapped command."""
        return subprocess.run(self.argv(cmd), **kw)

    def popen(self, cmd: Sequence[str], **kw: Any) -> subprocess.Popen:
        """``subprocess.Popen`` of the wrapped command."""
        return subprocess.Popen(self.argv(cmd), **kw)


def default_name(device: Device, transport: str, backend: str) -> str:
    """A name for a device the test did not name: unique under /dev for kernel CUSE."""
    stem = device.name or type(device).__name__.lower()
    if backend == "kernel" and transport == "cuse":
        return f"fusdt-{os.getpid()}-{next(_names)}-{stem}"
    return stem


def serve(device: Device, name: Optional[str] = None, *, backend: str = "auto", transport: str = "auto",
          mode: Optional[int] = None, timeout: float = 30.0, minor: Optional[int] = None) -> ServedDevice:
    """Serve ``device`` for a test on the chosen backend; use as a context manager (or ``close()``).

    Args:
        backend, transport: see the module doc ("auto" chooses what the machine allows).
        mode: the file's permission bits (default: the device's).
        timeout: loopback: seconds a call waits for an answer before it is interrupted and abandoned.
        minor: loopback: the protocol minor its kernel speaks (default 7.45).
    """
    chosen_backend, chosen_transport = choose(device, backend, transport)
    return ServedDevice(device, name or default_name(device, chosen_transport, chosen_backend), chosen_backend,
                        chosen_transport, mode=mode, timeout=timeout, minor=minor)
