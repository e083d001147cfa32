"""The CUSE transport: each device is a real character device node, ``/dev/NAME``.

    # doc: needs /dev/cuse
    from fusd_runtime.cuse import CuseServer
    from fusd_runtime.examples import Hello

    with CuseServer() as server:            # root, and a kernel with CUSE
        server.add(Hello(), "fusd-hello")   # -> /dev/fusd-hello, mode from the device
        print(open(server.path("fusd-hello")).read())

One ``/dev/cuse`` connection serves one device (the kernel creates one node
per connection), so a :class:`CuseServer` holds one :class:`CuseSession` per
device; removing a device closes its connection, which is what makes the
kernel delete the node.  Everything a device file does after OPEN is the
shared ``Session`` code; this module adds CUSE_INIT, the node's attributes and
the *unrestricted* ioctl protocol (FUSE_IOCTL_RETRY), with which an ioctl can
copy any memory of the caller the device names, following pointers.

Why the details are as they are:
- CUSE_INIT is answered with our protocol ``7.min(kernel, 45)`` and
  CUSE_UNRESTRICTED_IOCTL, ``DEVNAME=name`` in the info blob; ``dev_major`` 0
  lets the kernel allocate a number.  The kernel creates the node itself
  (devtmpfs, root 0600) while our reply is being written, so the device's
  ``mode``/``uid``/``gid`` are applied with chmod/chown right after.
- OPEN arrives with nodeid 0: the session has exactly one device.
- ``/dev/cuse`` cannot be cloned (FUSE_DEV_IOC_CLONE fails on it), so the
  reader threads share the one fd.
- To stop a reader blocked in ``read`` on that fd we open the node: the kernel
  sends an OPEN, the reader sees ``stopping``, answers ENODEV and leaves.
  Closing the fd only then really releases the connection.
"""

from __future__ import annotations

import errno
import logging
import os
import stat
import threading
import time
from typing import Any, Dict, List, Optional, Union

from fusd_wire import Codec
from fusd_wire import constants as C

from .device import Context, Device
from .ioctl import emulate_restricted, ioctl_table, plan_unrestricted, unrestricted_encoder
from .server import Server, ServerBase
from .session import GONE, OP, Session, default_readers
from .state import pack_out
from .strand import strand_of

log = logging.getLogger("fusd")

CUSE_DEV = "/dev/cuse"
#: the newest protocol minor we speak (the codec's); the kernel may be older (the test guest is 7.38)
OUR_MINOR = C.FUSE_KERNEL_MINOR_VERSION
_UNRESTRICTED = int(C.IoctlFlags.FUSE_IOCTL_UNRESTRICTED)
_COMPAT = int(C.IoctlFlags.FUSE_IOCTL_COMPAT)


def cuse_available() -> bool:
    """True where a CuseServer can work: ``/dev/cuse`` exists and we are root."""
    return os.path.exists(CUSE_DEV) and os.geteuid() == 0


