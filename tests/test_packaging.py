"""The wheel: built from a copy of the tree, installed into a fresh venv, and run from there.

Checks what ``pip install .`` gives a user: only ``fusd_wire``/``fusd_runtime`` (with every
subpackage, both ``py.typed`` markers and the C sources of ``fusd bench``'s reference
servers) are packaged, the ``fusd`` command and ``python -m fusd_wire`` work from the venv
with nothing but the wheel and ``construct`` (from the index), ``fusd demo`` serves and
drives its devices and ``fusd bench`` builds its references from the installed sources
(root + /dev/fuse).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("fusd_wire", "fusd_runtime")
_SKIP_DIRS = {".git", "build", "dist", "__pycache__", ".venv", ".mypy_cache", ".pytest_cache", ".ruff_cache",
              ".hypothesis", ".benchmarks"}

pytestmark = pytest.mark.slow


def _project_files() -> list:
    """The files a clean clone has (tracked, plus untracked not ignored), relative to ROOT."""
    try:
        out = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                             capture_output=True, check=True, timeout=60).stdout
        return [Path(p.decode()) for p in out.split(b"\0") if p and (ROOT / p.decode()).is_file()]
    except (OSError, subprocess.CalledProcessError):
        return [p.relative_to(ROOT) for p in ROOT.rglob("*") if p.is_file()
                and not _SKIP_DIRS & set(p.relative_to(ROOT).parts) and not p.name.endswith(".egg-info")]


def _run(cmd, **kwargs) -> subprocess.CompletedProcess:
    kwargs.setdefault("timeout", 600)
    res = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, **kwargs)
    assert res.returncode == 0, f"{cmd} failed ({res.returncode}):\n{res.stdout}\n{res.stderr}"
    return res


def _can_build_offline() -> bool:
    """setuptools (>= 61, pyproject metadata) with bdist_wheel (built in from 70.1, else the wheel package)."""
    try:
        import setuptools
    except ImportError:
        return False
    version = tuple(int(x) for x in setuptools.__version__.split(".")[:2] if x.isdigit())
    if version >= (70, 1):
        return True
    try:
        import wheel  # noqa: F401
    except ImportError:
        return False
    return version >= (61,)


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """Build the wheel from a copy of the tree (the build leaves build/ and *.egg-info in its source)."""
    src = tmp_path_factory.mktemp("src")
    for rel in _project_files():
        dest = src / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / rel, dest)
    out = tmp_path_factory.mktemp("wheelhouse")
    cmd = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--disable-pip-version-check", "-q", "-w", out, src]
    if _can_build_offline():
        cmd.insert(5, "--no-build-isolation")  # offline and faster; same backend as pyproject asks for
    _run(cmd)
    wheels = list(out.glob("fusd-*.whl"))
    assert len(wheels) == 1, wheels
    return wheels[0]


@pytest.fixture(scope="module")
def venv_python(wheel, tmp_path_factory) -> Path:
    """A fresh venv with the wheel installed (construct comes from the package index)."""
    env_dir = tmp_path_factory.mktemp("venv")
    venv.EnvBuilder(with_pip=True, clear=True).create(env_dir)
    python = env_dir / "bin" / "python"
    _run([python, "-m", "pip", "install", "-q", "--disable-pip-version-check", wheel])
    return python


def test_wheel_holds_the_two_packages_and_nothing_else(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names}
    dist_info = {t for t in tops if t.endswith(".dist-info")}
    assert len(dist_info) == 1 and tops - dist_info == set(PACKAGES), sorted(tops)
    for pkg in PACKAGES:
        assert f"{pkg}/py.typed" in names, f"{pkg}/py.typed is not in the wheel"
        # every module of the source tree (subpackages too) is in the wheel
        sources = {str(p.relative_to(ROOT)) for p in (ROOT / pkg).rglob("*.py") if "__pycache__" not in p.parts}
        assert sources <= set(names), f"missing from the wheel: {sorted(sources - set(names))}"
    assert "fusd_wire/trace/__init__.py" in names
    # the C reference servers fusd bench builds at run time, their shared header and their contract
    refs = {str(p.relative_to(ROOT)) for p in (ROOT / "fusd_runtime" / "bench_refs").iterdir()
            if p.suffix in (".c", ".h", ".md")}
    assert {"fusd_runtime/bench_refs/raw_fuse.c", "fusd_runtime/bench_refs/perfdev.h",
            "fusd_runtime/bench_refs/README.md"} <= refs
    assert refs <= set(names), f"missing from the wheel: {sorted(refs - set(names))}"
    info = next(iter(dist_info))
    meta = zipfile.ZipFile(wheel).read(f"{info}/METADATA").decode()
    assert "Requires-Dist: construct" in meta
    assert sum(line.startswith("Requires-Dist:") and "extra ==" not in line for line in meta.splitlines()) == 1
    entry_points = zipfile.ZipFile(wheel).read(f"{info}/entry_points.txt").decode()
    assert "fusd = fusd_runtime.cli:main" in entry_points
    # the test kit's pytest plugin: pytest finds it in every project that installs the wheel
    plugins = entry_points.split("[pytest11]", 1)[1].split("[", 1)[0] if "[pytest11]" in entry_points else ""
    assert "fusd = fusd_runtime.testing.plugin" in plugins, entry_points
    assert "fusd_runtime/testing/plugin.py" in names


def test_installed_packages_come_from_the_venv(venv_python, tmp_path):
    res = _run([venv_python, "-c", "import fusd_wire, fusd_wire.trace, fusd_runtime, fusd_runtime.cuse, construct;"
                "print(fusd_wire.__file__); print(fusd_runtime.__file__)"], cwd=tmp_path)
    prefix = str(venv_python.parent.parent)
    for line in res.stdout.split():
        assert line.startswith(prefix), f"imported from outside the venv: {line}"


def test_decode_command_runs_from_the_venv(venv_python, tmp_path):
    res = _run([venv_python, "-m", "fusd_wire", "decode", "--help"], cwd=tmp_path)
    assert "usage:" in res.stdout and "decode" in res.stdout


def test_demo_runs_from_the_venv(venv_python, tmp_path):
    if not (os.path.exists("/dev/fuse") and os.geteuid() == 0):
        pytest.skip("fusd demo --transport fuse needs root and /dev/fuse (kernel FUSE tier)")
    fusd = venv_python.parent / "fusd"
    assert fusd.exists(), "the wheel installed no fusd command"
    res = _run([fusd, "demo", "--transport", "fuse", "--iterations", "50"], cwd=tmp_path, timeout=300)
    out = res.stdout
    assert "transport: fuse" in out, out
    assert "Hello from a Python device" in out and "42" in out and "latency" in out, out
    where = re.search(r"devices in (\S+?):", out)
    if where:  # the demo's temporary directory is unmounted again
        with open("/proc/mounts") as f:
            assert where.group(1) not in [line.split()[1] for line in f], "the demo left its mount behind"


def test_wireshark_dissector_comes_with_the_wheel(venv_python, tmp_path):
    """The generated dissector the docs point to is installed, and the generator's engine too."""
    res = _run([venv_python, "-c", "from fusd_wire.trace.wireshark import generate, shipped_path;"
                "print(open(shipped_path()).read() == generate(), shipped_path())"], cwd=tmp_path)
    ok, path = res.stdout.split()
    assert ok == "True" and path.startswith(str(venv_python.parent.parent)), res.stdout


def test_bench_builds_its_references_from_the_venv(venv_python, tmp_path):
    if not (os.path.exists("/dev/fuse") and os.geteuid() == 0):
        pytest.skip("fusd bench needs root and /dev/fuse (kernel FUSE tier)")
    if shutil.which("gcc") is None and shutil.which("cc") is None:
        pytest.skip("no C compiler: the references are skipped (tests/test_bench.py checks that)")
    out = tmp_path / "bench.json"
    env = dict(os.environ, XDG_CACHE_HOME=str(tmp_path / "cache"))  # built here, from the wheel's sources
    _run([venv_python.parent / "fusd", "bench", "--quick", "--iterations", "50", "--ops", "pread1", "--no-floors",
          "--refs", "raw_fuse", "--json", out], cwd=tmp_path, env=env, timeout=300)
    import json
    doc = json.loads(out.read_text())
    assert doc["targets"]["raw_fuse"]["status"] == "measured", doc["targets"]
    assert doc["targets"]["raw_fuse"]["source"] == "fusd_runtime/bench_refs/raw_fuse.c"
    assert [r["vs"] for r in doc["ratios"]] == ["raw_fuse"]
