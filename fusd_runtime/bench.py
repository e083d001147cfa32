"""``fusd bench``: what one system call on a fusd device costs, beside C reference servers and the kernel floor.

    fusd bench [--transport fuse|uring|cuse] [--pin same|split|none] [--rounds N] [-n ITERATIONS]
               [--refs raw_fuse,libfuse_ll|none] [--device module:Class] [--json FILE] [--quick]

examples:
    fusd bench --quick                         # a few seconds: does it work, rough numbers
    fusd bench --json run.json                 # 5 interleaved rounds x 20000 calls per op
    fusd bench --transport cuse                # /dev/cuse: against the C CUSE reference
    fusd bench --transport uring --enable-uring --pin none   # FUSE-over-io_uring vs the C ring server

fusd serves its perf device (``python -m fusd_runtime.perfserver``: the built-in
:class:`~fusd_runtime.examples.PerfFile`, or ``--device``) in its own process.
Beside it run the reference servers of ``fusd_runtime/bench_refs/`` — C
programs compiled at run time that serve the same file: ``raw_fuse``, a raw
/dev/fuse loop (the physical floor of a FUSE round trip), ``libfuse_ll``, a
libfuse 3 low-level server (where libfuse3-dev is installed), ``uring_fuse``, a
FUSE-over-io_uring server with a ring per CPU (where the kernel offers io_uring),
``raw_cuse`` for ``--transport cuse``.  ``--transport uring`` serves fusd through
FUSE-over-io_uring (``Server(transport="uring")``) beside the same FUSE
references; the kernel offers io_uring only while the fuse parameter
``enable_uring`` is Y, which the bench does not change unless ``--enable-uring``
(root) asks it to set Y while the servers start and put it back once they serve
(their connections keep io_uring).  A reference that cannot be built or run here is skipped
with the reason in the table.  The kernel floors (a tmpfs file, /dev/null, a
pipe) are measured by the same client in the same run.

The client is a small C program (Python where no compiler exists: it adds
~0.3-1 µs per call, so the table says which one ran).  Each round runs every
op against every target, the order rotating between rounds, so drifts of a
shared machine hit all alike; the table shows the median of the per-round
medians, fusd's spread over rounds, and ``ratio`` = fusd's median over each
target's.  The first round starts right after the servers: a start-up cost
shows as a slow first round.

Placement (``--pin``): ``same`` puts the client and every server on one CPU (the
stable, comparable number), ``split`` the client on one CPU and the servers on
another, ``none`` leaves it to the scheduler (what an ordinary user sees).  The
references get as many reader threads as fusd uses (1 pinned to one CPU, else 2,
or ``--readers``).  ``--json`` writes the whole run (schema ``fusd-bench/1`` with
machine facts, every run, summary and ratios; see docs/benchmarks.md).  Nothing
here asserts on time.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import statistics
import sys
from datetime import datetime, timezone
from typing import IO, Any, Callable, Dict, List, Optional, Sequence, Tuple

from . import bench_refs
from .bench_client import FLOOR_FOR, OP_BY_NAME, OPS, build_c_client, run_client
from .bench_report import SCHEMA, busy_fraction, cpu_jiffies, machine_facts, ratios, summarize, table
from .bench_targets import Floors, ServerProcess, Unavailable, fusd_argv

__all__ = ["FLOOR_FOR", "OPS", "BenchServer", "Floors", "measure", "table", "main"]


class BenchServer(ServerProcess):
    """fusd's perfserver in its own process, pinned as asked (``.paths``: dev0, pipe0, counter0)."""

    def __init__(self, *, device: Optional[str] = None, transport: str = "fuse", readers: Optional[int] = None,
                 cpu: Optional[int] = None, timeout: float = 20.0) -> None:
        super().__init__("fusd", fusd_argv(device=device, transport=transport, readers=readers),
                         transport=kernel_transport(transport), cpu=cpu, timeout=timeout)


def kernel_transport(transport: str) -> str:
    """The kernel interface of a bench transport: FUSE-over-io_uring is FUSE (same mount, ops, references)."""
    return "fuse" if transport == "uring" else transport


def _cpus(pin: str) -> Tuple[Optional[int], Optional[int]]:
    """(client CPU, server CPU) for a pin mode, from the CPUs this process may use."""
    allowed = sorted(os.sched_getaffinity(0))
    if pin == "none":
        return None, None
    if pin == "split" and len(allowed) > 1:
        return allowed[0], allowed[1]
    return allowed[0], allowed[0]


