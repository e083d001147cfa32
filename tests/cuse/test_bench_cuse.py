"""``fusd bench --transport cuse`` against the C CUSE reference (``bench_refs/raw_cuse.c``), in the CUSE guest.

Asserts what the run says, never how fast: fusd's CuseServer and the C loop
both served the perf device as ``/dev/NAME``, every op has a ratio to the
reference, every read and write moved the bytes asked for (PerfFile is served
as a stream on CUSE: a seekable one would hit end of file after 64 KiB, since
the kernel sends offset 0), and no node is left behind.
"""

from __future__ import annotations

import io
import json
import os
import shutil

import pytest

from fusd_runtime import bench

from .conftest import needs_cuse

pytestmark = needs_cuse


@pytest.mark.skipif(not (shutil.which("gcc") or shutil.which("cc")), reason="needs a C compiler for the reference")
def test_cuse_bench_measures_fusd_against_the_c_cuse_reference(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    path = tmp_path / "run.json"
    out = io.StringIO()
    ops = ["pread1", "pwrite1", "openclose", "ioctl", "poll", "read64k"]
    assert bench.main(["--transport", "cuse", "--quick", "--iterations", "30", "--ops", ",".join(ops),
                       "--no-floors", "--json", str(path)], out=out) == 0
    doc = json.loads(path.read_text())
    assert doc["settings"]["transport"] == "cuse"
    assert doc["targets"]["raw_cuse"]["status"] == "measured", doc["targets"]["raw_cuse"]
    assert {r["op"] for r in doc["ratios"] if r["vs"] == "raw_cuse"} == set(ops)
    for run in doc["runs"]:
        assert run["errors"] == 0 and run["short"] == 0, run
    assert "raw_cuse µs" in out.getvalue().splitlines()[1]
    left = [n for n in os.listdir("/dev") if n.startswith("fusd-bench-")]
    assert not left, f"nodes left behind: {left}"
