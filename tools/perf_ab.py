"""A/B several FUSE servers in real round trips: median latency and server CPU per call.

    python tools/perf_ab.py [--ops pread1,getattr] [--rounds 5] [--iters 30000] \
        NAME='COMMAND {mnt}' NAME='COMMAND {mnt}' ...

Made for measuring a change to the hot path: serve the same device from two
checkouts (``base='env PYTHONPATH=/tmp/base python -m fusd_runtime.perfserver {mnt}'``
and ``new='python -m fusd_runtime.perfserver {mnt}'``) and compare.  Each round
starts every server in turn, pinned with the client to one CPU and in its own
session (as ``../shared/perf/run.sh`` does: a server sharing the client's session
shares its scheduler autogroup, which changes the numbers), runs the harness's C
client with ``-S`` for the server's CPU time, and stops the server.  Rounds are
interleaved so slow drifts of a shared machine hit every variant alike; the table
shows the median over rounds.

Needs root, /dev/fuse and the harness's client, built by ``../shared/perf/run.sh``
(``$PERF_DIR/build/client``, default /tmp/perf/build/client).
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Dict, List, Tuple


def run_variant(name: str, cmd: str, client: str, ops: str, iters: int, cpu: str) -> Dict[str, Tuple[float, float]]:
    """Start one server, run the client once over every op, stop the server: {op: (median µs, server CPU µs)}."""
    mnt = tempfile.mkdtemp(prefix=f"perf-ab-{name}-")
    # cwd="/": ``python -m`` puts the working directory first on sys.path, which would shadow PYTHONPATH
    proc = subprocess.Popen(["taskset", "-c", cpu, "bash", "-c", "exec " + cmd.replace("{mnt}", mnt)],
                            stdout=subprocess.DEVNULL, start_new_session=True, cwd="/")
    try:
        deadline = time.monotonic() + 20
        while not os.path.exists(os.path.join(mnt, "dev0")):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"perf_ab: server {name!r} did not come up ({cmd})")
            time.sleep(0.05)
        out = subprocess.run(["taskset", "-c", cpu, client, "-n", str(iters), "-o", ops, "-S", str(proc.pid),
                              os.path.join(mnt, "dev0")], capture_output=True, text=True, check=True).stdout
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        subprocess.run(["umount", "-l", mnt], capture_output=True)
        os.rmdir(mnt)
    result = {}
    for line in out.splitlines():
        if line and not line.startswith("#"):
            f = line.split("\t")  # op n median p99 mean min errors errno ops/s cli_cpu srv_cpu srv_minflt
            result[f[0]] = (float(f[2]), float(f[10]))
    return result


def main(argv: List[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("variants", nargs="+", metavar="NAME=COMMAND", help="a server command line; {mnt} is its mountpoint")
    p.add_argument("--ops", default="pread1,pwrite1,getattr,lookupneg,ioctl,poll,openclose")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--iters", type=int, default=30000, help="timed calls per op per round")
    p.add_argument("--cpu", default="0", help="the CPU client and servers are pinned to")
    p.add_argument("--client", default=os.path.join(os.environ.get("PERF_DIR", "/tmp/perf"), "build", "client"))
    args = p.parse_args(argv)
    if not os.path.exists(args.client):
        p.error(f"no harness client at {args.client}: run ../shared/perf/run.sh once (it builds it)")
    variants = dict(v.split("=", 1) for v in args.variants if "=" in v)
    if len(variants) != len(args.variants):
        p.error("each variant is NAME=COMMAND")
    samples: Dict[Tuple[str, str], List[Tuple[float, float]]] = {}
    for r in range(args.rounds):
        for name, cmd in variants.items():
            print(f"round {r + 1}/{args.rounds}: {name}", file=sys.stderr, flush=True)
            for op, value in run_variant(name, cmd, args.client, args.ops, args.iters, args.cpu).items():
                samples.setdefault((name, op), []).append(value)
    ops = args.ops.split(",")
    print("median latency µs / server CPU µs per call, median over rounds")
    print(f"{'variant':12s}" + "".join(f"{op:>17s}" for op in ops))
    for name in variants:
        cells = []
        for op in ops:
            got = samples.get((name, op))
            if not got:
                cells.append(f"{'-':>17s}")
                continue
            lat = statistics.median(s[0] for s in got)
            cpu = statistics.median(s[1] for s in got)
            cells.append(f"{lat:9.2f} / {cpu:5.2f}")
        print(f"{name:12s}" + "".join(cells))
    return 0


if __name__ == "__main__":
    sys.exit(main())
