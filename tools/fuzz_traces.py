#!/usr/bin/env python3
"""Long fuzz run of the trace readers: hostile pcapng files and strace logs may only ever be *reported*.

The promise (docs/traces.md, docs/fuzzing.md): whatever a capture holds, decoding it
never raises -- every problem goes to ``on_problem`` as a ``CaptureError`` naming the
block or line and a byte offset inside the file, decoding carries on, and the command
exits 1 with those messages, never a traceback.  ``tests/test_fuzz_traces.py`` checks a
few thousand inputs on every test run; this tool runs the same mutator and oracle
(``tests/trace_samples.py``) for millions.

Seeds: generated pcapng captures (small and big messages; two sections, one of them
big-endian, comments, a microsecond interface, a simple packet block, a foreign block)
and strace logs (read/writev, libfuse splice replies from memory and from a file, two
threads with unfinished/resumed calls, and a log with splice reads, tee, dup2, fcntl,
fork, clone ioctl, -y decorations, octal escapes, ENODEV).  Each input is 1-4 stacked
mutations: bit flips, interesting u32s at aligned offsets (lengths, block types, caplen,
interface ids), truncation, inserted/deleted/duplicated ranges, splices of another
seed; for logs also line deletions, duplications, swaps, cuts, changed numbers and
inserted strace tokens (``\\x``, ``\\xZZ``, stray quotes, ``<unfinished ...>``, ``= -1
ENODEV``, ``pipe:[7]``, call names).  Each input is decoded with its format forced and
detected, through the full and the headers-only decoder, rendered as text and JSON.

A broken promise is saved to ``--crash-dir`` (``crash-<sha1>.bin`` + ``.json`` with the
format and traceback) and the run exits 1; ``--replay FILE.bin ...`` re-runs findings.

    nice -n 10 python3 tools/fuzz_traces.py --count 1000000 --seed 1
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
from typing import Dict, List, Optional, Tuple

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [ROOT, os.path.join(ROOT, "tests")]

from trace_samples import Finding, check, mutate, seeds  # noqa: E402


def _site(exc: BaseException) -> Tuple[str, str, int]:
    """One finding per distinct place: the innermost frame of the escaped exception."""
    inner = exc.__cause__ or exc
    frames = traceback.extract_tb(inner.__traceback__)
    frame = frames[-1] if frames else None
    return (type(inner).__name__, os.path.relpath(frame.filename, ROOT) if frame else "?",
            frame.lineno or 0 if frame else 0)


def save(crash_dir: str, fmt: str, data: bytes, exc: BaseException) -> str:
    os.makedirs(crash_dir, exist_ok=True)
    base = os.path.join(crash_dir, f"crash-{hashlib.sha1(data).hexdigest()[:16]}")
    with open(base + ".bin", "wb") as fh:
        fh.write(data)
    inner = exc.__cause__ or exc
    with open(base + ".json", "w") as fh:
        json.dump({"format": fmt, "finding": str(exc),
                   "traceback": traceback.format_exception(type(inner), inner, inner.__traceback__)}, fh, indent=1)
    return base + ".bin"


def replay(paths: List[str]) -> int:
    failed = 0
    for path in paths:
        meta = path[:-4] + ".json" if path.endswith(".bin") else path
        fmt = json.load(open(meta))["format"] if os.path.exists(meta) else "pcapng"
        data = open(path[:-5] + ".bin" if path.endswith(".json") else path, "rb").read()
        try:
            events, problems = check(fmt, data)
            print(f"{path}: ok ({events} events, {problems} problems reported)")
        except Finding as exc:
            failed += 1
            print(f"{path}: STILL FAILS: {exc}")
    return 1 if failed else 0


def run(count: int, seed: int, crash_dir: str, report_every: int, max_findings: int) -> int:
    corpus = seeds()
    rng = random.Random(seed)
    print(f"fuzz_traces: {len(corpus)} seed captures ({sum(len(d) for _, d in corpus)} bytes), {count} inputs, "
          f"seed {seed}", flush=True)
    stats: Dict[str, int] = Counter()
    findings: Dict[Tuple[str, str, int], str] = {}
    start = time.perf_counter()
    n = 0
    for n in range(1, count + 1):
        fmt, raw = corpus[rng.randrange(len(corpus))]
        data = mutate(rng, fmt, raw, corpus[rng.randrange(len(corpus))][1])
        try:
            events, problems = check(fmt, data)
        except Finding as exc:
            stats["findings"] += 1
            site = _site(exc)
            if site not in findings:
                findings[site] = save(crash_dir, fmt, data, exc)
                print(f"FINDING {site}: {exc} -> {findings[site]}", flush=True)
                if len(findings) >= max_findings:
                    break
        else:
            stats[f"{fmt} inputs"] += 1
            stats["events decoded"] += events
            stats["problems reported"] += problems
            stats["inputs with problems" if problems else "inputs decoded cleanly"] += 1
        if report_every and n % report_every == 0:
            dt = time.perf_counter() - start
            print(f"  {n} inputs, {dt:.0f} s, {n / dt:.0f} inputs/s, {stats['findings']} findings", flush=True)
    elapsed = time.perf_counter() - start
    print(f"\nsummary: {n} inputs in {elapsed:.1f} s ({n / max(elapsed, 1e-9):.0f} inputs/s)")
    for key in sorted(stats):
        print(f"  {key}: {stats[key]}")
    print(f"  findings: {stats['findings']} ({len(findings)} distinct sites)")
    for site, path in findings.items():
        print(f"    {site}: {path}")
    return 1 if findings else 0


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 epilog="example: nice -n 10 python3 tools/fuzz_traces.py --count 1000000 --seed 1")
    ap.add_argument("--count", type=int, default=1_000_000, help="inputs to try (default 1,000,000)")
    ap.add_argument("--seed", type=int, default=1, help="random seed")
    ap.add_argument("--crash-dir", default=os.path.join(ROOT, "fuzz-findings"), help="where findings go")
    ap.add_argument("--report-every", type=int, default=100_000, help="progress line every N inputs (0: none)")
    ap.add_argument("--max-findings", type=int, default=20, help="stop after this many distinct sites")
    ap.add_argument("--replay", nargs="+", metavar="FILE", help="re-run saved findings (.bin) instead of fuzzing")
    args = ap.parse_args(argv)
    if args.replay:
        return replay(args.replay)
    return run(args.count, args.seed, args.crash_dir, args.report_every, args.max_findings)


if __name__ == "__main__":
    sys.exit(main())
