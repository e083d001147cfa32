"""The GPS receiver (examples/gps.py, an ``async def`` device paced with asyncio.sleep), read by gpsd.

gpsd is Debian's GPS daemon: it opens the device like a serial port, finds the
NMEA driver by itself and reports fixes to ``gpspipe``.  The Python clients check
what gpsd relies on: whole checksummed sentences, a listener per open file,
EAGAIN while no fix is due, a poll that wakes when one is, and a signal that
cancels a waiting read.
"""

from __future__ import annotations

import json
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import textwrap

import pytest
from conftest import needs_fuse, wait_for

from examples.gps import Gps, nmea
from fusd_runtime import Server

pytestmark = needs_fuse


def _sentences(data: bytes) -> list:
    return [line for line in data.split(b"\r\n") if line]


def _checksum_ok(sentence: bytes) -> bool:
    body, _, cs = sentence[1:].partition(b"*")
    x = 0
    for ch in body:
        x ^= ch
    return sentence.startswith(b"$") and int(cs, 16) == x


def test_nmea_checksum_is_the_xor_of_the_body() -> None:
    # the classic example sentence from the NMEA 0183 literature: checksum 47
    assert nmea("GPGGA,123519,4807.038,N,01131.000,E,1,08,0.9,545.4,M,46.9,M,,") == \
        b"$GPGGA,123519,4807.038,N,01131.000,E,1,08,0.9,545.4,M,46.9,M,,*47\r\n"


def test_each_open_file_is_a_paced_listener(server: Server) -> None:
    gps = server.add(Gps(period=0.05), "gps")
    a, b = (os.open(server.path("gps"), os.O_RDONLY) for _ in range(2))
    try:
        first = os.read(a, 4096) + os.read(a, 4096)
        lines = _sentences(first)
        assert [line[:6] for line in lines] == [b"$GPGGA", b"$GPRMC", b"$GPGGA", b"$GPRMC"]
        assert all(_checksum_ok(line) for line in lines)
        assert _sentences(os.read(b, 4096))[0].startswith(b"$GPGGA")  # b has its own stream
        assert gps.fixes == 3
    finally:
        os.close(a)
        os.close(b)


def test_nonblocking_reads_and_poll_follow_the_pace(server: Server) -> None:
    server.add(Gps(period=0.3), "gps")
    fd = os.open(server.path("gps"), os.O_RDONLY | os.O_NONBLOCK)
    try:
        assert os.read(fd, 4096).startswith(b"$GPGGA")  # the first fix is due at once
        with pytest.raises(BlockingIOError):
            os.read(fd, 4096)  # the next is 0.3 s away
        p = select.poll()
        p.register(fd, select.POLLIN)
        assert p.poll(0) == []
        assert p.poll(10000) == [(fd, select.POLLIN)]  # woken when it is due
        assert os.read(fd, 4096).startswith(b"$GPGGA")
    finally:
        os.close(fd)


def test_a_signal_cancels_a_waiting_read(server: Server) -> None:
    server.add(Gps(period=60), "gps")
    proc = subprocess.Popen([sys.executable, "-c", textwrap.dedent("""
        import os, signal, sys
        class Stop(Exception):
            pass
        def handler(*a):
            raise Stop()
        signal.signal(signal.SIGUSR1, handler)
        fd = os.open(sys.argv[1], os.O_RDONLY)
        os.read(fd, 4096)  # the first fix
        print("waiting", flush=True)
        try:
            os.read(fd, 4096)  # the next one is a minute away
        except Stop:
            print("interrupted")
    """), server.path("gps")], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "waiting"
    assert wait_for(lambda: len(server.session.deferred) == 1)  # type: ignore[union-attr]
    proc.send_signal(signal.SIGUSR1)
    assert proc.communicate(timeout=20)[0].strip() == "interrupted"
    assert wait_for(lambda: not server.session.deferred)  # type: ignore[union-attr]


def _listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


@pytest.mark.skipif(not (shutil.which("gpsd") and shutil.which("gpspipe")),
                    reason="needs gpsd and gpspipe (Debian gpsd, gpsd-clients: system-packages.txt)")
def test_gpsd_reads_fixes_from_the_device(server: Server, tmp_path) -> None:
    server.add(Gps(period=0.1), "gps")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    gpsd = subprocess.Popen(["gpsd", "-N", "-n", "-b", "-S", str(port), "-F", str(tmp_path / "control"),
                             server.path("gps")], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        assert wait_for(lambda: _listening(port), 30), gpsd.stderr  # gpsd is up before gpspipe asks it
        out = subprocess.run(["gpspipe", "-w", "-n", "12", f"127.0.0.1:{port}"], capture_output=True, text=True,
                             timeout=60).stdout
    finally:
        gpsd.terminate()
        gpsd.wait(20)
    fixes = [m for m in map(json.loads, out.splitlines()) if m.get("class") == "TPV" and m.get("mode") == 3]
    assert len(fixes) >= 3, out
    assert all(f["device"] == server.path("gps") and abs(f["lat"]) < 1e-6 for f in fixes)
    assert [f["lon"] for f in fixes] == sorted(f["lon"] for f in fixes) and fixes[-1]["lon"] > fixes[0]["lon"]
