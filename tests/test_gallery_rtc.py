"""Gallery: the RTC (examples/rtc.py) driven by util-linux ``hwclock``, unmodified, over FUSE.

``hwclock`` accepts any file for ``--rtc``, so the FUSE directory is enough: it
opens the file, turns on update interrupts, waits for one with ``select``,
reads the time with ``RTC_RD_TIME`` and sets it with ``RTC_SET_TIME``.  Every
hwclock here runs with CAP_SYS_TIME removed from its bounding set (``setpriv``),
so even a mistake could not set the host's clock; it also never touches
/etc/adjtime (``--noadjfile``).

The devices are served by the test kit's ``fusd_device`` (docs/testing.md): the
hwclock tests on a real FUSE mount, the ioctl/read/poll tests on every backend
(the loopback kernel as well, so they also run as an ordinary user).
"""

from __future__ import annotations

import calendar
import errno
import os
import re
import select
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time
from typing import Callable, List

import pytest
from conftest import ROOT, line_with, needs_fuse

from examples.rtc import (
    RTC_AF,
    RTC_EPOCH_READ,
    RTC_EPOCH_SET,
    RTC_IRQF,
    RTC_RD_TIME,
    RTC_SET_TIME,
    RTC_UF,
    RTC_UIE_OFF,
    RTC_UIE_ON,
    RTC_WKALM_RD,
    RTC_WKALM_SET,
    Rtc,
    rtc_time,
    rtc_wkalrm,
)
from fusd_runtime.testing import ServedDevice

pytestmark = pytest.mark.fusd(transport="fuse")
needs_hwclock = pytest.mark.skipif(shutil.which("hwclock") is None,
                                   reason="needs util-linux hwclock (the client that drives the RTC)")
on_a_mount = pytest.mark.fusd(backend="kernel", transport="fuse")  # hwclock opens a path
Serve = Callable[..., ServedDevice]

#: never let hwclock set the host's clock, whatever it is asked
_NO_SYS_TIME: List[str] = ["setpriv", "--bounding-set=-sys_time"] if shutil.which("setpriv") else []
_STAMP = re.compile(r"^(\d{4})-(\d\d)-(\d\d) (\d\d):(\d\d):(\d\d)\.(\d+)\+00:00$", re.M)


def hwclock(path: str, *args: str) -> str:
    """Run hwclock on the RTC at ``path`` (UTC, no adjtime file) and return its stdout."""
    proc = subprocess.run([*_NO_SYS_TIME, "hwclock", f"--rtc={path}", "--utc", "--noadjfile", *args],
                          capture_output=True, text=True, timeout=30, env={**os.environ, "TZ": "UTC", "LC_ALL": "C"})
    assert proc.returncode == 0, f"hwclock {args} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


def shown_time(output: str) -> float:
    """The seconds since 1970 that ``hwclock --show`` printed (``2031-02-03 04:05:06.123456+00:00``)."""
    m = _STAMP.search(output)
    assert m, f"no timestamp in hwclock output: {output!r}"
    y, mo, d, h, mi, s, frac = m.groups()
    return calendar.timegm((int(y), int(mo), int(d), int(h), int(mi), int(s))) + float("0." + frac)


@needs_hwclock
@on_a_mount
def test_hwclock_show_reads_the_offset_clock_after_an_update_interrupt(fusd_device: Serve) -> None:
    offset = -3 * 365 * 86400.0  # three years behind the host
    dev = fusd_device(Rtc(offset=offset), "rtc")
    clock = dev.device
    before = time.time()
    out = hwclock(dev.path, "--show", "--verbose")
    # hwclock reports the RTC time as of the moment it started (it subtracts the wait).
    assert abs(shown_time(out) - (before + offset)) < 2.5, out
    # It waited for the update interrupt (UIE on, select woke, UIE off), not a busy loop.
    assert "got clock tick" in out
    assert RTC_UF in clock.interrupts
    assert not clock.uie


@needs_hwclock
@on_a_mount
def test_hwclock_set_moves_only_the_rtc(fusd_device: Serve) -> None:
    dev = fusd_device(Rtc(), "rtc")
    clock = dev.device
    host_before = time.time()
    hwclock(dev.path, "--set", "--date", "2031-02-03 04:05:06")
    took = time.time() - host_before  # the RTC has been running for at most this long since it was set
    target = calendar.timegm((2031, 2, 3, 4, 5, 6))
    # hwclock sets the RTC at the right moment for "now = the date given" (to the second)
    assert target - 2 <= clock.now() <= target + took + 2, time.strftime("%c", time.gmtime(clock.now()))
    assert abs(time.time() - host_before) < 30 + took  # the host clock did not move with it (years, not seconds)
    before_show = clock.now()
    shown = shown_time(hwclock(dev.path, "--show"))
    assert before_show - 2 <= shown <= clock.now() + 2


