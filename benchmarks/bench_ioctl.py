"""Declared ioctls against the same device written by hand: daemon CPU per call, both in one run.

    python -m pytest benchmarks/bench_ioctl.py --benchmark-enable -p no:cacheprovider

Two comparisons (devices in ``tests/ioctl_bench_devices.py``):

- **pointer-chasing** (CUSE's unrestricted protocol, three FUSE_IOCTL_RETRY
  rounds per call): ``struct xfer {void *tx; void *rx; u32 len; u32 status}``,
  declared with ``@ioctl`` against a device answering the rounds by hand with
  ``IoctlRetry``.  The host has no CUSE, so the kernel's side is played over a
  SEQPACKET socketpair through the real ``CuseSession`` (``tests/cuse_loopback.py``);
  the session code measured is the one that serves ``/dev/cuse``.  Target: 1.3x.
- **plain fixed-size** (FUSE's restricted ioctls, the real kernel): ``_IOR`` and
  ``_IOWR`` of a 12-byte struct, declared against a hand-written ``ioctl()``
  with ``struct.pack``.  Target: 1.1x.

Daemon CPU is the process's CPU time minus the calling (benchmark) thread's:
what the reader thread spends per call, kernel time of its read/writev
included, the way the perf harness counts a server's CPU.  Client and server
share one CPU (pinned).  The two variants alternate in chunks over several
rounds so a drifting machine hits both alike; the median per-call CPU of each
and their ratio are printed at the end and stored in the JSON (``fusd_ioctl``).
Nothing asserts on time.
"""

from __future__ import annotations

import fcntl
import os
import statistics
import sys
import time
from typing import Any, Callable, Dict, Iterator, List

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests"))

from cuse_loopback import PAGE, CuseLoopback  # noqa: E402
from ioctl_bench_devices import (  # noqa: E402
    GET_POINT,
    MOVE_POINT,
    XFER,
    DeclaredPoint,
    DeclaredXfer,
    HandPoint,
    HandXfer,
    xfer,
)

from fusd_runtime.ioctl import compile_schema  # noqa: E402

#: comparison -> {"declared_us", "hand_us", "ratio", "target"}; printed by conftest's summary
IOCTL_RESULTS: Dict[str, Dict[str, float]] = {}


def daemon_cpu(call: Callable[[], Any], n: int) -> float:
    """Seconds of CPU per call spent outside this thread (the server's reader)."""
    p0, t0 = time.process_time(), time.thread_time()
    for _ in range(n):
        call()
    return ((time.process_time() - p0) - (time.thread_time() - t0)) / n


