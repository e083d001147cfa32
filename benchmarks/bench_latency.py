"""Round-trip latency of one system call on a fusd device, beside the kernel floors.

Each op is one pytest-benchmark group: the fusd device (served by a separate
``perfserver`` process, see conftest) and the kernel-only targets for the same
call.  Run:

    python -m pytest benchmarks/bench_latency.py --benchmark-enable --benchmark-json=out.json
    python -m pytest benchmarks/bench_latency.py --benchmark-enable --benchmark-compare

The client loop is Python (pytest-benchmark calls ``os.pread`` etc.), so every
number, floors included, carries ~0.1-0.3 µs of interpreter overhead; ``fusd
bench`` measures the same calls with a C client.  The floors are the ones named
in the issue: ``/dev/null``, ``/dev/zero``, a 64 KiB tmpfs file, and a pipe(2)
for the poll wakeup.
"""

from __future__ import annotations

import fcntl
import os
import select
import subprocess
import sys
from typing import Any, Callable, Iterator, Tuple

import pytest

from fusd_runtime.examples import COUNTER_ADD

BUF1 = b"x"
BUF64 = b"x" * 65536


def _target(name: str, fusd_server: Any, floors: Any, fusd_name: str = "dev0") -> str:
    return fusd_server.paths[fusd_name] if name == "fusd" else floors.targets[name]


@pytest.fixture
def fd_of(request: Any, fusd_server: Any, floors: Any) -> Iterator[Callable[[str, str], int]]:
    opened = []

    def get(name: str, fusd_name: str = "dev0") -> int:
        fd = os.open(_target(name, fusd_server, floors, fusd_name), os.O_RDWR)
        opened.append(fd)
        return fd
    yield get
    for fd in opened:
        os.close(fd)


def _ignore_errors(call: Callable[[], Any]) -> Callable[[], Any]:
    """Floors like /dev/null answer ENOTTY to an ioctl: that is still the kernel's round trip."""
    def f() -> Any:
        try:
            return call()
        except OSError:
            return None
    return f


@pytest.mark.benchmark(group="pread1")
@pytest.mark.parametrize("target", ["fusd", "zero", "tmpfs", "null"])
def test_pread1(benchmark: Any, record: Any, fd_of: Any, target: str) -> None:
    fd = fd_of(target)
    benchmark(os.pread, fd, 1, 0)
    record("pread1", target)


@pytest.mark.benchmark(group="pwrite1")
@pytest.mark.parametrize("target", ["fusd", "null", "tmpfs"])
def test_pwrite1(benchmark: Any, record: Any, fd_of: Any, target: str) -> None:
    fd = fd_of(target)
    benchmark(os.pwrite, fd, BUF1, 0)
    record("pwrite1", target)


@pytest.mark.benchmark(group="openclose")
@pytest.mark.parametrize("target", ["fusd", "null", "tmpfs"])
def test_openclose(benchmark: Any, record: Any, fusd_server: Any, floors: Any, target: str) -> None:
    path = _target(target, fusd_server, floors)
    rdwr, op, close = os.O_RDWR, os.open, os.close
    benchmark(lambda: close(op(path, rdwr)))
    record("openclose", target)


@pytest.mark.benchmark(group="ioctl")
@pytest.mark.parametrize("target", ["fusd", "null"])
def test_ioctl(benchmark: Any, record: Any, fd_of: Any, target: str) -> None:
    """_IOWR('C', 2, u64) on the Counter: 8 bytes in, 8 bytes back (the floor answers ENOTTY)."""
    fd = fd_of(target, "counter0")
    arg = bytearray((1).to_bytes(8, "little"))
    call = _ignore_errors(lambda: fcntl.ioctl(fd, COUNTER_ADD, arg, True))
    benchmark(call)
    record("ioctl", target)


@pytest.mark.benchmark(group="poll")
@pytest.mark.parametrize("target", ["fusd", "null"])
def test_poll(benchmark: Any, record: Any, fd_of: Any, target: str) -> None:
    p = select.poll()
    p.register(fd_of(target), select.POLLIN)
    benchmark(p.poll, 0)
    record("poll", target)


@pytest.mark.benchmark(group="read64k")
@pytest.mark.parametrize("target", ["fusd", "zero", "tmpfs"])
def test_read64k(benchmark: Any, record: Any, fd_of: Any, target: str) -> None:
    fd = fd_of(target)
    buf = bytearray(65536)
    benchmark(os.preadv, fd, [buf], 0)  # into one reused buffer, like a C client
    record("read64k", target)


@pytest.mark.benchmark(group="write64k")
@pytest.mark.parametrize("target", ["fusd", "null", "tmpfs"])
def test_write64k(benchmark: Any, record: Any, fd_of: Any, target: str) -> None:
    fd = fd_of(target)
    benchmark(os.pwrite, fd, BUF64, 0)
    record("write64k", target)


POLLER = """
import os, select, sys
rfd, pong = int(sys.argv[1]), int(sys.argv[2])
p = select.poll(); p.register(rfd, select.POLLIN)
while True:
    p.poll()
    if os.read(rfd, 1) == b"q":
        break
    os.write(pong, b"!")
"""


@pytest.fixture
def poller(fusd_server: Any) -> Iterator[Callable[[str], Tuple[int, int]]]:
    """A second process blocked in poll(); returns (fd that makes it ready, fd it answers on)."""
    started = []

    def start(target: str) -> Tuple[int, int]:
        if target == "fusd":
            rfd = os.open(fusd_server.paths["pipe0"], os.O_RDWR)
            wfd = os.open(fusd_server.paths["pipe0"], os.O_RDWR)
        else:
            rfd, wfd = os.pipe()
        pong_r, pong_w = os.pipe()
        proc = subprocess.Popen([sys.executable, "-c", POLLER, str(rfd), str(pong_w)], pass_fds=(rfd, pong_w))
        os.close(rfd)
        os.close(pong_w)
        started.append((proc, wfd, pong_r))
        return wfd, pong_r
    yield start
    for proc, wfd, pong_r in started:
        os.write(wfd, b"q")
        proc.wait(10)
        os.close(wfd)
        os.close(pong_r)


@pytest.mark.benchmark(group="pollwake")
@pytest.mark.parametrize("target", ["fusd", "pipe"])
def test_pollwake(benchmark: Any, record: Any, poller: Any, target: str) -> None:
    """Device becomes ready -> the process waiting in poll() wakes (it answers over a pipe).

    One sample is write(1 byte) making the device readable, the poller's wakeup
    (FUSE: notify + a new POLL + its READ of the byte) and the answer back over a
    kernel pipe; the floor is the same ping-pong over two pipes.
    """
    wfd, pong = poller(target)
    write, read = os.write, os.read

    def ping() -> None:
        write(wfd, BUF1)
        read(pong, 1)
    benchmark(ping)
    record("pollwake", target)
