"""Record real devices through a CUSE proxy, emulate them on a CUSE node: the guest's /dev/rtc0, a pty.

``hwclock`` reads the guest's real RTC through the proxy (RTC_UIE_ON by value, select, RTC_RD_TIME),
then reads the emulation with the real RTC untouched; ``stty`` reads a pty's termios through the
proxy (TCGETS has no size in its number: the proxy asks the kernel for 36 bytes with
FUSE_IOCTL_RETRY), then from the emulation.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
import tty

import pytest

from fusd_runtime.cuse import CuseServer
from fusd_runtime.emulate import EmulatedDevice, load_recording
from fusd_runtime.proxy import ProxyDevice

from .conftest import needs_cuse, unique_name

pytestmark = needs_cuse
_STAMP = re.compile(r"(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d)")


def _hwclock(path: str) -> str:
    proc = subprocess.run(["setpriv", "--bounding-set=-sys_time", "hwclock", f"--rtc={path}", "--utc",
                           "--noadjfile", "--show"], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "TZ": "UTC"})
    assert proc.returncode == 0, proc.stderr
    m = _STAMP.search(proc.stdout)
    assert m, proc.stdout
    return m.group(1)


def _serve(device: object, record: str = "") -> CuseServer:
    server = CuseServer(record=record or None)
    server.add(device, unique_name("rec"))  # type: ignore[arg-type]
    return server.start()


@pytest.mark.skipif(not os.path.exists("/dev/rtc0") or shutil.which("hwclock") is None,
                    reason="needs the guest's /dev/rtc0 and hwclock")
def test_the_real_rtc_recorded_and_emulated_to_hwclock() -> None:
    cap = os.path.join(tempfile.mkdtemp(), "rtc.pcapng")
    proxy = ProxyDevice("/dev/rtc0")
    server = _serve(proxy, cap)
    try:
        (name,) = server.devices()
        through_proxy = _hwclock(server.path(name))
    finally:
        server.stop()
        proxy.stop()
    assert through_proxy[:13] == _hwclock("/dev/rtc0")[:13]  # the real clock (same hour)
    rec = load_recording(cap, name)
    server = _serve(EmulatedDevice(rec))
    try:
        (emu_name,) = server.devices()
        emulated = _hwclock(server.path(emu_name))
        assert emulated == through_proxy  # the recorded RTC_RD_TIME, to the second
        assert server.devices()[emu_name].mismatches == []  # type: ignore[attr-defined]
    finally:
        server.stop()


@pytest.mark.skipif(shutil.which("stty") is None, reason="needs stty")
def test_a_pty_termios_through_the_proxy_and_from_the_emulation() -> None:
    master, slave = os.openpty()
    tty.setraw(slave)
    cap = os.path.join(tempfile.mkdtemp(), "tty.pcapng")
    proxy = ProxyDevice(os.ttyname(slave))
    server = _serve(proxy, cap)
    try:
        (name,) = server.devices()
        real = subprocess.run(["stty", "-F", server.path(name), "-a"], capture_output=True, text=True, timeout=120)
    finally:
        server.stop()
        proxy.stop()
        os.close(master)
        os.close(slave)
    assert real.returncode == 0, real.stderr
    assert "-icanon" in real.stdout  # raw mode: what tty.setraw set on the pty, read through the proxy
    server = _serve(EmulatedDevice(load_recording(cap, name)))
    try:
        (emu_name,) = server.devices()
        again = subprocess.run(["stty", "-F", server.path(emu_name), "-a"], capture_output=True, text=True,
                               timeout=120)
    finally:
        server.stop()
    assert again.returncode == 0, again.stderr
    assert again.stdout == real.stdout
