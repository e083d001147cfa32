"""The ``fusd bench`` client: the operations it times, in C (compiled at run time) or in Python.

One table, :data:`OPS`, says for every operation which system call is timed,
which FUSE requests it makes, which kernel floor it is compared with and on
which transports it means something.  The C client costs ~20 ns per call of its
own; the Python client (used where no compiler exists) adds ~0.3-1 µs per call,
so the report says which one ran.

Both print, per run, ``op n median p99 mean min errors first_errno ops_per_s short
server_cpu`` (µs; ``short``: calls that moved fewer bytes than asked, which would
make a comparison unfair; ``server_cpu``: CPU time the server process, all its
threads, spent per timed call, when its pid is given, else -1; the C client only).
"""

from __future__ import annotations

import os
import select
import statistics
import subprocess
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Tuple

from .bench_refs import build_c

#: _IOR('E', 1, int): PerfFile's ioctl, and every reference's
PERF_IOCTL = 0x80044501
#: the name ``lookupneg`` looks up (in the target's directory); nothing serves it
MISSING_NAME = ".fusd-bench-nonexistent"


@dataclass(frozen=True)
class Op:
    """One timed operation."""

    name: str
    syscall: str  #: what the client calls, per iteration
    requests: str  #: what reaches the server
    floor: str  #: the kernel-only target of the same call (``Floors``)
    transports: Tuple[str, ...] = ("fuse", "cuse")


#: every operation, in the order measured and shown
OPS: Tuple[Op, ...] = (
    Op("pread1", "pread(fd, 1 byte) (read() on a stream)", "READ", "tmpfs"),
    Op("pwrite1", "pwrite(fd, 1 byte) (write() on a stream)", "WRITE", "tmpfs"),
    Op("openclose", "open + close", "OPEN + RELEASE (no FLUSH: FOPEN_NOFLUSH)", "tmpfs"),
    Op("getattr", "statx(fd, AT_EMPTY_PATH | AT_STATX_FORCE_SYNC)", "GETATTR", "tmpfs", ("fuse",)),
    Op("lookupneg", f"stat(dir/{MISSING_NAME})", "LOOKUP -> ENOENT", "tmpfs", ("fuse",)),
    Op("ioctl", "ioctl(fd, _IOR('E', 1, int))", "IOCTL (CUSE: + a FUSE_IOCTL_RETRY round)", "null"),
    Op("poll", "poll(POLLIN, timeout 0)", "POLL", "null"),
    Op("read64k", "pread(fd, 64 KiB)", "READ", "tmpfs"),
    Op("write64k", "pwrite(fd, 64 KiB)", "WRITE", "tmpfs"),
    Op("pollwake", "write() of 1 byte to pipe0 until a thread blocked in poll() wakes",
       "WRITE + FUSE_NOTIFY_POLL + POLL (fusd's pipe0 only)", "pipe"),
)
OP_BY_NAME: Dict[str, Op] = {op.name: op for op in OPS}
#: op -> the floor its ratio is taken against
FLOOR_FOR: Dict[str, str] = {op.name: op.floor for op in OPS}

