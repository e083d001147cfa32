"""Serve ``PerfFile`` as ``dev0`` for the shared perf harness (``shared/perf/run.sh``).

    python -m fusd_runtime.perfserver MOUNTPOINT [--readers N] [--count]

The harness wants a foreground server whose mount holds a 64 KiB, direct-I/O,
seekable ``dev0`` with the ``_IOR('E', 1, int)`` ioctl and a poll handler: that is
exactly :class:`~fusd_runtime.examples.PerfFile`, served by the ordinary
:class:`~fusd_runtime.server.Server` so the numbers are those of the real runtime,
not of a special benchmark path.  SIGTERM/SIGINT stop ``serve_forever`` cleanly,
which unmounts (the harness unmounts first anyway; both are fine).
"""

from __future__ import annotations

import argparse
import sys
from typing import List, Optional

from .examples import PerfFile
from .server import Server


def main(argv: Optional[List[str]] = None) -> int:
    """Parse the arguments, mount, serve until a signal or unmount."""
    p = argparse.ArgumentParser(prog="python -m fusd_runtime.perfserver",
                                description="Serve the perf harness's dev0 (PerfFile) with fusd_runtime.")
    p.add_argument("mountpoint")
    p.add_argument("--readers", type=int, default=2, help="reader threads (default 2)")
    p.add_argument("--count", action="store_true", help="accepted for harness compatibility (ignored)")
    args = p.parse_args(argv)
    server = Server(args.mountpoint, readers=args.readers)
    server.add(PerfFile(), "dev0")
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
