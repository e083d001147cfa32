"""Gallery, CUSE tier: the RTC as a real character device, read by ``hwclock``; RTC_EPOCH_SET works here.

``RTC_EPOCH_SET`` passes the epoch as the ioctl argument itself; over FUSE the
kernel tries to copy from that "address" (EFAULT), over CUSE the device sees
the raw argument (``ctx.ioctl_arg``).  hwclock runs without CAP_SYS_TIME.
"""

from __future__ import annotations

import calendar
import fcntl
import os
import re
import shutil
import struct
import subprocess
import time

import pytest

from examples.rtc import RTC_EPOCH_READ, RTC_EPOCH_SET, Rtc
from fusd_runtime.cuse import CuseServer

from .conftest import needs_cuse, unique_name

pytestmark = [needs_cuse, pytest.mark.skipif(shutil.which("hwclock") is None, reason="needs util-linux hwclock")]
_NO_SYS_TIME = ["setpriv", "--bounding-set=-sys_time"] if shutil.which("setpriv") else []


def test_hwclock_reads_a_real_rtc_node_and_epoch_set_works(cuse: CuseServer) -> None:
    name = unique_name("rtc")
    clock = cuse.add(Rtc(offset=7 * 86400), name)
    path = cuse.path(name)
    try:
        assert os.stat(path).st_rdev != 0
        before = time.time()
        proc = subprocess.run([*_NO_SYS_TIME, "hwclock", f"--rtc={path}", "--show", "--utc", "--noadjfile"],
                              capture_output=True, text=True, timeout=120, env={**os.environ, "TZ": "UTC"})
        assert proc.returncode == 0, proc.stderr
        m = re.search(r"(\d{4})-(\d\d)-(\d\d) (\d\d):(\d\d):(\d\d)", proc.stdout)
        assert m, proc.stdout
        shown = calendar.timegm(tuple(int(g) for g in m.groups()))  # type: ignore[arg-type]
        assert abs(shown - (before + 7 * 86400)) < 5  # the guest is slow: generous
        fd = os.open(path, os.O_RDONLY)
        try:
            fcntl.ioctl(fd, RTC_EPOCH_SET, 2000)
            assert struct.unpack("<Q", fcntl.ioctl(fd, RTC_EPOCH_READ, bytes(8)))[0] == 2000
        finally:
            os.close(fd)
    finally:
        clock.stop()
