"""A GPS receiver on a serial line: one NMEA fix per second, paced with ``asyncio.sleep``.

    fusd serve examples/gps.py:Gps /tmp/devs        # then: gpsd -N -n /tmp/devs/gps

Every open file is one listener on the line: its reads block until its next
sentence is due, then get one ``$GPGGA``/``$GPRMC`` pair — exactly what a real
receiver at 1 Hz sends (gpsd, ``gpspipe``, pynmea2 and ``cat`` all read it). The
pacing is an ``await asyncio.sleep(...)`` in ``read``: no thread, no timer
bookkeeping, and a signal to the reader cancels the wait cleanly (the runtime
answers EINTR); an O_NONBLOCK reader gets EAGAIN while nothing is due.

The position walks slowly east along the equator from ``start`` so a client can
see fixes change. ``period`` sets the rate (tests use a fast one).
"""

from __future__ import annotations

import asyncio
import errno
import time
from typing import Any, Tuple

from fusd_runtime import POLLIN, POLLOUT, POLLRDNORM, Context, Device


def nmea(body: str) -> bytes:
    """``$body*CS\\r\\n`` with the NMEA 0183 checksum (XOR of the bytes between ``$`` and ``*``)."""
    checksum = 0
    for ch in body.encode("ascii"):
        checksum ^= ch
    return f"${body}*{checksum:02X}\r\n".encode("ascii")


def _angle(value: float, positive: str, negative: str, degree_digits: int) -> Tuple[str, str]:
    hemisphere = positive if value >= 0 else negative
    value = abs(value)
    degrees = int(value)
    minutes = (value - degrees) * 60
    return f"{degrees:0{degree_digits}d}{minutes:07.4f}", hemisphere


class Gps(Device):
    """A 1 Hz NMEA receiver (see the module docstring)."""

    mode = 0o444

    def __init__(self, period: float = 1.0, start: Tuple[float, float] = (0.0, 8.5)) -> None:
        self.period = float(period)
        self.lat, self.lon = start
        self.fixes = 0

    def sentences(self, when: float) -> bytes:
        """The GGA and RMC sentences of the fix at ``when`` (UNIX time)."""
        self.fixes += 1
        lon = self.lon + self.fixes * 0.0001
        t = time.gmtime(when)
        hhmmss = time.strftime("%H%M%S", t) + f".{int(when * 100) % 100:02d}"
        lat_s, ns = _angle(self.lat, "N", "S", 2)
        lon_s, ew = _angle(lon, "E", "W", 3)
        gga = nmea(f"GPGGA,{hhmmss},{lat_s},{ns},{lon_s},{ew},1,08,0.9,12.0,M,46.9,M,,")
        rmc = nmea(f"GPRMC,{hhmmss},A,{lat_s},{ns},{lon_s},{ew},0.5,90.0,{time.strftime('%d%m%y', t)},,,A")
        return gga + rmc

    def open(self, ctx: Context) -> None:
        ctx.state = {"due": 0.0, "pending": b""}  # this listener's next fix, and what is left of the last

    async def read(self, ctx: Context, size: int, offset: int) -> bytes:
        listener: Any = ctx.state
        if not listener["pending"]:
            loop = asyncio.get_running_loop()
            wait = listener["due"] - loop.time()
            if wait > 0:
                if ctx.nonblock:
                    raise BlockingIOError(errno.EAGAIN, "no sentence due yet")
                await asyncio.sleep(wait)  # the line is quiet until the next fix
            listener["due"] = loop.time() + self.period
            listener["pending"] = self.sentences(time.time())
        data, listener["pending"] = listener["pending"][:size], listener["pending"][size:]
        return data

    def poll(self, ctx: Context, events: int) -> int:
        """Readable when a fix is due; if none is, a timer wakes the poller when it will be."""
        listener: Any = ctx.state
        wait = listener["due"] - asyncio.get_running_loop().time()
        if listener["pending"] or wait <= 0:
            return POLLOUT | POLLIN | POLLRDNORM
        if listener.get("timer") is None:
            listener["timer"] = self.call_later(wait, self._due, listener)
        return POLLOUT

    def _due(self, listener: Any) -> None:
        listener["timer"] = None
        self.notify_poll()  # select/poll/epoll waiters ask again, and find the fix due
