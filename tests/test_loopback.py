"""The loopback kernel: the real session driven over a socketpair, with the kernel's rules.

No root and no /dev/fuse: every test here runs as an ordinary user (and
``test_testkit_unprivileged.py`` runs a selection as ``nobody`` with /dev/fuse
hidden).  Where a rule is the kernel's, the test names the function of
``fs/fuse`` it follows; the FUSE/CUSE tiers check the same behaviour against the
real kernel (``test_runtime_fuse.py``, ``tests/cuse/``).
"""

from __future__ import annotations

import errno
import os
import select
import struct
import threading
import time
from typing import Any, Iterator, List

import construct as cs
import pytest
from ioctl_schemas import BATCH, EXTENTS, XFER, batch, extents, xfer

from fusd_runtime import DEFER, Context, Device, ReplyHandle
from fusd_runtime.examples import COUNTER_ADD, COUNTER_GET, Counter, Hello, PipeDevice
from fusd_runtime.ioctl import IOR, IOW, ioctl
from fusd_runtime.loopback import Credentials, LoopbackKernel, LoopbackTimeout
from fusd_runtime.loopback.file import O_LARGEFILE
from fusd_wire import FAST
from fusd_wire import constants as C

OP = C.fuse_opcode
TRANSPORTS = ["fuse", "cuse"]


