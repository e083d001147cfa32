"""The user-facing server: register devices, serve them, stop cleanly.

    from fusd_runtime import Server, Device

    class Hello(Device):
        def read(self, ctx, size, offset):
            return b"hello\\n"

    with Server() as server:          # a temporary mount directory (FUSE)
        server.add(Hello(), "hello")
        print(open(server.path("hello")).read())

``serve_forever()`` runs the event loop in the calling thread (SIGINT/SIGTERM
stop it cleanly); ``start()``/``stop()`` (or ``with``) run it in the background.
The loop is a ``selectors`` loop for the user's own fds, timers and
``call_soon_threadsafe``; the devices are served by reader threads blocked on
the kernel channel (see ``session.py``).  Every exit path unmounts.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import os
import selectors
import shutil
import signal
import tempfile
import threading
import time
from typing import Any, Callable, Dict, List, Optional, Tuple, Union

from .device import Device
from .fusefs import FuseSession, node_path
from .ioctl import check_ioctls
from .mount import Mount
from .registry import Registry
from .session import default_readers

log = logging.getLogger("fusd")


class TimerHandle:
    """A pending ``call_later``; ``cancel()`` it if it should not run."""

    __slots__ = ("when", "callback", "args", "cancelled")

    def __init__(self, when: float, callback: Callable[..., Any], args: Tuple[Any, ...]) -> None:
        self.when, self.callback, self.args, self.cancelled = when, callback, args, False

    def cancel(self) -> None:
        """Do not run the callback (no effect once it ran)."""
        self.cancelled = True


class ServerBase:
    """What every transport's server shares: the event loop, start/stop/serve_forever, ``with``.

    A transport subclass provides ``_open_transport()`` (start serving the
    registered devices), ``_close_transport()`` (stop, leave nothing behind) and
    ``_callback_lock()`` (the lock device callbacks run under).
    """

    transport = ""

    def __init__(self, *, record: Any = None) -> None:
        self._record = record
        self.recorder: Any = None
        self._serving = False
        self._selector = selectors.DefaultSelector()
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._selector.register(self._wake_r, selectors.EVENT_READ, None)
        self._ready: List[Tuple[Callable[..., Any], Tuple[Any, ...]]] = []
        self._ready_lock = threading.Lock()
        self._timers: List[Tuple[float, int, TimerHandle]] = []
        self._seq = itertools.count()
        self._loop_thread: Optional[threading.Thread] = None
        self._stop_requested = threading.Event()
        self._stopped = threading.Event()
        self._closed = False
        self._unlocked: Tuple[Callable[..., Any], ...] = (self._selector.register, self._selector.unregister)
        self.errors: List[BaseException] = []

    # ------------------------------------------------------------------ transport hooks
    def _open_transport(self) -> None:
        raise NotImplementedError

    def _close_transport(self) -> None:
        raise NotImplementedError

    def _callback_lock(self) -> Any:
        """The lock device callbacks run under (None: not serving)."""
        return None

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> ServerBase:
        """Start serving and run the event loop in a background thread."""
        self._start_serving()
        if self._loop_thread is None:
            self._loop_thread = threading.Thread(target=self._run_loop, name="fusd-loop", daemon=True)
            self._loop_thread.start()
        return self

    def _start_serving(self) -> None:
        if self._serving:
            return
        if self._closed:
            raise RuntimeError("a stopped server cannot be started again")
        try:
            if self._record is not None and self.recorder is None:
                self.recorder = _open_recorder(self._record)
            self._open_transport()
            self._serving = True
        except BaseException:
            self._teardown()
            raise

    def serve_forever(self, ready: Optional[Callable[[], Any]] = None) -> None:
        """Serve until ``stop()``, SIGINT or SIGTERM; always cleans up before returning.

        ``ready()`` is called once the devices are being served.
        """
        old: Dict[signal.Signals, Any] = {}
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                old[sig] = signal.signal(sig, lambda *_: self.stop(wait=False))
        try:
            self._start_serving()
            if ready is not None:
                ready()
            self._run_loop()
        finally:
            for sig, handler in old.items():
                signal.signal(sig, handler)
            self.stop()

    def stop(self, wait: bool = True) -> None:
        """Stop serving: fail pending calls, stop readers, remove the devices, close.  Idempotent."""
        self._stop_requested.set()
        self._wake()
        if not wait:
            return
        if self._loop_thread is not None and self._loop_thread is not threading.current_thread():
            self._loop_thread.join(10)
        self._teardown()

    def _teardown(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._serving = False
        try:
            self._close_transport()
        finally:
            if self.recorder is not None and self._record is not self.recorder:
                self.recorder.close()
            for fd in (self._wake_r, self._wake_w):
                try:
                    os.close(fd)
                except OSError:
                    pass
            self._selector.close()
            self._stopped.set()

    def __enter__(self) -> ServerBase:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _on_error(self, exc: BaseException) -> None:
        self.errors.append(exc)
        log.error("fusd: channel error: %s", exc)

    # ------------------------------------------------------------------ event loop
    def call_soon_threadsafe(self, callback: Callable[..., Any], *args: Any) -> None:
        """Run ``callback(*args)`` in the loop thread, under the device callback lock."""
        with self._ready_lock:
            self._ready.append((callback, args))
        self._wake()

    def call_later(self, delay: float, callback: Callable[..., Any], *args: Any) -> TimerHandle:
        """Run ``callback(*args)`` after ``delay`` seconds in the loop thread (callback lock held)."""
        handle = TimerHandle(time.monotonic() + delay, callback, args)
        with self._ready_lock:
            heapq.heappush(self._timers, (handle.when, next(self._seq), handle))
        self._wake()
        return handle

    def add_reader(self, fd: int, callback: Callable[[], Any]) -> None:
        """Call ``callback()`` in the loop thread whenever ``fd`` is readable."""
        self.call_soon_threadsafe(self._selector.register, fd, selectors.EVENT_READ, callback)

    def remove_reader(self, fd: int) -> None:
        """Stop watching ``fd`` (undo ``add_reader``)."""
        self.call_soon_threadsafe(self._selector.unregister, fd)

    def _wake(self) -> None:
        try:
            os.write(self._wake_w, b"\0")
        except OSError:
            pass

    def _run_loop(self) -> None:
        while not self._stop_requested.is_set():
            timeout: Optional[float] = None
            with self._ready_lock:
                if self._ready:
                    timeout = 0
                elif self._timers:
                    timeout = max(0.0, self._timers[0][0] - time.monotonic())
            try:
                events = self._selector.select(timeout)
            except (OSError, ValueError):
                break
            for key, _ in events:
                if key.data is None:
                    try:
                        while os.read(self._wake_r, 512):
                            pass
                    except BlockingIOError:
                        pass
                else:
                    self._run_callback(key.data)
            now = time.monotonic()
            with self._ready_lock:
                ready, self._ready = self._ready, []
                while self._timers and self._timers[0][0] <= now:
                    handle = heapq.heappop(self._timers)[2]
                    if not handle.cancelled:
                        ready.append((handle.callback, handle.args))
            for callback, args in ready:
                self._run_callback(callback, *args)

    def _run_callback(self, callback: Callable[..., Any], *args: Any) -> None:
        lock = self._callback_lock()
        try:
            if lock is not None and callback not in self._unlocked:
                with lock:
                    callback(*args)
            else:
                callback(*args)
        except Exception:
            log.exception("fusd: loop callback %r raised", callback)


class Server(ServerBase):
    """Serves devices as files of a FUSE mount (this class) — CUSE: see ``cuse.CuseServer``.

    Args:
        mountpoint: the directory the devices appear in; None creates a temporary
            one (removed again on stop).
        readers: reader threads (default: 2, so one stays blocked in the kernel while
            the other runs Python, which avoids a costly cross-CPU wakeup per call; 1 when
            the process may only run on one CPU, see ``session.default_readers``).
        allow_other: let other users use the devices (default: when root).
        mount_method: "auto" (mount(2) as root, fusermount3 otherwise), "mount", "fusermount".
        record: a path or a ``fusd_wire.trace`` Recorder: write every message to a pcapng capture.
        uid, gid: default owner of device files (default: the server's).
        transport: "fuse" (read/write on /dev/fuse) or "uring" (FUSE-over-io_uring: a ring
            queue per CPU, see ``fusd_runtime.uring``; where the kernel does not offer it the
            server logs why and serves through read/write, and ``transport`` says "fuse").
    """

    transport = "fuse"

    def __init__(self, mountpoint: Optional[str] = None, *, readers: Optional[int] = None,
                 allow_other: Optional[bool] = None, mount_method: str = "auto", record: Any = None,
                 uid: Optional[int] = None, gid: Optional[int] = None, fsname: str = "fusd",
                 transport: str = "fuse") -> None:
        if transport not in ("fuse", "uring"):
            raise ValueError(f"transport must be 'fuse' or 'uring', not {transport!r}")
        super().__init__(record=record)
        self.transport = transport
        self.mountpoint = mountpoint
        self._own_mountpoint = False
        self.readers = default_readers() if readers is None else readers
        self.allow_other = allow_other
        self.mount_method = mount_method
        self.fsname = fsname
        self.uid = os.geteuid() if uid is None else uid
        self.gid = os.getegid() if gid is None else gid
        self.registry = Registry(self.uid, self.gid)
        self.mount: Optional[Mount] = None
        self.session: Optional[FuseSession] = None
        self._unlocked += (self._invalidate,)

    # ------------------------------------------------------------------ devices
    def add(self, device: Device, name: Optional[str] = None, *, mode: Optional[int] = None,
            uid: Optional[int] = None, gid: Optional[int] = None) -> Device:
        """Register ``device`` under ``name`` (``input/event0`` makes a subdirectory); any time."""
        name = name or device.name or type(device).__name__.lower()
        mode = device.mode if mode is None else mode
        uid = (self.uid if device.uid is None else device.uid) if uid is None else uid
        gid = (self.gid if device.gid is None else device.gid) if gid is None else gid
        check_ioctls(device, "fuse")  # restricted ioctls on either FUSE channel
        self.registry.add(name, device, mode, uid, gid)
        device.name = name
        device.session = self.session
        return device

    def remove(self, device: Union[Device, str]) -> None:
        """Unregister a device (by object or name); its open files then answer ENODEV."""
        node = self.registry.find(device) if isinstance(device, Device) else \
            self.registry.lookup_path(self.registry.split(device))
        if node is None or node.device is None:
            raise KeyError(f"no such device: {device!r}")
        dev = node.device
        removed = self.registry.remove(node.path)
        session = self.session
        if session is not None:
            with session.lock:
                session.detach_device(dev)
            notes = [(n.parent.nodeid, n.name) for n in removed if n.parent is not None]
            # Notifications may wait for the kernel's directory locks: never send them under our lock.
            self.call_soon_threadsafe(self._invalidate, notes)
        dev.session = None

    def _invalidate(self, notes: List[Tuple[int, str]]) -> None:
        if self.session is not None:
            for parent, name in notes:
                self.session.invalidate(parent, name)

    def path(self, name: Union[str, Device]) -> str:
        """The file a client opens for device ``name``."""
        if self.mountpoint is None:
            raise RuntimeError("the server is not started")
        if isinstance(name, Device):
            return node_path(self.mountpoint, self.registry.find(name))
        return os.path.join(self.mountpoint, *self.registry.split(name))

    def devices(self) -> Dict[str, Device]:
        """Registered devices by name."""
        return {n.path: n.device for n in self.registry.devices() if n.device is not None}

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> Server:
        """Mount, start the readers and run the event loop in a background thread."""
        super().start()
        return self

    def __enter__(self) -> Server:
        return self.start()

    def _callback_lock(self) -> Any:
        session = self.session
        return session.lock if session is not None else None

    def _open_transport(self) -> None:
        if self.mountpoint is None:
            self.mountpoint = tempfile.mkdtemp(prefix="fusd-")
            self._own_mountpoint = True
        self.mount = Mount(self.mountpoint, fsname=self.fsname, allow_other=self.allow_other,
                           method=self.mount_method)
        session_class: Any = FuseSession
        if self.transport == "uring":
            from .uring import UringFuseSession  # only when asked for
            session_class = UringFuseSession
        self.session = session_class(self.mount.fd, self.registry, self.mountpoint, readers=self.readers,
                                     recorder=self.recorder, on_error=self._on_error)
        for node in self.registry.devices():
            if node.device is not None:
                node.device.session = self.session
        self.session.start_readers()
        if not self.session.initialized.wait(10):
            raise RuntimeError("the kernel did not send FUSE_INIT within 10 s")
        if self.transport == "uring" and not getattr(self.session, "uring_active", False):
            self.transport = "fuse"  # fell back (the session logged why)

    def _close_transport(self) -> None:
        session, self.session = self.session, None
        try:
            if session is not None:
                session.stop_readers()
        finally:
            try:
                if self.mount is not None:
                    self.mount.close()
            finally:
                if session is not None:
                    session.close_fds()
                for node in self.registry.devices():
                    if node.device is not None:
                        node.device.session = None
                if self._own_mountpoint and self.mountpoint:
                    try:
                        os.rmdir(self.mountpoint)
                    except OSError:
                        shutil.rmtree(self.mountpoint, ignore_errors=True)


def _open_recorder(target: Any) -> Any:
    if hasattr(target, "record"):
        return target
    from fusd_wire.trace import Recorder  # only when recording is asked for
    return Recorder(target)