CLIENT_C = r"""
/* fusd bench client: time one system call per iteration; prints
   "op n median p99 mean min errors first_errno ops_per_s short server_cpu" (µs) per run.
   With SERVER_PID, server_cpu is that process's CPU time (all threads) per timed call. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <poll.h>
#include <pthread.h>
#include <semaphore.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

static double now_us(void) {
    struct timespec ts; clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e6 + ts.tv_nsec / 1e3;
}
static double cpu_us(clockid_t c) {
    struct timespec ts; if (clock_gettime(c, &ts)) return -1;
    return ts.tv_sec * 1e6 + ts.tv_nsec / 1e3;
}
static int cmp(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b; return (x > y) - (x < y);
}
static int rfd = -1, wfd = -1; static sem_t done; static volatile double t_woke; static volatile int stop_poller;
static void *poller(void *arg) {
    (void)arg; char c;
    for (;;) {
        struct pollfd p = {rfd, POLLIN, 0};
        if (poll(&p, 1, -1) < 0) { if (errno == EINTR) continue; break; }
        t_woke = now_us();
        if (stop_poller) break;
        if (read(rfd, &c, 1) < 0 && errno != EAGAIN) break;
        sem_post(&done);
    }
    sem_post(&done);
    return NULL;
}
int main(int argc, char **argv) {
    if (argc < 5) { fprintf(stderr, "usage: client ITERS WARMUP OP TARGET [SERVER_PID]\n"); return 2; }
    clockid_t srv = 0; int have_srv = argc > 5 && atoi(argv[5]) > 0 && !clock_getcpuclockid(atoi(argv[5]), &srv);
    double srv0 = 0;
    long n = atol(argv[1]), warm = atol(argv[2]); const char *op = argv[3], *tgt = argv[4];
    static char buf[65536]; memset(buf, 'x', sizeof buf);
    char missing[4096]; char dir[4096]; snprintf(dir, sizeof dir, "%s", tgt);
    snprintf(missing, sizeof missing, "%s/MISSING_NAME", dirname(dir));
    double *s = malloc(sizeof(double) * (n > 0 ? n : 1));
    long errors = 0, shorts = 0; int first = 0; int fd = -1; int seek = 1; pthread_t th;
    int pw = !strcmp(op, "pollwake");
    if (pw) {
        int p[2];
        if (!strcmp(tgt, "-")) { if (pipe(p)) { perror("pipe"); return 1; } rfd = p[0]; wfd = p[1]; }
        else { rfd = open(tgt, O_RDWR); wfd = open(tgt, O_RDWR); }
        if (rfd < 0 || wfd < 0) { perror(tgt); return 1; }
        sem_init(&done, 0, 0);
        pthread_create(&th, NULL, poller, NULL);
    } else if (strcmp(op, "openclose") && strcmp(op, "lookupneg")) {
        fd = open(tgt, O_RDWR);
        if (fd < 0) { perror(tgt); return 1; }
        if (pread(fd, buf, 1, 0) < 0 && errno == ESPIPE) seek = 0;
    }
    double t_start = 0;
    for (long i = -warm; i < n; i++) {
        if (i == 0) { t_start = now_us(); if (have_srv) srv0 = cpu_us(srv); }
        double t0 = now_us(), t1; long r = 0, want = -1; int v = 0; struct stat st; struct statx sx;
        if (!strcmp(op, "pread1")) { want = 1; r = seek ? pread(fd, buf, 1, 0) : read(fd, buf, 1); }
        else if (!strcmp(op, "pwrite1")) { want = 1; r = seek ? pwrite(fd, buf, 1, 0) : write(fd, buf, 1); }
        else if (!strcmp(op, "read64k")) { want = 65536; r = seek ? pread(fd, buf, 65536, 0) : read(fd, buf, 65536); }
        else if (!strcmp(op, "write64k")) {
            want = 65536; r = seek ? pwrite(fd, buf, 65536, 0) : write(fd, buf, 65536);
        }
        else if (!strcmp(op, "openclose")) { int f = open(tgt, O_RDWR); r = f < 0 ? -1 : close(f); }
        else if (!strcmp(op, "getattr")) r = statx(fd, "", AT_EMPTY_PATH | AT_STATX_FORCE_SYNC, STATX_BASIC_STATS, &sx);
        else if (!strcmp(op, "lookupneg")) {  /* ENOENT is the answer wanted; finding it is the error */
            r = stat(missing, &st);
            if (r < 0 && errno == ENOENT) r = 0; else if (r == 0) { r = -1; errno = EEXIST; }
        }
        else if (!strcmp(op, "ioctl")) r = ioctl(fd, 0x80044501UL, &v);
        else if (!strcmp(op, "poll")) { struct pollfd p = {fd, POLLIN, 0}; r = poll(&p, 1, 0); }
        else if (pw) {
            r = write(wfd, "x", 1);
            while (sem_wait(&done) && errno == EINTR) {}
            t1 = t_woke; if (i >= 0) s[i] = t1 - t0; if (r < 0) { errors++; if (!first) first = errno; }
            continue;
        } else { fprintf(stderr, "unknown op %s\n", op); return 2; }
        t1 = now_us();
        if (r < 0) { errors++; if (!first) first = errno; }
        else if (want >= 0 && r < want && i >= 0) shorts++;
        if (i >= 0) s[i] = t1 - t0;
    }
    double total = now_us() - t_start;
    double srv_per_call = have_srv ? (cpu_us(srv) - srv0) / n : -1;
    if (pw) { stop_poller = 1; if (write(wfd, "x", 1) < 0) {} sem_wait(&done); pthread_join(th, NULL); }
    double sum = 0; for (long i = 0; i < n; i++) sum += s[i];
    qsort(s, n, sizeof(double), cmp);
    printf("%s %ld %.3f %.3f %.3f %.3f %ld %d %.0f %ld %.3f\n", op, n, s[n / 2], s[(long)(n * 0.99)], sum / n, s[0],
           errors, first, n / (total / 1e6), shorts, srv_per_call);
    return 0;
}
""".replace("MISSING_NAME", MISSING_NAME)