def _source_name(path: str) -> str:
    """``fusd_runtime/bench_refs/raw_fuse.c`` for a shipped reference, else the path as given."""
    package_root = os.path.dirname(os.path.dirname(bench_refs.HERE))
    rel = os.path.relpath(path, package_root)
    return rel if not rel.startswith("..") else path


def default_ops(transport: str) -> List[str]:
    """The ops that mean something on ``transport`` (getattr/lookupneg are FUSE only)."""
    return [op.name for op in OPS if transport in op.transports]


def measure(*, device: Optional[str] = None, pin: str = "same", transport: str = "fuse", iterations: int = 20000,
            warmup: int = 1000, rounds: int = 5, readers: Optional[int] = None, ops: Optional[Sequence[str]] = None,
            client: str = "auto", floors: bool = True, refs: Optional[Sequence[str]] = None,
            ref_dir: str = bench_refs.HERE, progress: Optional[Callable[[str], None]] = None,
            enable_uring: bool = False) -> Dict[str, Any]:
    """Run every op against fusd, the references and the floors, in interleaved rounds: the JSON document.

    ``refs``: reference names to run (None: every one of the transport; ``[]``: none);
    ``ref_dir``: where their sources are (``bench_refs/``; another directory for a
    reference in the making).  A reference that cannot be built or run is in
    ``targets`` with its status and reason, never an exception.  ``transport``
    "uring": fusd through FUSE-over-io_uring, beside the FUSE references;
    ``enable_uring``: set the fuse parameter to Y while the servers start (root).
    """
    say = progress or (lambda msg: None)
    kernel = kernel_transport(transport)
    ops = list(ops) if ops is not None else default_ops(kernel)
    bad = [o for o in ops if o not in OP_BY_NAME or kernel not in OP_BY_NAME[o].transports]
    if bad:
        raise ValueError(f"not an op on {transport}: {', '.join(bad)}")
    exe, why_python = (build_c_client(say) if client in ("auto", "c") else (None, "asked for"))
    if client == "c" and exe is None:
        raise RuntimeError(f"no C client: {why_python}")
    facts = machine_facts()
    started = datetime.now(timezone.utc).isoformat(timespec="seconds")
    ccpu, scpu = _cpus(pin)
    server_cpus = {scpu} if scpu is not None else set(os.sched_getaffinity(0))
    nreaders = readers if readers is not None else (1 if len(server_cpus) == 1 else 2)  # session.default_readers
    targets: Dict[str, Dict[str, Any]] = {}
    available = bench_refs.discover(ref_dir, transport=kernel)
    wanted = [r for r in available if refs is None or r.name in refs]
    unknown = sorted(set(refs or ()) - {r.name for r in available})
    if unknown:
        raise ValueError(f"no {transport} reference named {', '.join(unknown)} "
                         f"(there are: {', '.join(r.name for r in available) or 'none'})")
    runs: List[Dict[str, Any]] = []
    with contextlib.ExitStack() as stack:
        servers: Dict[str, ServerProcess] = {}
        tag = f"fusd-bench-{os.getpid()}"
        enabled = None
        if enable_uring:
            from .uring import uring_enabled  # only when asked for
            enabled = stack.enter_context(uring_enabled())
        for ref in wanted:  # the references first: fusd's first round then starts right after fusd did
            meta: Dict[str, Any] = {"kind": "reference", "title": ref.title, "source": _source_name(ref.source)}
            targets[ref.name] = meta
            ref_exe, why = bench_refs.build(ref, say)
            if ref_exe is None:
                meta.update(status="skipped", reason=why)
                say(f"{ref.name}: skipped: {why}")
                continue
            proc = ServerProcess(ref.name, [ref_exe, "--readers", str(nreaders)], transport=kernel, cpu=scpu,
                                 cuse_name=f"{tag}-{ref.name}" if transport == "cuse" else None)
            try:
                servers[ref.name] = stack.enter_context(proc)
            except Unavailable as exc:
                meta.update(status="skipped" if exc.skipped else "failed", reason=str(exc))
                say(f"{ref.name}: {meta['status']}: {exc}")
                continue
            meta.update(status="measured", readers=proc.readers, pid=proc.pid)
        fusd = BenchServer(device=device, transport=transport, readers=readers, cpu=scpu)
        servers["fusd"] = stack.enter_context(fusd)
        served_by = fusd.paths.pop("transport", kernel)  # perfserver says which channel serves
        if enabled is not None:
            enabled.restore()  # all are serving: their connections keep io_uring
        if transport == "uring" and served_by != "uring":
            raise RuntimeError("fusd did not get FUSE-over-io_uring from the kernel (it would measure read/write)")
        targets = {"fusd": {"kind": "fusd", "status": "measured", "readers": fusd.readers, "pid": fusd.pid,
                            "title": f"fusd {facts['fusd']}: {device or 'fusd_runtime.examples:PerfFile'} served by "
                                     f"fusd_runtime.perfserver"}, **targets}
        fl = stack.enter_context(Floors()) if floors else None
        if fl is not None:
            for name in sorted({FLOOR_FOR[o] for o in ops}):
                targets[name] = {"kind": "floor", "status": "measured", "path": fl.targets[name]}
        jobs: List[List[Tuple[str, str, Optional[int]]]] = []  # per op: (target, path, server pid)
        for op in ops:
            want = "pipe0" if op == "pollwake" else "dev0"
            job: List[Tuple[str, str, Optional[int]]] = [(name, s.paths[want], s.pid) for name, s in servers.items()
                                                         if want in s.paths]
            job.sort(key=lambda j: j[0] != "fusd")  # fusd first in round 1, then rotating
            if fl is not None:
                job.append((FLOOR_FOR[op], fl.targets[FLOOR_FOR[op]], None))
            jobs.append(job)
        total = sum(len(j) for j in jobs) * rounds
        done = 0
        for rnd in range(1, rounds + 1):
            for op, job in zip(ops, jobs):
                k = (rnd - 1) % len(job)
                for name, path, pid in job[k:] + job[:k]:
                    done += 1
                    if targets[name]["status"] != "measured":
                        continue
                    say(f"[{done}/{total}] round {rnd} {name} {op} x{iterations}")
                    before = cpu_jiffies()
                    try:
                        row = run_client(exe, op, path, iterations, warmup, ccpu, pid)
                    except RuntimeError as exc:
                        if targets[name]["kind"] != "reference":
                            raise
                        # a reference that breaks mid-run is reported, not fatal: fusd's numbers stand
                        targets[name].update(status="failed", reason=f"{op}: {exc}")
                        say(f"{name}: failed: {exc}")
                        continue
                    row.update(target=name, round=rnd, busy=busy_fraction(before, cpu_jiffies()))
                    runs.append(row)
    facts["load_after"] = [round(x, 2) for x in os.getloadavg()]
    busy = [r["busy"] for r in runs if r["busy"] is not None]
    facts["busy_fraction"] = {"median": statistics.median(busy), "max": max(busy)} if busy else None
    summary = summarize(runs)
    measured_refs = [n for n, t in targets.items() if t["kind"] == "reference" and t["status"] == "measured"]
    return {
        "schema": SCHEMA,
        "created": started,
        "settings": {"transport": transport, "pin": pin, "client_cpu": ccpu, "server_cpu": scpu,
                     "device": device or "fusd_runtime.examples:PerfFile", "iterations": iterations,
                     "warmup": warmup, "rounds": rounds, "readers": nreaders, "ops": ops,
                     "client": "C" if exe else "Python", "client_note": "" if exe else why_python,
                     "floor_for": {o: FLOOR_FOR[o] for o in ops}},
        "machine": facts,
        "targets": targets,
        "runs": runs,
        "summary": summary,
        "ratios": ratios(summary, runs, FLOOR_FOR, measured_refs),
    }


