"""Gallery, CUSE tier: the Hayes modem of ``examples/serial_modem.py`` driven by pyserial.

pyserial (a client we did not write) opens the node as a serial port: TCGETS/TCSETS
for 8N1 raw mode at 115200, TIOCMBIS/TIOCMBIC for DTR and RTS, TCFLSH; then AT
commands go out with ``write`` and answers come back with ``readline`` (select with
a timeout, then 1-byte reads); ``in_waiting`` is FIONREAD, the modem lines are
TIOCMGET, a baud-rate change is TCSETS again (and TCGETS2/TCSETS2 for a rate termios
has no constant for), ``send_break`` is TCSBRKP, ``break_condition`` TIOCSBRK/TIOCCBRK.
Every tty number encodes no size, so this only works with CUSE's unrestricted ioctls.
One client process runs the whole conversation (interpreters start slowly in the guest).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import threading

import pytest

from examples.serial_modem import HayesModem
from fusd_runtime.cuse import CuseServer

from .conftest import needs_cuse, unique_name, wait_for

try:
    import serial
    SERIAL_PATH = os.path.dirname(os.path.dirname(os.path.abspath(serial.__file__)))
except ImportError:
    SERIAL_PATH = ""

pytestmark = [needs_cuse,
              pytest.mark.skipif(not SERIAL_PATH, reason="pyserial is not installed (pip install pyserial)")]

CONVERSATION = r"""
import errno, fcntl, json, os, sys, termios, time
import serial

FINAL = (b"OK", b"ERROR", b"BUSY", b"NO CARRIER", b"NO DIALTONE")

def command(s, text):
    # what modem software does: send a line, collect response lines up to a final result code
    s.write(text.encode() + b"\r")
    lines = []
    while True:
        line = s.readline()
        if not line:
            raise SystemExit(f"timeout after {text!r}: {lines}")
        line = line.strip()
        if line:
            lines.append(line.decode())
            if line in FINAL or line.startswith(b"CONNECT"):
                return lines

r = {}
s = serial.Serial(sys.argv[1], 115200, timeout=5)
r["echoed"] = [s.readline().decode() for _ in range(2)] if s.write(b"AT\r") else None  # echo is on at first
r["ate0"] = command(s, "ATE0")
attr = termios.tcgetattr(s.fd)
r["termios"] = dict(b115200=attr[5] == termios.B115200, raw=not attr[3] & (termios.ICANON | termios.ECHO),
                   cs8=attr[2] & termios.CSIZE == termios.CS8)
r["lines"] = dict(cts=s.cts, dsr=s.dsr, ri=s.ri, cd=s.cd)
r["ati"] = command(s, "ATI")
r["csq"] = command(s, "AT+CSQ")
r["multi"] = command(s, "AT+CGMI;+CGMM")
r["bad"] = command(s, "AT+NOPE")

s.write(b"AT\r")
deadline = time.monotonic() + 10
while s.in_waiting < 6 and time.monotonic() < deadline:  # FIONREAD
    time.sleep(0.01)
r["in_waiting"] = s.in_waiting
r["ok_bytes"] = s.read(6).decode()
r["out_waiting"] = s.out_waiting  # TIOCOUTQ

s.baudrate = 9600  # TCSETS with B9600
r["ospeed_9600"] = termios.tcgetattr(s.fd)[5] == termios.B9600
r["dial"] = command(s, "ATD123")
r["cd_online"] = s.cd
s.write(b"hello")
r["far_echo"] = s.read(5).decode()
s.write(b"+++")
r["escape"] = [s.read(3).decode()] + [ln.decode().strip() for ln in (s.readline(), s.readline())]
r["hangup"] = command(s, "ATH")
r["cd_hung_up"] = s.cd

s.baudrate = 250000  # no B250000: BOTHER with TCGETS2/TCSETS2
r["dial_custom"] = command(s, "ATDT 555-1234")
s.dtr = False  # TIOCMBIC: &D2 hangs up
r["dtr_drop"] = s.readline().decode().strip() or s.readline().decode().strip()
r["cd_after_dtr"] = s.cd
s.dtr = True
r["rts_off_cts"] = (setattr(s, "rts", False), s.cts)[1]
r["rts_on_cts"] = (setattr(s, "rts", True), s.cts)[1]

s.timeout = 0.5  # a readline that times out: select() with a timeout, nothing arrives
t0 = time.monotonic()
r["timeout_read"] = s.readline().decode()
r["timeout_waited"] = time.monotonic() - t0 >= 0.45

s.write(b"ATI\r")
while not s.in_waiting and time.monotonic() < deadline + 10:
    time.sleep(0.01)
