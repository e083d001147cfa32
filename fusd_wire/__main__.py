"""``python -m fusd_wire COMMAND``: protocol tools.

Commands:
    decode FILE     decode a capture (our pcapng, or an strace log of any FUSE daemon)
    tap -o CAP MNT -- DAEMON ARGS   record a libfuse 3 daemon's traffic live (root)
    replay FILE --device mod:Class  play a recording to a device, diff its replies with the captured ones
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import List, Optional


def build_parser() -> argparse.ArgumentParser:
    from .trace.command import add_decode_arguments
    from .trace.replay import add_replay_arguments
    from .trace.strace import RECOMMENDED

    parser = argparse.ArgumentParser(prog="python -m fusd_wire", description="FUSE/CUSE wire protocol tools")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    dec = sub.add_parser("decode", help="decode a capture into libfuse -d-like text, JSON lines or stats",
                         description="Decode a FUSE capture: our pcapng, or the strace log of any FUSE daemon "
                                     "(docs/traces.md). Exit 0: decoded cleanly, nothing missing; 1: problems or "
                                     "losses, each reported on stderr with its block/line; 2: usage or read error.",
                         epilog=f"strace command: {RECOMMENDED}",
                         formatter_class=argparse.RawDescriptionHelpFormatter)
    add_decode_arguments(dec)
    dec.set_defaults(run=_decode, parser_=dec)
    tap = sub.add_parser("tap", help="mount, run an unmodified libfuse 3 daemon behind a relay, record its traffic",
                         description="Root only. Opens /dev/fuse, mounts it on MOUNTPOINT and starts DAEMON ARGS "
                                     "with /dev/fd/N (a SOCK_SEQPACKET socket we relay) as its mountpoint: "
                                     "write {fd} where N goes, or it is appended.")
    tap.add_argument("-o", "--output", required=True, help="capture file to write (pcapng)")
    tap.add_argument("mountpoint")
    tap.add_argument("daemon", nargs=argparse.REMAINDER, help="-- DAEMON ARGS...")
    tap.set_defaults(run=_tap, parser_=tap)
    rep = sub.add_parser("replay", help="play a capture's requests to a device class and diff its replies",
                         description="Feed the kernel's requests of one recorded connection to a fresh instance "
                                     "of a device class, served by the real fusd runtime on a socketpair, and "
                                     "compare its replies with the captured ones. Exit 0: all the same; 1: "
                                     "differences or missing replies; 2: cannot replay.")
    add_replay_arguments(rep)
    rep.set_defaults(run=_replay, parser_=rep)
    return parser


def _decode(args: argparse.Namespace) -> int:
    from .trace.command import run_decode
    return run_decode(args, args.parser_)


def _replay(args: argparse.Namespace) -> int:
    from .trace.replay import run_replay
    return run_replay(args, args.parser_)


def _tap(args: argparse.Namespace) -> int:
    from .trace.tap import run_tap
    argv = args.daemon[1:] if args.daemon[:1] == ["--"] else args.daemon
    if not argv:
        args.parser_.error("no daemon command given")
    return run_tap(args.mountpoint, argv, args.output)


def main(argv: Optional[List[str]] = None) -> int:
    """Run a command; returns the exit status.  A closed stdout (``| head``) ends quietly."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        status = args.run(args)
        sys.stdout.flush()
    except BrokenPipeError:
        # The reader went away (| head): stop quietly.  Point stdout at /dev/null so the
        # interpreter's final flush does not raise again while exiting.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0
    except KeyboardInterrupt:
        return 130
    return status


if __name__ == "__main__":
    sys.exit(main())