def build_c_client(progress: Optional[Callable[[str], None]] = None) -> Tuple[Optional[str], str]:
    """The C client, compiled once per source version into the cache: ``(exe, "")`` or ``(None, why not)``."""
    return build_c("benchclient", CLIENT_C, ["-lpthread"], progress=progress)


def _pct(samples: List[float]) -> Tuple[float, float, float, float]:
    s = sorted(samples)
    return s[len(s) // 2], s[int(len(s) * 0.99)], statistics.fmean(s), s[0]


def _statx_force() -> Callable[[int], int]:
    """statx(fd, "", AT_EMPTY_PATH | AT_STATX_FORCE_SYNC): a GETATTR that no attribute cache answers."""
    import ctypes
    import ctypes.util
    libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
    buf = ctypes.create_string_buffer(256)  # struct statx
    statx = libc.statx

    def call(fd: int) -> int:
        if statx(fd, b"", 0x1000 | 0x2000, 0x7FF, buf) != 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err))
        return 0
    return call


def python_client(op: str, target: str, iterations: int, warmup: int) -> Dict[str, Any]:
    """The same calls as the C client, from Python (when no compiler exists)."""
    import fcntl
    clock = time.perf_counter
    buf1, buf64 = b"x", b"x" * 65536
    samples: List[float] = []
    errors, first, shorts = 0, 0, 0
    if op == "pollwake":
        if target == "-":
            rfd, wfd = os.pipe()
        else:
            rfd, wfd = os.open(target, os.O_RDWR), os.open(target, os.O_RDWR)
        woke: List[float] = [0.0]
        ready = threading.Semaphore(0)
        stop = [False]

        def poller() -> None:
            p = select.poll()
            p.register(rfd, select.POLLIN)
            while True:
                p.poll()
                woke[0] = clock()
                if stop[0]:
                    break
                os.read(rfd, 1)
                ready.release()
            ready.release()

        th = threading.Thread(target=poller, daemon=True)
        th.start()
        t_start = clock()
        for i in range(-warmup, iterations):
            if i == 0:
                t_start = clock()
            t0 = clock()
            os.write(wfd, b"x")
            ready.acquire()
            if i >= 0:
                samples.append((woke[0] - t0) * 1e6)
        total = clock() - t_start
        stop[0] = True
        os.write(wfd, b"x")
        ready.acquire()
        th.join(1)
        os.close(rfd)
        os.close(wfd)
    else:
        fd = -1
        seek = True
        if op not in ("openclose", "lookupneg"):
            fd = os.open(target, os.O_RDWR)
            try:
                os.pread(fd, 1, 0)
            except OSError as exc:
                seek = exc.errno != 29  # ESPIPE: a stream device
        pread, pwrite, read, write = os.pread, os.pwrite, os.read, os.write
        ioarg = bytearray(4)
        poll_obj = select.poll()
        if fd >= 0:
            poll_obj.register(fd, select.POLLIN)
        missing = os.path.join(os.path.dirname(target), MISSING_NAME)

        def lookupneg() -> int:
            try:
                os.stat(missing)
            except FileNotFoundError:
                return 0
            raise OSError(17, "the missing name exists")

        calls: Dict[str, Callable[[], Any]] = {
            "pread1": (lambda: len(pread(fd, 1, 0))) if seek else (lambda: len(read(fd, 1))),
            "pwrite1": (lambda: pwrite(fd, buf1, 0)) if seek else (lambda: write(fd, buf1)),
            "read64k": (lambda: len(pread(fd, 65536, 0))) if seek else (lambda: len(read(fd, 65536))),
            "write64k": (lambda: pwrite(fd, buf64, 0)) if seek else (lambda: write(fd, buf64)),
            "openclose": lambda: os.close(os.open(target, os.O_RDWR)),
            "ioctl": lambda: fcntl.ioctl(fd, PERF_IOCTL, ioarg, True),
            "poll": lambda: poll_obj.poll(0),
            "lookupneg": lookupneg,
        }
        if op == "getattr":
            statx = _statx_force()
            calls["getattr"] = lambda: statx(fd)
        want = {"pread1": 1, "pwrite1": 1, "read64k": 65536, "write64k": 65536}.get(op, -1)
        call = calls[op]
        t_start = clock()
        for i in range(-warmup, iterations):
            if i == 0:
                t_start = clock()
            t0 = clock()
            try:
                r = call()
            except OSError as exc:
                errors += 1
                first = first or (exc.errno or 0)
                r = None
            t1 = clock()
            if i >= 0:
                samples.append((t1 - t0) * 1e6)
                if want >= 0 and r is not None and r < want:
                    shorts += 1
        total = clock() - t_start
        if fd >= 0:
            os.close(fd)
    med, p99, mean, mn = _pct(samples)
    return {"op": op, "n": iterations, "median_us": med, "p99_us": p99, "mean_us": mean, "min_us": mn,
            "errors": errors, "errno": first, "ops_per_s": iterations / total if total > 0 else 0.0, "short": shorts,
            "server_cpu_us": None}


