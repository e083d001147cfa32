"""The ``fusd`` command: demo, serve, bench, decode.

    fusd demo                         start example devices and drive them with real syscalls
    fusd serve mymod:MyDevice         serve your device class (FUSE directory or CUSE)
    fusd serve mymod:MyDevice --transport uring   ... through FUSE-over-io_uring (enable_uring=Y)
    fusd bench                        per-syscall round-trip latency against the kernel floor
    fusd decode capture.pcapng        decode a protocol capture (same as python -m fusd_wire decode)
    fusd replay cap.pcapng --device mymod:MyDevice   replay a recording to a device, diff its replies
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import logging
import sys
from typing import Any, List, Optional


def load_device_class(spec: str) -> Any:
    """``module:Class`` (or ``path/to/file.py:Class``) -> the class."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not attr:
        raise SystemExit(f"fusd: expected module:Class, got {spec!r}")
    if module_name.endswith(".py"):
        loader_spec = importlib.util.spec_from_file_location("fusd_user_device", module_name)
        if loader_spec is None or loader_spec.loader is None:
            raise SystemExit(f"fusd: cannot load {module_name}")
        module = importlib.util.module_from_spec(loader_spec)
        loader_spec.loader.exec_module(module)
    else:
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            raise SystemExit(f"fusd: cannot import {module_name}: {exc}") from None
    try:
        return getattr(module, attr)
    except AttributeError:
        raise SystemExit(f"fusd: {module_name} has no {attr}") from None


def _serve(args: argparse.Namespace) -> int:
    from .demo import make_server
    cls = load_device_class(args.device)
    server = make_server(args.transport, args.mountpoint)
    if args.readers is not None:
        server.readers = args.readers
    if args.record:
        server._record = args.record
    device = cls()
    name = args.name or getattr(device, "name", "") or cls.__name__.lower()
    server.add(device, name)

    def ready() -> None:
        print(f"fusd: serving {cls.__name__} at {server.path(device)} ({server.transport}); Ctrl-C to stop",
              file=sys.stderr, flush=True)

    server.serve_forever(ready=ready)
    return 0


def _passthrough(module: str, argv: List[str]) -> int:
    mod = importlib.import_module(module)
    return int(mod.main(argv) or 0)


def main(argv: Optional[List[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="fusd", description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="\n".join(__doc__.splitlines()[2:]))
    parser.add_argument("-v", "--verbose", action="store_true", help="log what the runtime does")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.add_parser("demo", help="start example devices and drive them with real system calls", add_help=False)
    serve = sub.add_parser("serve", help="serve a device class: fusd serve module:Class")
    serve.add_argument("device", help="module:Class or file.py:Class (a fusd_runtime.Device subclass)")
    serve.add_argument("--name", help="device name (default: the class's name, lowercased)")
    serve.add_argument("--transport", choices=["auto", "fuse", "uring", "cuse"], default="auto",
                       help="auto: CUSE where available, else FUSE; uring: FUSE over io_uring (needs "
                            "/sys/module/fuse/parameters/enable_uring Y while it starts; else read/write, "
                            "with a warning saying so)")
    serve.add_argument("--mountpoint", help="FUSE: the directory to serve in (default: a temporary one)")
    serve.add_argument("--readers", type=int, help="reader threads (default: 2, or 1 when pinned to one CPU)")
    serve.add_argument("--record", metavar="FILE.pcapng", help="record every message to a pcapng capture")
    sub.add_parser("bench", help="per-syscall round-trip latency (fusd bench --help)", add_help=False)
    sub.add_parser("decode", help="decode a capture (fusd decode --help)", add_help=False)
    sub.add_parser("replay", help="replay a recording to a device class, diff its replies (fusd replay --help)",
                   add_help=False)

    # demo/bench/decode/replay own their options: hand the rest of the line to them.
    verbose = False
    while argv and argv[0] in ("-v", "--verbose"):
        verbose = True
        argv.pop(0)
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(message)s")
    if argv and argv[0] in ("demo", "bench", "decode", "replay"):
        cmd, rest = argv[0], argv[1:]
        if cmd == "demo":
            return _passthrough("fusd_runtime.demo", rest)
        if cmd == "bench":
            return _passthrough("fusd_runtime.bench", rest)
        from fusd_wire.__main__ import main as wire_main
        return wire_main([cmd, *rest])
    args = parser.parse_args(argv)
    if args.command == "serve":
        return _serve(args)
    parser.print_help()
    return 2


if __name__ == "__main__":
    sys.exit(main())
