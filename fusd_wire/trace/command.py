"""``python -m fusd_wire decode``: options, filters, output, exit status.

Exit status: 0 when the whole capture decoded cleanly, 1 when anything was wrong with
it or is missing from it -- each problem is printed on stderr with its block/line and
offset, decoding carries on, and a summary line ends the report (requests without a
reply, replies without a request, incomplete messages) -- and 2 for usage errors (bad
options, unreadable file).
"""

from __future__ import annotations

import argparse
import sys
from typing import IO, List, Optional, Set

from .. import constants as C
from .decode import NOTIFY, REPLY, REQUEST, Decoder, Event
from .pcapng import CaptureError
from .reader import open_capture
from .render import json_line, json_object, text_lines
from .stats import Stats


def add_decode_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("file", help="capture: our pcapng, or an strace -f -xx log of any FUSE daemon ('-' = stdin)")
    p.add_argument("--format", choices=("pcapng", "strace"), help="input format (default: detect)")
    p.add_argument("--json", action="store_true", help="one JSON object per message (bytes as hex strings)")
    p.add_argument("--opcode", help="only these opcodes: names or numbers, comma-separated (READ,WRITE,15; "
                                    "NOTIFY or NOTIFY_POLL for notifications)")
    p.add_argument("--unique", help="only these uniques (comma-separated)")
    p.add_argument("--nodeid", help="only requests on these nodeids (comma-separated)")
    p.add_argument("--pid", help="only requests from these pids (comma-separated)")
    p.add_argument("--errors", action="store_true", help="only failed replies, each with its request")
    p.add_argument("--since", type=float, help="only messages at least this many seconds after the first")
    p.add_argument("--until", type=float, help="only messages at most this many seconds after the first")
    p.add_argument("--stats", action="store_true", help="per-opcode count, errors, latency p50/p90/p99/max (µs)")
    p.add_argument("--time", action="store_true", help="show each message's time since the first (text form)")
    p.add_argument("--max-bytes", type=int, default=64, metavar="N",
                   help="show at most N bytes of each data field in text form (-1: all; default 64)")


def _int_set(text: Optional[str], what: str, parser: argparse.ArgumentParser) -> Optional[Set[int]]:
    if text is None:
        return None
    try:
        return {int(x, 0) for x in text.split(",") if x.strip()}
    except ValueError:
        parser.error(f"--{what}: expected comma-separated numbers, got {text!r}")
    return None


def _opcode_set(text: Optional[str], parser: argparse.ArgumentParser) -> Optional[Set[str]]:
    if text is None:
        return None
    names = set()
    for word in (w.strip().upper() for w in text.split(",") if w.strip()):
        if word.isdigit():
            names.add(C.opcode_name(int(word)))
            continue
        word = word[5:] if word.startswith("FUSE_") else word
        known = {C.opcode_name(op) for op in C.fuse_opcode} | {"NOTIFY"}
        if word not in known and not word.startswith("NOTIFY_"):
            parser.error(f"--opcode: unknown opcode {word!r}")
        names.add(word)
    return names


