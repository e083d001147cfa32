#!/usr/bin/env python3
"""Regenerate tests/data/cuse-session.pcapng: a real CUSE session, recorded in the CUSE guest.

Why: the Wireshark dissector test (tests/test_trace_wireshark.py) needs real CUSE traffic
(CUSE_INIT with its DEVNAME blob, an unrestricted ioctl's FUSE_IOCTL_RETRY rounds, poll
notifications), and this host has no /dev/cuse.  Run it in the guest:

    /work/shared/cusevm/run-in-vm.sh "$PWD/.venv/bin/python" tools/record_cuse_session.py

One reader thread, so the capture's order does not depend on scheduling.  A few KiB.
"""

from __future__ import annotations

import argparse
import fcntl
import os
import select
import struct
import sys
import threading
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from fusd_runtime.cuse import CuseServer, cuse_available  # noqa: E402
from fusd_runtime.examples import COUNTER_ADD, COUNTER_GET, Counter, PipeDevice  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", default=str(ROOT / "tests" / "data" / "cuse-session.pcapng"))
    args = parser.parse_args()
    if not cuse_available():
        print("record_cuse_session: needs /dev/cuse and root (run it in the CUSE guest)", file=sys.stderr)
        return 2
    with CuseServer(record=args.output, readers=1) as server:
        server.add(Counter(), "fusd-rec-counter")
        server.add(PipeDevice(), "fusd-rec-pipe")
        fd = os.open(server.path("fusd-rec-counter"), os.O_RDWR)
        assert fcntl.ioctl(fd, COUNTER_ADD, struct.pack("<Q", 7)) == struct.pack("<Q", 7)
        assert fcntl.ioctl(fd, COUNTER_GET, bytes(8)) == struct.pack("<Q", 7)
        assert os.read(fd, 16) == b"7\n"
        os.close(fd)
        fd = os.open(server.path("fusd-rec-pipe"), os.O_RDWR)
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        assert not poller.poll(0)
        threading.Timer(0.2, os.write, (fd, b"cuse")).start()
        assert poller.poll(10_000)
        assert os.read(fd, 16) == b"cuse"
        nb = os.open(server.path("fusd-rec-pipe"), os.O_RDONLY | os.O_NONBLOCK)
        try:
            os.read(nb, 4)  # empty: EAGAIN
        except BlockingIOError:
            pass
        os.close(nb)
        os.close(fd)
    print(f"wrote {args.output} ({os.path.getsize(args.output)} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
