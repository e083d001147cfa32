"""``python -m fusd_wire COMMAND``: protocol tools.

Commands:
    decode FILE     decode a capture (our pcapng, or an strace log of any FUSE daemon)
    tap -o CAP MNT -- DAEMON ARGS   record a libfuse 2/3 daemon's traffic live (root)
    wireshark [-o FILE | --install] the Wireshark dissector (Lua) for our captures, generated from the opcode table

``replay`` moved to the runtime (it runs a device): ``fusd replay FILE --device mod:Class``
(``python -m fusd_runtime replay``); ``python -m fusd_wire replay`` says so and exits 2.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import List, Optional

DECODE_EXAMPLE = """example:
  fusd serve --record /tmp/s.pcapng -f fusd_runtime.examples:Hello /tmp/devs   (cat /tmp/devs/hello, Ctrl-C)
  python -m fusd_wire decode /tmp/s.pcapng --stats      per-opcode counts and latencies
"""


def build_parser() -> argparse.ArgumentParser:
    from .trace.command import add_decode_arguments
    from .trace.strace import RECOMMENDED

    parser = argparse.ArgumentParser(prog="python -m fusd_wire", description="FUSE/CUSE wire protocol tools")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    dec = sub.add_parser("decode", help="decode a capture into libfuse -d-like text, JSON lines or stats",
                         description="Decode a FUSE capture: our pcapng, or the strace log of any FUSE daemon "
                                     "(docs/traces.md). Exit 0: decoded cleanly, nothing missing; 1: problems or "
                                     "losses, each reported on stderr with its block/line; 2: usage or read error.",
                         formatter_class=argparse.RawDescriptionHelpFormatter,
                         epilog=DECODE_EXAMPLE + f"  {RECOMMENDED}\n  python -m fusd_wire decode daemon.strace\n")
    add_decode_arguments(dec)
    dec.set_defaults(run=_decode, parser_=dec)
    tap = sub.add_parser("tap", help="run an unmodified FUSE daemon behind a recording relay (root)",
                         description="Root only. Starts DAEMON ARGS (its own command line, naming MOUNTPOINT) "
                                     "and, when its libfuse (2 or 3) mounts through fusermount, mounts "
                                     "/dev/fuse on MOUNTPOINT with the daemon's options and gives it a "
                                     "SOCK_SEQPACKET socket we relay and record. An argument containing {fd} "
                                     "instead gets /dev/fd/N (libfuse 3's fd mountpoint; the tap mounts first). "
                                     "Spliced replies are reassembled; anything that cannot be one message "
                                     "stops the session with exit status 1. Example: python -m fusd_wire tap "
                                     "-o cap.pcapng /mnt/b -- bindfs -f /srv /mnt/b",
                         formatter_class=argparse.RawDescriptionHelpFormatter)
    tap.add_argument("-o", "--output", required=True, help="capture file to write (pcapng)")
    tap.add_argument("mountpoint")
    tap.add_argument("daemon", nargs=argparse.REMAINDER, help="-- DAEMON ARGS...")
    tap.set_defaults(run=_tap, parser_=tap)
    rep = sub.add_parser("replay", help="moved: use `fusd replay` (python -m fusd_runtime replay)", add_help=False)
    rep.add_argument("rest", nargs=argparse.REMAINDER)
    rep.set_defaults(run=_replay, parser_=rep)
    ws = sub.add_parser("wireshark", help="print the Wireshark dissector (Lua) for our pcapng captures",
                        description="Generate the FUSE/CUSE dissector from the opcode table. Example: "
                                    "python -m fusd_wire wireshark > ~/.local/lib/wireshark/plugins/fuse.lua, "
                                    "or tshark -X lua_script:fuse.lua -r capture.pcapng -V")
    out = ws.add_mutually_exclusive_group()
    out.add_argument("-o", "--output", help="write the dissector to this file instead of stdout")
    out.add_argument("--install", action="store_true",
                     help="write it to Wireshark's personal plugin folder, ~/.local/lib/wireshark/plugins/fuse.lua")
    ws.set_defaults(run=_wireshark, parser_=ws)
    return parser


def _wireshark(args: argparse.Namespace) -> int:
    from .trace.wireshark import run_wireshark
    return run_wireshark(args.output, args.install)


def _decode(args: argparse.Namespace) -> int:
    from .trace.command import run_decode
    return run_decode(args, args.parser_)


#: ``replay`` runs a device, so it lives in the runtime; fusd_wire imports nothing of it.
REPLAY_MOVED = ("python -m fusd_wire replay: replay moved to the runtime, which serves the device it plays to:\n"
                "    fusd replay {args}\n(or python -m fusd_runtime replay ...; see docs/traces.md, \"Replay\")")


def _replay(args: argparse.Namespace) -> int:
    print(REPLAY_MOVED.format(args=" ".join(args.rest) or "FILE --device module:Class"), file=sys.stderr)
    return 2


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
