"""The user-facing server: register devices, serve them, stop cleanly — sync or asyncio.

    from fusd_runtime import Server, Device

    class Hello(Device):
        seekable = True                   # read() gets the file offset: it ends
        def read(self, ctx, size, offset):
            return b"hello\\n"[offset:offset + size]

    with Server() as server:          # a temporary mount directory (FUSE)
        server.add(Hello(), "hello")
        print(open(server.path("hello")).read())

Three ways to run one:

- ``with Server() as server:`` / ``start()`` ... ``stop()``: served in the
  background (reader threads, and the event loop in a ``fusd-loop`` thread);
- ``serve_forever()``: the event loop runs in the calling thread until ``stop()``,
  SIGINT/SIGTERM, or the kernel ends the session (external ``umount``, an abort);
- ``async with Server() as server:`` / ``await server.serve()``: inside a running
  asyncio program, on *its* loop (``async def`` device callbacks then share it).

The event loop is asyncio's (``loop.py``): the server's timers, ``call_soon``,
the user's fds (``add_reader``) and waiting ``async def`` callbacks run there.
The devices themselves are served by reader threads blocked on the kernel channel
(``session.py``).  **The server's life follows the kernel's**: when the kernel ends
the channel the server stops itself with one log line and ``serve_forever()``
returns; a callback raising SystemExit/KeyboardInterrupt stops it too, and the
exception surfaces from ``serve_forever()``, ``serve()`` or the ``with`` block.
Every exit path unmounts — only the mount this server made.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import shutil
import signal
import tempfile
import threading
from typing import Any, Callable, Dict, List, Optional, Tuple, Union

from .device import Device
from .fusefs import FuseSession, node_path
from .loop import EventLoop, Timer
from .mount import Mount
from .prepare import prepare_device
from .reader import SUPERVISE_EVERY
from .registry import Registry
from .session import Session, default_readers
from .strand import strand_of

log = logging.getLogger("fusd")

TimerHandle = Timer  # compatibility: what ``call_later`` returns


class ServerBase:
    """What every transport's server shares: the event loop, the lifecycle, ``with``/``async with``.

    A transport subclass provides ``_open_transport()`` (start serving the
    registered devices), ``_close_transport()`` (stop, leave nothing behind) and
    ``_sessions()`` (the live sessions, for the supervisor).
    """

    transport = ""

    def __init__(self, *, record: Any = None, debug: bool = False) -> None:
        self._record = record
        self.debug = debug
        self.recorder: Any = None
        self._serving = False
        self._closed = False
        self._loop = EventLoop()
        self._stop_requested = threading.Event()
        self._stopped = threading.Event()
        self._teardown_lock = threading.Lock()
        self._stop_waiters: List[Tuple[asyncio.AbstractEventLoop, asyncio.Future]] = []
        self._supervisor: Optional[Timer] = None
        self.errors: List[BaseException] = []
        #: why the server stopped by itself (the kernel ended the session, a callback raised SystemExit...)
        self.end_reason: Optional[str] = None
        self._fatal: Optional[BaseException] = None

    # ------------------------------------------------------------------ transport hooks
    def _open_transport(self) -> None:
        raise NotImplementedError

    def _close_transport(self) -> None:
        raise NotImplementedError

    def _sessions(self) -> List[Session]:
        return []

    @property
    def loop(self) -> Optional[asyncio.AbstractEventLoop]:
        """The asyncio loop the server runs on (None before it starts)."""
        return self._loop.loop

    @property
    def stopped(self) -> bool:
        """True once the server has stopped (``stop()``, a signal, or the kernel ended the session)."""
        return self._stopped.is_set()

    # ------------------------------------------------------------------ lifecycle: sync
    def start(self) -> ServerBase:
        """Start serving, with the event loop in a background ``fusd-loop`` thread."""
        if self._closed:
            raise RuntimeError("a stopped server cannot be started again")
        if self._loop.loop is None:
            self._loop.start_thread()
        self._start_serving()
        return self

    def _start_serving(self) -> None:
        if self._serving:
            return
        if self._closed:
            raise RuntimeError("a stopped server cannot be started again")
        try:
            if self._record is not None and self.recorder is None:
                self.recorder = _open_recorder(self._record)
            if self.debug:  # a recorder-like sink: the sessions' hot path is the recording one
                self.recorder = _debug_sink(self.recorder, owned=self._record is not self.recorder)
            self._open_transport()
            self._serving = True
        except BaseException:
            self._teardown()
            raise
        self._loop.call_soon(self._supervise)

    def serve_forever(self, ready: Optional[Callable[[], Any]] = None) -> None:
        """Serve until ``stop()``, SIGINT/SIGTERM or the kernel ends the session; always cleans up.

        ``ready()`` is called once the devices are being served.  Re-raises the
        SystemExit/KeyboardInterrupt a device callback raised, after cleaning up.
        """
        if self._loop.loop is not None:  # already started in the background: wait here
            self._wait_with_signals(ready)
        else:
            loop = self._loop.new_owned()
            try:
                self._loop.run_owned(self._serve_here(ready))
            finally:
                loop.close()
        self._raise_fatal()

    async def _serve_here(self, ready: Optional[Callable[[], Any]]) -> None:
        loop = asyncio.get_running_loop()
        handled: List[signal.Signals] = []
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, self._stop_requested_by_signal, sig)
                handled.append(sig)
        try:
            self._start_serving()
            if ready is not None:
                ready()
            await self._until_stop_requested()
        finally:
            for sig in handled:
                loop.remove_signal_handler(sig)
            await loop.run_in_executor(None, self._teardown)

    def _wait_with_signals(self, ready: Optional[Callable[[], Any]]) -> None:
        old: Dict[signal.Signals, Any] = {}
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                old[sig] = signal.signal(sig, lambda signum, _frame: self._stop_requested_by_signal(signum))
        try:
            self._start_serving()
            if ready is not None:
                ready()
            while not self._stop_requested.wait(0.5):
                pass
        finally:
            for sig, handler in old.items():
                signal.signal(sig, handler)
            self.stop()

    def _stop_requested_by_signal(self, signum: int) -> None:
        log.info("fusd: %s received, stopping", signal.Signals(signum).name)
        self._request_stop()

    def stop(self, wait: bool = True) -> None:
        """Stop serving: answer pending calls, stop readers, remove the devices, unmount.  Idempotent.

        From the event loop's own thread (a timer, an async callback) the stop is
        finished by a helper thread and this returns at once.
        """
        self._request_stop()
        if not wait:
            return
        if self._loop.in_loop_thread():
            threading.Thread(target=self._teardown, name="fusd-stop", daemon=True).start()
            return
        self._teardown()

    def wait(self, timeout: Optional[float] = None) -> bool:
        """Block until the server stopped (True), or ``timeout`` passed (False); re-raises a callback's SystemExit."""
        done = self._stopped.wait(timeout)
        if done:
            self._raise_fatal()
        return done

    def _request_stop(self) -> None:
        self._stop_requested.set()
        for loop, fut in list(self._stop_waiters):
            try:
                loop.call_soon_threadsafe(_set_if_pending, fut)
            except RuntimeError:
                pass

    async def _until_stop_requested(self) -> None:
        if self._stop_requested.is_set():
            return
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        entry = (loop, fut)
        self._stop_waiters.append(entry)
        try:
            if not self._stop_requested.is_set():
                await fut
        finally:
            self._stop_waiters.remove(entry)

    def _teardown(self) -> None:
        with self._teardown_lock:
            if self._closed:
                return
            self._closed = True
            self._serving = False
            self._stop_requested.set()
            try:
                if self._supervisor is not None:
                    self._supervisor.cancel()
                self._close_transport()
            finally:
                if self.recorder is not None and self._record is not self.recorder:
                    self.recorder.close()
                self._loop.stop()  # an owned loop in its own thread: stopped and closed
                self._stopped.set()

    def _raise_fatal(self) -> None:
        exc, self._fatal = self._fatal, None
        if exc is not None:
            raise exc

    def __enter__(self) -> ServerBase:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
        if exc[0] is None:
            self._raise_fatal()

    # ------------------------------------------------------------------ lifecycle: asyncio
    async def serve(self, ready: Optional[Callable[[], Any]] = None) -> None:
        """Serve on the running asyncio loop until ``stop()`` or the kernel ends the session.

        Cancelling the task stops the server.  Re-raises a callback's SystemExit.
        """
        await self.__aenter__()
        try:
            if ready is not None:
                ready()
            await self._until_stop_requested()
        finally:
            await asyncio.get_running_loop().run_in_executor(None, self.stop)
        self._raise_fatal()

    async def __aenter__(self) -> ServerBase:
        if self._closed:
            raise RuntimeError("a stopped server cannot be started again")
        loop = asyncio.get_running_loop()
        if self._loop.loop is None:
            self._loop.adopt(loop)
        elif self._loop.loop is not loop:
            raise RuntimeError("this server already runs on another event loop")
        await loop.run_in_executor(None, self._start_serving)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await asyncio.get_running_loop().run_in_executor(None, self.stop)
        if exc[0] is None:
            self._raise_fatal()

    # ------------------------------------------------------------------ the kernel's side ends
    def _session_ended(self, session: Session, reason: str, exc: Optional[BaseException]) -> None:
        """A session's channel ended, or a callback raised SystemExit (any thread, once per session)."""
        if exc is not None and self._fatal is None:
            self._fatal = exc
        if self._stop_requested.is_set():
            return
        self.end_reason = reason
        if exc is None:
            log.warning("fusd: stopping: %s", reason)
        self._request_stop()
        # Whoever waits (serve_forever, serve) cleans up too; a background server (start(), with)
        # has nobody waiting: clean up now, from a thread of our own (this may be a reader).
        threading.Thread(target=self._teardown, name="fusd-stop", daemon=True).start()

    def _on_error(self, exc: BaseException) -> None:
        self.errors.append(exc)
        log.error("fusd: channel error: %s", exc)

    def _supervise(self) -> None:
        """Every SUPERVISE_EVERY s on the loop: keep a reader in the kernel (reader.py)."""
        if self._stop_requested.is_set():
            return
        for session in self._sessions():
            try:
                session.supervise()
            except Exception:  # never let housekeeping kill the loop
                log.exception("fusd: reader supervisor failed")
        self._supervisor = self._loop.call_later(SUPERVISE_EVERY, self._supervise)

    # ------------------------------------------------------------------ event loop services
    def call_soon_threadsafe(self, callback: Callable[..., Any], *args: Any) -> None:
        """Run ``callback(*args)`` on the server's loop, from any thread.

        A bound method of a registered device runs as that device's code (never
        alongside its callbacks, like ``device.call_soon``).
        """
        self._loop.call_soon(*self._as_device_code(callback, args))

    def call_later(self, delay: float, callback: Callable[..., Any], *args: Any) -> Timer:
        """Run ``callback(*args)`` on the loop after ``delay`` seconds (a device's method: as its code)."""
        return self._loop.call_later(delay, *self._as_device_code(callback, args))

    def _as_device_code(self, callback: Callable[..., Any], args: Tuple[Any, ...]) -> Tuple[Any, ...]:
        owner = getattr(callback, "__self__", None)
        if isinstance(owner, Device) and owner.session is not None:
            return (owner.session.run_device_code, owner, callback, args)
        return (callback, *args)

    def add_reader(self, fd: int, callback: Callable[[], Any]) -> None:
        """Call ``callback()`` on the loop whenever ``fd`` is readable (asyncio ``add_reader``)."""
        loop = self._require_loop()
        self._loop.call_soon(loop.add_reader, fd, *self._as_device_code(callback, ()))

    def remove_reader(self, fd: int) -> None:
        """Stop watching ``fd`` (undo ``add_reader``)."""
        loop = self._require_loop()
        self._loop.call_soon(loop.remove_reader, fd)

    def _require_loop(self) -> asyncio.AbstractEventLoop:
        loop = self._loop.loop
        if loop is None:
            raise RuntimeError("the server is not started: its event loop does not exist yet")
        return loop

    def _prepare(self, device: Device) -> None:
        """Checks and the device's strand (``prepare.prepare_device``), before it becomes visible."""
        # the io_uring channel is still FUSE: the same restricted ioctls
        prepare_device(device, "fuse" if self.transport == "uring" else self.transport, self._loop)


