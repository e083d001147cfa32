"""``fusd bench`` against its C reference servers: the contract, the JSON document, the skips.

Real round trips (root + /dev/fuse): the bench builds the references in
``fusd_runtime/bench_refs/`` with the machine's compiler, runs them beside
fusd's perfserver and writes its JSON.  Numbers are never asserted (a shared
machine), only what the document says and that the comparison is fair (every
read and write moved the bytes asked for, on every target).  The CUSE variant
runs in the CUSE guest (``tests/cuse/test_bench_cuse.py``).
"""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import subprocess
import sys

import pytest
from conftest import ROOT, needs_fuse, wait_for

from fusd_runtime import bench, bench_refs

HAVE_CC = bool(shutil.which("gcc") or shutil.which("cc"))
HAVE_LIBFUSE = HAVE_CC and subprocess.run(["pkg-config", "--exists", "fuse3"], capture_output=True).returncode == 0 \
    if shutil.which("pkg-config") else False

#: what every JSON document has at the top level, in settings and in machine
TOP = {"schema", "created", "command", "settings", "machine", "targets", "runs", "summary", "ratios"}
SETTINGS = {"transport", "pin", "client_cpu", "server_cpu", "device", "iterations", "warmup", "rounds", "readers",
            "ops", "client", "client_note", "floor_for"}
MACHINE = {"cpus", "cpus_allowed", "cpu_model", "kernel", "python", "fusd", "libfuse3", "compiler", "cpuidle",
           "clocksource", "load_before", "load_after", "busy_fraction"}
RUN = {"target", "op", "round", "n", "median_us", "p99_us", "mean_us", "min_us", "errors", "errno", "ops_per_s",
       "short", "server_cpu_us", "busy"}