s.reset_input_buffer()  # TCFLSH TCIFLUSH
r["after_flush"] = s.in_waiting
s.flush()  # tcdrain: TCSBRK 1
s.send_break(0.25)  # tcsendbreak(fd, 1): TCSBRKP
s.break_condition = True  # TIOCSBRK
s.break_condition = False  # TIOCCBRK

fcntl.ioctl(s.fd, termios.TIOCEXCL)
try:
    os.close(os.open(sys.argv[1], os.O_RDWR | os.O_NONBLOCK))
    r["excl"] = "opened"
except OSError as exc:
    r["excl"] = errno.errorcode[exc.errno]
fcntl.ioctl(s.fd, termios.TIOCNXCL)
os.close(os.open(sys.argv[1], os.O_RDWR | os.O_NONBLOCK))

s.timeout = 30
r["s0"] = command(s, "ATS0=2")  # answer on the second ring: the test rings now
ring = [s.readline().decode().strip() for _ in range(2)]
r["ri"] = s.ri  # TIOCMGET while ringing
r["s0_1"] = command(s, "ATS0=1")  # the test's cue to ring again
ring += [s.readline().decode().strip() for _ in range(4)]
r["ring"] = [x for x in ring if x]
r["cd_answered"] = s.cd
s.close()
print(json.dumps(r))
"""


def test_pyserial_talks_to_the_modem(cuse: CuseServer) -> None:
    name = unique_name("ttyS")
    modem = HayesModem()
    cuse.add(modem, name)
    path = cuse.path(name)

    def ring_when_asked() -> None:  # the phone rings once the client has set S0=2, and again at S0=1
        if wait_for(lambda: modem.auto_answer == 2, timeout=80):
            modem.ring()
            if wait_for(lambda: modem.auto_answer == 1, timeout=60):
                modem.ring()

    ringer = threading.Thread(target=ring_when_asked, daemon=True)
    ringer.start()
    try:
        proc = subprocess.run([sys.executable, "-S", "-c", textwrap.dedent(CONVERSATION), path],
                              capture_output=True, text=True, timeout=90,
                              env={**os.environ, "PYTHONPATH": SERIAL_PATH})
        assert proc.returncode == 0, f"{proc.stdout}\n{proc.stderr}"
        r = json.loads(proc.stdout)
    finally:
        ringer.join(timeout=10)
        cuse.remove(name)

    assert r["echoed"] == ["AT\r\r\n", "OK\r\n"]  # echo first, then the answer
    assert r["ate0"] == ["ATE0", "OK"]  # the command itself was still echoed
    assert r["termios"] == dict(b115200=True, raw=True, cs8=True)  # what pyserial set, read back
    assert r["lines"] == dict(cts=True, dsr=True, ri=False, cd=False)  # DTR/RTS up (TIOCMBIS), modem ready
    assert r["ati"] == ["FUSD Hayes-compatible 56k (emulated)", "OK"]
    assert r["csq"] == ["+CSQ: 24,99", "OK"]
    assert r["multi"] == ["FUSD", "Hayes-compatible 56k (emulated)", "OK"]
    assert r["bad"] == ["ERROR"]
    assert r["in_waiting"] == 6 and r["ok_bytes"] == "\r\nOK\r\n" and r["out_waiting"] == 0
    assert r["ospeed_9600"] is True
    assert r["dial"] == ["CONNECT 9600"]  # the modem saw the new line speed
    assert r["cd_online"] is True and r["far_echo"] == "hello"
    assert r["escape"] == ["+++", "", "OK"]
    assert r["hangup"] == ["OK"] and r["cd_hung_up"] is False
    assert r["dial_custom"] == ["CONNECT 250000"]  # TCSETS2 with BOTHER and c_ospeed
    assert r["dtr_drop"] == "NO CARRIER" and r["cd_after_dtr"] is False
    assert r["rts_off_cts"] is False and r["rts_on_cts"] is True
    assert r["timeout_read"] == "" and r["timeout_waited"] is True
    assert r["after_flush"] == 0
    assert r["excl"] == "EBUSY"
    assert r["s0"] == ["OK"] and r["s0_1"] == ["OK"]
    assert r["ri"] is True
    assert r["ring"] == ["RING", "RING", "CONNECT 250000"] and r["cd_answered"] is True

    # what the device saw
    assert modem.dialed == ["123", "5551234"]
    assert bytes(modem.sent) == b"hello+++"
    assert modem.breaks == 2  # send_break and break_condition (tcdrain is not a break)
    assert modem.baud == 250000
    assert not modem.connected  # the last close dropped DTR (HUPCL): on hook again
