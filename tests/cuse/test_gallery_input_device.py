"""Gallery, CUSE tier: the evdev keyboard as a real character device; EVIOCGRAB works here.

python-evdev's ``grab()`` is ``ioctl(fd, EVIOCGRAB, 1)``: the int is the argument
itself.  Over FUSE the kernel tries to copy 4 bytes from address 1 (EFAULT); over
CUSE the device gets the value (``ctx.ioctl_arg``) and the grab behaves as evdev's:
a second grab is EBUSY and only the grabbing file gets events.  The same client
also does a blocking ``read(2)`` (a deferred reply) that a key press wakes, and the
sized evdev ioctls go through the unrestricted path (copied by ``_IOC_SIZE``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import threading

import pytest

from examples.input_device import VirtualKeyboard
from fusd_runtime.cuse import CuseServer

from .conftest import needs_cuse, unique_name, wait_for

try:
    import evdev
    EVDEV_PATH = os.path.dirname(os.path.dirname(os.path.abspath(evdev.__file__)))
except ImportError:
    EVDEV_PATH = ""

pytestmark = [needs_cuse,
              pytest.mark.skipif(not EVDEV_PATH, reason="python-evdev is not installed (pip install evdev)")]

CLIENT = r"""
import errno, json, os, struct, sys
import evdev
from evdev import ecodes as e

r = {}
a, b = evdev.InputDevice(sys.argv[1]), evdev.InputDevice(sys.argv[1])
r["name"], r["info"] = a.name, list(a.info)
a.grab()  # EVIOCGRAB 1: the test types "x" once it sees the grab
try:
    b.grab()
    r["second_grab"] = "ok"
except OSError as exc:
    r["second_grab"] = errno.errorcode[exc.errno]
events = []
for ev in a.read_loop():
    events.append([ev.type, ev.code, ev.value])
    if (ev.code, ev.value) == (e.KEY_X, 0):
        break
r["grabbed_events"] = events
r["other_got"] = b.read_one() is not None  # nothing reached the other file while grabbed
a.ungrab()  # EVIOCGRAB 0
fd = os.open(sys.argv[1], os.O_RDONLY)  # blocking: read(2) waits (a deferred reply) until "y" is typed
data = os.read(fd, 24 * 2)
r["blocking_read"] = [list(struct.unpack("llHHi", data[i:i + 24])[2:]) for i in range(0, len(data), 24)]
r["other_after_ungrab"] = b.read_one() is not None
os.close(fd)
a.close()
b.close()
print(json.dumps(r))
"""


def test_python_evdev_grab_and_blocking_read_on_a_real_node(cuse: CuseServer) -> None:
    name = unique_name("event")
    kb = VirtualKeyboard()
    cuse.add(kb, name)

    def typist() -> None:
        if wait_for(lambda: kb.grabbed_by is not None, timeout=60):
            kb.type_text("x")
        if wait_for(lambda: kb.grabbed_by is None and any(c.waiting for c in list(kb.clients.values())),
                    timeout=60):
            kb.type_text("y")

    thread = threading.Thread(target=typist, daemon=True)
    thread.start()
    try:
        proc = subprocess.run([sys.executable, "-S", "-c", textwrap.dedent(CLIENT), cuse.path(name)],
                              capture_output=True, text=True, timeout=90,
                              env={**os.environ, "PYTHONPATH": EVDEV_PATH})
        assert proc.returncode == 0, f"{proc.stdout}\n{proc.stderr}"
        r = json.loads(proc.stdout)
    finally:
        thread.join(timeout=10)
        cuse.remove(name)
    assert r["name"] == "fusd virtual keyboard" and r["info"][0] == 0x06
    assert r["second_grab"] == "EBUSY"
    x = 45  # KEY_X
    assert r["grabbed_events"] == [[1, x, 1], [0, 0, 0], [1, x, 0]]
    assert r["other_got"] is False
    assert r["blocking_read"] == [[1, 21, 1], [0, 0, 0]]  # KEY_Y down + SYN_REPORT: the two records asked for
    assert r["other_after_ungrab"] is True
    assert kb.grabbed_by is None and not kb.clients  # every file released