class CuseSession(Session):
    """One ``/dev/cuse`` connection: CUSE_INIT, then one device's file operations.

    Args:
        device: the device this connection serves.
        devname: the node's name under /dev (``DEVNAME=``; may contain ``/``).
        dev_major, dev_minor: the device number to ask for (0, 0: allocate one).
        max_read: the largest READ the kernel sends (``max_write`` is Session's).
        fd: an already open channel to serve instead of a new ``/dev/cuse`` fd (replay
            feeds the session from a socketpair); the caller owns it.
    """

    kind = "cuse"

    def __init__(self, device: Device, devname: str, *, dev_major: int = 0, dev_minor: int = 0,
                 max_read: int = 128 * 1024, fd: Optional[int] = None, **kwargs: Any) -> None:
        own = fd is None
        if fd is None:
            fd = os.open(CUSE_DEV, os.O_RDWR | os.O_CLOEXEC)  # the kernel queues CUSE_INIT right away
        try:
            super().__init__(fd, clone=False, **kwargs)
        except BaseException:
            if own:
                os.close(fd)
            raise
        self.device: Device = device
        self.devname = devname
        self.dev_major, self.dev_minor = dev_major, dev_minor
        self.max_read = max_read
        self.kernel_minor = 0
        self.handlers[C.fuse_opcode.CUSE_INIT] = self._op_cuse_init
        if device.seekable:
            # the kernel sends offset 0 on CUSE (a stream): keep each open file's position here
            self.handlers[OP.FUSE_READ] = self._op_read_positioned
            self.handlers[OP.FUSE_WRITE] = self._op_write_positioned

    @property
    def path(self) -> str:
        """The device node: ``/dev/<devname>``."""
        return "/dev/" + self.devname

    # ------------------------------------------------------------------ CUSE_INIT
    def _op_cuse_init(self, chan: Any, buf: Any, n: int, unique: int, nodeid: int, uid: int, gid: int,
                      pid: int) -> None:
        codec = Codec(OUR_MINOR)
        init_in = codec.fast("cuse_init_in").decode(buf, 40)
        self.kernel_minor = init_in.minor
        if init_in.major != C.FUSE_KERNEL_VERSION or init_in.minor < 11:
            # cuse.c refuses anything but 7.11+; answering an error makes it drop the connection
            self.send_error(chan, unique, errno.EPROTO)
            self.initialized.set()
            return
        minor = min(init_in.minor, OUR_MINOR)
        self._set_minor(minor)
        reply = codec.encode_reply(C.fuse_opcode.CUSE_INIT, {
            "cuse_init_out": {
                "major": C.FUSE_KERNEL_VERSION, "minor": minor,
                "flags": int(C.CuseInitFlags.CUSE_UNRESTRICTED_IOCTL) & init_in.flags,
                "max_read": self.max_read, "max_write": self.max_write,
                "dev_major": self.dev_major, "dev_minor": self.dev_minor,
            },
            "info": {"DEVNAME": self.devname},
        }, unique=unique)
        try:
            self.send(chan, [reply])  # the kernel registers the char device while handling this write
        finally:
            self.initialized.set()

    # ------------------------------------------------------------------ seekable devices
    def _op_read_positioned(self, chan: Any, buf: Any, n: int, unique: int, nodeid: int, uid: int, gid: int,
                            pid: int) -> Optional[List[Any]]:
        """READ for a seekable device: it sees the open file's position, which then advances.

        The kernel sends offset 0 on CUSE (a char device's position is the driver's),
        so the position is kept per open file here; a deferred or async answer
        advances it when it is sent (``send_result``).
        """
        fh, _, size, _, _, flags, _ = self._unpack_read_in(buf, 40)
        return self._positioned(chan, buf, n, unique, nodeid, uid, gid, pid, fh, size, flags, None)

    def _op_write_positioned(self, chan: Any, buf: Any, n: int, unique: int, nodeid: int, uid: int, gid: int,
                             pid: int) -> Optional[List[Any]]:
        fh, _, size, _, _, flags, _ = self._unpack_write_in(buf, 40)
        start = self._write_data
        if start + size != n:
            return self.bad_body(chan, unique, 16, f"fuse_write_in.size {size} but {n - start} payload bytes")
        return self._positioned(chan, buf, n, unique, nodeid, uid, gid, pid, fh, size, flags, bytes(buf[start:n]))

    def _positioned(self, chan: Any, buf: Any, n: int, unique: int, nodeid: int, uid: int, gid: int, pid: int,
                    fh: int, size: int, flags: int, data: Optional[bytes]) -> Optional[List[Any]]:
        ctx = self.files.get(fh)
        if ctx is None:
            return [pack_out(16, -errno.EBADF, unique)]
        strand = ctx.strand
        write = data is not None
        if not strand.acquire(False):
            return self.queued(strand, self._op_write_positioned if write else self._op_read_positioned,
                               chan, buf, n, unique, nodeid, uid, gid, pid)
        token = strand.token
        opcode = OP.FUSE_WRITE if write else OP.FUSE_READ
        try:
            ctx.fd, ctx.unique, ctx.pid, ctx.uid, ctx.gid = chan, unique, pid, uid, gid
            ctx.nonblock = nonblock = bool(flags & os.O_NONBLOCK)
            ctx.opcode, ctx.size = int(opcode), size
            pos = ctx.__dict__.get("cuse_pos", 0)
            result = ctx.device.write(ctx, data, pos) if write else ctx.device.read(ctx, size, pos)
        except BaseException as exc:  # noqa: B036
            token.append(True)
            self.failed_call(chan, unique, exc, ctx, "write" if write else "read")
            if strand.backlog:
                strand.drain()
            return None
        token.append(True)
        parts = self.other_result(chan, unique, int(opcode), result, size, ctx, (pid, uid, gid, nonblock))
        return self.answer_then_drain(chan, parts, strand) if strand.backlog else parts

    def result_parts(self, chan: Any, unique: int, opcode: int, result: Any, size: int,
                     ctx: Context) -> Optional[List[Any]]:
        """The answer's parts; on a seekable device a READ/WRITE answer also moves the open file's position.

        Every answer passes here (immediate, deferred, async).  The position moves
        *before* the answer is written: the caller's next read may reach another
        reader the moment it has its answer.
        """
        parts = super().result_parts(chan, unique, opcode, result, size, ctx)
        if parts is not None and self.device.seekable and opcode in (OP.FUSE_READ, OP.FUSE_WRITE):
            if opcode == OP.FUSE_READ:
                moved = min(len(result), size)
            else:
                moved = size if result is None else result
            ctx.__dict__["cuse_pos"] = ctx.__dict__.get("cuse_pos", 0) + moved
        return parts

    # ------------------------------------------------------------------ the one device
    def device_for_open(self, nodeid: int) -> Device:
        if self.device is GONE:
            raise OSError(errno.ENODEV, "device was removed")
        return self.device

    def call_ioctl(self, ctx: Any, flags: int, cmd: int, arg: int, data: bytes, out_size: int) -> Any:  # noqa: D102
        """Unrestricted ioctls: the FUSE_IOCTL_RETRY rounds, derived from the declaration.

        The first request of every ioctl carries no data.  A declared command's
        rounds come from its schema (``ioctl.plan_unrestricted``); an undeclared
        one is copied like FUSE would (``_IOC_SIZE`` bytes by ``_IOC_DIR``) and a
        number without size reaches the device as is (``ctx.ioctl_arg``).
        """
        if not flags & _UNRESTRICTED:
            return super().call_ioctl(ctx, flags, cmd, arg, data, out_size)
        spec = ioctl_table(ctx.device).get(cmd)
        if spec is None:
            retry = emulate_restricted(cmd, arg, data, out_size)
            if retry is None:
                return ctx.device.ioctl(ctx, cmd, data, out_size)
            return retry
        if flags & _COMPAT and spec.refuses_compat:
            raise OSError(errno.EINVAL, "a 32-bit caller would lay this argument out differently (pointers, "
                                        "long, 8-byte alignment): not served")
        plan = plan_unrestricted(spec, arg, data, out_size)
        if plan.retry is not None:
            return plan.retry
        return self.finish_declared(ctx, spec, plan.value, out_size, unrestricted_encoder(plan))

    def wake_reader(self) -> None:
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
        except FileNotFoundError:
            return
        os.close(fd)

    def close(self) -> None:
        """Close the channel: the kernel removes the node and fails what is still open."""
        try:
            os.close(self.fd)
        except OSError:
            pass