def _set_if_pending(fut: asyncio.Future) -> None:
    if not fut.done():
        fut.set_result(None)


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
        debug: log each request and its reply as served, libfuse ``-d`` style, on the
            ``fusd.debug`` logger (see ``docs/traces.md``); no cost when False.
        uid, gid: default owner of device files (default: the server's).
        mount_options: more keyword arguments for :class:`~fusd_runtime.mount.Mount`
            (``read_only``, ``nonempty``, ``overmount``, ``watchdog``).
        transport: "fuse" (read/write on /dev/fuse) or "uring" (FUSE-over-io_uring: a ring
            queue per CPU, see ``fusd_runtime.uring`` and ``docs/uring.md``; where the kernel
            does not offer it the server logs why and serves through read/write, and
            ``transport`` then says "fuse").
    """

    transport = "fuse"

    def __init__(self, mountpoint: Optional[str] = None, *, readers: Optional[int] = None,
                 allow_other: Optional[bool] = None, mount_method: str = "auto", record: Any = None,
                 debug: bool = False, uid: Optional[int] = None, gid: Optional[int] = None, fsname: str = "fusd",
                 mount_options: Optional[Dict[str, Any]] = None, transport: str = "fuse") -> None:
        if transport not in ("fuse", "uring"):
            raise ValueError(f"transport must be 'fuse' or 'uring', not {transport!r}")
        super().__init__(record=record, debug=debug)
        self.transport = transport
        self.mount_options = dict(mount_options or {})
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

    # ------------------------------------------------------------------ devices
    def add(self, device: Device, name: Optional[str] = None, *, mode: Optional[int] = None,
            uid: Optional[int] = None, gid: Optional[int] = None) -> Device:
        """Register ``device`` under ``name`` (``input/event0`` makes a subdirectory); any time."""
        name = name or device.name or type(device).__name__.lower()
        mode = device.mode if mode is None else mode
        uid = (self.uid if device.uid is None else device.uid) if uid is None else uid
        gid = (self.gid if device.gid is None else device.gid) if gid is None else gid
        device.name = name
        self._prepare(device)  # before the registry makes it visible: the first OPEN finds its strand
        self.registry.add(name, device, mode, uid, gid)
        log.info("fusd: device %s added (%s, mode %o)", name, type(device).__name__, mode)
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
        log.info("fusd: device %s removed", node.path)
        session = self.session
        if session is not None:
            strand_of(dev).run(session.detach_device, dev)  # never alongside the device's callbacks
            notes = [(n.parent.nodeid, n.name) for n in removed if n.parent is not None]
            # Notifications may wait for the kernel's directory locks: never from a reader or a callback.
            self._loop.call_soon(self._invalidate, notes)
        dev.session = None

    def abort(self) -> None:
        """Abort the kernel connection (fusectl ``abort``): every waiting client fails at once; the server stops.

        What an operator does with ``fusd abort MOUNTPOINT`` (or ``echo 1 >
        /sys/fs/fuse/connections/N/abort``) to free clients stuck on a server that
        stopped answering.  The readers then see the connection end, and the server
        stops and unmounts like after an external unmount.
        """
        mount = self.mount
        if mount is None:
            raise RuntimeError("the server is not started")
        mount.abort()

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

    def _sessions(self) -> List[Session]:
        return [self.session] if self.session is not None else []

    def _open_transport(self) -> None:
        if self.mountpoint is None:
            self.mountpoint = tempfile.mkdtemp(prefix="fusd-")
            self._own_mountpoint = True
        self.mount = Mount(self.mountpoint, fsname=self.fsname, allow_other=self.allow_other,
                           method=self.mount_method, **self.mount_options)
        session_class: Any = FuseSession
        if self.transport == "uring":
            from .uring import UringFuseSession  # only when asked for
            session_class = UringFuseSession
        self.session = session_class(self.mount.fd, self.registry, self.mountpoint, readers=self.readers,
                                     recorder=self.recorder, on_error=self._on_error, loop=self._loop,
                                     on_end=self._session_ended)
        for node in self.registry.devices():
            if node.device is not None:
                node.device.session = self.session
        self.session.start_readers()
        if not self.session.initialized.wait(10):
            raise RuntimeError("the kernel did not send FUSE_INIT within 10 s")
        if self.transport == "uring" and not getattr(self.session, "uring_active", False):
            self.transport = "fuse"  # fell back (the session logged why)
        log.info("fusd: serving %s (FUSE 7.%d, flags %#x, %d reader%s, %s)", self.mountpoint, self.session.minor,
                 self.session.init_flags, self.readers, "s"[:self.readers > 1], self.mount.method)

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
                log.info("fusd: stopped serving %s", self.mountpoint)


def _debug_sink(recorder: Any, owned: bool) -> Any:
    """The ``debug=True`` sink: every message decoded onto the ``fusd.debug`` logger at DEBUG.

    Like libfuse's ``-d`` it prints without further set-up: when nothing configured the
    logger, it gets level DEBUG and a stderr handler.  Configure ``fusd.debug`` yourself to
    send the lines elsewhere; the level is checked per message, so raising it while serving
    stops the decoding too.
    """
    from fusd_wire.trace.live import DebugSink  # only when debugging is asked for
    dlog = logging.getLogger("fusd.debug")
    if dlog.level == logging.NOTSET:
        dlog.setLevel(logging.DEBUG)
    if not dlog.hasHandlers():
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(message)s"))
        dlog.addHandler(handler)
    return DebugSink(functools.partial(dlog.debug, "%s"), recorder, close_inner=owned,
                     enabled=functools.partial(dlog.isEnabledFor, logging.DEBUG))


def _open_recorder(target: Any) -> Any:
    if hasattr(target, "record"):
        return target
    from fusd_wire.trace import Recorder  # only when recording is asked for
    return Recorder(target)
