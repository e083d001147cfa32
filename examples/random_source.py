"""A hardware random number generator (``/dev/hwrng``-style): a stream of random bytes.

What it emulates: the kernel's ``hw_random`` character device, which a daemon
like ``rngd`` reads and checks before it feeds the kernel's entropy pool.
Reads return random bytes — from ``os.urandom``, or, with a ``seed``, from a
deterministic generator so that tests get the same stream every time — at an
optional rate limit (bytes per second, as slow hardware delivers them: reads
then wait — an ``async def read`` that awaits the bucket — or answer EAGAIN with
O_NONBLOCK, and ``poll`` reports readable only when bytes are available).  ``stuck=N`` emulates a broken noise source
whose output is stuck at the byte N: the FIPS 140-2 tests must catch it.

The seeded generator is SHA-256 in counter mode: block ``i`` (from 0) is
``SHA-256(seed || i as 8 bytes big-endian)``, and each open file reads the
stream from its start.  It is a reproducible stream for tests, not a
certified DRBG.

Which client drives it: ``rngtest`` (Debian package ``rng-tools5``), which
reads a stream on stdin and runs the FIPS 140-2 tests on 20000-bit blocks, and
``dd``::

    python examples/random_source.py --mountpoint /tmp/devs      # serves /tmp/devs/hwrng (FUSE)
    rngtest -c 100 < /tmp/devs/hwrng                            # "FIPS 140-2 successes: 100"
    dd if=/tmp/devs/hwrng bs=4096 count=16 iflag=fullblock | od -An -tx1 | head

Or ``fusd serve examples/random_source.py:RandomSource``.
"""

from __future__ import annotations

import argparse
import asyncio
import errno
import hashlib
import os
import sys
import time
from typing import Any, List, Optional

from fusd_runtime import POLLIN, POLLRDNORM, Context, Device, open_server


class CounterStream:
    """SHA-256 in counter mode: ``SHA-256(seed || counter)``, 32 bytes per counter value."""

    def __init__(self, seed: bytes) -> None:
        self.seed = seed
        self.counter = 0
        self.buffer = b""

    def read(self, n: int) -> bytes:
        chunks = [self.buffer]
        have = len(self.buffer)
        while have < n:
            block = hashlib.sha256(self.seed + self.counter.to_bytes(8, "big")).digest()
            self.counter += 1
            chunks.append(block)
            have += len(block)
        data = b"".join(chunks)
        self.buffer = data[n:]
        return data[:n]


class RandomSource(Device):
    """The generator.  ``rate`` (bytes/s, None: unlimited) is a token bucket holding one second's worth.

    ``bytes_served`` counts what readers got.  A rate-limited read that finds
    the bucket empty waits (``await asyncio.sleep``) until at least one byte is
    there, then returns what has accumulated, up to the size asked: like a real
    slow RNG, short reads are normal.  Waiting readers are served in turn (an
    ``asyncio.Lock`` is first come, first served); a signal cancels a wait (the
    runtime answers EINTR, nothing is lost); an O_NONBLOCK reader gets EAGAIN.
    Written as an async device, it needs no thread, no lock and no bookkeeping of
    blocked readers: the runtime runs its code one piece at a time.
    """

    name = "hwrng"
    mode = 0o444

    def __init__(self, seed: Optional[bytes] = None, rate: Optional[float] = None, stuck: Optional[int] = None) -> None:
        self.seed = seed
        self.rate = rate
        self.stuck = stuck
        self.bytes_served = 0
        self._tokens = float(rate) if rate else 0.0
        self._refilled = time.monotonic()
        self._turn = asyncio.Lock()  # waiting readers, first come first served
        self._poll_timer: Any = None

    # ------------------------------------------------------------------ where the bytes come from
    def open(self, ctx: Context) -> None:
        ctx.state = CounterStream(self.seed) if self.seed is not None else None

    def _generate(self, ctx: Context, n: int) -> bytes:
        self.bytes_served += n
        if self.stuck is not None:
            return bytes([self.stuck]) * n
        if ctx.state is not None:
            return ctx.state.read(n)
        return os.urandom(n)

    # ------------------------------------------------------------------ the rate limit
    def _available(self) -> int:
        """Whole bytes in the bucket now (refilled since the last call)."""
        if not self.rate:
            return sys.maxsize
        now = time.monotonic()
        self._tokens = min(float(self.rate), self._tokens + (now - self._refilled) * self.rate)
        self._refilled = now
        return int(self._tokens)

    def _until_a_byte(self) -> float:
        return max(0.0, (1.0 - self._tokens) / self.rate) if self.rate else 0.0

    def _take(self, ctx: Context, size: int) -> bytes:
        n = min(size, self._available())
        if self.rate:
            self._tokens -= n
        return self._generate(ctx, n)

    def stop(self) -> None:
        """Cancel the poll wake-up timer (when the device is no longer served)."""
        timer, self._poll_timer = self._poll_timer, None
        if timer is not None:
            timer.cancel()

    # ------------------------------------------------------------------ file operations
    async def read(self, ctx: Context, size: int, offset: int) -> bytes:
        if self._available() >= 1 and not self._turn.locked():
            return self._take(ctx, size)  # the common case: answered at once, in the reader
        if ctx.nonblock:
            raise BlockingIOError(errno.EAGAIN, "no random bytes yet")
        async with self._turn:  # readers that wait are served in the order they came
            while self._available() < 1:
                await asyncio.sleep(self._until_a_byte())
            return self._take(ctx, size)

    def poll(self, ctx: Context, events: int) -> int:
        if self._available() >= 1:
            return POLLIN | POLLRDNORM
        if self._poll_timer is None:  # say when bytes are back: pollers wake and ask again
            self._poll_timer = self.call_later(self._until_a_byte(), self._bytes_back)
        return 0

    def _bytes_back(self) -> None:
        self._poll_timer = None
        self.notify_poll()


def main(argv: Optional[List[str]] = None) -> int:
    """Serve one RandomSource until Ctrl-C: ``python examples/random_source.py [--transport fuse|cuse]``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--transport", choices=["auto", "fuse", "cuse"], default="auto")
    parser.add_argument("--mountpoint", help="FUSE: the directory to serve in (default: a temporary one)")
    parser.add_argument("--name", default="hwrng", help="device name (CUSE: /dev/NAME; default hwrng)")
    parser.add_argument("--seed", help="a seed: a reproducible stream instead of os.urandom")
    parser.add_argument("--rate", type=float, help="bytes per second (default: unlimited)")
    parser.add_argument("--stuck", type=lambda s: int(s, 0), help="a broken source: every byte is this value")
    args = parser.parse_args(argv)
    server = open_server(args.transport, mountpoint=args.mountpoint)
    rng = RandomSource(seed=args.seed.encode() if args.seed else None, rate=args.rate, stuck=args.stuck)
    server.add(rng, args.name)
    try:
        server.serve_forever(ready=lambda: print(f"random_source: serving {server.path(rng)} ({server.transport}); "
                                                 f"Ctrl-C to stop", file=sys.stderr, flush=True))
    finally:
        rng.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
