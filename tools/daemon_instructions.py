"""Instructions the daemon executes per request: a hot-path measurement that does not depend on machine noise.

    python tools/daemon_instructions.py [--ops pread1,getattr] [--calls 2000,12000] \\
        NAME='COMMAND {mnt}' NAME='COMMAND {mnt}' ...

Each variant's server runs under ``valgrind --tool=callgrind`` (which counts
instructions, not time: the same binary with the same input gives the same count
whatever else the machine does), is driven by the perf harness's C client with
two call counts, and stops; the difference of the two totals divided by the
difference of the calls is the daemon's instructions per request — start-up,
mount and teardown cancel out.  Use it to show that a change to the hot path did
not add work (``tools/perf_ab.py`` gives the time on a quiet machine).

Needs root, /dev/fuse, valgrind and the harness's client (``$PERF_DIR/build/client``,
built by the perf harness or ``gcc -O2 -o client client.c -lpthread``).  One reader
thread (``--readers 1`` is appended to perfserver commands): valgrind runs threads
one at a time anyway.
"""

from __future__ import annotations

import argparse
import glob
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from typing import Dict, List


def _total_instructions(path: str) -> int:
    """The file's instruction total (0 for a process that only exec'ed, like ``env``)."""
    with open(path) as f:
        for line in f:
            m = re.match(r"(?:summary|totals):\s+(\d+)", line)
            if m:
                return int(m.group(1))
    return 0


def run_once(cmd: str, client: str, op: str, calls: int) -> int:
    """Instructions of one server process that answered ``calls`` calls of ``op`` (plus start and stop)."""
    mnt = tempfile.mkdtemp(prefix="fusd-cg-")
    out_dir = tempfile.mkdtemp(prefix="fusd-cg-out-")
    command = cmd.replace("{mnt}", mnt)
    full = (f"exec valgrind --tool=callgrind --trace-children=yes --callgrind-out-file={out_dir}/cg.%p "
            f"{command}")
    # cwd="/": ``python -m`` puts the working directory first on sys.path, which would shadow PYTHONPATH
    proc = subprocess.Popen(["bash", "-c", full], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True, cwd="/")
    try:
        deadline = time.monotonic() + 300
        while not os.path.exists(os.path.join(mnt, "dev0")):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"daemon_instructions: the server did not come up: {command}")
            time.sleep(0.2)
        subprocess.run([client, "-n", str(calls), "-w", "0", "-o", op, os.path.join(mnt, "dev0")],
                       capture_output=True, check=True, timeout=600)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(300)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        subprocess.run(["umount", "-l", mnt], capture_output=True)
        os.rmdir(mnt)
    files = glob.glob(os.path.join(out_dir, "cg.*"))
    if not files:
        raise SystemExit("daemon_instructions: valgrind wrote no output")
    total = sum(_total_instructions(f) for f in files)
    shutil.rmtree(out_dir, ignore_errors=True)
    return total


def main(argv: List[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("variants", nargs="+", metavar="NAME=COMMAND", help="a server command line; {mnt} is its mountpoint")
    p.add_argument("--ops", default="pread1,pwrite1,getattr,ioctl")
    p.add_argument("--calls", default="2000,12000", help="the two call counts whose difference is measured")
    p.add_argument("--client", default=os.path.join(os.environ.get("PERF_DIR", "/tmp/perf"), "build", "client"))
    args = p.parse_args(argv)
    if not shutil.which("valgrind"):
        p.error("needs valgrind (Debian package valgrind)")
    if not os.path.exists(args.client):
        p.error(f"no harness client at {args.client}")
    low, high = (int(x) for x in args.calls.split(","))
    variants: Dict[str, str] = dict(v.split("=", 1) for v in args.variants)
    ops = args.ops.split(",")
    print(f"instructions per request in the daemon (callgrind, ({high} - {low}) calls)")
    print(f"{'variant':12s}" + "".join(f"{op:>12s}" for op in ops))
    for name, cmd in variants.items():
        if "perfserver" in cmd and "--readers" not in cmd:
            cmd += " --readers 1"
        cells = []
        for op in ops:
            per = (run_once(cmd, args.client, op, high) - run_once(cmd, args.client, op, low)) / (high - low)
            cells.append(f"{per:12.0f}")
            print(f"  {name} {op}: {per:.0f}", file=sys.stderr, flush=True)
        print(f"{name:12s}" + "".join(cells), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
