"""fusd_wire (the protocol) never depends on fusd_runtime (the server): checked two ways.

1. Dynamically: a fresh interpreter imports ``fusd_wire`` and every submodule of it
   and runs its command-line entry point; no ``fusd_runtime`` module may end up
   in ``sys.modules``.
2. Statically: every ``import``/``from ... import`` in every fusd_wire source file,
   at any depth (function-level imports too, which the dynamic check cannot see
   until the function runs), and every ``importlib.import_module``/``__import__``
   of a string literal, must stay out of ``fusd_runtime``.
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import List

ROOT = Path(__file__).resolve().parent.parent
WIRE = ROOT / "fusd_wire"

_DYNAMIC = r"""
import importlib, json, pkgutil, sys
import fusd_wire
names = []
for info in pkgutil.walk_packages(fusd_wire.__path__, "fusd_wire."):
    importlib.import_module(info.name)
    names.append(info.name)
from fusd_wire.__main__ import build_parser
build_parser()
print(json.dumps({"imported": names, "runtime": sorted(m for m in sys.modules if m.split(".")[0] == "fusd_runtime")}))
"""


def test_importing_all_of_fusd_wire_loads_nothing_of_fusd_runtime() -> None:
    proc = subprocess.run([sys.executable, "-c", _DYNAMIC], capture_output=True, text=True, cwd=ROOT, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 0, proc.stderr
    got = json.loads(proc.stdout)
    assert "fusd_wire.trace.decode" in got["imported"] and "fusd_wire.codec" in got["imported"]
    assert got["runtime"] == [], f"importing fusd_wire loaded {got['runtime']}"


def _runtime_imports(path: Path, package: str = "") -> List[str]:
    """Where ``path`` imports fusd_runtime, as ``file:line: statement`` strings."""
    tree = ast.parse(path.read_text(), str(path))
    # the file's package (fusd_wire or fusd_wire.trace), for relative imports
    package = package or ".".join(path.relative_to(ROOT).with_suffix("").parts[:-1])
    found = []
    for node in ast.walk(tree):
        targets: List[str] = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against this file's package
                base = package.split(".")
                if node.level > len(base):
                    targets = ["<beyond the top package>"]
                else:
                    stem = ".".join(base[:len(base) - node.level + 1])
                    targets = [f"{stem}.{node.module}" if node.module else stem]
            else:
                targets = [node.module or ""]
        elif isinstance(node, ast.Call):
            fn = node.func
            name = fn.attr if isinstance(fn, ast.Attribute) else fn.id if isinstance(fn, ast.Name) else ""
            if name in ("import_module", "__import__") and node.args and isinstance(node.args[0], ast.Constant):
                targets = [str(node.args[0].value)]
        for target in targets:
            top = target.split(".")[0]
            if top != "fusd_wire" and (top == "fusd_runtime" or target.startswith("<")):
                found.append(f"{path.name}:{node.lineno}: {ast.unparse(node)[:100]}")
    return found


def test_no_source_file_of_fusd_wire_imports_fusd_runtime() -> None:
    files = sorted(WIRE.rglob("*.py"))
    assert len(files) > 15
    bad = [hit for f in files for hit in _runtime_imports(f)]
    assert not bad, "fusd_wire must not import fusd_runtime:\n" + "\n".join(bad)


def test_the_static_check_sees_function_level_and_dynamic_imports(tmp_path: Path) -> None:
    """The checker itself: it must flag the forms that a lazy import hides from the dynamic check."""
    probe = tmp_path / "probe.py"
    probe.write_text("import importlib\nfrom . import codec\nfrom .trace import decode\n"
                     "def f():\n    from fusd_runtime.cli import load_device_class\n"
                     "def g():\n    return importlib.import_module('fusd_runtime.loopback')\n"
                     "from .. import fusd_runtime\n")
    hits = _runtime_imports(probe, package="fusd_wire")
    assert len(hits) == 3, hits


def test_python_m_fusd_wire_replay_says_where_replay_went() -> None:
    proc = subprocess.run([sys.executable, "-m", "fusd_wire", "replay", "cap.pcapng", "--device", "m:C"],
                          capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert proc.returncode == 2
    assert "fusd replay cap.pcapng --device m:C" in proc.stderr and "moved" in proc.stderr
