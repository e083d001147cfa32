"""``fusd replay``: play a recording to a device class and diff its replies with the captured ones.

    fusd replay session.pcapng --device mymod:MyDevice [--name NAME] [--json] [--only-diffs]

A regression tool for device authors: record a session (``Server(record=...)``,
``fusd serve --record``), change the device, replay the recording against the new
code and see every reply that changed, field by field.  Exit status: 0 all replies
the same, 1 some differ or are missing (or the session broke the protocol), 2 the
capture cannot be replayed.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any, Dict, List, Optional, Set

from fusd_wire import constants as C
from fusd_wire.codec import errno_name

from .compare import DIFFERS, MISSING, SAME, Outcome
from .plan import ReplayError
from .runner import replay


def add_replay_arguments(p: Any) -> None:
    """Options of ``fusd replay``."""
    p.add_argument("file", help="capture recorded by the fusd runtime (Server(record=...), fusd serve --record)")
    p.add_argument("--device", required=True, metavar="module:Class",
                   help="the device class to replay against (module:Class or path/file.py:Class); "
                        "a fresh instance is made with no arguments")
    p.add_argument("--name", help="the device's name in the capture (FUSE: path under the mount; CUSE: DEVNAME); "
                                  "default: the class name lowercased, or the only device opened")
    p.add_argument("--connection", type=int, metavar="N", help="which connection, when the capture has several")
    p.add_argument("--json", action="store_true", help="one JSON object per request, then a summary object")
    p.add_argument("--opcode", help="report only these opcodes (names or numbers, comma-separated); "
                                    "every request is still played")
    p.add_argument("--timeout", type=float, default=1.0, metavar="S",
                   help="seconds to wait for a reply the capture shows before the next request (default 1)")
    p.add_argument("--only-diffs", action="store_true", help="text form: do not list requests that are the same")
    p.add_argument("--record", metavar="OUT.pcapng", help="also record the replayed session (decode it to compare)")
    p.add_argument("--force", action="store_true", help="replay a connection not recorded by the fusd runtime")
    p.add_argument("--format", choices=("pcapng", "strace"), help="input format (default: detect)")
    p.add_argument("--max-bytes", type=int, default=32, metavar="N",
                   help="bytes shown around a difference in a data field (default 32)")


def _opcode_numbers(text: Optional[str], parser: Any) -> Optional[Set[int]]:
    if text is None:
        return None
    known = {C.opcode_name(op): int(op) for op in C.fuse_opcode}
    out: Set[int] = set()
    for word in (w.strip().upper() for w in text.split(",") if w.strip()):
        if word.isdigit():
            out.add(int(word))
            continue
        word = word[5:] if word.startswith("FUSE_") else word
        if word not in known:
            parser.error(f"--opcode: unknown opcode {word!r}")
        out.add(known[word])
    return out


def _fmt(key: str, value: Any, limit: int, offset: Optional[int] = None) -> str:
    from fusd_wire.trace.render import _fmt_bytes, _fmt_value
    if value is None:
        return "none"
    if isinstance(value, bytes):
        if offset is None or len(value) <= limit:
            return f"{len(value)} bytes {_fmt_bytes(value, limit)}"
        start = max(0, offset - limit // 4)
        window = _fmt_bytes(value[start:start + limit], -1)
        return f"{len(value)} bytes {'...' if start else ''}{window}{'...' if start + limit < len(value) else ''}"
    if key == "error" and isinstance(value, int):
        return f"{value} ({errno_name(value)})"
    return _fmt_value(key.rsplit(".", 1)[-1], value, limit)


def outcome_lines(o: Outcome, limit: int = 32) -> List[str]:
    """Text form of one outcome: a header line, then one line per differing field."""
    h = o.step.request.message.header  # type: ignore[union-attr]
    head = f"unique: {h.unique}, opcode: {C.opcode_name(h.opcode)} ({h.opcode}): {o.result}"
    if o.note:
        head += f" ({o.note})"
    lines = [head]
    for d in o.diffs:
        where = f", first difference at offset {d.offset}" if d.offset is not None else ""
        lines.append(f"   {d.field}: captured {_fmt(d.field, d.captured, limit, d.offset)}, "
                     f"replayed {_fmt(d.field, d.replayed, limit, d.offset)}{where}")
    return lines


def outcome_json(o: Outcome) -> Dict[str, Any]:
    """JSON form of one outcome (bytes as hex, like the decoder's JSON)."""
    from fusd_wire.trace.render import jsonable
    h = o.step.request.message.header  # type: ignore[union-attr]
    obj: Dict[str, Any] = {"type": "request", "unique": h.unique, "opcode": C.opcode_name(h.opcode),
                           "opcode_num": h.opcode, "nodeid": h.nodeid, "result": o.result,
                           "where": o.step.request.record.location()}
    if o.note:
        obj["note"] = o.note
    if o.diffs:
        obj["diffs"] = []
        for d in o.diffs:
            item = {"field": d.field, "captured": jsonable(d.captured), "replayed": jsonable(d.replayed)}
            if d.offset is not None:
                item["offset"] = d.offset
            obj["diffs"].append(item)
    return obj


def run_replay(args: Any, parser: Any, out: Any = None, err: Any = None) -> int:
    """The replay command: 0 all replies the same, 1 some differ or are missing, 2 cannot replay."""
    from ..cli import load_device_class

    out = out or sys.stdout
    err = err or sys.stderr
    opcodes = _opcode_numbers(args.opcode, parser)
    try:
        cls = load_device_class(args.device)
    except SystemExit as exc:
        print(str(exc.code) if exc.code is not None else f"cannot load {args.device}", file=err)
        return 2
    try:
        device = cls()
    except Exception as exc:
        print(f"fusd replay: cannot make a {args.device} with no arguments: {exc}", file=err)
        return 2
    try:
        result = replay(args.file, device, name=args.name, connection=args.connection, timeout=args.timeout,
                        opcodes=opcodes, force=args.force, record=args.record, format=args.format)
    except ReplayError as exc:
        print(f"{args.file}: cannot replay: {exc}", file=err)
        return 2
    except (OSError, ValueError) as exc:
        print(f"{args.file}: {exc}", file=err)
        return 2
    info = result.connection
    print(f"replay: {args.file} connection {info.id} ({info.connection.name}), device {result.name!r} "
          f"-> {cls.__name__}: {len(result.outcomes)} requests played, {result.skipped} of the file system "
          "skipped", file=err)
    for problem in result.errors:
        print(f"replay: session error: {problem}", file=err)
    for o in result.reported:
        if args.json:
            out.write(json.dumps(outcome_json(o)) + "\n")
        elif o.result != SAME or not args.only_diffs:
            out.write("\n".join(outcome_lines(o, args.max_bytes)) + "\n")
    if args.json:
        out.write(json.dumps({"type": "summary", "requests": len(result.reported), "same": result.count(SAME),
                              "differ": result.count(DIFFERS), "missing": result.count(MISSING)}) + "\n")
    else:
        out.write(result.summary() + "\n")
    return 0 if result.ok and not result.errors else 1


def build_parser() -> argparse.ArgumentParser:
    """The ``fusd replay`` argument parser (one-line usage errors, exit 2: ``cli.ArgumentParser``)."""
    from ..cli import ArgumentParser

    p = ArgumentParser(
        prog="fusd replay",
        description="Feed the kernel's requests of one recorded connection to a fresh instance of a device class, "
                    "served by the real fusd runtime on the loopback kernel (a socketpair: no root, no /dev/fuse), "
                    "and compare its replies with the captured ones. Exit 0: all the same; 1: differences or "
                    "missing replies; 2: cannot replay.",
        epilog="example:\n  fusd serve mymod:Mailbox --record before.pcapng   # drive it, Ctrl-C\n"
               "  fusd replay before.pcapng --device mymod:Mailbox --only-diffs")
    add_replay_arguments(p)
    return p


def main(argv: Optional[List[str]] = None) -> int:
    """``fusd replay ARGS``; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return run_replay(args, parser)
    except KeyboardInterrupt:
        return 130


__all__ = ["add_replay_arguments", "build_parser", "main", "outcome_json", "outcome_lines", "run_replay"]