@pytest.mark.fusd(backend="all", transport="fuse")
def test_update_interrupts_read_select_and_nonblocking(fusd_device: Serve) -> None:
    dev = fusd_device(Rtc(), "rtc")
    clock = dev.device
    fd = dev.open(os.O_RDONLY)
    try:
        nonblocking = dev.open(os.O_RDONLY | os.O_NONBLOCK)
        try:
            with pytest.raises(OSError) as exc:  # nothing enabled, nothing pending
                nonblocking.read(8)
            assert exc.value.errno == errno.EAGAIN
        finally:
            nonblocking.close()
        fd.ioctl(RTC_UIE_ON)
        assert fd.poll(select.POLLIN, 3) & select.POLLIN
        (word,) = struct.unpack("<Q", fd.read(8))
        assert word & 0xFF == RTC_UF | RTC_IRQF and word >> 8 >= 1
        (word,) = struct.unpack("<I", fd.read(4))  # blocks until the next tick; an unsigned int read
        assert word & RTC_UF
        tm = rtc_time.parse(fd.ioctl(RTC_RD_TIME, bytes(rtc_time.sizeof())))
        assert (time.gmtime(clock.now()).tm_sec - tm.tm_sec) % 60 <= 5  # the device's clock (no wall-time race)
        with pytest.raises(OSError) as exc:
            fd.read(2)
        assert exc.value.errno == errno.EINVAL
        fd.ioctl(RTC_UIE_OFF)
    finally:
        fd.close()
    assert not clock.uie


@pytest.mark.fusd(backend="all", transport="fuse")
def test_set_time_alarm_and_epoch_ioctls(fusd_device: Serve) -> None:
    dev = fusd_device(Rtc(), "rtc")
    clock = dev.device
    fd = dev.open(os.O_RDONLY)
    try:
        bad = rtc_time.build(dict(tm_sec=0, tm_min=0, tm_hour=0, tm_mday=31, tm_mon=1, tm_year=130,
                                  tm_wday=0, tm_yday=0, tm_isdst=0))  # February 31st
        with pytest.raises(OSError) as exc:
            fd.ioctl(RTC_SET_TIME, bad)
        assert exc.value.errno == errno.EINVAL
        good = rtc_time.build(dict(tm_sec=58, tm_min=59, tm_hour=23, tm_mday=31, tm_mon=11, tm_year=129,
                                   tm_wday=0, tm_yday=0, tm_isdst=0))  # 2029-12-31 23:59:58
        fd.ioctl(RTC_SET_TIME, good)
        tm = rtc_time.parse(fd.ioctl(RTC_RD_TIME, bytes(rtc_time.sizeof())))
        assert (tm.tm_year, tm.tm_mon, tm.tm_mday, tm.tm_hour, tm.tm_min) == (129, 11, 31, 23, 59)
        assert tm.tm_wday == 1 and tm.tm_yday == 364  # a Monday, the year's last day

        # A wake alarm two seconds ahead (across the new year): read() returns the alarm flag.
        alarm_at = calendar.timegm((2030, 1, 1, 0, 0, 0))
        t = time.gmtime(alarm_at)
        alarm = dict(enabled=1, pending=0, time=dict(tm_sec=t.tm_sec, tm_min=t.tm_min, tm_hour=t.tm_hour,
                                                       tm_mday=t.tm_mday, tm_mon=t.tm_mon - 1,
                                                       tm_year=t.tm_year - 1900, tm_wday=0, tm_yday=0, tm_isdst=0))
        fd.ioctl(RTC_WKALM_SET, rtc_wkalrm.build(alarm))
        (word,) = struct.unpack("<Q", fd.read(8))
        assert word & RTC_AF and clock.now() >= alarm_at
        got = rtc_wkalrm.parse(fd.ioctl(RTC_WKALM_RD, bytes(rtc_wkalrm.sizeof())))
        assert got.enabled == 1 and got.pending == 1 and got.time.tm_year == 130

        (epoch,) = struct.unpack("<Q", fd.ioctl(RTC_EPOCH_READ, bytes(8)))
        assert epoch == 1900
        # RTC_EPOCH_SET passes the value itself; the FUSE kernel reads _IOC_SIZE bytes "at" it: EFAULT.
        with pytest.raises(OSError) as exc:
            fd.ioctl(RTC_EPOCH_SET, 2000)
        assert exc.value.errno == errno.EFAULT
    finally:
        fd.close()
        clock.stop()


@needs_hwclock
@needs_fuse
def test_the_example_program_serves_hwclock(no_leftover_mounts: None) -> None:
    """``python examples/rtc.py --mountpoint DIR`` as a user would run it; Ctrl-C unmounts."""
    with tempfile.TemporaryDirectory() as mnt:
        proc = subprocess.Popen([sys.executable, os.path.join(ROOT, "examples", "rtc.py"), "--transport", "fuse",
                                 "--mountpoint", mnt, "--offset", "86400"], stderr=subprocess.PIPE, text=True)
        try:
            assert proc.stderr is not None
            assert "serving" in line_with(proc.stderr, "serving")  # after any log lines
            shown = shown_time(hwclock(os.path.join(mnt, "rtc"), "--show"))
            assert abs(shown - (time.time() + 86400)) < 3
        finally:
            proc.send_signal(signal.SIGINT)
            assert proc.wait(15) == 0
            proc.stderr.close()  # type: ignore[union-attr]
        assert not os.path.ismount(mnt)
