"""The README's quick start, verbatim, as a new user runs it: a fresh venv, ``pip install .``, a new directory.

The checkout is copied first (``pip install .`` builds in the source tree), the venv is
made from scratch (no editable install, no test extras), and the README's own blocks are
used: the ``# file: sensor.py`` block written to an empty directory, then the shell block
run there with only the fresh venv on PATH, in the docs sandbox (tests/doc_sandbox.py).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile

import pytest
from test_docs import ROOT, parse, problems, run_block, sandbox_ok

pytestmark = [sandbox_ok, pytest.mark.slow]


def _copy_checkout(dest: str) -> None:
    files = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                           capture_output=True, text=True, check=True).stdout.split()
    for name in files:
        if os.path.isfile(os.path.join(ROOT, name)):
            os.makedirs(os.path.dirname(os.path.join(dest, name)), exist_ok=True)
            shutil.copy2(os.path.join(ROOT, name), os.path.join(dest, name))


def test_quick_start_from_a_fresh_venv() -> None:
    base = tempfile.mkdtemp(prefix="fusd-quickstart-", dir="/var/tmp")  # not /tmp: the sandbox hides it
    try:
        checkout, venv, newdir = (os.path.join(base, d) for d in ("fusd", "venv", "mydevice"))
        _copy_checkout(checkout)
        subprocess.run([sys.executable, "-m", "venv", venv], check=True, timeout=120)
        pip = subprocess.run([os.path.join(venv, "bin", "pip"), "install", "-q", "."], cwd=checkout,
                             capture_output=True, text=True, timeout=600)
        assert pip.returncode == 0, pip.stdout + pip.stderr
        os.mkdir(newdir)
        with open(os.path.join(ROOT, "README.md")) as f:
            text = f.read()
        quick = text[text.index("## Quick start"):text.index("## Set-up")]
        blocks = parse(quick, "README.md (Quick start)")
        files = [b for b in blocks if b.file]
        shell = [b for b in blocks if b.info == "sh"]
        assert [b.file for b in files] == ["sensor.py"] and len(shell) == 1
        with open(os.path.join(newdir, "sensor.py"), "w") as f:
            f.write(files[0].code)
        report = run_block(shell[0], newdir, python=os.path.join(venv, "bin", "python"))
        assert not problems(shell[0], report), report
        readings = re.findall(r"^\d\d\.\d C$", report["output"], re.M)
        assert len(readings) == 2, report["output"]
    finally:
        shutil.rmtree(base, ignore_errors=True)
