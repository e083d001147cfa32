"""``fusd emulate RECORDING``: serve a device that answers new clients from a recording.

    fusd emulate kbd.pcapng                        # a capture of fusd record --proxy (or any --record)
    fusd emulate kbd.ioctl kbd.events --name kbd   # umockdev-record --ioctl / --evemu-events files
    fusd emulate touchpad.evemu                    # an evemu-record file (description + events)

See ``fusd_runtime.emulate.device`` for how answers are chosen (per-open cursors,
ioctls matched by command and direction, re-sliced to the caller's size).  On
Ctrl-C it lists what clients asked that the recording does not have.  Exit 0,
or 1 with ``--strict`` when there were mismatches.
"""

from __future__ import annotations

import argparse
import errno
import sys
from typing import List, Optional

from ..cli import ArgumentParser, CliError


def _errno(text: str) -> int:
    if text.isdigit():
        return int(text)
    value = getattr(errno, text.upper(), None)
    if not isinstance(value, int):
        raise argparse.ArgumentTypeError(f"unknown errno {text!r} (a name like ENOTTY, or a number)")
    return value


def build_parser() -> ArgumentParser:
    p = ArgumentParser(
        prog="fusd emulate",
        description="Serve a device that answers new clients from a recording: a fusd capture (fusd record "
                    "--proxy, --record), umockdev ioctl/script files, or evemu files.",
        epilog="example:\n  fusd emulate kbd.pcapng --transport fuse --mountpoint /tmp/devs &\n"
               "  evtest /tmp/devs/kbd")
    p.add_argument("recording", nargs="+", help="a capture, or umockdev/evemu files to combine")
    p.add_argument("--name", help="the device's name in a capture, and the name to serve it as")
    p.add_argument("--as", dest="serve_as", metavar="NAME", help="serve under another name than the recorded one")
    p.add_argument("--connection", type=int, metavar="N", help="which connection of a capture")
    p.add_argument("--transport", choices=("auto", "fuse", "cuse"), default="auto")
    p.add_argument("--mountpoint", help="FUSE: the directory to serve in (default: a temporary one)")
    p.add_argument("--mismatch-errno", type=_errno, default=errno.ENOTTY, metavar="ERRNO",
                   help="the answer to an ioctl the recording does not have (default ENOTTY)")
    p.add_argument("--timing", action="store_true", help="deliver recorded reads at their recorded times")
    p.add_argument("--at-end", choices=("block", "eof"), default="block",
                   help="when the recorded reads are used up: block (default) or end of file")
    p.add_argument("--opens", choices=("cycle", "first"), default="cycle",
                   help="which recorded open a new open plays: the next in turn (default) or the first")
    p.add_argument("--record", metavar="OUT.pcapng", help="record the emulated session too")
    p.add_argument("--strict", action="store_true", help="exit 1 if a client asked for something not recorded")
    return p


def main(argv: Optional[List[str]] = None) -> int:
    """``fusd emulate``; returns the exit status."""
    args = build_parser().parse_args(argv)
    from ..cuse import open_server
    from ..emulate import EmulatedDevice, RecordingError, load_recording

    try:
        recording = load_recording(args.recording, args.name, connection=args.connection)
        device = EmulatedDevice(recording, mismatch_errno=args.mismatch_errno, timing=args.timing,
                                at_end=args.at_end, opens=args.opens)
    except (RecordingError, ValueError) as exc:
        raise CliError(str(exc)) from None
    try:
        server = open_server(args.transport, mountpoint=args.mountpoint, record=args.record)
    except RuntimeError as exc:
        raise CliError(str(exc)) from None
    name = args.serve_as or recording.name
    server.add(device, name)

    def ready() -> None:
        print(f"fusd emulate: {recording.summary()}; serving at {server.path(device)} ({server.transport}); "
              "Ctrl-C to stop", file=sys.stderr, flush=True)
    server.serve_forever(ready=ready)
    for line in device.mismatches:
        print(f"fusd emulate: not in the recording: {line}", file=sys.stderr)
    return 1 if args.strict and device.mismatches else 0


if __name__ == "__main__":
    sys.exit(main())