def run_client(exe: Optional[str], op: str, target: str, iterations: int, warmup: int,
               cpu: Optional[int], server_pid: Optional[int] = None) -> Dict[str, Any]:
    """One op against one target, in a client process (C) or in this process (Python).

    ``server_pid``: the C client also measures that process's CPU time per call.
    """
    if exe is None:
        if cpu is not None:
            os.sched_setaffinity(0, {cpu})
        return python_client(op, target, iterations, warmup)
    pre = (lambda: os.sched_setaffinity(0, {cpu})) if cpu is not None else None
    argv = [exe, str(iterations), str(warmup), op, target] + ([str(server_pid)] if server_pid else [])
    out = subprocess.run(argv, capture_output=True, text=True, preexec_fn=pre, timeout=600)
    if out.returncode != 0:
        raise RuntimeError(f"client {op} {target}: {out.stderr.strip() or out.returncode}")
    f = out.stdout.split()
    return {"op": f[0], "n": int(f[1]), "median_us": float(f[2]), "p99_us": float(f[3]), "mean_us": float(f[4]),
            "min_us": float(f[5]), "errors": int(f[6]), "errno": int(f[7]), "ops_per_s": float(f[8]),
            "short": int(f[9]), "server_cpu_us": float(f[10]) if float(f[10]) >= 0 else None}
