"""The first calls after a server starts, chunk by chunk: latency, server CPU, scheduler waits.

    python tools/startup_series.py [--rounds 6] [--chunks 40] [--chunk 250] [--cpu 0] \
        NAME='COMMAND {mnt}' NAME='COMMAND {mnt}' ...

Made for issue 18's start-up transient.  Each round starts every server afresh
(in its own session, pinned with the client to one CPU), and the moment its
``dev0`` exists a C client times ``pread(fd, 1)`` in chunks from the very first
call, printing per chunk: the median and mean latency, then from
``/proc/PID/task/*/schedstat`` the server threads' run time and run-queue wait
per call, and the same for the server's children (the unmount watchdog).  A
reader whose wait per call drops far below the client's run time is being
woken into the client's slice (wakeup preemption): every call then costs ~1 µs
more, on any server.  The summary per variant and round: the median of the
chunk medians, the first 1,000 calls' median, the mean over all calls (stolen
time shows there), how many chunks ran in that preempted state, and the CPU
time the server's children (the watchdog) used while the client ran.

Commands run in ``/`` (give absolute paths): ``python -m`` puts the working
directory first on sys.path, so a checkout there would shadow the ``PYTHONPATH``
that selects the code under test.  Needs root, /dev/fuse and gcc.  Example:

    python tools/startup_series.py before='env PYTHONPATH=/tmp/base python -m fusd_runtime.perfserver {mnt}' \
        after='python -m fusd_runtime.perfserver {mnt}'
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
from typing import Dict, List

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from fusd_runtime.bench_refs import build_c  # noqa: E402

SERIES_C = r"""
#define _GNU_SOURCE
#include <dirent.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
/* series CHUNKS CHUNK TARGET PID: per chunk "i t_ms median mean" + "name run/call wait/call" per task */
static double now(void) {
    struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t); return t.tv_sec * 1e6 + t.tv_nsec / 1e3;
}
static int cmp(const void *a, const void *b) { double x = *(double *)a, y = *(double *)b; return (x > y) - (x < y); }
struct task { int id; char kind; unsigned long long run, wait; };
static int stat_of(const char *path, struct task *t) {
    FILE *f = fopen(path, "r"); if (!f) return 0;
    int ok = fscanf(f, "%llu %llu", &t->run, &t->wait) == 2; fclose(f); return ok;
}
static int snap(int pid, struct task *t, int max) {
    char p[256]; int n = 0; snprintf(p, sizeof p, "/proc/%d/task", pid);
    DIR *d = opendir(p); struct dirent *e;
    while (d && (e = readdir(d)) && n < max) {
        if (e->d_name[0] == '.') continue;
        t[n].id = atoi(e->d_name); t[n].kind = 't';
        snprintf(p, sizeof p, "/proc/%d/task/%d/schedstat", pid, t[n].id);
        if (stat_of(p, &t[n])) n++;
    }
    if (d) closedir(d);
    snprintf(p, sizeof p, "/proc/%d/task/%d/children", pid, pid);
    FILE *f = fopen(p, "r"); int c;
    while (f && n < max && fscanf(f, "%d", &c) == 1) {
        t[n].id = c; t[n].kind = 'c'; snprintf(p, sizeof p, "/proc/%d/schedstat", c);
        if (stat_of(p, &t[n])) n++;
    }
    if (f) fclose(f);
    return n;
}
int main(int argc, char **argv) {
    int chunks = atoi(argv[1]), chunk = atoi(argv[2]), pid = atoi(argv[4]);
    double *s = malloc(sizeof(double) * chunk); char buf[8];
    int fd = open(argv[3], O_RDWR); if (fd < 0) { perror(argv[3]); return 1; }
    struct task a[32], b[32]; double start = now();
    for (int c = 0; c < chunks; c++) {
        int na = snap(pid, a, 32); double w0 = now();
        for (int i = 0; i < chunk; i++) {
            double t0 = now(); if (pread(fd, buf, 1, 0) != 1) { perror("pread"); return 1; } s[i] = now() - t0;
        }
        double w1 = now(); int nb = snap(pid, b, 32);
        qsort(s, chunk, sizeof(double), cmp);
        printf("%d %.1f %.3f %.3f", c, (w0 - start) / 1e3, s[chunk / 2], (w1 - w0) / chunk);
        for (int i = 0; i < nb; i++)
            for (int j = 0; j < na; j++)
                if (a[j].id == b[i].id && a[j].kind == b[i].kind)
                    printf(" %c:%.2f:%.2f", b[i].kind, (b[i].run - a[j].run) / 1e3 / chunk,
                           (b[i].wait - a[j].wait) / 1e3 / chunk);
        printf("\n");
    }
    return 0;
}
"""


def run_one(cmd: str, exe: str, chunks: int, chunk: int, cpu: str) -> List[Dict[str, float]]:
    """Start the server, time the first ``chunks * chunk`` calls, stop it: one row per chunk."""
    mnt = tempfile.mkdtemp(prefix="startup-series-")
    proc = subprocess.Popen(["taskset", "-c", cpu, "bash", "-c", "exec " + cmd.replace("{mnt}", mnt)],
                            stdout=subprocess.DEVNULL, start_new_session=True, cwd="/")
    try:
        deadline = time.monotonic() + 20
        while not os.path.exists(os.path.join(mnt, "dev0")):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"startup_series: {cmd!r} did not come up")
            time.sleep(0.002)
        out = subprocess.run(["taskset", "-c", cpu, exe, str(chunks), str(chunk), os.path.join(mnt, "dev0"),
                              str(proc.pid)], capture_output=True, text=True, check=True).stdout
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        subprocess.run(["umount", "-l", mnt], capture_output=True)
        os.rmdir(mnt)
    rows = []
    for line in out.splitlines():
        f = line.split()
        tasks = [t.split(":") for t in f[4:]]
        threads = [(float(r), float(w)) for k, r, w in tasks if k == "t"]
        busiest = max(threads, default=(0.0, 0.0))  # the reader: the thread that ran most
        rows.append({"t_ms": float(f[1]), "median": float(f[2]), "mean": float(f[3]), "reader_wait": busiest[1],
                     "children_run": sum(float(r) for k, r, _ in tasks if k == "c")})
    return rows


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("variants", nargs="+", metavar="NAME=COMMAND")
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("--chunks", type=int, default=40)
    p.add_argument("--chunk", type=int, default=250, help="calls per chunk")
    p.add_argument("--cpu", default="0")
    p.add_argument("--preempted-below", type=float, default=3.0,
                   help="reader run-queue wait per call (µs) under which a chunk counts as preempted")
    args = p.parse_args()
    variants = [v.split("=", 1) for v in args.variants]
    exe, why = build_c("startup-series", SERIES_C)
    if exe is None:
        p.error(why)
    with open("/proc/stat") as f:
        v0 = [int(x) for x in f.readline().split()[1:8]]
    print(f"{'variant':10} round: median of chunk medians / first 1000 calls / mean of all (µs), preempted chunks,"
          f" children's CPU during the calls (ms)")
    for rnd in range(1, args.rounds + 1):
        k = (rnd - 1) % len(variants)
        for name, cmd in variants[k:] + variants[:k]:
            rows = run_one(cmd, exe, args.chunks, args.chunk, args.cpu)
            first = [r["median"] for r in rows[:max(1, 1000 // args.chunk)]]
            pre = sum(1 for r in rows if r["reader_wait"] < args.preempted_below)
            print(f"{name:10} {rnd}: {statistics.median(r['median'] for r in rows):6.2f} / "
                  f"{statistics.median(first):6.2f} / {statistics.fmean(r['mean'] for r in rows):6.2f}  "
                  f"{pre:3d}/{len(rows)}  {sum(r['children_run'] for r in rows) * args.chunk / 1000:6.2f}", flush=True)
    with open("/proc/stat") as f:
        v1 = [int(x) for x in f.readline().split()[1:8]]
    d = [b - a for a, b in zip(v0, v1)]
    print(f"whole-machine busy fraction over the run: {1 - (d[3] + d[4]) / sum(d):.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
