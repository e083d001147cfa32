"""The test kit: the same test bodies on the loopback kernel and on the real kernel, and the plugin's promises.

``@pytest.mark.fusd(backend="all")`` runs a test once per backend; the kernel run
skips (with the reason) where this machine cannot mount.  The plugin's behaviour
as a user sees it (the trace of a failing test, teardown after a failure, a run
as an ordinary user without /dev/fuse) is checked by running pytest in a
subprocess on small test files, as a device author would.
"""

from __future__ import annotations

import errno
import os
import re
import select
import shutil
import struct
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any, Callable, List

import pytest
from ioctl_schemas import XFER, xfer

from fusd_runtime import DEFER, Context, Device
from fusd_runtime.examples import COUNTER_ADD, COUNTER_GET, Counter, PipeDevice
from fusd_runtime.ioctl import ioctl
from fusd_runtime.testing import ServedDevice, Unavailable, choose, serve

ROOT = Path(__file__).resolve().parent.parent
Factory = Callable[..., ServedDevice]


# ---------------------------------------------------------------------- one body, every backend
@pytest.mark.fusd(backend="all")
def test_pipe_on_every_backend(fusd_device: Factory) -> None:
    dev = fusd_device(PipeDevice(), "pipe")
    with dev.open(os.O_RDWR) as f, dev.open(os.O_RDONLY | os.O_NONBLOCK) as nb:
        assert f.write(b"hello") == 5
        assert f.read(64) == b"hello"
        with pytest.raises(BlockingIOError):
            nb.read(8)
        assert f.poll(select.POLLIN, 0) == 0
        threading.Timer(0.1, lambda: dev.device.write(None, b"wake", 0)).start()  # type: ignore[arg-type]
        assert f.poll(select.POLLIN, 30) & select.POLLIN  # a NOTIFY_POLL woke the waiter
        assert f.read(64) == b"wake"
    dev.wait_for(lambda: dev.device.open_count == 0, what="the RELEASEs")


@pytest.mark.fusd(backend="all")
def test_ioctls_on_every_backend(fusd_device: Factory) -> None:
    dev = fusd_device(Counter(), "counter")
    with dev.open() as f:
        assert f.ioctl(COUNTER_ADD, struct.pack("<Q", 40)) == struct.pack("<Q", 40)
        buf = bytearray(8)
        assert f.ioctl(COUNTER_GET, buf) == 0 and buf == struct.pack("<Q", 40)
        with pytest.raises(OSError) as exc:
            f.ioctl(0x80084399, bytes(8))  # an _IOR the device does not know
        assert exc.value.errno == errno.ENOTTY


class Blocker(Device):
    """Reads block until interrupted."""

    def __init__(self) -> None:
        self.pending: list = []
        self.interrupted = 0

    def read(self, ctx: Context, size: int, offset: int) -> Any:
        self.pending.append(ctx.defer(on_interrupt=self._gone))
        return DEFER

    def _gone(self, handle: Any) -> None:
        self.interrupted += 1
        self.pending.remove(handle)


@pytest.mark.fusd(backend="all")
def test_a_signal_interrupts_a_blocked_read_on_every_backend(fusd_device: Factory) -> None:
    dev = fusd_device(Blocker(), "blocker")
    with dev.open(os.O_RDONLY) as f:
        call = f.start_read(16)
        dev.wait_for(lambda: dev.device.pending, what="the blocked read")
        assert call.interrupt()
        with pytest.raises(OSError) as exc:
            call.result(30)
        assert exc.value.errno == errno.EINTR  # the kernel (or loopback) sent INTERRUPT, the runtime EINTR
        dev.wait_for(lambda: dev.device.interrupted == 1, what="on_interrupt")


class Spi(Device):
    """An ioctl whose argument points to two buffers (CUSE only)."""

    @ioctl(XFER, xfer)
    def transfer(self, ctx: Context, x: Any) -> int:
        x.rx[:len(x.tx)] = bytes(x.tx).upper()
        return len(x.tx)