SUMMARY = {"target", "op", "rounds", "median_us", "p99_us", "round_min_us", "round_max_us", "round_medians_us",
           "server_cpu_us", "errors", "errno", "short"}


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """Builds go to a fresh cache: what a first run on a new machine does."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    return tmp_path / "cache"


def _no_servers_left(doc) -> None:
    for name, t in doc["targets"].items():
        pid = t.get("pid")
        if pid:
            assert not os.path.exists(f"/proc/{pid}") or open(f"/proc/{pid}/stat").read().split()[2] == "Z", \
                f"{name} (pid {pid}) still runs"
    with open("/proc/self/mountinfo") as f:
        left = [line.split()[4] for line in f if "fusd-bench-" in line.split()[4]]
    assert not left, f"mounts left behind: {left}"


# ---------------------------------------------------------------------------- the contract: headers

def test_every_shipped_reference_has_a_valid_header() -> None:
    refs = {r.name: r for r in bench_refs.discover()}
    assert {"raw_fuse", "libfuse_ll", "raw_cuse"} <= set(refs)
    for name, ref in refs.items():
        assert os.path.basename(ref.source) == f"{name}.c"
        assert ref.transport in bench_refs.TRANSPORTS and ref.title
    assert refs["libfuse_ll"].pkg_config == ("fuse3",)
    assert refs["raw_cuse"].transport == "cuse" and "/dev/cuse" in refs["raw_cuse"].needs
    assert [r.name for r in bench_refs.discover(transport="cuse")] == ["raw_cuse"]


@pytest.mark.parametrize("text, complaint", [
    ("/* something else */\n", "x.c:1: a reference starts with"),
    ("/* fusd-bench-ref\n * name: x\n * transport: fuse\n * colour: red\n */\n", "x.c:4: expected 'KEY: value'"),
    ("/* fusd-bench-ref\n * name: x\n * transport: fuse\n */\n", "x.c: the header has no title:"),
    ("/* fusd-bench-ref\n * name: y\n * transport: fuse\n * title: t\n */\n", "must be the file's stem"),
    ("/* fusd-bench-ref\n * name: x\n * transport: nfs\n * title: t\n */\n", "'nfs' is not one of fuse, cuse"),
    ("/* fusd-bench-ref\n * name: x\n * transport: fuse\n * title: t\n", "not closed"),
])
def test_a_malformed_header_is_one_error_naming_file_and_line(tmp_path, text, complaint) -> None:
    (tmp_path / "x.c").write_text(text)
    with pytest.raises(bench_refs.RefError) as exc:
        bench_refs.discover(str(tmp_path))
    assert str(exc.value).startswith("x.c") and complaint in str(exc.value)


# ---------------------------------------------------------------------------- a quick run, its JSON

@needs_fuse
def test_quick_bench_writes_the_documented_json_with_a_ratio_per_reference(tmp_path, cache) -> None:
    out = io.StringIO()
    path = tmp_path / "run.json"
    rc = bench.main(["--quick", "--iterations", "50", "--rounds", "2", "--ops", "pread1,getattr,ioctl,read64k,pollwake",
                     "--json", str(path)], out=out)
    assert rc == 0
    doc = json.loads(path.read_text())
    assert doc["schema"] == "fusd-bench/1"
    assert TOP <= set(doc) and SETTINGS <= set(doc["settings"]) and MACHINE <= set(doc["machine"])
    m = doc["machine"]
    assert m["cpus"] >= 1 and m["kernel"] == os.uname().release and m["python"].split()[1] == \
        ".".join(map(str, sys.version_info[:3]))
    assert len(m["load_before"]) == 3 and 0 <= m["busy_fraction"]["median"] <= m["busy_fraction"]["max"] <= 1
    assert doc["settings"]["rounds"] == 2 and doc["settings"]["transport"] == "fuse"
    assert doc["targets"]["fusd"]["status"] == "measured"

    refs = [r.name for r in bench_refs.discover(transport="fuse")]
    for name in refs:
        t = doc["targets"][name]
        assert t["kind"] == "reference" and t["source"] == f"fusd_runtime/bench_refs/{name}.c"
        assert t["status"] == "measured" or t["reason"], t
    expected = ["raw_fuse"] * HAVE_CC + ["libfuse_ll"] * HAVE_LIBFUSE
    measured = [n for n in refs if doc["targets"][n]["status"] == "measured"]
    assert sorted(measured) == sorted(expected), {n: doc["targets"][n] for n in refs}
    if not HAVE_LIBFUSE:
        assert "fuse3" in doc["targets"]["libfuse_ll"]["reason"] or "compiler" in doc["targets"]["libfuse_ll"]["reason"]

    for run in doc["runs"]:
        assert RUN <= set(run)
        assert run["short"] == 0, f"{run['target']} {run['op']} moved fewer bytes than asked: not comparable"
        if run["target"] in ("fusd", *measured):
            assert run["errors"] == 0, run
            assert (run["server_cpu_us"] or 0) > 0 or not HAVE_CC, "the C client measures the server's CPU"
        else:
            assert run["server_cpu_us"] is None, "a floor has no server"
    assert {(r["target"], r["round"]) for r in doc["runs"] if r["op"] == "pread1"} == \
        {(t, n) for t in ("fusd", *measured, "tmpfs") for n in (1, 2)}
    for s in doc["summary"]:
        assert SUMMARY <= set(s) and len(s["round_medians_us"]) == s["rounds"] == 2
        assert s["round_min_us"] <= s["median_us"] <= s["round_max_us"]
    ratios = {(r["op"], r["vs"]): r for r in doc["ratios"]}
    for op in ("pread1", "getattr", "ioctl", "read64k"):
        for name in measured:
            r = ratios[(op, name)]
            assert r["kind"] == "reference" and r["ratio"] > 0 and len(r["round_ratios"]) == 2
        assert ratios[(op, doc["settings"]["floor_for"][op])]["kind"] == "floor"
    assert not [k for k in ratios if k[0] == "pollwake" and k[1] != "pipe"], "the references serve no pipe0"

    text = out.getvalue()
    header = text.splitlines()[1]
    for name in measured:
        assert f"{name} µs" in header
    assert header.count("ratio") == len(measured) + 1  # one per reference, one for the floor
    assert "busy fraction" in text and doc["machine"]["kernel"] in text
    _no_servers_left(doc)


@needs_fuse
def test_without_a_compiler_the_references_are_skipped_with_the_reason(tmp_path) -> None:
    empty = tmp_path / "bin"
    empty.mkdir()
    path = tmp_path / "run.json"
    env = dict(os.environ, PATH=str(empty), XDG_CACHE_HOME=str(tmp_path / "cache"), PYTHONPATH=ROOT)
    res = subprocess.run([sys.executable, "-m", "fusd_runtime.bench", "--quick", "--iterations", "30", "--ops",
                          "pread1", "--json", str(path)], capture_output=True, text=True, env=env, timeout=300)
    assert res.returncode == 0, res.stderr
    doc = json.loads(path.read_text())
    assert doc["settings"]["client"] == "Python" and "no C compiler" in doc["settings"]["client_note"]
    for name in ("raw_fuse", "libfuse_ll"):
        t = doc["targets"][name]
        assert t["status"] == "skipped" and t["reason"] == "no C compiler (gcc or cc) on PATH", t
        assert f"{name}: skipped: no C compiler (gcc or cc) on PATH" in res.stdout
    assert doc["targets"]["fusd"]["status"] == "measured" and [r["vs"] for r in doc["ratios"]] == ["tmpfs"]
    assert doc["machine"]["compiler"] is None


# ---------------------------------------------------------------------------- references that cannot run

SKIPPER = """/* fusd-bench-ref
 * name: skipper
 * transport: fuse
 * title: a reference whose kernel feature is off
 */
