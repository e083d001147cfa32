"""Gallery: the watchdog (examples/watchdog.py) driven by util-linux ``wdctl`` and the shell, over FUSE.

``wdctl`` finds no watchdog in sysfs for a file in the FUSE directory and falls
back to the ioctls (GETSUPPORT, GETSTATUS, GETBOOTSTATUS, GETTIMEOUT,
GETPRETIMEOUT, GETTIMELEFT, SETTIMEOUT), then disarms the dog with the magic
'V' as it must.  Keepalives come from ``echo -n x > PATH`` in bash; the expiry
("the machine would reset") shows up in wdctl's boot status afterwards.

Served by the test kit's ``fusd_device``: the wdctl and shell tests on a real FUSE
mount, the ioctl test on every backend (the loopback kernel too).
"""

from __future__ import annotations

import errno
import os
import re
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time
from typing import Callable, Dict, Iterator, List

import pytest
from conftest import ROOT, line_with, needs_fuse, wait_for

from examples.watchdog import (
    WDIOC_GETSTATUS,
    WDIOC_GETTIMELEFT,
    WDIOC_KEEPALIVE,
    WDIOC_SETOPTIONS,
    WDIOC_SETPRETIMEOUT,
    WDIOC_SETTIMEOUT,
    WDIOF_KEEPALIVEPING,
    WDIOS_DISABLECARD,
    Watchdog,
)
from fusd_runtime.testing import ServedDevice

pytestmark = pytest.mark.fusd(transport="fuse")
needs_wdctl = pytest.mark.skipif(shutil.which("wdctl") is None,
                                 reason="needs util-linux wdctl (the client that drives the watchdog)")
on_a_mount = pytest.mark.fusd(backend="kernel", transport="fuse")  # wdctl and bash open a path
Serve = Callable[..., ServedDevice]


