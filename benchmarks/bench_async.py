"""``async def`` callbacks against the same sync callbacks: daemon CPU per call and wake-up latency.

Two questions (issue 17), each answered in one run, both variants side by side:

- an ``async def read`` that returns without suspending: how much daemon CPU does it
  cost over the same sync ``read``?  (Target: ≤ 1 µs.  The coroutine is stepped
  once in the reader thread, the loop parked: no hop to the event loop.)
- a blocking read woken by a write: ``await queue.get()`` against the ``ctx.defer()``
  version (PipeDevice), measured client to client: from just before the ``write``
  to the reader's ``read`` returning.  (Target: within 1.5x.)

The devices run in a server process of their own (``SERVER`` below), pinned with
this client to one CPU (``--fusd-pin``, see conftest), so the numbers are those of
separate processes.  Daemon CPU comes from the server's ``/proc/<pid>/stat``
(utime + stime) over a fixed number of calls.  Run:

    python -m pytest benchmarks/bench_async.py --benchmark-enable

Nothing asserts on time; the ratios are printed and stored in the JSON.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from typing import Any, Dict, Iterator

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SERVER = textwrap.dedent("""
    import asyncio, sys
    sys.path.insert(0, sys.argv[2])
    from fusd_runtime import Device, Server
    from fusd_runtime.examples import PipeDevice

    class SyncRead(Device):
        def read(self, ctx, size, offset):
            return b"x"

    class AsyncRead(Device):
        async def read(self, ctx, size, offset):
            return b"x"

    class AsyncPipe(Device):
        def __init__(self):
            self.queue = asyncio.Queue()

        async def write(self, ctx, data, offset):
            self.queue.put_nowait(data)
            return len(data)

        async def read(self, ctx, size, offset):
            return await self.queue.get()

    server = Server(sys.argv[1])
    for name, dev in (("sync", SyncRead()), ("async", AsyncRead()), ("pipe", PipeDevice()),
                      ("apipe", AsyncPipe())):
        server.add(dev, name)
    server.serve_forever(ready=lambda: print("READY", flush=True))
""")

RESULTS: Dict[str, float] = {}
CALLS = 20000


@pytest.fixture(scope="module")
def devices(request: Any) -> Iterator[Dict[str, Any]]:
    if not (os.path.exists("/dev/fuse") and os.geteuid() == 0):
        pytest.skip("needs root and /dev/fuse")
    mnt = tempfile.mkdtemp(prefix="fusd-bench-async-")
    pin = request.config.getoption("--fusd-pin") == "same"
    cpu = min(os.sched_getaffinity(0))
    cmd = [sys.executable, "-c", SERVER, mnt, ROOT]
    if pin:
        cmd = ["taskset", "-c", str(cpu)] + cmd
        os.sched_setaffinity(0, {cpu})
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, start_new_session=True)
    try:
        assert proc.stdout.readline().strip() == "READY"
        yield {"pid": proc.pid, "path": lambda name: os.path.join(mnt, name)}
    finally:
        proc.terminate()
        proc.wait(20)
        os.rmdir(mnt)


def _cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _daemon_cpu_per_read(devices: Dict[str, Any], name: str) -> float:
    fd = os.open(devices["path"](name), os.O_RDONLY)
    try:
        for _ in range(1000):  # warm up
            os.read(fd, 1)
        before = _cpu_seconds(devices["pid"])
        for _ in range(CALLS):
            os.read(fd, 1)
        return (_cpu_seconds(devices["pid"]) - before) / CALLS
    finally:
        os.close(fd)


@pytest.mark.parametrize("name", ["sync", "async"])
def test_read_that_does_not_suspend(benchmark: Any, devices: Dict[str, Any], name: str) -> None:
    """pread of 1 byte: the sync callback and the same callback as ``async def``."""
    benchmark.group = "async read, no suspension"
    fd = os.open(devices["path"](name), os.O_RDONLY)
    try:
        benchmark(os.read, fd, 1)
    finally:
        os.close(fd)
    cpu = min(_daemon_cpu_per_read(devices, name) for _ in range(3))
    RESULTS[f"cpu_{name}"] = cpu
    benchmark.extra_info["daemon_cpu_us_per_call"] = cpu * 1e6


@pytest.mark.parametrize("name", ["pipe", "apipe"])
def test_blocking_read_woken_by_a_write(benchmark: Any, devices: Dict[str, Any], name: str) -> None:
    """From just before ``write`` to the blocked reader's ``read`` returning (another thread)."""
    benchmark.group = "wake-up latency, client to client"
    path = devices["path"](name)
    rfd, wfd = os.open(path, os.O_RDONLY), os.open(path, os.O_WRONLY)
    box: Dict[str, Any] = {}
    go, done = threading.Semaphore(0), threading.Semaphore(0)

    def reader() -> None:
        while True:
            go.acquire()
            if box.get("stop"):
                return
            os.read(rfd, 16)
            box["end"] = time.perf_counter()
            done.release()

    thread = threading.Thread(target=reader, daemon=True)
    thread.start()
    samples = []

    def once() -> None:
        go.release()
        time.sleep(0.0005)  # let the read reach the device and wait there
        start = time.perf_counter()
        os.write(wfd, b"w")
        done.acquire()
        samples.append(box["end"] - start)

    try:
        benchmark.pedantic(once, rounds=1000, iterations=1, warmup_rounds=20)
    finally:
        box["stop"] = True
        go.release()
        thread.join(10)
        os.close(rfd)
        os.close(wfd)
    samples.sort()
    RESULTS[f"wake_{name}"] = samples[len(samples) // 2]
    benchmark.extra_info["wakeup_median_us"] = RESULTS[f"wake_{name}"] * 1e6


@pytest.fixture(scope="module", autouse=True)
def summary(request: Any) -> Iterator[None]:
    """After the module: the two ratios, on the terminal (nothing asserts on them)."""
    yield
    lines = []
    if "cpu_sync" in RESULTS and "cpu_async" in RESULTS:
        extra = (RESULTS["cpu_async"] - RESULTS["cpu_sync"]) * 1e6
        lines.append(f"daemon CPU per read: sync {RESULTS['cpu_sync'] * 1e6:.2f} µs, async "
                     f"{RESULTS['cpu_async'] * 1e6:.2f} µs: {extra:+.2f} µs (target ≤ +1 µs)")
    if "wake_pipe" in RESULTS and "wake_apipe" in RESULTS:
        lines.append(f"wake-up median: ctx.defer {RESULTS['wake_pipe'] * 1e6:.1f} µs, asyncio.Queue "
                     f"{RESULTS['wake_apipe'] * 1e6:.1f} µs: {RESULTS['wake_apipe'] / RESULTS['wake_pipe']:.2f}x "
                     "(target ≤ 1.5x)")
    capman = request.config.pluginmanager.getplugin("capturemanager")
    reporter = request.config.pluginmanager.getplugin("terminalreporter")
    if reporter is not None and capman is not None:
        with capman.global_and_fixture_disabled():  # past pytest's capture: these are the point of the module
            reporter.write_line("")
            for line in lines:
                reporter.write_line(line)