#include "perfdev.h"
int main(void) { perf_skip("io_uring FUSE is not enabled (enable_uring=N)"); }
"""
BROKEN = """/* fusd-bench-ref
 * name: broken
 * transport: fuse
 * title: does not compile
 */
int main(void) { return undeclared_thing; }
"""
CRASHER = """/* fusd-bench-ref
 * name: crasher
 * transport: fuse
 * title: dies before READY
 */
#include <stdio.h>
int main(void) { fprintf(stderr, "crasher: cannot mount (on purpose)\\n"); return 1; }
"""
NEEDY = """/* fusd-bench-ref
 * name: needy
 * transport: fuse
 * title: needs a device this machine lacks
 * needs: /dev/fusd-bench-no-such-device
 */
int main(void) { return 0; }
"""


@needs_fuse
@pytest.mark.skipif(not HAVE_CC, reason="needs a C compiler to build the test references")
def test_references_that_cannot_run_are_reported_and_the_run_goes_on(tmp_path, cache) -> None:
    refs = tmp_path / "refs"
    refs.mkdir()
    for name, text in [("skipper", SKIPPER), ("broken", BROKEN), ("crasher", CRASHER), ("needy", NEEDY)]:
        (refs / f"{name}.c").write_text(text)
    shutil.copy(os.path.join(bench_refs.HERE, "raw_fuse.c"), refs / "raw_fuse.c")  # one that works
    doc = bench.measure(ops=["pread1"], iterations=30, warmup=5, rounds=1, floors=False, ref_dir=str(refs))
    t = doc["targets"]
    assert t["skipper"]["status"] == "skipped"
    assert t["skipper"]["reason"] == "io_uring FUSE is not enabled (enable_uring=N)"
    assert t["broken"]["status"] == "skipped" and t["broken"]["reason"].startswith("build failed:")
    assert "undeclared_thing" in t["broken"]["reason"]
    assert t["crasher"]["status"] == "failed" and "exit status 1" in t["crasher"]["reason"]
    assert "cannot mount (on purpose)" in t["crasher"]["reason"]
    assert t["needy"]["status"] == "skipped" and "/dev/fusd-bench-no-such-device does not exist" in t["needy"]["reason"]
    assert t["raw_fuse"]["status"] == "measured" and t["fusd"]["status"] == "measured"
    assert {r["target"] for r in doc["runs"]} == {"fusd", "raw_fuse"}
    assert [r["vs"] for r in doc["ratios"]] == ["raw_fuse"]
    text = bench.table(dict(doc, command=[]))
    assert "skipper: skipped: io_uring FUSE is not enabled" in text and "crasher: failed:" in text
    _no_servers_left(doc)


@needs_fuse
@pytest.mark.skipif(not HAVE_CC, reason="needs a C compiler")
def test_reference_stops_on_sigterm_and_unmounts(tmp_path, cache) -> None:
    """Contract 7: SIGTERM unmounts and exits 0 (the bench's own cleanup is not needed)."""
    from fusd_runtime.bench_targets import ServerProcess, is_mountpoint
    ref = next(r for r in bench_refs.discover() if r.name == "raw_fuse")
    exe, why = bench_refs.build(ref)
    assert exe, why
    server = ServerProcess("raw_fuse", [exe, "--readers", "2"])
    with server:
        assert server.readers == 2
        with open(server.paths["dev0"], "rb", buffering=0) as f:
            assert f.read(5) == b"abcde"
        mnt, proc = server.mountpoint, server.proc
        assert mnt and proc and is_mountpoint(mnt)
        proc.terminate()
        assert proc.wait(10) == 0
        assert not is_mountpoint(mnt), "the reference left its mount behind"


@needs_fuse
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_stopped_bench_stops_its_servers_and_removes_its_mounts(tmp_path, sig) -> None:
    """Ctrl-C or SIGTERM mid-run: every server stopped, nothing mounted, no directory left (exit 130)."""
    work = tmp_path / "tmp"
    work.mkdir()
    env = dict(os.environ, TMPDIR=str(work), XDG_CACHE_HOME=str(tmp_path / "cache"), PYTHONPATH=ROOT)
    proc = subprocess.Popen([sys.executable, "-m", "fusd_runtime.bench", "-n", "200000", "--rounds", "3"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
    try:
        for line in proc.stderr:
            if "round 1 fusd pread1" in line:  # servers up, the first client running
                break
        proc.send_signal(sig)
        assert proc.wait(120) == 130
        mounts, servers = _left_in(work)
        assert not mounts, f"mounts left: {mounts}"
        # fusd's unmount watchdog leaves on its own once its server is gone (its own session)
        assert wait_for(lambda: not _left_in(work)[1], timeout=60), f"still running: {_left_in(work)[1]}"
        assert os.listdir(work) == [], "mount points left behind"
    finally:  # whatever happened, leave nothing behind for the next test
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stderr.close()
        mounts, servers = _left_in(work)
        for pid in servers:
            os.kill(int(pid), signal.SIGKILL)
        for mnt in mounts:
            subprocess.run(["umount", "-l", mnt], capture_output=True)


def _left_in(work) -> tuple:
    """(mount points, pids) that a bench run with TMPDIR=work left behind."""
    with open("/proc/self/mountinfo") as f:
        mounts = [line.split()[4] for line in f if str(work) in line.split()[4]]
    pids = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if str(work).encode() in f.read():
                    pids.append(pid)
        except OSError:
            pass
    return mounts, pids


@needs_fuse
def test_the_server_is_this_fusd_and_the_device_comes_from_the_working_directory(tmp_path, monkeypatch,
                                                                               cache) -> None:
    """``--device mymod:Class`` is imported from where the bench runs; ``fusd_runtime`` never is.

    (``python -m`` would put the working directory first on sys.path: a bench run inside another
    checkout, here a broken one, would have measured that checkout's server.)
    """
    (tmp_path / "fusd_runtime").mkdir()
    (tmp_path / "fusd_runtime" / "__init__.py").write_text("raise ImportError('the wrong fusd_runtime')\n")
    (tmp_path / "mydevice.py").write_text("from fusd_runtime.examples import PerfFile\n\n\n"
                                          "class Mine(PerfFile):\n    pass\n")
    monkeypatch.chdir(tmp_path)
    doc = bench.measure(device="mydevice:Mine", ops=["pread1"], iterations=30, warmup=5, rounds=1, floors=False,
                        refs=[])
    assert doc["targets"]["fusd"]["status"] == "measured"
    assert doc["settings"]["device"] == "mydevice:Mine" and "mydevice:Mine" in doc["targets"]["fusd"]["title"]
    assert [r["errors"] for r in doc["runs"]] == [0]
