"""``fusd record --proxy /dev/REAL --name NAME``: serve a pass-through of a real device and record it.

    fusd record --proxy /dev/ttyUSB0 --name modem -o modem.pcapng     # then use the proxy, Ctrl-C
    fusd emulate modem.pcapng                                          # answers clients from it

Every read, write, ioctl and poll on the proxy (``fusd_runtime.proxy``) goes to
the real device; the session is recorded to a pcapng capture (``fusd decode`` to
read it, ``fusd emulate`` to serve it).  The proxy appears where ``fusd serve``
puts devices: ``/dev/NAME`` with CUSE (root, a CUSE kernel), else a file of a
FUSE mount (``--mountpoint``, default a temporary directory).
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Dict, List, Optional, Tuple

from ..cli import ArgumentParser, CliError


def _size(text: str) -> Tuple[int, Optional[Tuple[int, int]]]:
    cmd, _, sizes = text.partition("=")
    try:
        number = int(cmd, 0)
        if sizes == "value":
            return number, None
        n_in, _, n_out = sizes.partition(":")
        return number, (int(n_in), int(n_out))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected CMD=IN:OUT or CMD=value (e.g. 0x5401=0:36), got {text!r}") \
            from None


def build_parser() -> ArgumentParser:
    p = ArgumentParser(
        prog="fusd record",
        description="Serve a pass-through device that forwards every call to a real device file, and record "
                    "the session to a pcapng capture (for fusd emulate, fusd decode, fusd replay).",
        epilog="example:\n  fusd record --proxy /dev/rtc0 --name rtc -o rtc.pcapng &\n"
               "  hwclock --rtc=/dev/rtc --show      # through the proxy (CUSE; a FUSE path otherwise)\n"
               "  kill -INT %1; fusd emulate rtc.pcapng")
    p.add_argument("--proxy", required=True, metavar="/dev/REAL", help="the real device to forward to")
    p.add_argument("--name", required=True, help="the proxy's name (/dev/NAME with CUSE, MOUNTPOINT/NAME with FUSE)")
    p.add_argument("-o", "--output", metavar="FILE.pcapng", help="the capture to write (default NAME.pcapng)")
    p.add_argument("--transport", choices=("auto", "fuse", "cuse"), default="auto")
    p.add_argument("--mountpoint", help="FUSE: the directory to serve in (default: a temporary one)")
    p.add_argument("--ioctl-size", action="append", type=_size, default=[], metavar="CMD=IN:OUT",
                   help="an ioctl number without size and its argument's bytes in and out (or CMD=value); "
                        "tty and FIONREAD numbers are known")
    return p


def main(argv: Optional[List[str]] = None) -> int:
    """``fusd record``; returns the exit status."""
    args = build_parser().parse_args(argv)
    from ..cuse import open_server
    from ..proxy import ProxyDevice

    if not os.path.exists(args.proxy):
        raise CliError(f"{args.proxy}: no such device")
    try:
        os.close(os.open(args.proxy, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY))
    except OSError as exc:
        raise CliError(f"cannot open {args.proxy}: {exc.strerror}") from None
    output = args.output or f"{args.name}.pcapng"
    sizes: Dict[int, Optional[Tuple[int, int]]] = dict(args.ioctl_size)
    device = ProxyDevice(args.proxy, sizes=sizes)
    try:
        server = open_server(args.transport, mountpoint=args.mountpoint, record=output)
    except RuntimeError as exc:
        raise CliError(str(exc)) from None
    server.add(device, args.name, mode=os.stat(args.proxy).st_mode & 0o777 or 0o666)

    def ready() -> None:
        print(f"fusd record: proxying {args.proxy} at {server.path(device)} ({server.transport}), recording to "
              f"{output}; Ctrl-C to stop", file=sys.stderr, flush=True)
    try:
        server.serve_forever(ready=ready)
    finally:
        device.stop()
    print(f"fusd record: wrote {output} (fusd decode {output}; fusd emulate {output})", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
