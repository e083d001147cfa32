"""``fusd bench`` results: machine facts, per-op summary over rounds, ratios, the text table.

The JSON document (schema ``fusd-bench/1``, described field by field in
``docs/benchmarks.md``) is what :func:`fusd_runtime.bench.measure` returns;
everything here derives from its ``runs`` list, so a saved document can be
summarized again and two runs compared key by key.
"""

from __future__ import annotations

import os
import platform
import shutil
import statistics
import subprocess
from typing import Any, Dict, List, Optional, Tuple

#: the ``schema`` value of the JSON document; bumped when a field changes meaning
SCHEMA = "fusd-bench/1"


def _first_line(path: str) -> Optional[str]:
    try:
        with open(path) as f:
            return f.readline().strip() or None
    except OSError:
        return None


def _cpu_model() -> Optional[str]:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def _command_line(argv: List[str]) -> Optional[str]:
    exe = shutil.which(argv[0])
    if exe is None:
        return None
    try:
        out = subprocess.run([exe, *argv[1:]], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    lines = out.stdout.strip().splitlines()
    return lines[0] if out.returncode == 0 and lines else None


def _version() -> str:
    try:
        from importlib.metadata import version
        return version("fusd")
    except Exception:  # not installed (a checkout on PYTHONPATH)
        return "unknown"


def machine_facts() -> Dict[str, Any]:
    """What the numbers depend on, taken before the run (``load_after`` and ``busy`` are added after)."""
    return {
        "cpus": os.cpu_count(),
        "cpus_allowed": sorted(os.sched_getaffinity(0)),
        "cpu_model": _cpu_model(),
        "kernel": platform.release(),
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "fusd": _version(),
        "libfuse3": _command_line(["pkg-config", "--modversion", "fuse3"]),
        "compiler": _command_line(["gcc", "--version"]) or _command_line(["cc", "--version"]),
        "cpuidle": _first_line("/sys/devices/system/cpu/cpuidle/current_driver"),
        "clocksource": _first_line("/sys/devices/system/clocksource/clocksource0/current_clocksource"),
        "load_before": [round(x, 2) for x in os.getloadavg()],
    }


def cpu_jiffies() -> Tuple[int, int]:
    """(busy, idle) jiffies of the whole machine, for the busy fraction of one client run."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    idle = v[3] + (v[4] if len(v) > 4 else 0)
    return sum(v[:8]) - idle, idle


def busy_fraction(before: Tuple[int, int], after: Tuple[int, int]) -> Optional[float]:
    """The fraction of all CPUs busy (any process, this one included) between two :func:`cpu_jiffies`."""
    busy, idle = after[0] - before[0], after[1] - before[1]
    return round(busy / (busy + idle), 3) if busy + idle > 0 else None


def _median_or_none(values: List[Optional[float]]) -> Optional[float]:
    known = [v for v in values if v is not None]
    return statistics.median(known) if known else None


def summarize(runs: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """Per (target, op): the median of the per-round medians and p99s, the spread and each round's median."""
    groups: Dict[Tuple[str, str], List[Dict[str, Any]]] = {}
    for run in runs:
        groups.setdefault((run["target"], run["op"]), []).append(run)
    out = []
    for (target, op), rs in groups.items():
        rs = sorted(rs, key=lambda r: r["round"])
        meds = [r["median_us"] for r in rs]
        out.append({"target": target, "op": op, "rounds": len(rs),
                    "median_us": statistics.median(meds), "p99_us": statistics.median(r["p99_us"] for r in rs),
                    "round_min_us": min(meds), "round_max_us": max(meds), "round_medians_us": meds,
                    "server_cpu_us": _median_or_none([r.get("server_cpu_us") for r in rs]),
                    "errors": sum(r["errors"] for r in rs), "errno": next((r["errno"] for r in rs if r["errno"]), 0),
                    "short": sum(r["short"] for r in rs)})
    return out


def ratios(summary: List[Dict[str, Any]], runs: List[Dict[str, Any]], floor_for: Dict[str, str],
           references: List[str]) -> List[Dict[str, Any]]:
    """fusd's median over each reference's (and the op's floor's), same op, same run; per round too."""
    by = {(s["target"], s["op"]): s for s in summary}
    per_round = {(r["target"], r["op"], r["round"]): r["median_us"] for r in runs}
    out = []
    for s in summary:
        if s["target"] != "fusd":
            continue
        op = s["op"]
        for vs, kind in [(ref, "reference") for ref in references] + [(floor_for.get(op, ""), "floor")]:
            other = by.get((vs, op))
            if other is None or other["median_us"] <= 0:
                continue
            rounds = sorted({r["round"] for r in runs if r["target"] == "fusd" and r["op"] == op})
            rr = [per_round[("fusd", op, n)] / per_round[(vs, op, n)] for n in rounds
                  if per_round.get((vs, op, n))]
            out.append({"op": op, "vs": vs, "kind": kind, "ratio": s["median_us"] / other["median_us"],
                        "round_ratios": rr})
    return out


def _fmt(x: Optional[float], width: int, digits: int = 2) -> str:
    return f"{x:{width}.{digits}f}" if x is not None else f"{'-':>{width}}"


def table(result: Dict[str, Any]) -> str:
    """The document as text: per op fusd's median, p99 and round spread, each reference and its ratio, the floor."""
    st = result["settings"]
    m = result["machine"]
    refs = [n for n, t in result["targets"].items() if t["kind"] == "reference" and t["status"] == "measured"]
    by = {(s["target"], s["op"]): s for s in result["summary"]}
    ratio = {(r["op"], r["vs"]): r["ratio"] for r in result["ratios"]}
    cpus = f"client CPU {st['client_cpu']}, servers CPU {st['server_cpu']}" if st["pin"] != "none" else "unpinned"
    lines = [f"fusd bench: {st['device']} via {st['transport']}, pin={st['pin']} ({cpus}), "
             f"{st['rounds']} round(s) x {st['iterations']} calls per op, {st['client']} client"
             + (f" ({st['client_note']}; it adds ~0.3-1 µs per call)" if st["client"] != "C" else "")]
    head = f"{'op':10} {'fusd µs':>8} {'p99 µs':>8} {'cpu µs':>7} {'rounds min..max':>16}"
    for ref in refs:
        head += f" | {ref + ' µs':>{max(len(ref) + 3, 8)}} {'cpu µs':>7} {'ratio':>6}"
    head += f" | {'floor':>5} {'µs':>6} {'ratio':>7}"
    lines.append(head)
    for op in st["ops"]:
        f = by.get(("fusd", op))
        if f is None:
            continue
        spread = f"{f['round_min_us']:.2f}..{f['round_max_us']:.2f}"
        line = f"{op:10} {f['median_us']:8.2f} {f['p99_us']:8.2f} {_fmt(f['server_cpu_us'], 7)} {spread:>16}"
        for ref in refs:
            r = by.get((ref, op))
            x = ratio.get((op, ref))
            line += (f" | {_fmt(r['median_us'] if r else None, max(len(ref) + 3, 8))} "
                     f"{_fmt(r['server_cpu_us'] if r else None, 7)} {(f'{x:.2f}x' if x else '-'):>6}")
        floor = st["floor_for"].get(op, "")
        fl = by.get((floor, op))
        x = ratio.get((op, floor))
        line += (f" | {floor if fl else '-':>5} {_fmt(fl['median_us'] if fl else None, 6)} "
                 f"{(f'{x:.1f}x' if x else '-'):>7}")
        lines.append(line)
    lines.append("ratio = fusd's median / the target's, medians of the per-round medians; rounds interleaved, "
                 "the order rotating; cpu = the server process's CPU time per call (all threads)")
    for name, t in result["targets"].items():
        if t["kind"] == "floor":
            continue
        if t["status"] == "measured":
            lines.append(f"  {name}: {t['title']} (readers={t['readers']})")
        else:
            lines.append(f"  {name}: {t['status']}: {t['reason']}")
    notes = [f"{s['target']} {s['op']}: {s['short']} short transfers" for s in result["summary"] if s["short"]]
    notes += [f"{s['target']} {s['op']}: {s['errors']} errors ({os.strerror(s['errno']) if s['errno'] else '?'})"
              for s in result["summary"] if s["errors"] and s["target"] in ("fusd", *refs)]
    lines += [f"  note: {n}" for n in notes]
    busy = m.get("busy_fraction") or {}
    lines.append(f"machine: {m['cpus']} CPUs ({m['cpu_model'] or '?'}), kernel {m['kernel']}, {m['python']}; "
                 f"busy fraction median {_fmt(busy.get('median'), 1)} max {_fmt(busy.get('max'), 1)} "
                 f"(one pinned client+server pair alone: {1 / max(1, m['cpus'] or 1):.2f}); "
                 f"load {m['load_before'][0]:.2f} -> {m.get('load_after', ['?'])[0]}")
    return "\n".join(lines)
