"""Trace decoding speed and memory on generated captures: messages per second, peak RSS.

``python -m fusd_wire decode`` is run in-process (``run_decode``, output to /dev/null)
on captures made by ``tools/gen_traces.py`` (one FUSE session: INIT, then LOOKUP,
GETATTR, OPEN, READ and WRITE of 256 bytes, READDIR, FLUSH, RELEASE, two error
replies, STATFS, FORGET and a NOTIFY_POLL, over and over).  Each benchmark's
``extra_info`` has ``messages`` and ``msg_per_s`` (from the mean); they are printed too.
``strace-64k`` has 64 KiB READ and WRITE payloads (256 KiB lines: where the old per-character
regex spent its time); ``strace-splice`` sends READ replies the way libfuse's
``fuse_reply_data`` does, through a pipe, from two threads.

    python -m pytest benchmarks/bench_traces.py --benchmark-enable --benchmark-only -s

Peak memory (``test_peak_rss``) decodes a 1 GB strace log and a 10,000,000-message
pcapng in a child process and reads its ``ru_maxrss``; the files take minutes to make
and several GB of /tmp, so it runs only with ``FUSD_BIG_TRACES=1`` in the environment.
Targets (issue 14): strace >= 20,000 msg/s; pcapng --stats >= 100,000, --json and
text >= 30,000; <= 200 MB peak for both big files.  Nothing asserts on time.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Dict, Tuple

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))

from gen_traces import write_pcapng, write_strace  # noqa: E402

from fusd_wire.__main__ import build_parser  # noqa: E402
from fusd_wire.trace.command import run_decode  # noqa: E402

N_PCAPNG = 200_000
N_STRACE = 100_000
N_STRACE_BIG = 5_000
SPEEDS: Dict[str, float] = {}


@pytest.fixture(scope="module")
def captures(tmp_path_factory):
    d = tmp_path_factory.mktemp("traces")
    files = {}
    with open(d / "s.pcapng", "wb") as f:
        write_pcapng(f, N_PCAPNG)
    files["pcapng"] = (d / "s.pcapng", N_PCAPNG)
    with open(d / "plain.strace", "wb") as f:
        write_strace(f, N_STRACE)
    files["strace"] = (d / "plain.strace", N_STRACE)
    with open(d / "splice.strace", "wb") as f:
        write_strace(f, N_STRACE, splice=True, threads=2)
    files["strace-splice"] = (d / "splice.strace", N_STRACE)
    with open(d / "big.strace", "wb") as f:  # 64 KiB READ/WRITE payloads: lines of 256 KiB
        write_strace(f, N_STRACE_BIG, 65536)
    files["strace-64k"] = (d / "big.strace", N_STRACE_BIG)
    return files


def _decode(path: Path, mode: str) -> int:
    parser = build_parser()
    args = parser.parse_args(["decode", *([mode] if mode else []), str(path)])
    with open(os.devnull, "w") as out, open(os.devnull, "w") as err:
        return run_decode(args, parser, out=out, err=err)


CASES = [("pcapng", "--stats"), ("pcapng", "--json"), ("pcapng", ""),
         ("strace", "--stats"), ("strace", "--json"), ("strace", ""), ("strace-splice", ""), ("strace-64k", "")]


@pytest.mark.parametrize("capture,mode", CASES, ids=[f"{c}{m or '-text'}" for c, m in CASES])
def test_decode_speed(benchmark, captures, capture, mode):
    path, count = captures[capture]
    status = benchmark.pedantic(_decode, args=(path, mode), rounds=3, iterations=1)
    assert status == 0
    stats = getattr(benchmark, "stats", None)
    if stats is not None:  # None under --benchmark-disable
        rate = count / stats.stats.mean
        benchmark.extra_info.update(messages=count, msg_per_s=round(rate))
        SPEEDS[f"{capture} {mode or 'text'}"] = rate
        print(f"\n{capture} {mode or 'text'}: {count} messages, {rate:,.0f} msg/s (mean of 3)")


def _peak(cmd) -> Tuple[int, float, int]:
    """(peak RSS in KiB, CPU seconds, exit status) of a child process."""
    code = ("import resource, subprocess, sys; r = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL); "
            "u = resource.getrusage(resource.RUSAGE_CHILDREN); print(u.ru_maxrss, u.ru_utime + u.ru_stime, "
            "r.returncode)")
    r = subprocess.run([sys.executable, "-c", code, *cmd], capture_output=True, text=True, check=True)
    kib, cpu, status = r.stdout.split()[-3:]
    return int(kib), float(cpu), int(status)


@pytest.mark.skipif(os.environ.get("FUSD_BIG_TRACES") != "1", reason="set FUSD_BIG_TRACES=1 (minutes, GBs of /tmp)")
def test_peak_rss(tmp_path_factory):
    d = tmp_path_factory.mktemp("big")
    big_strace, big_pcapng = d / "1g.strace", d / "10m.pcapng"
    with open(big_strace, "wb") as f:
        size = write_strace(f, 2_700_000, splice=True, threads=2)  # ~1 GB
    with open(big_pcapng, "wb") as f:
        write_pcapng(f, 10_000_000)
    py = [sys.executable, "-m", "fusd_wire", "decode"]
    for path, mode, count in ((big_strace, "--stats", 2_700_000), (big_strace, "", 2_700_000),
                              (big_pcapng, "--stats", 10_000_000), (big_pcapng, "--json", 10_000_000),
                              (big_pcapng, "", 10_000_000)):
        kib, cpu, status = _peak(py + ([mode] if mode else []) + [str(path)])
        print(f"\n{path.name} ({os.path.getsize(path) / 1e9:.2f} GB, {count} messages) {mode or 'text'}: "
              f"peak RSS {kib / 1024:.0f} MiB, {cpu:.0f} s CPU ({count / cpu:,.0f} msg/s), exit {status}")
        assert status == 0  # a decode that failed early would measure nothing
    assert size > 0