def compare(name: str, declared: Callable[[], Any], hand: Callable[[], Any], n: int, rounds: int,
            target: float) -> Dict[str, float]:
    for call in (declared, hand):  # warm up: first calls compile, fault pages in
        daemon_cpu(call, max(10, n // 10))
    d: List[float] = []
    h: List[float] = []
    for _ in range(rounds):
        d.append(daemon_cpu(declared, n))
        h.append(daemon_cpu(hand, n))
    res = {"declared_us": statistics.median(d) * 1e6, "hand_us": statistics.median(h) * 1e6,
           "ratio": statistics.median(x / y for x, y in zip(d, h)), "target": target, "calls": n * rounds}
    IOCTL_RESULTS[name] = res
    return res


@pytest.fixture(scope="module")
def pinned() -> Iterator[None]:
    old = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {min(old)})  # client and server threads on one CPU
    try:
        yield
    finally:
        os.sched_setaffinity(0, old)


def _iterations(benchmark: Any, full: int) -> int:
    return 20 if getattr(benchmark, "disabled", False) else full


# ---------------------------------------------------------------------- pointer-chasing, CUSE loopback
def _xfer_caller(lo: CuseLoopback) -> Callable[[], int]:
    lo.put(PAGE + 64, b"0123456789abcdef")
    lo.put(PAGE, compile_schema(xfer).encode(dict(tx=PAGE + 64, rx=PAGE + 128, len=16)))
    ioctl = lo.ioctl

    def call() -> int:
        return ioctl(XFER, PAGE)
    assert call() == 16 and lo.get(PAGE + 128, 16) == b"123456789:bcdefg"
    return call


@pytest.mark.benchmark(group="ioctl-pointer")
def test_pointer_chasing_declared_vs_hand_written(benchmark: Any, pinned: None) -> None:
    with CuseLoopback(DeclaredXfer()) as dlo, CuseLoopback(HandXfer()) as hlo:
        declared, hand = _xfer_caller(dlo), _xfer_caller(hlo)
        res = compare("pointer (3 rounds, CUSE loopback)", declared, hand, _iterations(benchmark, 2000), 7, 1.3)
        benchmark.extra_info.update(res)
        benchmark(declared)
        assert dlo.rounds and dlo.session.ioctl_retries == dlo.rounds and hlo.session.ioctl_retries == hlo.rounds


@pytest.mark.benchmark(group="ioctl-pointer")
def test_pointer_chasing_on_the_cuse_kernel(benchmark: Any, pinned: None) -> None:
    """The same comparison through the real CUSE kernel (the qemu guest: TCG-emulated, ~10x slower)."""
    import ctypes

    from fusd_runtime.cuse import CuseServer, cuse_available
    if not cuse_available():
        pytest.skip("needs /dev/cuse and root (run in ../shared/cusevm's guest)")
    with CuseServer(readers=1) as server:
        names = {}
        for kind, dev in (("declared", DeclaredXfer()), ("hand", HandXfer())):
            names[kind] = f"fusd-bench-{os.getpid()}-{kind}"
            server.add(dev, names[kind])
        fds = {k: os.open(server.path(n), os.O_RDWR) for k, n in names.items()}
        try:
            tx = ctypes.create_string_buffer(b"0123456789abcdef", 16)
            rx = ctypes.create_string_buffer(16)
            arg = bytearray(compile_schema(xfer).encode(dict(tx=ctypes.addressof(tx), rx=ctypes.addressof(rx),
                                                              len=16)))
            calls = {k: (lambda fd=fd: fcntl.ioctl(fd, XFER, arg)) for k, fd in fds.items()}
            for call in calls.values():
                rx.raw = bytes(16)
                assert call() == 16 and rx.raw == b"123456789:bcdefg"
            res = compare("pointer (3 rounds, CUSE kernel)", calls["declared"], calls["hand"],
                          _iterations(benchmark, 300), 5, 1.3)
            benchmark.extra_info.update(res)
            benchmark(calls["declared"])
        finally:
            for fd in fds.values():
                os.close(fd)


# ---------------------------------------------------------------------- plain fixed-size, FUSE kernel
@pytest.fixture(scope="module")
def point_server(pinned: None) -> Iterator[Any]:
    if not (os.path.exists("/dev/fuse") and os.geteuid() == 0):
        pytest.skip("needs root and /dev/fuse")
    from fusd_runtime import Server
    with Server(readers=1) as server:
        server.add(DeclaredPoint(), "declared")
        server.add(HandPoint(), "hand")
        fds = {name: os.open(server.path(name), os.O_RDWR) for name in ("declared", "hand")}
        try:
            yield fds
        finally:
            for fd in fds.values():
                os.close(fd)


@pytest.mark.benchmark(group="ioctl-fixed")
@pytest.mark.parametrize("op", ["get", "move"])
def test_fixed_size_declared_vs_hand_written(benchmark: Any, point_server: Any, op: str) -> None:
    cmd = GET_POINT if op == "get" else MOVE_POINT
    arg = bytes(12) if op == "get" else b"\x05\0\0\0\x06\0\0\0\x07\0\0\0"
    want = fcntl.ioctl(point_server["hand"], cmd, arg)
    assert fcntl.ioctl(point_server["declared"], cmd, arg) == want
    dfd, hfd = point_server["declared"], point_server["hand"]

    def declared() -> bytes:
        return fcntl.ioctl(dfd, cmd, arg)

    def hand() -> bytes:
        return fcntl.ioctl(hfd, cmd, arg)
    res = compare(f"fixed {op} ({'_IOR' if op == 'get' else '_IOWR'} 12 B, FUSE)", declared, hand,
                  _iterations(benchmark, 20000), 7, 1.1)
    benchmark.extra_info.update(res)
    benchmark(declared)
