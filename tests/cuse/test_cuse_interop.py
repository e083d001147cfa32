"""An umockdev recording served on a real /dev node: evtest prints exactly what it printed when recorded.

(tests/test_interop.py does the same on FUSE, where EVIOCGRAB cannot take its value.)
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from fusd_runtime.emulate import EmulatedDevice, load_recording
from fusd_runtime.testing import serve

from .conftest import needs_cuse

DATA = Path(__file__).resolve().parent.parent / "data" / "interop"
pytestmark = [needs_cuse, pytest.mark.skipif(shutil.which("evtest") is None, reason="needs evtest")]


def test_umockdev_recording_to_evtest_on_a_cuse_node() -> None:
    rec = load_recording([str(DATA / "kbd.ioctl"), str(DATA / "kbd.events")])
    with serve(EmulatedDevice(rec), backend="kernel", transport="cuse") as dev:
        proc = subprocess.Popen(["evtest", dev.path], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        dev.wait_opened(1, timeout=60)
        dev.wait_for(lambda: dev.device.mismatches or _read_all(dev), timeout=60, what="the recorded events read")
        time.sleep(2)
        proc.send_signal(signal.SIGINT)
        out = proc.communicate(timeout=60)[0]
    keep = ("Input", "  ", "Event:", "Properties")
    reference = [line for line in (DATA / "evtest-umockdev.txt").read_text().splitlines() if line.startswith(keep)]
    assert [line for line in out.splitlines() if line.startswith(keep)] == reference
    assert dev.device.mismatches == [], dev.device.mismatches


def _read_all(dev: object) -> bool:
    session = dev.device.session  # type: ignore[attr-defined]
    ctxs = session.by_device.get(dev.device, ()) if session is not None else ()  # type: ignore[attr-defined]
    return any(c.state is not None and c.state.read_pos >= len(c.state.reads) for c in ctxs)