class Filter:
    """Which events to show.  Request properties (opcode, unique, nodeid, pid) select whole
    exchanges (the request and its reply); the time range selects single messages."""

    def __init__(self, args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
        self.opcodes = _opcode_set(args.opcode, parser)
        self.uniques = _int_set(args.unique, "unique", parser)
        self.nodeids = _int_set(args.nodeid, "nodeid", parser)
        self.pids = _int_set(args.pid, "pid", parser)
        self.errors = args.errors
        self.since = None if args.since is None else int(args.since * 1e9)
        self.until = None if args.until is None else int(args.until * 1e9)
        self.active = not (self.opcodes is None and self.uniques is None and self.nodeids is None
                           and self.pids is None and not self.errors and self.since is None and self.until is None)

    def in_time(self, ev: Event, origin: Optional[int]) -> bool:
        ts = ev.record.timestamp_ns
        if ts is None or origin is None:
            return True
        rel = ts - origin
        return not (self.since is not None and rel < self.since or self.until is not None and rel > self.until)

    def selects(self, ev: Event) -> bool:
        """Request-level selection (ignores --errors and time)."""
        if ev.kind == NOTIFY:
            if self.uniques is not None or self.nodeids is not None or self.pids is not None:
                return False
            if self.opcodes is not None:
                name = "NOTIFY_" + C.notify_name(ev.message.header.error) if ev.message is not None else "NOTIFY_?"
                return "NOTIFY" in self.opcodes or name in self.opcodes
            return True
        req = ev.origin
        if self.uniques is not None and (ev.unique not in self.uniques):
            return False
        if req is None:  # a reply without a request: only the unique filter can speak for it
            return self.opcodes is None and self.nodeids is None and self.pids is None
        h = req.header
        if self.opcodes is not None and C.opcode_name(h.opcode) not in self.opcodes:
            return False
        if self.nodeids is not None and h.nodeid not in self.nodeids:
            return False
        return self.pids is None or h.pid in self.pids


def _show(decoder: Decoder, flt: Filter, stats: Optional[Stats], args: argparse.Namespace,
          out: IO[str]) -> Optional[int]:
    """Write (or count) the selected events; returns the first timestamp (the time origin)."""
    origin: Optional[int] = None
    held = {}  # --errors: (conn, unique) -> request event, shown only if its reply fails
    write = out.write
    if stats is not None and not flt.active:  # the common --stats run: nothing to select
        add = stats.add
        for ev in decoder:
            add(ev)
    for ev in decoder if stats is None or flt.active else ():
        if origin is None and ev.record.timestamp_ns is not None:
            origin = ev.record.timestamp_ns
        if flt.active and (not flt.selects(ev) or not flt.in_time(ev, origin)):
            continue
        if flt.errors:
            if ev.kind == REQUEST:
                if ev.message is not None:
                    held[(ev.record.conn, ev.unique)] = ev
                continue
            if ev.kind != REPLY or not ev.error:
                continue
        shown = [ev]
        if flt.errors:
            req_ev = held.pop((ev.record.conn, ev.unique), None)
            if req_ev is not None:
                shown.insert(0, req_ev)
        for e in shown:
            if stats is not None:
                stats.add(e)
            elif args.json:
                write(json_line(e, origin_ns=origin) + "\n")
            else:
                write("\n".join(text_lines(e, limit=args.max_bytes, origin_ns=origin if args.time else None)) + "\n")
        if flt.errors and len(held) > 100_000:  # never-answered requests must not grow without bound
            held.clear()
    return origin


def run_decode(args: argparse.Namespace, parser: argparse.ArgumentParser, out: Optional[IO[str]] = None,
               err: Optional[IO[str]] = None) -> int:
    """The decode command; returns the exit status."""
    out = out or sys.stdout
    err = err or sys.stderr
    problems: List[CaptureError] = []

    def report(e: CaptureError) -> None:
        problems.append(e)
        print(f"{args.file}: {e}", file=err)

    flt = Filter(args, parser)
    try:
        capture = open_capture(args.file, report, format=args.format)
    except OSError as exc:
        print(f"{args.file}: cannot read: {exc.strerror or exc}", file=err)
        return 2
    decoder = Decoder(capture, report, bodies=not args.stats)  # counting needs headers only
    stats = Stats() if args.stats else None
    try:
        origin = _show(decoder, flt, stats, args, out)
    except BrokenPipeError:
        raise  # the reader went away (| head): the caller ends quietly
    except OSError as exc:  # the file went away or failed under us: not the capture's fault
        print(f"{args.file}: read error: {exc.strerror or exc}", file=err)
        return 2
    if stats is not None:
        if args.json:
            import json
            for row in stats.rows():
                out.write(json.dumps(row) + "\n")
        else:
            out.write(stats.table() + "\n")
    summary = decoder.finish()  # reports the requests that never got a reply
    if (args.since is not None or args.until is not None) and origin is None:
        print(f"{args.file}: warning: the capture has no timestamps; --since/--until ignored", file=err)
    if problems:
        print(f"{args.file}: {summary.line()}; {len(problems)} problem(s) reported above", file=err)
    return 1 if problems else 0


__all__ = ["Filter", "add_decode_arguments", "json_object", "run_decode"]