class CuseServer(ServerBase):
    """Serves each device as a real character device ``/dev/NAME`` through CUSE.

    The same API as :class:`~fusd_runtime.server.Server` (add/remove/path/start/
    stop/serve_forever/``with``/call_soon_threadsafe/call_later); devices may be
    added before or after ``start()``.  The serving model is FUSE's: callbacks of
    one device never run concurrently, different devices never wait for each
    other.  Needs root and ``/dev/cuse`` (:func:`cuse_available`).

    Args:
        readers: reader threads per device (they share the device's /dev/cuse fd); default
            as on FUSE (``session.default_readers``).
        record: a path or a ``fusd_wire.trace`` Recorder: capture every message.
        debug: log each request and its reply as served (``fusd.debug`` logger), as on FUSE.
        uid, gid: default owner of the nodes (default: the server's).
        node_timeout: seconds to wait for the kernel to create a node.
    """

    transport = "cuse"

    def __init__(self, *, readers: Optional[int] = None, record: Any = None, debug: bool = False,
                 uid: Optional[int] = None, gid: Optional[int] = None, node_timeout: float = 10.0) -> None:
        super().__init__(record=record, debug=debug)
        self.readers = default_readers() if readers is None else readers
        self.uid = os.geteuid() if uid is None else uid
        self.gid = os.getegid() if gid is None else gid
        self.node_timeout = node_timeout
        self._devices: Dict[str, Device] = {}
        self._attrs: Dict[str, Dict[str, int]] = {}
        self.sessions: Dict[str, CuseSession] = {}

    # ------------------------------------------------------------------ devices
    def add(self, device: Device, name: Optional[str] = None, *, mode: Optional[int] = None,
            uid: Optional[int] = None, gid: Optional[int] = None, major: int = 0, minor: int = 0) -> Device:
        """Serve ``device`` as ``/dev/<name>``; ``major``/``minor`` 0 let the kernel choose the number."""
        name = name or device.name or type(device).__name__.lower()
        if name in self._devices or any(d is device for d in self._devices.values()):
            raise ValueError(f"already registered: {name!r}")
        mode = device.mode if mode is None else mode
        uid = (self.uid if device.uid is None else device.uid) if uid is None else uid
        gid = (self.gid if device.gid is None else device.gid) if gid is None else gid
        self._devices[name] = device
        device.name = name
        try:
            self._prepare(device)
        except BaseException:
            self._devices.pop(name, None)
            raise
        self._attrs[name] = {"mode": stat.S_IMODE(mode), "uid": uid, "gid": gid, "major": major, "minor": minor}
        if self._serving:
            try:
                self._start_device(name)
            except BaseException:
                self._devices.pop(name, None)
                self._attrs.pop(name, None)
                raise
        return device

    def remove(self, device: Union[Device, str]) -> None:
        """Stop serving a device: its node disappears; its open files fail from then on."""
        name = self._name_of(device)
        dev = self._devices.pop(name)
        self._attrs.pop(name, None)
        session = self.sessions.pop(name, None)
        dev.session = None
        if session is None:
            return
        if threading.current_thread() in session.threads:
            # called from one of its own callbacks: the readers cannot be waited for here
            strand_of(dev).run(self._detach, session)
            threading.Thread(target=self._stop_session, args=(session,), name="fusd-cuse-remove",
                             daemon=True).start()
        else:
            self._stop_session(session)

    def _name_of(self, device: Union[Device, str]) -> str:
        if isinstance(device, Device):
            for name, dev in self._devices.items():
                if dev is device:
                    return name
        elif device in self._devices:
            return device
        raise KeyError(f"no such device: {device!r}")

    def path(self, name: Union[str, Device]) -> str:
        """The device node a client opens: ``/dev/<name>``."""
        return "/dev/" + (self._name_of(name) if isinstance(name, Device) else name)

    def devices(self) -> Dict[str, Device]:
        """Registered devices by name."""
        return dict(self._devices)

    # ------------------------------------------------------------------ sessions
    def _start_device(self, name: str) -> None:
        device, attrs = self._devices[name], self._attrs[name]
        path = "/dev/" + name
        if os.path.lexists(path):
            raise FileExistsError(errno.EEXIST, f"{path} already exists; CUSE needs a free name", path)
        session = CuseSession(device, name, dev_major=attrs["major"], dev_minor=attrs["minor"],
                              readers=self.readers, recorder=self.recorder, on_error=self._on_error,
                              loop=self._loop, on_end=self._session_ended)
        self.sessions[name] = session
        device.session = session
        try:
            session.start_readers()
            if not session.initialized.wait(self.node_timeout):
                raise RuntimeError(f"the kernel sent no CUSE_INIT for {path} within {self.node_timeout} s")
            deadline = time.monotonic() + self.node_timeout
            while not os.path.exists(path):
                if time.monotonic() > deadline or not any(t.is_alive() for t in session.threads):
                    raise RuntimeError(f"the kernel did not create {path} (name or device number taken? "
                                       f"kernel protocol 7.{session.kernel_minor})")
                time.sleep(0.01)
            os.chmod(path, attrs["mode"])
            if (attrs["uid"], attrs["gid"]) != (0, 0):
                os.chown(path, attrs["uid"], attrs["gid"])
            log.info("fusd: serving %s (CUSE 7.%d, %s, %d reader%s)", path, session.minor, type(device).__name__,
                     self.readers, "s"[:self.readers > 1])
        except BaseException:
            self.sessions.pop(name, None)
            device.session = None
            self._stop_session(session)
            raise

    @staticmethod
    def _detach(session: CuseSession) -> None:
        if session.device is not GONE:
            session.detach_device(session.device)
            session.device = GONE

    def _stop_session(self, session: CuseSession) -> None:
        log.info("fusd: stopping %s", session.path)
        strand_of(session.device).run(self._detach, session)  # never alongside the device's callbacks
        session.stop_readers()
        session.close()

    # ------------------------------------------------------------------ transport hooks
    def _open_transport(self) -> None:
        for name in list(self._devices):
            self._start_device(name)

    def _close_transport(self) -> None:
        errors: List[BaseException] = []
        for name in list(self.sessions):
            session = self.sessions.pop(name)
            try:
                self._stop_session(session)
            except BaseException as exc:  # keep removing the other nodes
                errors.append(exc)
        for dev in self._devices.values():
            dev.session = None
        if errors:
            raise errors[0]

    def _sessions(self) -> List[Session]:
        return list(self.sessions.values())

    def start(self) -> CuseServer:
        """Create the device nodes, start the readers and the event loop (background thread)."""
        super().start()
        return self

    def __enter__(self) -> CuseServer:
        return self.start()


def open_server(transport: str = "auto", **kwargs: Any) -> Union[Server, CuseServer]:
    """A server for ``transport``: "cuse", "fuse", "uring" (FUSE over io_uring, see ``Server``),
    or "auto" (CUSE where :func:`cuse_available`, else FUSE).

    ``kwargs`` go to the chosen class (``mountpoint=`` only means something to FUSE
    and is dropped for CUSE).  The result's ``transport`` attribute says which it is.
    """
    if transport not in ("auto", "fuse", "uring", "cuse"):
        raise ValueError(f"transport must be 'auto', 'fuse', 'uring' or 'cuse', not {transport!r}")
    if transport == "uring":
        return Server(transport="uring", **kwargs)
    if transport == "cuse" or (transport == "auto" and cuse_available()):
        if transport == "cuse" and not cuse_available():
            raise RuntimeError("CUSE is not available here: needs /dev/cuse (a kernel with CONFIG_CUSE) and root")
        for key in ("mountpoint", "allow_other", "mount_method", "fsname", "mount_options"):
            kwargs.pop(key, None)
        return CuseServer(**kwargs)
    return Server(**kwargs)