@pytest.mark.fusd(backend="all", transport="cuse")
def test_pointer_ioctls_in_the_callers_memory(fusd_device: Factory) -> None:
    dev = fusd_device(Spi())
    tx, rx = dev.alloc(b"ping"), dev.alloc(8)
    with dev.open() as f:
        assert f.ioctl(XFER, dev.alloc(xfer.build(dict(tx=tx.addr, rx=rx.addr, tx_len=4, rx_len=8)))) == 4
    assert rx.read() == b"PING" + bytes(4)


def test_auto_chooses_cuse_for_devices_fuse_cannot_serve() -> None:
    backend, transport = choose(Spi(), "loopback")
    assert (backend, transport) == ("loopback", "cuse")
    with pytest.raises(Unavailable) as exc:
        choose(Spi(), "loopback", "fuse")
    assert "pointer" in str(exc.value)
    assert choose(PipeDevice(), "loopback") == ("loopback", "fuse")


# ---------------------------------------------------------------------- kernel only: external clients
@pytest.mark.fusd(backend="kernel")
def test_wait_opened_and_a_subprocess_client(fusd_device: Factory) -> None:
    dev = fusd_device(PipeDevice(), "pipe")
    proc = subprocess.Popen([sys.executable, "-c", "import os, sys; fd = os.open(sys.argv[1], os.O_RDWR); "
                             "print(os.read(fd, 10).decode())", dev.path], stdout=subprocess.PIPE, text=True)
    try:
        dev.wait_opened(1)  # the client got through open(2); its read is now blocked in the device
        dev.device.write(None, b"for you", 0)  # type: ignore[arg-type]
        assert proc.communicate(timeout=30)[0].strip() == "for you"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.mark.fusd(backend="kernel")