@pytest.fixture(params=TRANSPORTS)
def transport(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def serve(device: Device, transport: str, name: str = "dev", **kw: Any) -> LoopbackKernel:
    k = LoopbackKernel(transport, timeout=kw.pop("timeout", 10.0), **kw)
    k.add(device, name)
    return k.start()


@pytest.fixture
def kernels() -> Iterator[List[LoopbackKernel]]:
    """Kernels started by a test; stopped afterwards, and none may have seen a protocol violation."""
    made: List[LoopbackKernel] = []
    yield made
    for k in made:
        k.stop()
    for k in made:
        k.check()


class Recorder(Device):
    """Remembers every callback with the flags and offsets the kernel passed."""

    def __init__(self) -> None:
        self.calls: List[tuple] = []

    def open(self, ctx: Context) -> None:
        self.calls.append(("open", ctx.flags))

    def read(self, ctx: Context, size: int, offset: int) -> bytes:
        self.calls.append(("read", size, offset, ctx.nonblock))
        return b"x" * min(size, 5000)

    def write(self, ctx: Context, data: bytes, offset: int) -> int:
        self.calls.append(("write", len(data), offset))
        return len(data)

    def flush(self, ctx: Context) -> None:
        self.calls.append(("flush",))

    def release(self, ctx: Context) -> None:
        self.calls.append(("release", ctx.flags))


# ---------------------------------------------------------------------- read / write
def test_read_write_nonblocking_and_a_deferred_read(transport: str, kernels: List[LoopbackKernel]) -> None:
    pipe = PipeDevice()
    k = serve(pipe, transport)
    kernels.append(k)
    f = k.open("dev", os.O_RDWR)
    assert f.write(b"hello") == 5
    assert f.read(64) == b"hello"
    nb = k.open("dev", os.O_RDONLY | os.O_NONBLOCK)
    with pytest.raises(BlockingIOError):
        nb.read(16)  # O_NONBLOCK reaches the device in read_in.flags: EAGAIN
    nb.set_blocking(True)
    threading.Timer(0.1, f.write, (b"later",)).start()
    assert nb.read(16) == b"later"  # blocked in the device (a deferred reply) until the write
    nb.close()
    f.close()


def test_chunks_follow_max_read_and_max_write(transport: str, kernels: List[LoopbackKernel]) -> None:
    dev = Recorder()
    k = serve(dev, transport)
    kernels.append(k)
    f = k.open("dev", os.O_RDWR)
    nmax = min(k.max_write, k.max_pages * 4096)
    assert f.write(b"a" * (nmax + 10)) == nmax + 10
    # fuse_direct_io advances its local position per chunk, even on a stream (and on CUSE)
    assert [c for c in dev.calls if c[0] == "write"] == [("write", nmax, 0), ("write", 10, nmax)]
    # a short answer (5000 of 8192) ends the read: fuse_direct_io stops at the first short chunk
    assert len(f.read(8192)) == 5000
    assert f.write(b"") == 0 and f.read(0) == b""  # count 0: no request at all
    assert [c[0] for c in dev.calls].count("read") == 1
    f.close()


def test_access_mode_and_permissions(transport: str, kernels: List[LoopbackKernel]) -> None:
    dev = Recorder()
    dev.mode = 0o600
    k = serve(dev, transport)
    kernels.append(k)
    ro = k.open("dev", os.O_RDONLY)
    with pytest.raises(OSError) as exc:
        ro.write(b"x")  # no request: the VFS refuses (FMODE_WRITE missing)
    assert exc.value.errno == errno.EBADF
    ro.close()
    other = Credentials(uid=os.geteuid() + 4321, gid=os.getegid() + 4321, pid=1)
    if os.geteuid() != 0:
        with pytest.raises(PermissionError):
            k.open("dev", os.O_RDONLY, creds=other)  # mode 0600, another user: EACCES
    root = Credentials(uid=0, gid=0, pid=1)
    k.open("dev", os.O_RDONLY, creds=root).close()  # root passes generic_permission
    assert dev.calls.count(("open", os.O_RDONLY | O_LARGEFILE)) == 2  # open(2) adds O_LARGEFILE on 64-bit


def test_open_flags_seen_by_the_device(transport: str, kernels: List[LoopbackKernel]) -> None:
    dev = Recorder()
    k = serve(dev, transport)
    kernels.append(k)
    k.open("dev", os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOCTTY | os.O_TRUNC | os.O_APPEND).close()
    (_, flags), = [c for c in dev.calls if c[0] == "open"]
    assert not flags & (os.O_CREAT | os.O_EXCL | os.O_NOCTTY)  # fuse_send_open strips them
    # FuseSession asks for FUSE_ATOMIC_O_TRUNC, so O_TRUNC passes on FUSE; CUSE never has it
    assert bool(flags & os.O_TRUNC) == (transport == "fuse")
    assert flags & os.O_APPEND and flags & os.O_ACCMODE == os.O_WRONLY


def test_stream_offsets_and_seekable_files(kernels: List[LoopbackKernel]) -> None:
    stream = Recorder()
    k = serve(stream, "fuse")
    kernels.append(k)
    f = k.open("dev", os.O_RDWR)
    f.read(10), f.read(10)
    with pytest.raises(OSError) as exc:
        f.pread(10, 100)
    assert exc.value.errno == errno.ESPIPE
    assert [c[2] for c in stream.calls if c[0] == "read"] == [0, 0]  # FOPEN_STREAM: offsets are 0
    f.close()

    class Seekable(Recorder):
        seekable = True

    dev = Seekable()
    k2 = serve(dev, "fuse")
    kernels.append(k2)
    f = k2.open("dev", os.O_RDWR)
    f.read(10)
    f.pwrite(b"abc", 500)
    f.read(10)
    assert f.lseek(0, os.SEEK_CUR) == 20
    assert [c[2] for c in dev.calls if c[0] in ("read", "write")] == [0, 500, 10]
    f.close()


def test_cuse_ignores_offsets(kernels: List[LoopbackKernel]) -> None:
    dev = Recorder()
    k = serve(dev, "cuse")
    kernels.append(k)
    f = k.open("dev", os.O_RDWR)
    f.pread(10, 1000)  # cuse_read_iter: pos is a local 0
    assert f.lseek(77) == 0  # noop_llseek
    assert [c[2] for c in dev.calls if c[0] == "read"] == [0]
    with pytest.raises(OSError) as exc:
        f.fsync()  # no fsync in cuse_frontend_fops
    assert exc.value.errno == errno.EINVAL
    f.close()


# ---------------------------------------------------------------------- close
def test_flush_release_and_dup(transport: str, kernels: List[LoopbackKernel]) -> None:
    dev = Recorder()
    k = serve(dev, transport)
    kernels.append(k)
    f = k.open("dev", os.O_RDWR)
    g = f.dup()
    f.close()
    released = ("release", os.O_RDWR | O_LARGEFILE)
    assert released not in dev.calls  # another reference is open
    g.close()
    # FUSE: FLUSH per close(2), then RELEASE once (in the background: wait for it); CUSE: no FLUSH
    assert _eventually(lambda: released in dev.calls)
    assert dev.calls.count(("flush",)) == (2 if transport == "fuse" else 0)
    with pytest.raises(OSError) as exc:
        g.close()
    assert exc.value.errno == errno.EBADF


def test_noflush_device_gets_no_flush(kernels: List[LoopbackKernel]) -> None:
    pipe = PipeDevice()  # no flush callback: opened with FOPEN_NOFLUSH
    k = serve(pipe, "fuse")
    kernels.append(k)
    f = k.open("dev")
    assert f.open_flags & C.FopenFlags.FOPEN_NOFLUSH
    f.close()
    assert not any(req.opcode == OP.FUSE_FLUSH for req in _sent(k))


def test_flush_error_is_close_error(kernels: List[LoopbackKernel]) -> None:
    class Failing(Device):
        def flush(self, ctx: Context) -> None:
            raise OSError(errno.EIO, "lost data")

    k = serve(Failing(), "fuse")
    kernels.append(k)
    f = k.open("dev")
    with pytest.raises(OSError) as exc:
        f.close()
    assert exc.value.errno == errno.EIO and f.closed


# ---------------------------------------------------------------------- poll
def test_poll_waits_for_a_notification(transport: str, kernels: List[LoopbackKernel]) -> None:
    pipe = PipeDevice()
    k = serve(pipe, transport)
    kernels.append(k)
    f = k.open("dev", os.O_RDWR)
    assert f.poll(select.POLLIN, 0) == 0  # timeout 0: asked without FUSE_POLL_SCHEDULE_NOTIFY
    assert f.poll(select.POLLIN, 0.05) == 0  # nobody writes: the timeout passes
    threading.Timer(0.1, f.write, (b"x",)).start()
    t0 = time.monotonic()
    assert f.poll(select.POLLIN, 30) & select.POLLIN  # woken by NOTIFY_POLL, polled again
    assert time.monotonic() - t0 < 29  # (woken, not timed out; no timing bound asserted)
    assert any(code == C.fuse_notify_code.FUSE_NOTIFY_POLL for code, _ in k.notifications)
    polls = [r for r in _sent(k) if r.opcode == OP.FUSE_POLL]
    flags = [r.body.fuse_poll_in.flags & C.PollFlags.FUSE_POLL_SCHEDULE_NOTIFY for r in polls]
    assert flags[0] == 0 and all(flags[1:])
    assert len({r.body.fuse_poll_in.kh for r in polls}) == 1
    f.close()


def test_poll_without_poll_support_is_the_default_mask(kernels: List[LoopbackKernel]) -> None:
    class NoPoll(Device):
        def poll(self, ctx: Context, events: int) -> int:
            raise OSError(errno.ENOSYS, "no poll")

    k = serve(NoPoll(), "fuse")
    kernels.append(k)
    f = k.open("dev")
    assert f.poll(select.POLLIN | select.POLLOUT, 1) == select.POLLIN | select.POLLOUT
    assert k.no_poll
    f.poll(select.POLLIN, 1)
    assert sum(r.opcode == OP.FUSE_POLL for r in _sent(k)) == 1  # not asked again (fc->no_poll)
    f.close()


def test_poll_error_is_pollerr(kernels: List[LoopbackKernel]) -> None:
    class Broken(Device):
        def poll(self, ctx: Context, events: int) -> int:
            raise OSError(errno.EIO, "broken")

    k = serve(Broken(), "cuse")
    kernels.append(k)
    f = k.open("dev")
    assert f.poll(select.POLLIN, 0) == select.POLLERR
    f.close()


# ---------------------------------------------------------------------- interrupts
class Blocking(Device):
    """A read blocks until interrupted; the interrupt callback is recorded."""

    def __init__(self) -> None:
        self.handles: List[ReplyHandle] = []
        self.interrupted: List[int] = []

    def read(self, ctx: Context, size: int, offset: int) -> Any:
        handle = ctx.defer(on_interrupt=lambda h: self.interrupted.append(h.unique))
        self.handles.append(handle)
        return DEFER


def test_interrupt_answers_eintr(transport: str, kernels: List[LoopbackKernel]) -> None:
    dev = Blocking()
    k = serve(dev, transport)
    kernels.append(k)
    f = k.open("dev", os.O_RDONLY)
    errors: List[int] = []

    def reader() -> None:
        try:
            f.read(10)
        except OSError as exc:
            errors.append(exc.errno or 0)
    t = threading.Thread(target=reader)
    t.start()
    assert _eventually(lambda: dev.handles)
    (p,) = [p for p in k._pending.values() if p.opcode == OP.FUSE_READ]
    assert k.interrupt(p)
    t.join(10)
    assert errors == [errno.EINTR]
    assert _eventually(lambda: dev.interrupted == [p.unique])  # called right after the EINTR answer
    (intr,) = [r for r in _sent(k) if r.opcode == OP.FUSE_INTERRUPT]
    assert intr.unique == p.unique | 1 and intr.body.fuse_interrupt_in.unique == p.unique  # FUSE_INT_REQ_BIT
    f.close()


def test_a_call_without_answer_times_out_after_an_interrupt(kernels: List[LoopbackKernel]) -> None:
    class Stuck(Device):
        def read(self, ctx: Context, size: int, offset: int) -> bytes:
            time.sleep(1.0)  # busy in the callback: the INTERRUPT waits behind it
            return b"late"

    k = serve(Stuck(), "fuse", timeout=0.2)
    kernels.append(k)
    f = k.open("dev", os.O_RDONLY)
    with pytest.raises(LoopbackTimeout) as exc:
        f.read(4)
    assert "READ" in str(exc.value)
    assert any(r.opcode == OP.FUSE_INTERRUPT for r in _sent(k))  # interrupted before giving up
    assert _eventually(lambda: k.late_replies)  # the late answer is no violation (ENOENT to the daemon)
    f.close()


def test_pending_call_at_stop_gets_enodev(kernels: List[LoopbackKernel]) -> None:
    dev = Blocking()
    k = serve(dev, "fuse")
    f = k.open("dev", os.O_RDONLY)
    errors: List[int] = []

    def reader() -> None:
        try:
            f.read(10)
        except OSError as exc:
            errors.append(exc.errno or 0)
    t = threading.Thread(target=reader)
    t.start()
    assert _eventually(lambda: dev.handles)
    k.stop()  # the session answers its pending calls ENODEV, as Server.stop() does
    t.join(10)
    assert errors == [errno.ENODEV]
    k.check()


# ---------------------------------------------------------------------- ioctls
def test_restricted_ioctls(kernels: List[LoopbackKernel]) -> None:
    k = serve(Counter(), "fuse")
    kernels.append(k)
    f = k.open("dev")
    assert f.ioctl(COUNTER_ADD, struct.pack("<Q", 5)) == struct.pack("<Q", 5)
    buf = bytearray(8)
    assert f.ioctl(COUNTER_GET, buf) == 0 and buf == struct.pack("<Q", 5)  # mutated in place
    with pytest.raises(OSError) as exc:
        f.ioctl(IOR("C", 9, 8), bytes(8))
    assert exc.value.errno == errno.ENOTTY
    with pytest.raises(OSError) as exc:
        f.ioctl(COUNTER_ADD, 5)  # a value where _IOW wants an address: copy_from_user fails
    assert exc.value.errno == errno.EFAULT
    assert k.session.codec  # (served by the real session)
    f.close()


class Gadget(Device):
    """Declared ioctls with pointers, arrays of pointers and a flexible array (tests/ioctl_schemas.py)."""

    @ioctl(XFER, xfer)
    def transfer(self, ctx: Context, x: Any) -> int:
        reply = bytes(x.tx).upper()[:x.rx_len]
        x.rx[:len(reply)] = reply
        return len(reply)

    @ioctl(BATCH, batch)
    def run_batch(self, ctx: Context, b: Any) -> Any:
        for seg in b.segs:
            seg.buf = bytes(seg.buf)[::-1]
            seg.flags = 1
        b.done = b.count
        return b

    @ioctl(EXTENTS, extents)
    def map_extents(self, ctx: Context, e: Any) -> None:
        e.items = [dict(start=i * 4096, length=4096 * (i + 1)) for i in range(e.count)]
        e.mapped = e.count


def test_unrestricted_ioctls_chase_pointers_in_the_callers_memory(kernels: List[LoopbackKernel]) -> None:
    k = serve(Gadget(), "cuse")
    kernels.append(k)
    f = k.open("dev")
    mem = k.memory
    tx, rx = mem.alloc(b"hello"), mem.alloc(16)
    raw = xfer.build(dict(tx=tx.addr, rx=rx.addr, tx_len=5, rx_len=16))
    assert f.ioctl(XFER, raw) == raw  # bytes in, the struct back (INOUT: its pointers restored)
    arg = mem.alloc(xfer.build(dict(tx=tx.addr, rx=rx.addr, tx_len=5, rx_len=16)))
    assert f.ioctl(XFER, arg) == 5  # the ioctl's result
    assert rx.read() == b"HELLO" + bytes(11)  # written to the caller's buffer, through the pointer
    # two levels: an array of segments, each pointing to its own buffer
    bufs = [mem.alloc(b"abc"), mem.alloc(b"wxyz")]
    segs = mem.alloc(b"".join(cs.Struct("buf" / cs.Int64ul, "len" / cs.Int32ul, "flags" / cs.Int32ul).build(
        dict(buf=b.addr, len=len(b), flags=0)) for b in bufs))
    top = mem.alloc(struct.pack("<QII", segs.addr, 2, 0))
    f.ioctl(BATCH, top)
    assert [b.read() for b in bufs] == [b"cba", b"zyxw"]
    assert struct.unpack_from("<QII", top.read())[2] == 2  # done = count
    assert [struct.unpack_from("<QII", segs.read(), i * 16)[2] for i in range(2)] == [1, 1]
    # a flexible array: the header says how many items follow
    flex = mem.alloc(struct.pack("<II", 3, 0) + bytes(3 * 16))
    f.ioctl(EXTENTS, flex)
    out = flex.read()
    assert struct.unpack_from("<II", out) == (3, 3)
    assert [struct.unpack_from("<QQ", out, 8 + i * 16) for i in range(3)] == [(0, 4096), (4096, 8192),
                                                                               (8192, 12288)]
    assert k.session.ioctl_retries >= 5  # rounds really went back and forth
    # a pointer into unmapped memory: the kernel's copy fails, the ioctl is EFAULT
    bad = mem.alloc(xfer.build(dict(tx=0xDEAD0000, rx=rx.addr, tx_len=5, rx_len=16)))
    with pytest.raises(OSError) as exc:
        f.ioctl(XFER, bad)
    assert exc.value.errno == errno.EFAULT
    f.close()


def test_unrestricted_ioctl_limits(kernels: List[LoopbackKernel]) -> None:
    from fusd_runtime.ioctl import IoctlRetry

    class Greedy(Device):
        """Raw (libfuse-style) retries: asks for what the test says."""

        ask = ""

        def ioctl(self, ctx: Context, cmd: int, arg: bytes, out_size: int) -> Any:
            if self.ask == "room" and out_size == 0:
                return IoctlRetry([], [(ctx.ioctl_arg, 8192)])  # two pages out: room for 300 iovecs
            if self.ask in ("room", "many"):
                retry = IoctlRetry([], [])
                retry.in_iovs = [(ctx.ioctl_arg, 1)] * 300  # past FUSE_IOCTL_MAX_IOV (the runtime would refuse)
                return retry
            return 7

    dev = Greedy()
    k = serve(dev, "cuse")
    kernels.append(k)
    f = k.open("dev")
    cmd = 0x4701  # no size in the number: the device gets the first (empty) round itself
    region = k.memory.alloc(8192)
    dev.ask = "room"
    with pytest.raises(OSError) as exc:
        f.ioctl(cmd, region)
    assert exc.value.errno == errno.ENOMEM  # more than 256 ranges
    dev.ask = "many"  # 300 iovecs do not even fit the one-page answer buffer: the write is refused, EIO
    with pytest.raises(OSError) as exc:
        f.ioctl(cmd, region)
    assert exc.value.errno == errno.EIO and "4816-byte reply body" in k.violations[-1].what
    k.violations.clear()
    dev.ask = ""
    assert f.ioctl(cmd, 0) == 7  # a number without size: the value reaches the device as is
    f.close()


def test_restricted_retry_is_eio(kernels: List[LoopbackKernel]) -> None:
    class Retrying(Device):
        def ioctl(self, ctx: Context, cmd: int, arg: bytes, out_size: int) -> Any:
            from fusd_runtime.ioctl import IoctlRetry
            return IoctlRetry([(ctx.ioctl_arg, 4)], [])

    k = serve(Retrying(), "fuse")
    kernels.append(k)
    f = k.open("dev")
    with pytest.raises(OSError) as exc:
        f.ioctl(IOW("R", 1, 4), b"abcd")
    assert exc.value.errno == errno.EIO  # "no retry if in restricted mode"
    f.close()


# ---------------------------------------------------------------------- protocol versions
@pytest.mark.parametrize("minor", [45, 38, 31, 22, 12, 8])
def test_old_protocol_minors(minor: int, kernels: List[LoopbackKernel]) -> None:
    pipe = PipeDevice()
    k = serve(pipe, "fuse", minor=minor)
    kernels.append(k)
    assert k.minor == minor and k.session.minor == minor
    f = k.open("dev", os.O_RDWR)
    assert f.write(b"old") == 3 and f.read(10) == b"old"
    f.close()
    writes = [r for r in _sent(k) if r.opcode == OP.FUSE_WRITE]
    assert len(writes[0].raw) == 40 + (24 if minor < 9 else 40) + 3  # FUSE_COMPAT_WRITE_IN_SIZE before 7.9


@pytest.mark.parametrize("minor", [45, 38, 11])
def test_cuse_minors(minor: int, kernels: List[LoopbackKernel]) -> None:
    k = serve(Counter(), "cuse", minor=minor)
    kernels.append(k)
    assert k.minor == minor and k.session.kernel_minor == minor
    f = k.open("dev")
    assert f.ioctl(COUNTER_ADD, struct.pack("<Q", 2)) == struct.pack("<Q", 2)
    f.close()


# ---------------------------------------------------------------------- what the kernel refuses
def test_lying_daemon_messages_are_violations(kernels: List[LoopbackKernel]) -> None:
    k = serve(Hello(), "fuse")
    kernels.append(k)
    daemon = k.channel.daemon  # write as the daemon would, past the session
    out = FAST.fuse_out_header.struct
    daemon.send(out.pack(99, 0, 1234))  # len is not the message size
    daemon.send(out.pack(16, 5, 1234))  # a positive error
    daemon.send(out.pack(16, 0, 778))  # a reply to a request never sent
    daemon.send(out.pack(20, C.fuse_notify_code.FUSE_NOTIFY_POLL, 0) + b"abcd")  # a 4-byte poll wakeup
    daemon.send(out.pack(16, 4242, 0))  # an unknown notification
    assert _eventually(lambda: len(k.violations) == 5)
    whats = [v.what for v in k.violations]
    assert "len 99" in whats[0] and "error 5" in whats[1] and "never sent" in whats[2]
    assert "NOTIFY_POLL" in whats[3] and "unknown code 4242" in whats[4]
    with pytest.raises(AssertionError):
        k.check()
    k.violations.clear()


def test_a_reply_of_the_wrong_size_fails_the_call_with_eio(kernels: List[LoopbackKernel]) -> None:
    gate = threading.Event()

    class Slow(Device):
        def read(self, ctx: Context, size: int, offset: int) -> Any:
            self.handle = ctx.defer()
            gate.set()
            return DEFER

    dev = Slow()
    k = serve(dev, "fuse")
    kernels.append(k)
    f = k.open("dev")
    errors: List[int] = []

    def reader() -> None:
        try:
            f.read(4)
        except OSError as exc:
            errors.append(exc.errno or 0)
    t = threading.Thread(target=reader)
    t.start()
    assert gate.wait(10)
    unique = dev.handle.unique
    k.channel.daemon.send(FAST.fuse_out_header.struct.pack(16 + 9, 0, unique) + b"123456789")  # 9 > 4 asked
    t.join(10)
    assert errors == [errno.EIO]
    assert "9-byte reply body" in k.violations[0].what
    k.violations.clear()
    dev.handle.reply(b"")  # too late now: the session's write meets ENOENT, as in the kernel
    f.close()


# ---------------------------------------------------------------------- helpers
def _eventually(predicate: Any, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.005)
    return bool(predicate())


class _Sent:
    def __init__(self, raw: bytes, req: Any) -> None:
        self.raw, self.opcode, self.unique, self.body = raw, req.opcode, req.unique, req.body


def _sent(k: LoopbackKernel) -> List[_Sent]:
    """The requests the kernel sent, decoded from the session's own recording."""
    return [_Sent(raw, req) for raw, req in k.sent()]
