#!/usr/bin/env python3
"""Long fuzz run of the fusd_wire codec: malformed messages may only ever raise WireError.

The design promises that bad wire data raises one documented exception
(``WireError`` with opcode, offset and what was expected), never ``IndexError``,
``struct.error``, a construct exception or a silent crash of the trace decoder.
``tests/test_fuzz.py`` checks a few thousand inputs on every test run; this tool
runs the same mutator and oracle for millions.

Seeds are valid messages of every opcode (requests, success and error replies)
and every notification at minors 9, 23, 31, 38 and 45 (with and without
FUSE_SETXATTR_EXT), generated from the opcode table by ``tests/wire_samples.py``.
Each input is a mutation of a seed (random bytes, truncation, bit flips,
corrupted len/count/total_extlen fields, inserted/deleted/spliced bytes, or a
stack of those) fed to decode_request / decode_reply (with the request and with
its opcode alone) / decode_notify / decode_from_daemon / Conversation /
iter_messages, in strict and lenient mode; whatever decodes is encoded again.

Any other exception, or a WireError that names no offset, is a finding: the
input is saved to ``--crash-dir`` (raw bytes plus a JSON file with the codec,
the direction, the request it answers and the traceback) and the run exits 1.
``--replay FILE.json`` re-runs saved findings.

    nice python3 tools/fuzz_codec.py --count 1000000 --seed 1
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import sys
import time
import traceback
from collections import Counter
from typing import Any, Dict, List, Tuple

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [ROOT, os.path.join(ROOT, "tests")]

from wire_samples import decode_all, mutate, seed_corpus  # noqa: E402

from fusd_wire import Codec  # noqa: E402


def _site(exc: BaseException) -> Tuple[str, str, int]:
    """Exception type and the innermost frame: one finding per distinct crash site."""
    frame = traceback.extract_tb(exc.__traceback__)[-1]
    return type(exc).__name__, os.path.relpath(frame.filename, ROOT), frame.lineno or 0


def save_finding(crash_dir: str, direction: str, codec: Codec, request: Any, data: bytes,
                 exc: BaseException) -> str:
    """Write the offending input and how to replay it; return the JSON path."""
    os.makedirs(crash_dir, exist_ok=True)
    digest = hashlib.sha1(data).hexdigest()[:16]
    base = os.path.join(crash_dir, f"crash-{digest}")
    with open(base + ".bin", "wb") as fh:
        fh.write(data)
    req_raw = None
    if request is not None:
        h = request.header
        req_raw = codec.encode_request(h.opcode, request.body, unique=h.unique, nodeid=h.nodeid, uid=h.uid,
                                       gid=h.gid, pid=h.pid, extensions=request.extensions).hex()
    info = {"direction": direction, "minor": codec.minor, "flags": codec.flags, "data": data.hex(),
            "request": req_raw, "exception": repr(exc),
            "traceback": traceback.format_exception(type(exc), exc, exc.__traceback__)}
    with open(base + ".json", "w") as fh:
        json.dump(info, fh, indent=1)
    return base + ".json"


def replay(paths: List[str]) -> int:
    """Re-run saved findings; 0 if all are now refused or decoded cleanly."""
    failed = 0
    for path in paths:
        with open(path) as fh:
            info = json.load(fh)
        codec = Codec(info["minor"], info["flags"])
        request = codec.decode_request(bytes.fromhex(info["request"])) if info["request"] else None
        try:
            calls, refused = decode_all(info["direction"], codec, request, bytes.fromhex(info["data"]))
            print(f"{path}: ok ({refused}/{calls} decoders refused it with a WireError)")
        except Exception as exc:  # noqa: BLE001 - reporting any escape is the point
            failed += 1
            print(f"{path}: STILL FAILS: {exc!r}")
    return 1 if failed else 0


def run(count: int, seed: int, crash_dir: str, report_every: int, max_findings: int) -> int:
    t0 = time.perf_counter()
    corpus = seed_corpus(seed=seed)
    rng = random.Random(seed)
    print(f"fuzz_codec: {len(corpus)} seed messages ({time.perf_counter() - t0:.1f} s), {count} inputs, "
          f"seed {seed}", flush=True)
    stats: Dict[str, int] = Counter()
    findings: Dict[Tuple[str, str, int], str] = {}
    start = time.perf_counter()
    for n in range(1, count + 1):
        direction, codec, request, raw = corpus[rng.randrange(len(corpus))]
        data = mutate(rng, raw, direction, corpus[rng.randrange(len(corpus))][3])
        try:
            calls, refused = decode_all(direction, codec, request, data)
        except Exception as exc:  # noqa: BLE001 - any escape is a finding
            stats["unexpected"] += 1
            site = _site(exc)
            if site not in findings:
                findings[site] = save_finding(crash_dir, direction, codec, request, data, exc)
                print(f"FINDING {site}: {exc!r} -> {findings[site]}", flush=True)
                if len(findings) >= max_findings:
                    break
        else:
            stats["decoder calls"] += calls
            stats["refused (WireError)"] += refused
            stats["inputs fully refused" if refused == calls else
                  "inputs fully decoded" if not refused else "inputs decoded by some"] += 1
        if report_every and n % report_every == 0:
            dt = time.perf_counter() - start
            print(f"  {n} inputs, {dt:.0f} s, {n / dt:.0f} inputs/s, {stats['unexpected']} unexpected",
                  flush=True)
    elapsed = time.perf_counter() - start
    done = n if count else 0
    print(f"\nsummary: {done} inputs in {elapsed:.1f} s ({done / max(elapsed, 1e-9):.0f} inputs/s)")
    for key in sorted(stats):
        print(f"  {key}: {stats[key]}")
    print(f"  unexpected exceptions: {stats['unexpected']} ({len(findings)} distinct sites)")
    for site, path in findings.items():
        print(f"    {site}: {path}")
    return 1 if findings else 0


def main(argv: List[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--count", type=int, default=1_000_000, help="inputs to try (default 1,000,000)")
    ap.add_argument("--seed", type=int, default=1, help="random seed (corpus and mutations)")
    ap.add_argument("--crash-dir", default=os.path.join(ROOT, "fuzz-findings"), help="where findings go")
    ap.add_argument("--report-every", type=int, default=100_000, help="progress line every N inputs (0: none)")
    ap.add_argument("--max-findings", type=int, default=20, help="stop after this many distinct crash sites")
    ap.add_argument("--replay", nargs="+", metavar="JSON", help="re-run saved findings instead of fuzzing")
    args = ap.parse_args(argv)
    if args.replay:
        return replay(args.replay)
    return run(args.count, args.seed, args.crash_dir, args.report_every, args.max_findings)


if __name__ == "__main__":
    sys.exit(main())
