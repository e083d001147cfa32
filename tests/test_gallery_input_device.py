"""Gallery: the evdev keyboard of ``examples/input_device.py`` driven by real input clients over FUSE.

Clients we did not write: python-evdev (``evdev.InputDevice``: identity, capabilities,
state, LEDs, repeat settings, ``read_loop`` over select) and Debian's ``evtest`` (device
description, blocking event loop, ``--query``).  Both run as separate processes: a
client in the server's own process would deadlock, because python-evdev keeps the GIL
while it is inside ``ioctl(2)``, which the server's threads must answer.  Served by the
test kit's ``fusd_device`` on a real FUSE mount (the clients open a path).
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from typing import Any, Callable, Iterator, Tuple

import pytest
from conftest import wait_for

import examples.input_device as gallery
from fusd_runtime.testing import ServedDevice

pytestmark = pytest.mark.fusd(backend="kernel", transport="fuse")


try:
    import evdev  # noqa: F401  (only to know whether the client is installed)
    HAVE_EVDEV = True
except ImportError:
    HAVE_EVDEV = False
needs_evdev = pytest.mark.skipif(not HAVE_EVDEV, reason="python-evdev is not installed (pip install evdev)")
needs_evtest = pytest.mark.skipif(shutil.which("evtest") is None,
                                  reason="evtest is not installed (apt-get install evtest)")




@pytest.fixture
def keyboard(fusd_device: Callable[..., ServedDevice]) -> Iterator[Tuple[Any, str]]:
    kb = gallery.VirtualKeyboard()
    yield kb, fusd_device(kb, "event0").path


def start_client(code: str, *args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(code), *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def finish(proc: subprocess.Popen, timeout: float = 30) -> str:
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        raise AssertionError(f"client hung:\n{out}\n{err}") from None
    assert proc.returncode == 0, f"client failed ({proc.returncode}):\n{out}\n{err}"
    return out


@needs_evdev
def test_python_evdev_sees_identity_capabilities_and_state(keyboard: Tuple[Any, str]) -> None:
    kb, path = keyboard
    kb.key_down(gallery.KEY_LEFTSHIFT)  # held before anyone opened: state ioctls must show it
    out = finish(start_client("""
        import json, sys, evdev
        from evdev import ecodes as e
        d = evdev.InputDevice(sys.argv[1])
        caps = d.capabilities()
        before = dict(leds=d.leds(), keys=d.active_keys(), repeat=list(d.repeat))
        d.set_led(e.LED_CAPSL, 1)                    # a write(2) of EV_LED + SYN_REPORT records
        d.set_led(e.LED_NUML, 1)
        d.repeat = (500, 40)                         # EVIOCSREP
        echoed = [(ev.type, ev.code, ev.value) for ev in d.read()]  # the LED changes come back as events
        print(json.dumps(dict(name=d.name, phys=d.phys, uniq=d.uniq, info=list(d.info), version=d.version,
                              caps={str(k): v for k, v in caps.items()}, props=d.input_props(),
                              effects=d.ff_effects_count, before=before, echoed=echoed,
                              after=dict(leds=sorted(d.leds()), repeat=list(d.repeat)),
                              names=[e.KEY_A, e.KEY_ENTER, e.KEY_F12, e.KEY_LEFTSHIFT, e.EV_LED, e.EV_REP])))
        d.close()
    """, path))
    got = json.loads(out)
    assert got["name"] == "fusd virtual keyboard" and got["phys"] == "fusd/input0"
    assert got["uniq"] == ""  # EVIOCGUNIQ answered ENOENT, which python-evdev treats as "none"
    assert got["info"] == [gallery.BUS_VIRTUAL, 0x1D6B, 0x0104, 0x0001]
    assert got["version"] == 0x010001
    # the client's own key table agrees with the emulated keyboard's codes
    key_a, key_enter, key_f12, key_lshift, ev_led, ev_rep = got["names"]
    assert (key_a, key_enter, key_f12, key_lshift) == (gallery.KEYMAP["a"][0], gallery.KEY_ENTER, gallery.KEY_F12,
                                                       gallery.KEY_LEFTSHIFT)
    caps = got["caps"]
    assert sorted(caps[str(gallery.EV_KEY)]) == gallery.KEYS and key_a in caps[str(gallery.EV_KEY)]
    assert caps[str(ev_led)] == [0, 1, 2]
    # EV_SYN's entry lists the event types (EVIOCGBIT(0)): EV_REP is one, its settings come from EVIOCGREP
    assert caps["0"] == [gallery.EV_SYN, gallery.EV_KEY, ev_led, ev_rep]
    assert got["props"] == [] and got["effects"] == 0
    assert got["before"] == dict(leds=[], keys=[gallery.KEY_LEFTSHIFT], repeat=[250, 33])
    assert got["echoed"] == [[ev_led, 1, 1], [0, 0, 0], [ev_led, 0, 1], [0, 0, 0]]
    assert got["after"] == dict(leds=[0, 1], repeat=[500, 40])
    assert kb.leds_on == {0, 1} and kb.repeat == [500, 40]  # what the client wrote reached the device


@needs_evdev
def test_python_evdev_read_loop_gets_typed_keys(keyboard: Tuple[Any, str]) -> None:
    kb, path = keyboard
    proc = start_client("""
        import errno, json, os, sys, evdev
        from evdev import ecodes as e
        d = evdev.InputDevice(sys.argv[1])
        assert d.read_one() is None                  # O_NONBLOCK and nothing queued: EAGAIN
        try:
            os.read(d.fd, 10)                        # smaller than one struct input_event
        except OSError as exc:
            assert exc.errno == errno.EINVAL, exc
        events = []
        for ev in d.read_loop():                     # select() sleeps until the device's poll wakeup
            events.append([ev.type, ev.code, ev.value, ev.timestamp()])
            if (ev.type, ev.code, ev.value) == (e.EV_KEY, e.KEY_ENTER, 0):
                break
        print(json.dumps(events))
    """, path)
    assert wait_for(lambda: kb.open_count == 1)
    time.sleep(0.2)  # most likely asleep in select() now; events queued earlier are read just the same
    t0 = time.time()
    kb.type_text("Hi\n")
    events = json.loads(finish(proc))
    got = [tuple(ev[:3]) for ev in events]
    key, syn, shift = gallery.EV_KEY, (gallery.EV_SYN, gallery.SYN_REPORT, 0), gallery.KEY_LEFTSHIFT
    h, i, enter = gallery.KEYMAP["H"][0], gallery.KEYMAP["i"][0], gallery.KEY_ENTER
    expected = []
    for code, value in [(shift, 1), (h, 1), (h, 0), (shift, 0), (i, 1), (i, 0), (enter, 1), (enter, 0)]:
        expected += [(key, code, value), syn]
    assert got == expected[:-1]  # the loop stops at the ENTER release, before its SYN_REPORT
    assert all(t0 - 1 <= ev[3] <= time.time() + 1 for ev in events)  # stamped with the wall clock


@needs_evtest
def test_evtest_describes_the_keyboard_and_prints_events(keyboard: Tuple[Any, str]) -> None:
    kb, path = keyboard
    proc = subprocess.Popen(["evtest", path], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert wait_for(lambda: kb.open_count == 1), "evtest did not open the device"
        kb.type_text("ab")
        # evtest sleeps in select() and then read(2)s whole records; once its queue is empty it has them all
        assert wait_for(lambda: all(not c.queue for c in kb.clients.values())), "evtest did not read the events"
        time.sleep(0.2)
    finally:
        proc.send_signal(signal.SIGINT)  # evtest's way out: Ctrl-C
        try:
            out = proc.communicate(timeout=15)[0]
        except subprocess.TimeoutExpired:
            proc.kill()
            out = proc.communicate()[0]
    assert proc.returncode in (0, -signal.SIGINT), out  # evtest 1.35 dies of the SIGINT it asked for
    assert "Input driver version is 1.0.1" in out
    assert "Input device ID: bus 0x6 vendor 0x1d6b product 0x104 version 0x1" in out
    assert 'Input device name: "fusd virtual keyboard"' in out
    assert "Event type 1 (EV_KEY)" in out and "Event code 30 (KEY_A)" in out and "Event code 88 (KEY_F12)" in out
    assert "Event type 17 (EV_LED)" in out and "Event code 1 (LED_CAPSL)" in out
    assert "Repeat code 0 (REP_DELAY)" in out and "Value    250" in out
    for code, name in [(30, "KEY_A"), (48, "KEY_B")]:
        for value in (1, 0):
            assert f"type 1 (EV_KEY), code {code} ({name}), value {value}" in out, out
    assert out.count("-------------- SYN_REPORT ------------") == 4, out


@needs_evtest
def test_evtest_query_reads_key_and_led_state(keyboard: Tuple[Any, str]) -> None:
    kb, path = keyboard

    def query(*what: str) -> int:
        return subprocess.run(["evtest", "--query", path, *what], capture_output=True, timeout=15).returncode

    assert query("EV_KEY", "KEY_LEFTCTRL") == 0  # up: exit status 0 (EVIOCGKEY)
    kb.key_down(gallery.KEY_LEFTCTRL)
    assert query("EV_KEY", "KEY_LEFTCTRL") == 10  # down: exit status 10
    assert query("EV_LED", "LED_SCROLLL") == 0  # EVIOCGLED
    kb.leds_on.add(gallery.LED_SCROLLL)
    assert query("EV_LED", "LED_SCROLLL") == 10
