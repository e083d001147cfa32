"""``fusd demo``: start a few devices, drive them with real system calls, print what happened.

It runs on a fresh machine after ``pip install``: as root with /dev/fuse it mounts a
temporary directory (or uses /dev via CUSE when the kernel has it); otherwise it
mounts with fusermount3.  Every step is a real syscall through the kernel to the
Python device and back.
"""

from __future__ import annotations

import os
import select
import statistics
import struct
import sys
import threading
import time
from typing import Any, Callable, List, Optional

from .examples import COUNTER_ADD, COUNTER_GET, Counter, Hello, PipeDevice


def _say(text: str) -> None:
    print(text, flush=True)


def _latency_us(call: Callable[[], Any], n: int) -> float:
    samples: List[float] = []
    for _ in range(n):
        t0 = time.perf_counter_ns()
        call()
        samples.append((time.perf_counter_ns() - t0) / 1000.0)
    return statistics.median(samples)


def make_server(transport: str, mountpoint: Optional[str]) -> Any:
    """A server for ``transport`` ("auto", "fuse", "uring" or "cuse"); a clear exit if CUSE is asked for but absent."""
    from .cuse import open_server
    try:
        return open_server(transport, mountpoint=mountpoint)
    except RuntimeError as exc:
        raise SystemExit(f"fusd: {exc}; use --transport fuse") from None


def run(transport: str = "auto", mountpoint: Optional[str] = None, iterations: int = 2000) -> int:
    server = make_server(transport, mountpoint)
    hello = Hello()
    pipe = PipeDevice()
    counter = Counter()
    with server:
        prefix = "fusd-demo-" if server.transport == "cuse" else ""
        server.add(hello, prefix + "hello")
        server.add(pipe, prefix + "pipe")
        server.add(counter, prefix + "counter")
        where = os.path.dirname(server.path(hello))
        _say(f"transport: {server.transport}; devices in {where}: "
             f"{', '.join(os.path.basename(server.path(d)) for d in (hello, pipe, counter))}")

        with open(server.path(hello), "rb") as f:
            _say(f"read  {os.path.basename(server.path(hello))}: {f.read()!r}")

        rfd = os.open(server.path(pipe), os.O_RDONLY)
        wfd = os.open(server.path(pipe), os.O_WRONLY)
        try:
            n = os.write(wfd, b"written by the demo")
            _say(f"write {os.path.basename(server.path(pipe))}: {n} bytes; read back {os.read(rfd, 100)!r}")

            timer = threading.Timer(0.3, os.write, (wfd, b"wake up!"))
            t0 = time.monotonic()
            timer.start()
            data = os.read(rfd, 100)
            _say(f"blocking read: woke after {time.monotonic() - t0:.2f} s with {data!r} "
                 "(a deferred reply answered by a write)")

            poller = select.poll()
            poller.register(rfd, select.POLLIN)
            ready_now = poller.poll(0)
            threading.Timer(0.2, os.write, (wfd, b"!")).start()
            t0 = time.monotonic()
            events = poller.poll(5000)
            _say(f"poll: {'ready' if ready_now else 'not ready'} at first; woke with "
                 f"{'POLLIN' if events and events[0][1] & select.POLLIN else events} after "
                 f"{time.monotonic() - t0:.2f} s (FUSE_NOTIFY_POLL from the device)")
            os.read(rfd, 10)
        finally:
            os.close(rfd)
            os.close(wfd)

        import fcntl
        cfd = os.open(server.path(counter), os.O_RDONLY)
        try:
            value = struct.unpack("<Q", fcntl.ioctl(cfd, COUNTER_ADD, struct.pack("<Q", 41)))[0]
            value = struct.unpack("<Q", fcntl.ioctl(cfd, COUNTER_ADD, struct.pack("<Q", 1)))[0]
            got = struct.unpack("<Q", fcntl.ioctl(cfd, COUNTER_GET, bytes(8)))[0]
            _say(f"ioctl {os.path.basename(server.path(counter))}: add 41, add 1 -> {value}; get -> {got}")
        finally:
            os.close(cfd)

        hfd = os.open(server.path(hello), os.O_RDONLY)
        try:
            pread_us = _latency_us(lambda: os.pread(hfd, 1, 0), iterations)
            ioctl_fd = os.open(server.path(counter), os.O_RDONLY)
            try:
                buf = bytes(8)
                ioctl_us = _latency_us(lambda: fcntl.ioctl(ioctl_fd, COUNTER_GET, buf), iterations)
            finally:
                os.close(ioctl_fd)
        finally:
            os.close(hfd)
        null = os.open("/dev/null", os.O_RDONLY)
        try:
            null_us = _latency_us(lambda: os.pread(null, 1, 0), iterations)
        finally:
            os.close(null)
        _say(f"latency (median of {iterations}, this process as client): pread 1 B {pread_us:.1f} us, "
             f"ioctl {ioctl_us:.1f} us; /dev/null pread {null_us:.2f} us")
    _say("stopped: devices removed, nothing left mounted")
    return 0


def main(argv: Optional[List[str]] = None) -> int:
    from .cli import ArgumentParser
    p = ArgumentParser(prog="fusd demo", description=(__doc__ or "").splitlines()[0].replace("``", ""),
                       epilog="example:\n  fusd demo --iterations 200     the demo with fewer latency samples\n")
    p.add_argument("--transport", choices=["auto", "fuse", "cuse"], default="auto",
                   help="auto: CUSE where /dev/cuse exists and we are root, else a FUSE directory")
    p.add_argument("--mountpoint", help="FUSE: serve in this directory (default: a temporary one)")
    p.add_argument("--iterations", type=int, default=2000, help="calls per latency measurement")
    args = p.parse_args(argv)
    return run(args.transport, args.mountpoint, args.iterations)


if __name__ == "__main__":
    sys.exit(main())
