"""Benchmark plumbing: collect ``bench_*.py``, a fusd server process, kernel floors, ratios.

The device server runs in its own process (``python -m fusd_runtime.perfserver``,
the same one ``fusd bench`` and the shared perf harness use): a server inside
the pytest process would share the client's GIL, so every reply would wait for
the benchmark loop to let go of it, which no real client pays.  The client calls
are made here, by pytest-benchmark, so the results are ordinary pytest-benchmark
JSON (``--benchmark-json``, ``--benchmark-compare``).

Client and server are pinned to one CPU by default (``--fusd-pin same``): the
stable, comparable number on a shared machine.  ``--fusd-pin none`` shows what an
unpinned client sees.

At the end the ratio of each fusd median to its kernel floor (same run) is
printed and stored in the JSON under ``fusd_ratios``.  Nothing asserts on time.
"""

from __future__ import annotations

import os
import sys
from typing import Any, Dict, Iterator, Tuple

import pytest

from fusd_runtime.bench import FLOOR_FOR, BenchServer, Floors

#: (op, target) -> median seconds, filled by the ``record`` fixture
RESULTS: Dict[Tuple[str, str], float] = {}


def pytest_collect_file(file_path: Any, parent: Any) -> Any:
    # The project's testpaths/python_files only cover tests/test_*.py; benchmarks are bench_*.py.
    if file_path.suffix == ".py" and file_path.name.startswith("bench_"):
        return pytest.Module.from_parent(parent, path=file_path)
    return None


def pytest_addoption(parser: Any) -> None:
    parser.addoption("--fusd-pin", choices=("same", "none"), default="same",
                     help="pin the benchmark client and the fusd server to one CPU (default) or not")
    parser.addoption("--fusd-readers", type=int, default=2, help="reader threads of the fusd server")


def _can_mount() -> bool:
    return os.path.exists("/dev/fuse") and os.geteuid() == 0


@pytest.fixture(scope="session")
def fusd_server(request: Any) -> Iterator[BenchServer]:
    """A perfserver process: ``dev0`` (PerfFile), ``pipe0`` (PipeDevice), ``counter0`` (Counter)."""
    if not _can_mount():
        pytest.skip("needs root and /dev/fuse")
    cpu = None
    if request.config.getoption("--fusd-pin") == "same":
        cpu = min(os.sched_getaffinity(0))
        os.sched_setaffinity(0, {cpu})  # the client: this process
    with BenchServer(readers=request.config.getoption("--fusd-readers"), cpu=cpu) as server:
        yield server


@pytest.fixture(scope="session")
def floors() -> Iterator[Floors]:
    with Floors() as fl:
        yield fl


@pytest.fixture
def record(benchmark: Any) -> Any:
    """``record(op, target)`` after ``benchmark(...)``: keep the median for the ratio table."""
    def rec(op: str, target: str) -> None:
        stats = getattr(benchmark, "stats", None)
        if stats is not None:  # None under --benchmark-disable
            RESULTS[(op, target)] = stats.stats.median
    return rec


def _ratios() -> Dict[str, Dict[str, Any]]:
    out: Dict[str, Dict[str, Any]] = {}
    for (op, target), med in sorted(RESULTS.items()):
        if target != "fusd":
            continue
        floor = FLOOR_FOR.get(op, "null")
        fmed = RESULTS.get((op, floor))
        out[op] = {"fusd_median_us": med * 1e6, "floor": floor,
                   "floor_median_us": fmed * 1e6 if fmed else None,
                   "ratio": med / fmed if fmed else None}
    return out


def _ioctl_results() -> Dict[str, Dict[str, float]]:
    mod = sys.modules.get("bench_ioctl")
    return dict(getattr(mod, "IOCTL_RESULTS", {}) or {})


def pytest_benchmark_update_json(config: Any, benchmarks: Any, output_json: Dict[str, Any]) -> None:
    output_json["fusd_ratios"] = _ratios()
    output_json["fusd_ioctl"] = _ioctl_results()


def pytest_terminal_summary(terminalreporter: Any) -> None:
    tr = terminalreporter
    ioctls = _ioctl_results()
    if ioctls:
        tr.section("declared vs hand-written ioctls (daemon CPU per call, medians, same run)")
        tr.write_line(f"{'comparison':40} {'declared µs':>12} {'by hand µs':>11} {'ratio':>7} {'target':>7}")
        for name, r in ioctls.items():
            tr.write_line(f"{name:40} {r['declared_us']:12.2f} {r['hand_us']:11.2f} {r['ratio']:6.2f}x "
                          f"{r['target']:6.1f}x")
    ratios = _ratios()
    if not ratios:
        return
    tr.section("fusd vs kernel floor (medians, same run)")
    tr.write_line(f"{'op':10} {'fusd µs':>9} {'floor':>6} {'floor µs':>9} {'ratio':>8}")
    for op, r in ratios.items():
        floor_us = f"{r['floor_median_us']:9.2f}" if r["floor_median_us"] else f"{'-':>9}"
        ratio = f"{r['ratio']:7.1f}x" if r["ratio"] else f"{'-':>8}"
        tr.write_line(f"{op:10} {r['fusd_median_us']:9.2f} {r['floor']:>6} {floor_us} {ratio}")
