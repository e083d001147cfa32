"""Serve ``PerfFile`` as ``dev0`` for the shared perf harness (``shared/perf/run.sh``) and ``fusd bench``.

    python -m fusd_runtime.perfserver MOUNTPOINT [--readers N] [--device module:Class]
                                      [--pipe] [--transport fuse|uring|cuse]

The harness wants a foreground server whose mount holds a 64 KiB, direct-I/O,
seekable ``dev0`` with the ``_IOR('E', 1, int)`` ioctl and a poll handler: that is
exactly :class:`~fusd_runtime.examples.PerfFile`, served by the ordinary
:class:`~fusd_runtime.server.Server` so the numbers are those of the real runtime,
not of a special benchmark path.  SIGTERM/SIGINT stop ``serve_forever`` cleanly,
which unmounts (the harness unmounts first anyway; both are fine).

``fusd bench`` runs it as a separate process (a client and a server sharing one
interpreter would share its GIL, which is not what a real client sees), adds a
``PipeDevice`` as ``pipe0`` for the poll-wakeup measurement (``--pipe``) and reads
the device paths from the one ``READY`` line printed on stdout
(``READY dev0=PATH pipe0=PATH counter0=PATH readers=N``): the same contract as
the C reference servers it is compared with (``bench_refs/README.md``),
including exit status 3 after a ``SKIP:`` line when it cannot run here.

On CUSE the kernel sends offset 0 with every READ and WRITE, so a seekable
device has its position kept by fusd and runs into end of file after 64 KiB;
there ``PerfFile`` is served as a stream (every read answers the first bytes,
as the C CUSE reference does), which keeps the 64 KiB reads 64 KiB long.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any, List, Optional

from .examples import Counter, PerfFile, PipeDevice


def load_device(spec: str) -> Any:
    """``module:Class`` (or ``path/file.py:Class``) -> an instance of that device class."""
    from .cli import load_device_class
    return load_device_class(spec)()


class _StreamPerfFile(PerfFile):
    """PerfFile without a position: what the CUSE bench serves (see the module docstring)."""

    seekable = False


def main(argv: Optional[List[str]] = None) -> int:
    """Parse the arguments, mount (or create CUSE nodes), serve until a signal or unmount."""
    p = argparse.ArgumentParser(prog="python -m fusd_runtime.perfserver",
                                description="Serve the perf harness's dev0 (PerfFile) with fusd_runtime.")
    p.add_argument("mountpoint", nargs="?", help="FUSE mount directory (not used with --transport cuse)")
    p.add_argument("--readers", type=int, help="reader threads (default: 2, or 1 when pinned to one CPU)")
    p.add_argument("--device", help="serve module:Class as dev0 instead of PerfFile")
    p.add_argument("--pipe", action="store_true",
                   help="also serve a PipeDevice as pipe0 (poll wakeups) and a Counter as counter0")
    p.add_argument("--transport", choices=("fuse", "uring", "cuse"), default="fuse",
                   help="uring: FUSE-over-io_uring (needs the fuse enable_uring parameter Y; else read/write)")
    p.add_argument("--enable-uring", action="store_true",
                   help="with --transport uring, as root: set the fuse enable_uring parameter to Y while this "
                        "server starts and back right after (for harnesses that start servers one by one)")
    p.add_argument("--count", action="store_true", help="accepted for harness compatibility (ignored)")
    args = p.parse_args(argv)
    if args.device:
        device = load_device(args.device)
    else:
        device = _StreamPerfFile() if args.transport == "cuse" else PerfFile()
    if args.transport == "cuse":
        from .cuse import CuseServer, cuse_available  # only where CUSE is asked for
        if not cuse_available():
            print("SKIP: cuse: not available here (needs /dev/cuse and root)", file=sys.stderr)
            return 3
        server: Any = CuseServer(readers=args.readers)
        prefix = f"fusd-bench-{os.getpid()}-"
    else:
        if not args.mountpoint:
            p.error("a MOUNTPOINT is needed for FUSE")
        from .server import Server
        server = Server(args.mountpoint, readers=args.readers, transport=args.transport)
        prefix = ""
    server.add(device, prefix + "dev0")
    if args.pipe:
        server.add(PipeDevice(), prefix + "pipe0")
        server.add(Counter(), prefix + "counter0")  # an _IOWR ioctl: a struct in and out

    enabled: Any = None
    if args.enable_uring and args.transport == "uring":
        from .uring import uring_enabled
        enabled = uring_enabled().__enter__()

    def ready() -> None:
        if enabled is not None:
            enabled.restore()  # serving: the connection keeps io_uring
        names = ["dev0"] + (["pipe0", "counter0"] if args.pipe else [])
        # transport: uring, or fuse after a fallback
        print("READY " + " ".join(f"{n}={server.path(prefix + n)}" for n in names) + f" readers={server.readers}"
              + f" transport={server.transport}", flush=True)

    try:
        server.serve_forever(ready=ready)
    except KeyboardInterrupt:
        pass
    finally:
        if enabled is not None:
            enabled.restore()
    return 0


if __name__ == "__main__":
    sys.exit(main())
