"""Instructions the daemon executes per request: a hot-path measurement that does not depend on machine noise.

    python tools/daemon_instructions.py [--ops pread1,getattr] [--calls 2000,6000] \\
        NAME='COMMAND {mnt}' NAME='COMMAND {mnt}' ...

Each variant's server runs under ``valgrind --tool=callgrind`` (which counts
instructions, not time: the same code with the same input gives the same count
whatever else the machine does) and is driven by the perf harness's C client.
For each op the counters are zeroed (``callgrind_control -z``), ``N1`` calls are
made and the counts read (``callgrind_control -e``), then the same with ``N2``
calls; ``(count(N2) - count(N1)) / (N2 - N1)`` is the daemon's instructions per
request, all threads together.  Work that grows with wall time instead of calls
(the reader supervisor's ticks on the event loop) is shown apart, as the loop
thread's count, since valgrind stretches wall time ~50x.

Use it to show that a change to the hot path did not add work (``tools/perf_ab.py``
gives the time, on a quiet machine).  Needs root, /dev/fuse, valgrind and the
harness's client (``$PERF_DIR/build/client``, or ``gcc -O2 -o client client.c -lpthread``
from the perf harness).  ``--readers 1`` is appended to perfserver commands.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from typing import Dict, List, Tuple


def _counts(pid: int) -> Dict[int, int]:
    out = subprocess.run(["callgrind_control", "-e", str(pid)], capture_output=True, text=True).stdout
    return {int(t): int(n.replace(",", "")) for t, n in re.findall(r"Th\s+(\d+)\s+([\d,]+)", out)}


def _measure(pid: int, client: str, target: str, op: str, calls: int) -> Dict[int, int]:
    subprocess.run(["callgrind_control", "-z", str(pid)], capture_output=True, check=True)
    subprocess.run([client, "-n", str(calls), "-w", "0", "-o", op, target], capture_output=True, check=True,
                   timeout=1200)
    return _counts(pid)


def measure_variant(cmd: str, client: str, ops: List[str], low: int, high: int) -> Dict[str, Tuple[float, float]]:
    """{op: (instructions per request, loop thread's instructions per request)} for one server command."""
    base = tempfile.mkdtemp(prefix="fusd-cg-")
    mnt = os.path.join(base, "mnt")
    os.mkdir(mnt)
    command = cmd.replace("{mnt}", mnt)
    # cwd="/": ``python -m`` puts the working directory first on sys.path, which would shadow PYTHONPATH
    valgrind = f"exec valgrind --tool=callgrind --trace-children=yes --callgrind-out-file={base}/cg.%p"
    proc = subprocess.Popen(["bash", "-c", f"{valgrind} {command}"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True, cwd="/")
    target = os.path.join(mnt, "dev0")
    result: Dict[str, Tuple[float, float]] = {}
    try:
        deadline = time.monotonic() + 600
        while not os.path.exists(target):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"daemon_instructions: the server did not come up: {command}")
            time.sleep(0.5)
        _measure(proc.pid, client, target, ops[0], low)  # warm up (first calls, lazy paths)
        for op in ops:
            small = _measure(proc.pid, client, target, op, low)
            large = _measure(proc.pid, client, target, op, high)
            total = (sum(large.values()) - sum(small.values())) / (high - low)
            loop = (large.get(1, 0) - small.get(1, 0)) / (high - low)  # thread 1: the main thread / the loop
            result[op] = (total, loop)
            print(f"  {op}: {total:.0f} instructions per request ({loop:.0f} on the main thread)", file=sys.stderr,
                  flush=True)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # no clean stop needed: the counts are read; the watchdog unmounts
        proc.wait()
        for _ in range(50):
            if subprocess.run(["mountpoint", "-q", mnt]).returncode != 0:
                break
            time.sleep(0.2)
        subprocess.run(["umount", "-l", mnt], capture_output=True)
        shutil.rmtree(base, ignore_errors=True)
    return result


def main(argv: List[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("variants", nargs="+", metavar="NAME=COMMAND", help="a server command line; {mnt} is its mountpoint")
    p.add_argument("--ops", default="pread1,pwrite1,getattr,ioctl")
    p.add_argument("--calls", default="2000,6000", help="the two call counts whose difference is measured")
    p.add_argument("--client", default=os.path.join(os.environ.get("PERF_DIR", "/tmp/perf"), "build", "client"))
    args = p.parse_args(argv)
    if not shutil.which("valgrind") or not shutil.which("callgrind_control"):
        p.error("needs valgrind and callgrind_control (Debian package valgrind)")
    if not os.path.exists(args.client):
        p.error(f"no harness client at {args.client}")
    low, high = (int(x) for x in args.calls.split(","))
    variants = dict(v.split("=", 1) for v in args.variants)
    ops = args.ops.split(",")
    table = {}
    for name, cmd in variants.items():
        if "perfserver" in cmd and "--readers" not in cmd:
            cmd += " --readers 1"
        print(f"{name}:", file=sys.stderr, flush=True)
        table[name] = measure_variant(cmd, args.client, ops, low, high)
    print(f"instructions per request in the daemon, all threads (callgrind, {high} - {low} calls)")
    print(f"{'variant':12s}" + "".join(f"{op:>12s}" for op in ops))
    for name, row in table.items():
        print(f"{name:12s}" + "".join(f"{row[op][0]:12.0f}" for op in ops))
    return 0


if __name__ == "__main__":
    sys.exit(main())
