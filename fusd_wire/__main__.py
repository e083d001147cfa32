"""``python -m fusd_wire COMMAND``: protocol tools.

Commands:
    decode FILE     decode a capture (our pcapng, or an strace log of any FUSE daemon)

More (replay, tap) will hang off the same parser as subcommands.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import List, Optional


def build_parser() -> argparse.ArgumentParser:
    from .trace.command import add_decode_arguments

    parser = argparse.ArgumentParser(prog="python -m fusd_wire", description="FUSE/CUSE wire protocol tools")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    dec = sub.add_parser("decode", help="decode a capture into libfuse -d-like text, JSON lines or stats",
                         description="Decode a FUSE capture: our pcapng, or strace -f -xx -s 1048576 "
                                     "-e trace=read,readv,write,writev output of any FUSE daemon.")
    add_decode_arguments(dec)
    dec.set_defaults(run=_decode, parser_=dec)
    return parser


def _decode(args: argparse.Namespace) -> int:
    from .trace.command import run_decode
    return run_decode(args, args.parser_)


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
