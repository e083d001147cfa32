"""``fusd demo`` picks CUSE by itself where /dev/cuse exists, says so, and removes its nodes."""

from __future__ import annotations

import glob
import subprocess
import sys

from .conftest import needs_cuse

pytestmark = needs_cuse


def test_demo_uses_cuse_automatically_and_cleans_up() -> None:
    out = subprocess.run([sys.executable, "-m", "fusd_runtime", "demo", "--iterations", "20"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "transport: cuse; devices in /dev:" in out.stdout
    for expected in ("blocking read: woke", "woke with POLLIN", "-> 42; get -> 42", "nothing left mounted"):
        assert expected in out.stdout
    assert not glob.glob("/dev/fusd-demo-*")