def wdctl(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(["wdctl", *args], capture_output=True, text=True, timeout=30,
                          env={**os.environ, "LC_ALL": "C"})
    if check:
        assert proc.returncode == 0, f"wdctl {args} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
    return proc


def oneline(path: str) -> Dict[str, str]:
    """``wdctl --oneline PATH`` as a dict: ``{"TIMEOUT": "30", "CARDRESET_BOOT": "0", ...}``."""
    out = wdctl("--oneline", path).stdout
    return dict(re.findall(r'(\w+)="([^"]*)"', out))


def feed(path: str, times: int, every: float) -> None:
    """Keepalives the way a shell script sends them: ``echo -n x > PATH`` (no 'V': the dog keeps running)."""
    subprocess.run(["bash", "-c", f'for i in $(seq {times}); do echo -n x > "$1"; sleep {every}; done', "bash", path],
                   check=True, timeout=60)




@pytest.fixture
def add_dog(fusd_device: Serve) -> Iterator[Callable[[Watchdog], ServedDevice]]:
    """Serve a Watchdog for the test; its monitor thread is ended afterwards."""
    dogs: List[Watchdog] = []

    def add(dog: Watchdog) -> ServedDevice:
        dogs.append(dog)
        return fusd_device(dog, "watchdog")
    yield add
    for dog in dogs:
        dog.stop_monitor()


@needs_wdctl
@on_a_mount
def test_wdctl_shows_identity_timeouts_and_flags_then_disarms(add_dog: Callable[[Watchdog], ServedDevice]) -> None:
    dog = Watchdog(timeout=30)
    path = add_dog(dog).path
    out = wdctl(path).stdout
    assert "Identity:      fusd software watchdog [version 1]" in out
    assert re.search(r"Timeout:\s+30 seconds", out) and re.search(r"Timeleft:\s+30 seconds", out)
    for flag in ("CARDRESET", "KEEPALIVEPING", "MAGICCLOSE", "PRETIMEOUT", "SETTIMEOUT"):
        assert re.search(rf"^{flag}\s", out, re.M), flag
    # wdctl opened it (which starts the timer), wrote the magic 'V' and closed: the dog is stopped.
    assert wait_for(lambda: not dog.running and not dog.opens, 5)
    assert dog.keepalives >= 1 and dog.events == []


@needs_wdctl
@on_a_mount
def test_wdctl_sets_the_timeout_and_gets_einval_out_of_range(add_dog: Callable[[Watchdog], ServedDevice]) -> None:
    dog = Watchdog(timeout=30)
    path = add_dog(dog).path
    assert "Timeout has been set to 5 seconds." in wdctl("-s", "5", path).stdout
    assert dog.timeout == 5 and oneline(path)["TIMEOUT"] == "5"
    bad = wdctl("-s", "99999", path, check=False)
    assert bad.returncode != 0 and "cannot set timeout" in bad.stderr
    assert dog.timeout == 5


@needs_wdctl
@on_a_mount
def test_shell_keepalives_hold_it_off_and_it_fires_when_they_stop(add_dog: Callable[[Watchdog], ServedDevice]) -> None:
    dog = Watchdog(timeout=30)
    path = add_dog(dog).path
    wdctl("-s", "2", path)
    feed(path, times=8, every=0.5)  # 4 s of keepalives against a 2 s timeout
    assert dog.events == [] and dog.running  # closed without 'V': still armed
    fed_at = time.monotonic()
    assert wait_for(lambda: any(kind == "expired" for kind, _ in dog.events), 5)
    assert time.monotonic() - fed_at >= 1.0  # it waited (about) the timeout after the last keepalive
    # The "reset" is in the boot status now, as wdctl reports it.
    info = oneline(path)
    assert info["CARDRESET_BOOT"] == "1" and info["CARDRESET"] == "0"


@on_a_mount
def test_magic_close_from_the_shell_stops_it(add_dog: Callable[[Watchdog], ServedDevice]) -> None:
    dog = Watchdog(timeout=1)
    path = add_dog(dog).path
    subprocess.run(["bash", "-c", 'echo -n x > "$1"; echo V > "$1"', "bash", path], check=True, timeout=30)
    assert wait_for(lambda: not dog.running, 5)
    time.sleep(1.5)
    assert dog.events == []


@pytest.mark.fusd(backend="all", transport="fuse")
def test_ioctls_status_keepalive_pretimeout_and_fuse_limits(add_dog: Callable[[Watchdog], ServedDevice]) -> None:
    dog = Watchdog(timeout=30)
    fd = add_dog(dog).open(os.O_WRONLY)
    try:
        fd.write(b"x")
        (status,) = struct.unpack("<i", fd.ioctl(WDIOC_GETSTATUS, bytes(4)))
        assert status & WDIOF_KEEPALIVEPING
        (status,) = struct.unpack("<i", fd.ioctl(WDIOC_GETSTATUS, bytes(4)))
        assert not status & WDIOF_KEEPALIVEPING  # reported once per keepalive
        with pytest.raises(OSError) as exc:
            fd.ioctl(WDIOC_SETTIMEOUT, struct.pack("<i", 0))
        assert exc.value.errno == errno.EINVAL
        (timeout,) = struct.unpack("<i", fd.ioctl(WDIOC_SETTIMEOUT, struct.pack("<i", 3)))
        assert timeout == 3
        time.sleep(1.2)
        (left,) = struct.unpack("<i", fd.ioctl(WDIOC_GETTIMELEFT, bytes(4)))
        assert left in (1, 2)  # 1.8 s left, rounded (the sleep may overshoot)
        fd.ioctl(WDIOC_KEEPALIVE, bytes(4))
        (left,) = struct.unpack("<i", fd.ioctl(WDIOC_GETTIMELEFT, bytes(4)))
        assert left == 3
        # SETOPTIONS is _IOR but takes its argument in: the FUSE kernel never copies it, so EINVAL here.
        with pytest.raises(OSError) as exc:
            fd.ioctl(WDIOC_SETOPTIONS, struct.pack("<i", WDIOS_DISABLECARD))
        assert exc.value.errno == errno.EINVAL
        fd.ioctl(WDIOC_SETPRETIMEOUT, struct.pack("<i", 2))  # fires 1 s from the last keepalive
        assert wait_for(lambda: [kind for kind, _ in dog.events] == ["pretimeout", "expired"], 6), dog.events
        pre, expired = (when for _, when in dog.events)
        assert expired > pre  # the pre-timeout came first (no wall-time bound: CI machines are loaded)
    finally:
        fd.close()


@needs_wdctl
@needs_fuse
def test_the_example_program_serves_wdctl(no_leftover_mounts: None) -> None:
    """``python examples/watchdog.py --mountpoint DIR`` as a user would run it; Ctrl-C unmounts."""
    with tempfile.TemporaryDirectory() as mnt:
        proc = subprocess.Popen([sys.executable, os.path.join(ROOT, "examples", "watchdog.py"), "--transport",
                                 "fuse", "--mountpoint", mnt, "--timeout", "42"], stderr=subprocess.PIPE, text=True)
        try:
            assert proc.stderr is not None
            assert "serving" in line_with(proc.stderr, "serving")  # after any log lines
            info = oneline(os.path.join(mnt, "watchdog"))
            assert info["IDENTITY"] == "fusd software watchdog" and info["TIMEOUT"] == "42"
        finally:
            proc.send_signal(signal.SIGINT)
            assert proc.wait(15) == 0
            proc.stderr.close()  # type: ignore[union-attr]
        assert not os.path.ismount(mnt)