@pytest.mark.skipif(os.geteuid() != 0, reason="a private mount namespace needs root")
def test_the_device_at_a_hard_coded_path(fusd_device: Factory) -> None:
    dev = fusd_device(PipeDevice(), "modem")
    dev.device.write(None, b"ATZ\r\n", 0)  # type: ignore[arg-type]
    target = "/dev/ttyFUSDTEST9"
    assert not os.path.exists(target)
    out = dev.at(target).run(["sh", "-c", f"ls -l {target} >&2; head -c 5 {target}"], capture_output=True,
                             timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout == b"ATZ\r\n"
    assert not os.path.exists(target)  # only the command's namespace ever had it


# ---------------------------------------------------------------------- the plugin, as a user runs it
EXAMPLE = '''
import errno, os, select
import pytest
from fusd_runtime import Device, POLLIN, POLLOUT


class Mailbox(Device):
    def __init__(self):
        self.letters = []

    def write(self, ctx, data, offset):
        self.letters.append(bytes(data))
        self.notify_poll()
        return len(data)

    def read(self, ctx, size, offset):
        if not self.letters:
            raise BlockingIOError(errno.EAGAIN, "no mail")
        return self.letters.pop(0)[:size]

    def poll(self, ctx, events):
        return POLLOUT | (POLLIN if self.letters else 0)


def test_mailbox(fusd_device, fusd_backend):
    dev = fusd_device(Mailbox(), "mailbox")
    print("served on", dev.backend, dev.transport, "uid", os.geteuid(), "/dev/fuse", os.path.exists("/dev/fuse"))
    with dev.open(os.O_RDWR) as f:
        f.write(b"hi")
        assert f.poll(select.POLLIN, 5) & select.POLLIN
        assert f.read(10) == b"hi"
        with pytest.raises(BlockingIOError):
            f.read(10)


def test_fails_with_a_trace(fusd_device):
    dev = fusd_device(Mailbox(), "mailbox")
    print("mountpoint", dev.mountpoint)
    with dev.open(os.O_RDWR) as f:
        f.write(b"LETTER-FOR-THE-TRACE")
        assert f.read(100) == b"something else"
'''


def run_pytest(tmp_path: Path, *args: str, prefix: tuple = (), env: Any = None) -> subprocess.CompletedProcess:
    (tmp_path / "test_example.py").write_text(EXAMPLE)
    return subprocess.run([*prefix, sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "-rs", "-s",
                           str(tmp_path / "test_example.py"), *args], capture_output=True, text=True, timeout=300,
                          cwd=str(tmp_path), env=env or {**os.environ, "PYTHONPATH": str(ROOT)})


def test_a_failing_test_shows_the_decoded_protocol(tmp_path: Path) -> None:
    proc = run_pytest(tmp_path, "--fusd-backend=loopback")
    out = proc.stdout
    assert proc.returncode == 1, out + proc.stderr
    assert "1 failed, 1 passed" in out
    assert "fusd protocol: mailbox (loopback-fuse, call)" in out
    assert "opcode: WRITE (16)" in out and '"LETTER-FOR-THE-TRACE"' in out  # the request, decoded
    assert "reply to READ" in out


def _reachable_by_nobody(path: str) -> List[str]:
    """Shell lines (run as root in a private mount namespace) that let nobody reach ``path``.

    Our interpreter may live under a directory others cannot enter (pyenv in /root): in the
    namespace only, a tmpfs replaces that directory and the one entry on the way is bound back.
    """
    parts = Path(os.path.realpath(path)).parts
    for i in range(1, len(parts) - 1):
        d = os.path.join(*parts[:i + 1])
        if not os.stat(d).st_mode & 0o001:
            child = parts[i + 1]
            return [f"mkdir -p /run/fusd-shadow && mount --bind {d} /run/fusd-shadow",
                    f"mount -t tmpfs -o mode=755 none {d} && mkdir {d}/{child}",
                    f"mount --bind /run/fusd-shadow/{child} {d}/{child}"]
    return []


def test_the_loopback_runs_as_nobody_without_dev_fuse() -> None:
    """An unprivileged container: user nobody, and /dev holds null/zero/urandom/random only (no fuse)."""
    if os.geteuid() != 0 or shutil.which("unshare") is None or shutil.which("setpriv") is None:
        pytest.skip("needs root, unshare and setpriv to make the unprivileged container")
    work = Path(tempfile.mkdtemp(prefix="fusd-nobody-"))
    try:
        os.chmod(work, 0o755)
        setup = ["mkdir -p /run/fusd-olddev", "mount --bind /dev /run/fusd-olddev",
                 "mount -t tmpfs -o mode=755 none /dev",
                 *[f"touch /dev/{n} && mount --bind /run/fusd-olddev/{n} /dev/{n}"
                   for n in ("null", "zero", "urandom", "random")],
                 *_reachable_by_nobody(sys.executable),
                 'exec setpriv --reuid=65534 --regid=65534 --clear-groups --inh-caps=-all --bounding-set=-all '
                 'env HOME=/tmp "$@"']
        prefix = ("unshare", "--mount", "--propagation", "private", "sh", "-ec", " && ".join(setup[:-1]) + "; "
                  + setup[-1], "sh")
        proc = run_pytest(work, "-k", "test_mailbox", prefix=prefix)
        out = proc.stdout + proc.stderr
        assert proc.returncode == 0, out
        assert "served on loopback fuse uid 65534 /dev/fuse False" in out and "1 passed" in out
        # and as root on this machine, the same file serves on a real mount
        if os.path.exists("/dev/fuse"):
            proc = run_pytest(work, "-k", "test_mailbox")
            assert proc.returncode == 0, proc.stdout + proc.stderr
            assert "served on kernel" in proc.stdout
    finally:
        shutil.rmtree(work, ignore_errors=True)


def test_teardown_after_a_failure_leaves_no_mount(tmp_path: Path) -> None:
    if os.geteuid() != 0 or not os.path.exists("/dev/fuse"):
        pytest.skip("needs a real FUSE mount")
    proc = run_pytest(tmp_path, "--fusd-backend=kernel", "-k", "fails")
    assert proc.returncode == 1 and "fusd protocol: mailbox (kernel-fuse, call)" in proc.stdout
    (mountpoint,) = re.findall(r"^mountpoint (\S+)$", proc.stdout, re.M)
    with open("/proc/mounts") as f:
        assert mountpoint not in [line.split()[1] for line in f]  # the failing test's mount is gone
    assert not os.path.exists(mountpoint)  # and its temporary directory


def test_serve_without_pytest() -> None:
    with serve(PipeDevice(), "pipe", backend="loopback") as dev:
        with dev.open() as f:
            f.write(b"x")
            assert f.read(1) == b"x"
        assert "opcode: WRITE" in dev.trace()
    with pytest.raises(Unavailable):
        _ = dev.path  # a loopback device has no path


# ---------------------------------------------------------------------- the loopback against the kernel
class Echo(Counter):
    """Reads return what was written; ioctls count; a flush callback (so close sends FLUSH)."""

    def __init__(self) -> None:
        super().__init__()
        self.data = b""

    def write(self, ctx: Context, data: bytes, offset: int) -> int:
        self.data += bytes(data)
        return len(data)

    def read(self, ctx: Context, size: int, offset: int) -> bytes:
        out, self.data = self.data[:size], self.data[size:]
        return out

    def poll(self, ctx: Context, events: int) -> int:
        return select.POLLOUT | (select.POLLIN if self.data else 0)

    def flush(self, ctx: Context) -> None:
        pass


def _device_requests(dev: ServedDevice) -> List[tuple]:
    """The device's requests as the session received them, without run-specific numbers."""
    from fusd_wire.trace import Decoder, open_capture
    from fusd_wire.trace.decode import REQUEST

    dev.recorder.flush()
    keep = {"OPEN", "READ", "WRITE", "IOCTL", "POLL", "FLUSH", "RELEASE", "FSYNC", "INTERRUPT"}
    drop = {"fh", "kh", "lock_owner", "arg", "unique", "padding", "unused", "_io"}
    out = []
    for ev in Decoder(open_capture(dev._buffer.getvalue())):
        if ev.kind != REQUEST or ev.message is None or ev.message.name not in keep:
            continue
        fields = []
        for part, value in ev.message.body.items():
            if isinstance(value, dict):
                fields += [(k, v) for k, v in value.items() if k not in drop]
            elif part == "data":
                fields.append(("data", bytes(value)))
        out.append((ev.message.name, tuple(fields)))
    return out


def _scenario(dev: ServedDevice) -> None:
    with dev.open(os.O_RDWR) as f:
        assert f.write(b"0123456789") == 10
        assert f.read(4) == b"0123"
        assert f.ioctl(COUNTER_ADD, struct.pack("<Q", 3)) == struct.pack("<Q", 3)
        assert f.poll(select.POLLIN, 0) & select.POLLIN
        assert f.poll(select.POLLIN, 5) & select.POLLIN
        f.set_blocking(False)
        assert f.read(100) == b"456789"
    dev.wait_for(lambda: dev.device.open_count == 0, what="RELEASE")


@pytest.mark.parametrize("transport", ["fuse", "cuse"])
def test_the_loopback_sends_what_the_kernel_sends(transport: str) -> None:
    """The same client calls on the loopback and on the real kernel: the device gets the same requests."""
    try:
        kernel_dev = serve(Echo(), "echo" if transport == "fuse" else None, backend="kernel", transport=transport)
    except Unavailable as exc:
        pytest.skip(str(exc))
    with kernel_dev:
        _scenario(kernel_dev)
        from_kernel = _device_requests(kernel_dev)
    with serve(Echo(), "echo", backend="loopback", transport=transport) as loop_dev:
        _scenario(loop_dev)
        from_loopback = _device_requests(loop_dev)
    assert [name for name, _ in from_loopback] == [name for name, _ in from_kernel]
    assert from_loopback == from_kernel
