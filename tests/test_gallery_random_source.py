"""Gallery: the random source (examples/random_source.py) read by ``rngtest`` and ``dd``, over FUSE.

``rngtest`` (rng-tools5) reads the device as a stream on its stdin and runs
the FIPS 140-2 tests on 20000-bit blocks; its summary is parsed.  Good streams
pass (a few failures are statistically normal: about 0.1% of blocks), a
stuck source fails every block, a seeded source gives the same stream every
time, and a rate-limited one blocks readers and pollers until bytes are there.
Served by the test kit's ``fusd_device`` on a real FUSE mount (rngtest and dd open a path).
"""

from __future__ import annotations

import errno
import hashlib
import os
import re
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from typing import Callable, Dict, Iterator

import pytest
from conftest import ROOT, line_with, needs_fuse

from examples.random_source import RandomSource
from fusd_runtime.testing import ServedDevice

pytestmark = pytest.mark.fusd(backend="kernel", transport="fuse")
Serve = Callable[..., ServedDevice]
needs_rngtest = pytest.mark.skipif(shutil.which("rngtest") is None,
                                   reason="needs rngtest (Debian package rng-tools5), the client that checks the RNG")


@pytest.fixture
def add_rng(fusd_device: Serve) -> Iterator[Callable[..., str]]:
    """Serve RandomSources for the test (``add_rng(source, name) -> path``); their threads end afterwards."""
    served = []

    def add(source: RandomSource, name: str) -> str:
        served.append(source)
        return fusd_device(source, name).path
    yield add
    for source in served:
        source.stop()


def rngtest(path: str, blocks: int) -> Dict[str, int]:
    """``rngtest -c BLOCKS < PATH``: its summary counters (successes, failures, and per test)."""
    proc = subprocess.run(["sh", "-c", f'exec rngtest -c {blocks} < "$1"', "sh", path], capture_output=True,
                          text=True, timeout=120)
    counts = {name.strip(): int(value) for name, value in
              re.findall(r"^rngtest: FIPS 140-2(?:\(2001-10-10\))? ([A-Za-z ]+): (\d+)$", proc.stderr, re.M)}
    assert "successes" in counts and "failures" in counts, proc.stderr
    assert proc.returncode == (1 if counts["failures"] else 0), proc.stderr  # its documented exit status
    return counts


def dd(path: str, bs: int, count: int) -> bytes:
    proc = subprocess.run(["dd", f"if={path}", f"bs={bs}", f"count={count}", "iflag=fullblock", "status=none"],
                          capture_output=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


@needs_rngtest
def test_rngtest_passes_the_urandom_stream(add_rng: Callable[..., str]) -> None:
    rng = RandomSource()
    counts = rngtest(add_rng(rng, "hwrng"), 200)
    assert counts["successes"] + counts["failures"] == 200
    assert counts["failures"] <= 4  # expected ~0.2 of 200 for a good source
    assert rng.bytes_served >= 200 * 2500 + 4  # 20000-bit blocks, after a 32-bit warm-up word


@needs_rngtest
def test_rngtest_catches_a_stuck_source(add_rng: Callable[..., str]) -> None:
    counts = rngtest(add_rng(RandomSource(stuck=0xA5), "hwrng"), 20)
    assert counts["successes"] == 0 and counts["failures"] == 20
    # 0xA5 has as many ones as zeros and no long runs: the poker test and the continuous (repeated word) test
    # are the ones that see it.
    assert counts["Monobit"] == 0 and counts["Poker"] == 20 and counts["Continuous run"] == 20


@needs_rngtest
def test_a_seeded_source_gives_the_documented_stream_to_every_open(add_rng: Callable[..., str]) -> None:
    seed = b"fusd gallery"
    path = add_rng(RandomSource(seed=seed), "hwrng")
    first, second = dd(path, 4096, 16), dd(path, 1000, 65)  # different request sizes, same stream
    expected = b"".join(hashlib.sha256(seed + i.to_bytes(8, "big")).digest() for i in range(2048))
    assert first == expected[:65536] and second == expected[:65000]
    counts = rngtest(path, 100)
    assert counts == rngtest(path, 100)  # same bytes, same verdicts
    assert counts["failures"] <= 3


def test_rate_limit_blocks_readers_and_pollers(add_rng: Callable[..., str]) -> None:
    path = add_rng(RandomSource(rate=8192), "hwrng")
    start = time.monotonic()
    data = dd(path, 4096, 6)  # 24 KiB: one second's worth at once, then ~2 s of blocked reads
    assert len(data) == 6 * 4096
    assert time.monotonic() - start > 1.2
    slow = add_rng(RandomSource(rate=4), "slow")  # a byte every 250 ms
    fd = os.open(slow, os.O_RDONLY | os.O_NONBLOCK)
    try:
        while True:  # drain the bucket
            try:
                os.read(fd, 65536)
            except BlockingIOError as exc:
                assert exc.errno == errno.EAGAIN
                break
        assert select.select([fd], [], [], 0)[0] == []  # nothing to read now...
        assert select.select([fd], [], [], 2)[0] == [fd]  # ...until the bucket refills
        assert len(os.read(fd, 16)) >= 1
    finally:
        os.close(fd)


def test_a_signal_cancels_a_rate_limited_read_and_the_next_reader_is_served(add_rng: Callable[..., str]) -> None:
    path = add_rng(RandomSource(rate=1), "slow")  # one byte a second
    code = textwrap.dedent("""
        import os, signal, sys
        class Stop(Exception):
            pass
        def handler(*a):
            raise Stop()
        signal.signal(signal.SIGUSR1, handler)
        fd = os.open(sys.argv[1], os.O_RDONLY)
        os.read(fd, 4096)  # the bucket's one byte
        print("waiting", flush=True)
        try:
            os.read(fd, 4096)  # waits for the next byte
            print("read")
        except Stop:
            print("interrupted")
    """)
    proc = subprocess.Popen([sys.executable, "-c", code, path], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "waiting"
    time.sleep(0.1)
    proc.send_signal(signal.SIGUSR1)
    assert proc.communicate(timeout=20)[0].strip() in ("interrupted", "read")  # (the byte may win the race)
    fd = os.open(path, os.O_RDONLY)
    try:
        assert len(os.read(fd, 16)) >= 1  # the device still serves: the cancelled wait left nothing behind
    finally:
        os.close(fd)


@needs_fuse
def test_the_example_program_serves_dd(no_leftover_mounts: None) -> None:
    """``python examples/random_source.py --mountpoint DIR --seed S``: dd reads the seeded stream; Ctrl-C unmounts."""
    with tempfile.TemporaryDirectory() as mnt:
        proc = subprocess.Popen([sys.executable, os.path.join(ROOT, "examples", "random_source.py"), "--transport",
                                 "fuse", "--mountpoint", mnt, "--seed", "abc"], stderr=subprocess.PIPE, text=True)
        try:
            assert proc.stderr is not None
            assert "serving" in line_with(proc.stderr, "serving")  # after any log lines
            data = dd(os.path.join(mnt, "hwrng"), 65536, 16)
            assert len(data) == 1 << 20
            assert data[:32] == hashlib.sha256(b"abc" + bytes(8)).digest()
        finally:
            proc.send_signal(signal.SIGINT)
            assert proc.wait(15) == 0
            proc.stderr.close()  # type: ignore[union-attr]
        assert not os.path.ismount(mnt)
