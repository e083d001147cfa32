"""``fusd bench``: what one system call on a fusd device costs, beside the kernel's own floor.

    python -m fusd_runtime.bench [--device module:Class] [--pin same|split|none]
                                 [--transport fuse|cuse] [--iterations N] [--quick]

A server process (``python -m fusd_runtime.perfserver``) serves the device as
``dev0`` (default: the built-in :class:`~fusd_runtime.examples.PerfFile`) and a
``PipeDevice`` as ``pipe0``; a client process times each call.  The client is a
small C program compiled at run time when ``gcc`` exists, so the measured loop
costs ~20 ns of its own; without a compiler a pure-Python client does the same
calls (it adds ~0.3-1 µs per call: the table says which one measured).

Operations (one FUSE round trip each unless said):

    pread1     pread(fd, 1 byte)                READ
    pwrite1    pwrite(fd, 1 byte)               WRITE
    openclose  open + close                     OPEN + FLUSH (+ RELEASE, answered async)
    ioctl      ioctl(_IOR('E', 1, int))         IOCTL (4 bytes out)
    poll       poll(POLLIN, timeout 0)          POLL
    read64k    pread(fd, 64 KiB)                READ
    write64k   pwrite(fd, 64 KiB)               WRITE
    pollwake   a thread blocked in poll() on pipe0; time from write() of one byte
               (which makes it readable) until that thread wakes: WRITE + notify +
               POLL

Kernel floors, measured in the same run with the same client: ``/dev/null``,
``/dev/zero``, a 64 KiB file on tmpfs (``/dev/shm``) and a pipe(2) for
``pollwake``.  ``ratio`` divides our median by the floor named beside it.

Pinning (``--pin``): ``same`` puts client and server on one CPU (the stable,
comparable number), ``split`` on two CPUs, ``none`` leaves it to the scheduler
(what an ordinary user sees; on VMs cross-CPU wakeups can cost tens of µs).
Benchmarks print numbers; nothing here asserts on time.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import select
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from typing import IO, Any, Dict, List, Optional, Sequence, Tuple

OPS = ["pread1", "pwrite1", "openclose", "ioctl", "poll", "read64k", "write64k", "pollwake"]
#: _IOR('E', 1, int): PerfFile's ioctl (what the shared perf harness calls too)
PERF_IOCTL = 0x80044501

#: op -> (floor name, why) used for the ratio column
FLOOR_FOR = {
    "pread1": "tmpfs", "pwrite1": "tmpfs", "openclose": "tmpfs", "ioctl": "null",
    "poll": "null", "read64k": "tmpfs", "write64k": "tmpfs", "pollwake": "pipe",
}
#: which ops each floor target is measured for
FLOOR_OPS = {
    "null": ["pread1", "pwrite1", "openclose", "ioctl", "poll", "write64k"],
    "zero": ["pread1", "read64k"],
    "tmpfs": ["pread1", "pwrite1", "openclose", "ioctl", "poll", "read64k", "write64k"],
    "pipe": ["pollwake"],
}

CLIENT_C = r"""
/* fusd bench client: time one system call per iteration; prints
   "op n median p99 mean min errors first_errno ops_per_s" (µs) per op. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <semaphore.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <time.h>
#include <unistd.h>

static double now_us(void) {
    struct timespec ts; clock_gettime(CLOCK_MONOTONIC, &ts);
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
    if (argc < 5) { fprintf(stderr, "usage: client ITERS WARMUP OP TARGET [TARGET2]\n"); return 2; }
    long n = atol(argv[1]), warm = atol(argv[2]); const char *op = argv[3], *tgt = argv[4];
    static char buf[65536]; memset(buf, 'x', sizeof buf);
    double *s = malloc(sizeof(double) * (n > 0 ? n : 1));
    long errors = 0; int first = 0; int fd = -1; int seek = 1; pthread_t th;
    int pw = !strcmp(op, "pollwake");
    if (pw) {
        int p[2];
        if (!strcmp(tgt, "-")) { if (pipe(p)) { perror("pipe"); return 1; } rfd = p[0]; wfd = p[1]; }
        else { rfd = open(tgt, O_RDWR); wfd = open(tgt, O_RDWR); }
        if (rfd < 0 || wfd < 0) { perror(tgt); return 1; }
        sem_init(&done, 0, 0);
        pthread_create(&th, NULL, poller, NULL);
    } else if (strcmp(op, "openclose")) {
        fd = open(tgt, O_RDWR);
        if (fd < 0) { perror(tgt); return 1; }
        if (pread(fd, buf, 1, 0) < 0 && errno == ESPIPE) seek = 0;
    }
    double t_start = 0;
    for (long i = -warm; i < n; i++) {
        if (i == 0) t_start = now_us();
        double t0 = now_us(), t1; long r = 0; int v = 0;
        if (!strcmp(op, "pread1")) r = seek ? pread(fd, buf, 1, 0) : read(fd, buf, 1);
        else if (!strcmp(op, "pwrite1")) r = seek ? pwrite(fd, buf, 1, 0) : write(fd, buf, 1);
        else if (!strcmp(op, "read64k")) r = seek ? pread(fd, buf, 65536, 0) : read(fd, buf, 65536);
        else if (!strcmp(op, "write64k")) r = seek ? pwrite(fd, buf, 65536, 0) : write(fd, buf, 65536);
        else if (!strcmp(op, "openclose")) { int f = open(tgt, O_RDWR); r = f < 0 ? -1 : close(f); }
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
        if (i >= 0) s[i] = t1 - t0;
    }
    double total = now_us() - t_start;
    if (pw) { stop_poller = 1; if (write(wfd, "x", 1) < 0) {} sem_wait(&done); pthread_join(th, NULL); }
    double sum = 0; for (long i = 0; i < n; i++) sum += s[i];
    qsort(s, n, sizeof(double), cmp);
    printf("%s %ld %.3f %.3f %.3f %.3f %ld %d %.0f\n", op, n, s[n / 2], s[(long)(n * 0.99)], sum / n, s[0],
           errors, first, n / (total / 1e6));
    return 0;
}
"""


# ---------------------------------------------------------------------------- clients
def build_c_client(progress: Any = None) -> Optional[str]:
    """Compile the C client once per source version into a cache dir; None without gcc."""
    gcc = shutil.which("gcc") or shutil.which("cc")
    if gcc is None:
        return None
    digest = hashlib.sha256(CLIENT_C.encode()).hexdigest()[:12]
    cache = os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "fusd")
    exe = os.path.join(cache, f"benchclient-{digest}")
    if os.access(exe, os.X_OK):
        return exe
    try:
        os.makedirs(cache, exist_ok=True)
        src = exe + ".c"
        with open(src, "w") as f:
            f.write(CLIENT_C)
        if progress:
            progress("compiling the C client with " + gcc)
        tmp = exe + f".tmp{os.getpid()}"
        subprocess.run([gcc, "-O2", "-o", tmp, src, "-lpthread"], check=True, capture_output=True)
        os.replace(tmp, exe)
        return exe
    except (OSError, subprocess.CalledProcessError):
        return None


def _pct(samples: List[float]) -> Tuple[float, float, float, float]:
    s = sorted(samples)
    return s[len(s) // 2], s[int(len(s) * 0.99)], statistics.fmean(s), s[0]


def python_client(op: str, target: str, iterations: int, warmup: int) -> Dict[str, Any]:
    """The same calls as the C client, from Python (when no compiler exists)."""
    import fcntl
    clock = time.perf_counter
    buf1, buf64 = b"x", b"x" * 65536
    samples: List[float] = []
    errors, first = 0, 0
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
        if op != "openclose":
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
        calls = {
            "pread1": (lambda: pread(fd, 1, 0)) if seek else (lambda: read(fd, 1)),
            "pwrite1": (lambda: pwrite(fd, buf1, 0)) if seek else (lambda: write(fd, buf1)),
            "read64k": (lambda: pread(fd, 65536, 0)) if seek else (lambda: read(fd, 65536)),
            "write64k": (lambda: pwrite(fd, buf64, 0)) if seek else (lambda: write(fd, buf64)),
            "openclose": lambda: os.close(os.open(target, os.O_RDWR)),
            "ioctl": lambda: fcntl.ioctl(fd, PERF_IOCTL, ioarg, True),
            "poll": lambda: poll_obj.poll(0),
        }
        call = calls[op]
        t_start = clock()
        for i in range(-warmup, iterations):
            if i == 0:
                t_start = clock()
            t0 = clock()
            try:
                call()
            except OSError as exc:
                errors += 1
                first = first or (exc.errno or 0)
            t1 = clock()
            if i >= 0:
                samples.append((t1 - t0) * 1e6)
        total = clock() - t_start
        if fd >= 0:
            os.close(fd)
    med, p99, mean, mn = _pct(samples)
    return {"op": op, "n": iterations, "median": med, "p99": p99, "mean": mean, "min": mn, "errors": errors,
            "errno": first, "ops_per_s": iterations / total if total > 0 else 0.0}


def run_client(exe: Optional[str], op: str, target: str, iterations: int, warmup: int,
               cpu: Optional[int]) -> Dict[str, Any]:
    """One op against one target, in a client process (C) or in this process (Python)."""
    if exe is None:
        if cpu is not None:
            os.sched_setaffinity(0, {cpu})
        return python_client(op, target, iterations, warmup)
    pre = (lambda: os.sched_setaffinity(0, {cpu})) if cpu is not None else None
    out = subprocess.run([exe, str(iterations), str(warmup), op, target], capture_output=True, text=True,
                         preexec_fn=pre, timeout=600)
    if out.returncode != 0:
        raise RuntimeError(f"client {op} {target}: {out.stderr.strip() or out.returncode}")
    f = out.stdout.split()
    return {"op": f[0], "n": int(f[1]), "median": float(f[2]), "p99": float(f[3]), "mean": float(f[4]),
            "min": float(f[5]), "errors": int(f[6]), "errno": int(f[7]), "ops_per_s": float(f[8])}


# ---------------------------------------------------------------------------- server and floors
class BenchServer:
    """``python -m fusd_runtime.perfserver`` in its own process, pinned as asked; a context manager."""

    def __init__(self, *, device: Optional[str] = None, transport: str = "fuse", readers: Optional[int] = None,
                 cpu: Optional[int] = None, timeout: float = 20.0) -> None:
        self.device, self.transport, self.readers, self.cpu, self.timeout = device, transport, readers, cpu, timeout
        self.proc: Optional[subprocess.Popen[str]] = None
        self.mountpoint: Optional[str] = None
        self.paths: Dict[str, str] = {}

    def __enter__(self) -> BenchServer:
        cmd = [sys.executable, "-m", "fusd_runtime.perfserver", "--pipe", "--transport", self.transport]
        if self.readers is not None:  # else the server's default: 2, or 1 when pinned to one CPU
            cmd += ["--readers", str(self.readers)]
        if self.device:
            cmd += ["--device", self.device]
        if self.transport == "fuse":
            self.mountpoint = tempfile.mkdtemp(prefix="fusd-bench-")
            cmd.append(self.mountpoint)
        cpu = self.cpu
        pre = (lambda: os.sched_setaffinity(0, {cpu})) if cpu is not None else None
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, preexec_fn=pre)
        ready: List[str] = []
        reader = threading.Thread(target=lambda: ready.append(self._readline()), daemon=True)
        reader.start()
        reader.join(self.timeout)
        line = ready[0] if ready else ""
        if not line.startswith("READY"):
            self.__exit__()
            raise RuntimeError(f"the bench server did not start (exit code {self.proc.returncode})")
        self.paths = dict(kv.split("=", 1) for kv in line.split()[1:])
        return self

    def _readline(self) -> str:
        assert self.proc is not None and self.proc.stdout is not None
        return self.proc.stdout.readline()

    def __exit__(self, *exc: object) -> None:
        proc = self.proc
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)  # serve_forever stops and unmounts
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if proc is not None and proc.stdout is not None:
            proc.stdout.close()
        if self.mountpoint:
            if _mounted(self.mountpoint):
                subprocess.run(["umount", "-l", self.mountpoint], capture_output=True)
            try:
                os.rmdir(self.mountpoint)
            except OSError:
                pass
            self.mountpoint = None


def _mounted(path: str) -> bool:
    with open("/proc/self/mountinfo") as f:
        return any(line.split()[4] == path for line in f)


class Floors:
    """The kernel-only targets: /dev/null, /dev/zero, a 64 KiB tmpfs file, a pipe ("-")."""

    def __enter__(self) -> Floors:
        base = "/dev/shm" if os.path.isdir("/dev/shm") else None
        fd, self.tmpfile = tempfile.mkstemp(prefix="fusd-bench-", dir=base)
        os.write(fd, b"a" * 65536)
        os.close(fd)
        self.targets = {"null": "/dev/null", "zero": "/dev/zero", "tmpfs": self.tmpfile, "pipe": "-"}
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            os.unlink(self.tmpfile)
        except OSError:
            pass


# ---------------------------------------------------------------------------- the command
def _cpus(pin: str) -> Tuple[Optional[int], Optional[int]]:
    """(client CPU, server CPU) for a pin mode, from the CPUs this process may use."""
    allowed = sorted(os.sched_getaffinity(0))
    if pin == "none":
        return None, None
    if pin == "split" and len(allowed) > 1:
        return allowed[0], allowed[1]
    return allowed[0], allowed[0]


def measure(*, device: Optional[str] = None, pin: str = "same", transport: str = "fuse", iterations: int = 20000,
            warmup: int = 1000, readers: Optional[int] = None, ops: Sequence[str] = OPS, client: str = "auto",
            floors: bool = True, progress: Any = None) -> Dict[str, Any]:
    """Run every op against the fusd device and the floors; returns rows and metadata."""
    say = progress or (lambda msg: None)
    exe = build_c_client(say) if client in ("auto", "c") else None
    if client == "c" and exe is None:
        raise RuntimeError("no C compiler found for the C client")
    ccpu, scpu = _cpus(pin)
    rows: List[Dict[str, Any]] = []
    with BenchServer(device=device, transport=transport, readers=readers, cpu=scpu) as server, Floors() as fl:
        jobs: List[Tuple[str, str, str]] = []
        for op in ops:
            target = server.paths["pipe0"] if op == "pollwake" else server.paths["dev0"]
            jobs.append(("fusd", op, target))
        if floors:
            for name, fops in FLOOR_OPS.items():
                jobs += [(name, op, fl.targets[name]) for op in fops if op in ops]
        for i, (name, op, target) in enumerate(jobs, 1):
            say(f"[{i}/{len(jobs)}] {name} {op} x{iterations}")
            row = run_client(exe, op, target, iterations, warmup, ccpu)
            row["target"] = name
            rows.append(row)
    return {"rows": rows, "client": "C (gcc, compiled at run time)" if exe else "Python (os.pread etc.; slower loop)",
            "pin": pin, "transport": transport, "iterations": iterations,
            "readers": readers if readers is not None else (1 if scpu is not None else 2),  # the server's default
            "device": device or "fusd_runtime.examples:PerfFile"}


def table(result: Dict[str, Any]) -> str:
    """The result as a text table: per op our median/p99/calls/s and the ratio to its floor."""
    rows = result["rows"]
    by = {(r["target"], r["op"]): r for r in rows}
    lines = [f"device {result['device']} via {result['transport']}, pin={result['pin']}, "
             f"readers={result['readers']}, {result['iterations']} calls per op, client: {result['client']}",
             f"{'target':8} {'op':10} {'median µs':>10} {'p99 µs':>9} {'calls/s':>10} {'errors':>7}"
             f" {'floor':>6} {'floor µs':>9} {'ratio':>7}"]
    for r in rows:
        floor = FLOOR_FOR.get(r["op"], "")
        f = by.get((floor, r["op"])) if r["target"] == "fusd" else None
        ratio = f"{r['median'] / f['median']:.1f}x" if f and f["median"] > 0 else ""
        err = str(r["errors"]) + (f" ({os.strerror(r['errno'])})" if r["errors"] and r["errno"] else "")
        lines.append(f"{r['target']:8} {r['op']:10} {r['median']:10.2f} {r['p99']:9.2f} {r['ops_per_s']:10.0f}"
                     f" {err:>7} {floor if f else '':>6} {f['median'] if f else float('nan'):9.2f} {ratio:>7}"
                     if f else
                     f"{r['target']:8} {r['op']:10} {r['median']:10.2f} {r['p99']:9.2f} {r['ops_per_s']:10.0f}"
                     f" {err:>7}")
    return "\n".join(lines)


def main(argv: Optional[List[str]] = None, out: IO[str] = sys.stdout) -> int:
    """``fusd bench`` / ``python -m fusd_runtime.bench``."""
    p = argparse.ArgumentParser(prog="fusd bench", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="example:\n  fusd bench --quick --ops pread1,ioctl   (quick, rough numbers)\n")
    p.add_argument("--device", metavar="module:Class", help="your device class (default: the built-in PerfFile)")
    p.add_argument("--pin", choices=("same", "split", "none"), default="same",
                   help="client and server on one CPU (default), two CPUs, or unpinned")
    p.add_argument("--transport", choices=("fuse", "cuse"), default="fuse")
    p.add_argument("--iterations", "-n", type=int, default=20000, help="timed calls per op (default 20000)")
    p.add_argument("--warmup", type=int, default=None, help="untimed calls first (default iterations/20)")
    p.add_argument("--quick", action="store_true", help="200 calls per op: checks it works, numbers are rough")
    p.add_argument("--readers", type=int,
                   help="server reader threads (default: the server's own, 2 or 1 when pinned to one CPU)")
    p.add_argument("--ops", default=",".join(OPS), help="comma separated subset of " + ",".join(OPS))
    p.add_argument("--client", choices=("auto", "c", "python"), default="auto")
    p.add_argument("--no-floors", action="store_true", help="skip the kernel floor measurements")
    p.add_argument("--json", metavar="FILE", help="also write the rows as JSON")
    args = p.parse_args(argv)
    ops = [o for o in args.ops.split(",") if o]
    unknown = [o for o in ops if o not in OPS]
    if unknown:
        p.error("unknown op(s): " + ", ".join(unknown))
    iterations = 200 if args.quick else args.iterations
    warmup = args.warmup if args.warmup is not None else max(20, iterations // 20)
    if args.transport == "cuse":
        try:
            from .cuse import cuse_available
        except ImportError:
            cuse_available = None  # type: ignore[assignment]
        if cuse_available is None or not cuse_available():
            print("fusd bench: cuse: not available here (needs /dev/cuse, i.e. CONFIG_CUSE, and root); "
                  "use --transport fuse", file=sys.stderr)
            return 2
    if os.geteuid() != 0 and not shutil.which("fusermount3"):
        print("fusd bench: needs root or fusermount3 to mount", file=sys.stderr)
        return 2

    def progress(msg: str) -> None:
        print("fusd bench: " + msg, file=sys.stderr, flush=True)

    try:
        result = measure(device=args.device, pin=args.pin, transport=args.transport, iterations=iterations,
                         warmup=warmup, readers=args.readers, ops=ops, client=args.client,
                         floors=not args.no_floors, progress=progress)
    except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
        print(f"fusd bench: {exc}", file=sys.stderr)
        return 1
    print(table(result), file=out)
    if args.json:
        import json
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
