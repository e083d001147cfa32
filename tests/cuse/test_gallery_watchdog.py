"""Gallery, CUSE tier: the watchdog as a real character device, driven by ``wdctl``; SETOPTIONS works here.

On a real node ``wdctl`` first looks in sysfs (``/sys/dev/char/MAJ:MIN/identity``);
a CUSE device has no watchdog attributes there, so this also proves that it falls
back to the ioctls.  ``WDIOC_SETOPTIONS`` (numbered ``_IOR`` but taking its
argument in) needs the unrestricted ioctls only CUSE has: the device declares it
as an input and the runtime copies it in with a FUSE_IOCTL_RETRY round.
"""

from __future__ import annotations

import fcntl
import os
import re
import shutil
import struct
import subprocess

import pytest

from examples.watchdog import WDIOC_SETOPTIONS, WDIOS_DISABLECARD, WDIOS_ENABLECARD, Watchdog
from fusd_runtime.cuse import CuseServer

from .conftest import needs_cuse, unique_name, wait_for

pytestmark = [needs_cuse, pytest.mark.skipif(shutil.which("wdctl") is None, reason="needs util-linux wdctl")]


def wdctl(*args: str) -> str:
    proc = subprocess.run(["wdctl", *args], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "LC_ALL": "C"})
    assert proc.returncode == 0, f"wdctl {args} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


def test_wdctl_on_a_real_node_and_setoptions(cuse: CuseServer) -> None:
    name = unique_name("watchdog")
    dog = cuse.add(Watchdog(timeout=30, unrestricted=True), name)
    path = cuse.path(name)
    try:
        assert os.path.exists(path) and os.stat(path).st_rdev != 0  # a character device, not a file
        out = wdctl("-s", "9", path)
        assert "Timeout has been set to 9 seconds." in out
        assert "Identity:      fusd software watchdog [version 1]" in out
        assert re.search(r"Timeout:\s+9 seconds", out)
        assert wait_for(lambda: not dog.running and not dog.opens)  # disarmed with the magic 'V'

        fd = os.open(path, os.O_WRONLY)
        try:
            assert dog.running  # opening starts it
            fcntl.ioctl(fd, WDIOC_SETOPTIONS, struct.pack("<i", WDIOS_DISABLECARD))
            assert not dog.running
            fcntl.ioctl(fd, WDIOC_SETOPTIONS, struct.pack("<i", WDIOS_ENABLECARD))
            assert dog.running
            os.write(fd, b"V")
        finally:
            os.close(fd)
        assert wait_for(lambda: not dog.running)
        assert dog.events == []
    finally:
        dog.stop_monitor()