def main(argv: Optional[List[str]] = None, out: IO[str] = sys.stdout) -> int:
    """``fusd bench`` / ``python -m fusd_runtime.bench``."""
    doc = __doc__ or ""
    p = argparse.ArgumentParser(prog="fusd bench", description=doc.split("\n\n")[0],
                                epilog="\n\n".join(doc.split("\n\n")[1:]),
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", metavar="module:Class", help="your device class (default: the built-in PerfFile)")
    p.add_argument("--pin", choices=("same", "split", "none"), default="same",
                   help="client and servers on one CPU (default), on two CPUs, or unpinned")
    p.add_argument("--transport", choices=("fuse", "uring", "cuse"), default="fuse",
                   help="uring: fusd through FUSE-over-io_uring, beside the FUSE references (uring_fuse among them)")
    p.add_argument("--enable-uring", action="store_true",
                   help="root: set /sys/module/fuse/parameters/enable_uring to Y while the servers start, then back")
    p.add_argument("--iterations", "-n", type=int, default=None, help="timed calls per op and round (default 20000)")
    p.add_argument("--warmup", type=int, default=None, help="untimed calls first (default iterations/20)")
    p.add_argument("--rounds", type=int, default=None, help="interleaved rounds (default 5; --quick: 1)")
    p.add_argument("--quick", action="store_true", help="200 calls per op, one round: checks it works, rough numbers")
    p.add_argument("--readers", type=int,
                   help="server reader threads (default: fusd's own, 2 or 1 when pinned to one CPU); "
                        "the references get the same")
    p.add_argument("--ops", help="comma separated subset of " + ",".join(op.name for op in OPS))
    p.add_argument("--refs", help="comma separated reference servers to run, or 'none' (default: all of the "
                                  "transport: " + ", ".join(r.name for r in bench_refs.discover()) + ")")
    p.add_argument("--client", choices=("auto", "c", "python"), default="auto")
    p.add_argument("--no-floors", action="store_true", help="skip the kernel floor measurements")
    p.add_argument("--json", metavar="FILE", help="also write the whole run as JSON (schema fusd-bench/1)")
    args = p.parse_args(argv)
    kernel = kernel_transport(args.transport)
    ops = [o for o in args.ops.split(",") if o] if args.ops else default_ops(kernel)
    unknown = [o for o in ops if o not in OP_BY_NAME]
    if unknown:
        p.error("unknown op(s): " + ", ".join(unknown))
    not_here = [o for o in ops if kernel not in OP_BY_NAME[o].transports]
    if not_here:
        p.error(f"not on {args.transport}: " + ", ".join(not_here))
    refs: Optional[List[str]] = None
    if args.refs is not None:
        refs = [] if args.refs == "none" else [r for r in args.refs.split(",") if r]
    iterations = args.iterations if args.iterations is not None else (200 if args.quick else 20000)
    rounds = args.rounds if args.rounds is not None else (1 if args.quick else 5)
    warmup = args.warmup if args.warmup is not None else max(20, iterations // 20)
    if iterations < 1 or rounds < 1 or warmup < 0:
        p.error("--iterations and --rounds must be at least 1, --warmup at least 0")
    if args.transport == "cuse":
        from .cuse import cuse_available
        if not cuse_available():
            print("fusd bench: cuse: not available here (needs /dev/cuse, i.e. CONFIG_CUSE, and root); "
                  "use --transport fuse", file=sys.stderr)
            return 2
    elif os.geteuid() != 0 and not shutil.which("fusermount3"):
        print("fusd bench: needs root or fusermount3 to mount", file=sys.stderr)
        return 2
    if args.transport == "uring":
        from .uring import enable_uring_parameter
        param = enable_uring_parameter()
        if param is None:
            print("fusd bench: this kernel has no FUSE-over-io_uring (no fuse enable_uring parameter)",
                  file=sys.stderr)
            return 2
        if args.enable_uring and os.geteuid() != 0:
            print("fusd bench: --enable-uring needs root", file=sys.stderr)
            return 2
        if not param and not args.enable_uring:
            print("fusd bench: the kernel offers FUSE-over-io_uring only while "
                  "/sys/module/fuse/parameters/enable_uring is Y: set it, or add --enable-uring (root)",
                  file=sys.stderr)
            return 2

    stopping: List[int] = []

    def progress(msg: str) -> None:
        if stopping:  # the signal's KeyboardInterrupt may have been swallowed (raised inside an at-fork handler)
            raise KeyboardInterrupt
        print("fusd bench: " + msg, file=sys.stderr, flush=True)

    def stop(signum: int, frame: Any) -> None:
        stopping.append(signum)
        raise KeyboardInterrupt  # unwinds measure(): every server stopped, every mount removed

    for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):
        signal.signal(sig, stop)  # SIGINT too: a shell starts background jobs with it ignored
    try:
        result = measure(device=args.device, pin=args.pin, transport=args.transport, iterations=iterations,
                         warmup=warmup, rounds=rounds, readers=args.readers, ops=ops, client=args.client,
                         floors=not args.no_floors, refs=refs, progress=progress,
                         enable_uring=args.enable_uring and args.transport == "uring")
    except KeyboardInterrupt:
        print("fusd bench: interrupted (servers stopped, mounts removed)", file=sys.stderr)
        return 130
    except (RuntimeError, OSError, ValueError) as exc:
        print(f"fusd bench: {exc}", file=sys.stderr)
        return 1
    result["command"] = ["fusd", "bench", *(sys.argv[1:] if argv is None else argv)]
    print(table(result), file=out)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
            f.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
