"""A real-time clock (``/dev/rtc``-style) whose time is a settable offset from the host clock.

What it emulates: the Linux RTC character device (``include/uapi/linux/rtc.h``,
``Documentation/admin-guide/rtc.rst``): ``RTC_RD_TIME``/``RTC_SET_TIME`` with a
``struct rtc_time``, update interrupts (``RTC_UIE_ON``/``RTC_UIE_OFF``: once a
second ``read()`` returns an ``unsigned long`` whose low byte is
``RTC_IRQF|RTC_UF`` and whose upper bytes count the interrupts since the last
read; ``poll``/``select`` wake up), the alarm (``RTC_ALM_SET``/``RTC_ALM_READ``,
``RTC_WKALM_SET``/``RTC_WKALM_RD``, ``RTC_AIE_ON``/``RTC_AIE_OFF``; fires
``RTC_AF``), ``RTC_EPOCH_READ``/``RTC_EPOCH_SET`` and ``RTC_IRQP_READ``.
Setting the time never touches the host's clock: the device only keeps an
offset, and its second boundaries restart at the moment it was set, as a real
RTC's divider chain does.

Which client drives it: util-linux ``hwclock``, unmodified::

    python examples/rtc.py --mountpoint /tmp/devs          # serves /tmp/devs/rtc (FUSE)
    TZ=UTC hwclock --rtc=/tmp/devs/rtc --show --utc --noadjfile
    hwclock --rtc=/tmp/devs/rtc --set --date "2031-02-03 04:05:06" --utc --noadjfile

``hwclock`` waits for the update interrupt (``RTC_UIE_ON``, ``select``,
``RTC_UIE_OFF``) before it reads the time, so both the ioctls and the
poll-woken read path are exercised.  It accepts a regular file, so the FUSE
directory is enough (``fusd serve examples/rtc.py:Rtc`` works too).  Never
use ``--hctosys``/``--systohc`` with a test clock: they concern the host's clock.

Transport notes: ``RTC_EPOCH_SET`` and ``RTC_IRQP_SET`` pass their value in
the ioctl argument itself, not through a pointer; the FUSE kernel still tries
to copy ``_IOC_SIZE`` bytes from that "address" and the caller gets EFAULT, so
they only work over CUSE.
"""

from __future__ import annotations

import argparse
import calendar
import errno
import logging
import struct
import sys
import threading
import time
from collections import deque
from typing import Any, Deque, List, Optional

from fusd_runtime import POLLIN, POLLRDNORM, Context, Device, ReplyHandle, ioctl, open_server
from fusd_runtime.ioctl import IO, IOR, IOW, CStruct, c

log = logging.getLogger("fusd.examples.rtc")

#: ``struct rtc_time`` (linux/rtc.h): nine ints, the fields of a ``struct tm``
rtc_time = CStruct(*(name / c.int for name in (
    "tm_sec", "tm_min", "tm_hour", "tm_mday", "tm_mon", "tm_year", "tm_wday", "tm_yday", "tm_isdst")),
    name="rtc_time")
#: ``struct rtc_wkalrm``: enabled, pending, then the time (CStruct pads it to its 4-byte alignment)
rtc_wkalrm = CStruct("enabled" / c.uchar, "pending" / c.uchar, "time" / rtc_time, name="rtc_wkalrm")

RTC_AIE_ON, RTC_AIE_OFF = IO("p", 0x01), IO("p", 0x02)
RTC_UIE_ON, RTC_UIE_OFF = IO("p", 0x03), IO("p", 0x04)
RTC_PIE_ON, RTC_PIE_OFF = IO("p", 0x05), IO("p", 0x06)
RTC_ALM_SET = IOW("p", 0x07, rtc_time.sizeof())
RTC_ALM_READ = IOR("p", 0x08, rtc_time.sizeof())
RTC_RD_TIME = IOR("p", 0x09, rtc_time.sizeof())
RTC_SET_TIME = IOW("p", 0x0A, rtc_time.sizeof())
RTC_IRQP_READ = IOR("p", 0x0B, c.ulong.sizeof())
RTC_IRQP_SET = IOW("p", 0x0C, c.ulong.sizeof())
RTC_EPOCH_READ = IOR("p", 0x0D, c.ulong.sizeof())
RTC_EPOCH_SET = IOW("p", 0x0E, c.ulong.sizeof())
RTC_WKALM_SET = IOW("p", 0x0F, rtc_wkalrm.sizeof())
RTC_WKALM_RD = IOR("p", 0x10, rtc_wkalrm.sizeof())

#: flag bits in the low byte of what read() returns
RTC_IRQF, RTC_PF, RTC_AF, RTC_UF = 0x80, 0x40, 0x20, 0x10

_ulong = struct.Struct("<Q")


def to_rtc_time(tm: Any, seconds: int) -> Any:
    """Fill the ``rtc_time`` container ``tm`` with ``seconds`` since 1970, broken down in UTC."""
    t = time.gmtime(seconds)
    tm.tm_sec, tm.tm_min, tm.tm_hour = t.tm_sec, t.tm_min, t.tm_hour
    tm.tm_mday, tm.tm_mon, tm.tm_year = t.tm_mday, t.tm_mon - 1, t.tm_year - 1900
    tm.tm_wday, tm.tm_yday, tm.tm_isdst = (t.tm_wday + 1) % 7, t.tm_yday - 1, 0  # rtc_time: Sunday is 0
    return tm


def from_rtc_time(tm: Any) -> int:
    """Seconds since 1970 of a ``struct rtc_time`` (UTC); EINVAL for what the kernel's rtc_valid_tm refuses."""
    year = tm.tm_year + 1900
    if not (1970 <= year <= 9999 and 0 <= tm.tm_mon < 12 and 0 <= tm.tm_hour < 24 and 0 <= tm.tm_min < 60
            and 0 <= tm.tm_sec < 60 and 1 <= tm.tm_mday <= calendar.monthrange(year, tm.tm_mon + 1)[1]):
        raise OSError(errno.EINVAL, f"invalid rtc_time {dict(tm)}")
    return calendar.timegm((year, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec))


class Rtc(Device):
    """The clock: ``offset`` seconds ahead of (negative: behind) the host clock when created.

    The RTC's time is ``base + (monotonic() - base_mono)``: setting it moves
    ``base`` only, so the host clock is never involved, and stepping the host
    clock does not move the RTC.  A ticker thread runs while update or alarm
    interrupts are enabled; it wakes at each RTC second boundary and raises the
    interrupt (count and flags for ``read``, a poll notification).
    """

    name = "rtc"
    mode = 0o644

    def __init__(self, offset: float = 0.0) -> None:
        self._lock = threading.Lock()  # the ticker thread and the callbacks share the state below
        self._base = time.time() + offset
        self._base_mono = time.monotonic()
        self.irq_data = 0  # what the next read() returns: count << 8 | flags
        self.uie = self.aie = False
        self.alarm: Optional[int] = None  # alarm time, seconds since 1970
        self.alarm_pending = False
        self.epoch = 1900
        self.irq_freq = 64
        self.readers: Deque[ReplyHandle] = deque()
        self.interrupts: List[int] = []  # flags of every interrupt raised, for the curious (and the tests)
        self._ticker: Optional[threading.Thread] = None
        self._wakeup = threading.Event()
        self._irq_owner: Optional[Context] = None  # the open file that last enabled an interrupt

    # ------------------------------------------------------------------ the clock
    def now(self) -> float:
        """The RTC's current time, seconds since 1970 (UTC)."""
        return self._base + (time.monotonic() - self._base_mono)

    def set_time(self, seconds: int) -> None:
        """Set the RTC: it reads ``seconds`` now, and its next second boundary is 1 s from now."""
        with self._lock:
            self._base, self._base_mono = float(seconds), time.monotonic()
        self._wakeup.set()  # the ticker's next boundary moved

    # ------------------------------------------------------------------ interrupts
    def _raise_irq(self, flags: int) -> None:
        """One interrupt: count it, answer a blocked reader or wake pollers.  Called with _lock held."""
        self.irq_data = (self.irq_data + 0x100) | flags | RTC_IRQF
        self.interrupts.append(flags)
        while self.readers:
            handle = self.readers.popleft()
            data, self.irq_data = self.irq_data, 0
            if handle.reply(_ulong.pack(data)[:handle.size]):
                break
            self.irq_data = data  # that reader was interrupted meanwhile: keep the data for the next one
        self.notify_poll()

    def _tick_loop(self) -> None:
        last = int(self.now())
        while True:
            with self._lock:
                if not (self.uie or self.aie):
                    self._ticker = None
                    return
            self._wakeup.wait(1.0 - self.now() % 1.0 + 0.001)
            self._wakeup.clear()
            second = int(self.now())
            if second == last:
                continue
            last = second
            with self._lock:
                flags = RTC_UF if self.uie else 0
                if self.aie and self.alarm is not None and second >= self.alarm and not self.alarm_pending:
                    flags |= RTC_AF
                    self.alarm_pending = True
                if flags:
                    self._raise_irq(flags)

    def _interrupts_changed(self, ctx: Context) -> None:
        """Start the ticker when an interrupt was enabled (called with _lock held)."""
        self._irq_owner = ctx if self.uie or self.aie else None
        if (self.uie or self.aie) and self._ticker is None:
            self._ticker = threading.Thread(target=self._tick_loop, name="rtc-ticker", daemon=True)
            self._ticker.start()
        self._wakeup.set()

    def stop(self) -> None:
        """Disable every interrupt and let the ticker thread end (it is a daemon thread anyway)."""
        with self._lock:
            self.uie = self.aie = False
            ticker = self._ticker
        self._wakeup.set()
        if ticker is not None:
            ticker.join(2)

    # ------------------------------------------------------------------ file operations
    def read(self, ctx: Context, size: int, offset: int) -> Any:
        """The interrupt word: 4 bytes for an ``unsigned int`` buffer, 8 for ``unsigned long``; blocks."""
        if size != 4 and size < 8:
            raise OSError(errno.EINVAL, "read an unsigned int or an unsigned long")
        with self._lock:
            if self.irq_data:
                data, self.irq_data = self.irq_data, 0
                return _ulong.pack(data)[:min(size, 8)]
            if ctx.nonblock:
                raise BlockingIOError(errno.EAGAIN, "no interrupt pending")
            handle = ctx.defer(on_interrupt=self._forget_reader)
            self.readers.append(handle)
            return handle

    def _forget_reader(self, handle: ReplyHandle) -> None:
        with self._lock:
            if handle in self.readers:
                self.readers.remove(handle)

    def poll(self, ctx: Context, events: int) -> int:
        return POLLIN | POLLRDNORM if self.irq_data else 0

    def release(self, ctx: Context) -> None:
        """Like the kernel's rtc_dev_release: closing the device turns its interrupts off.

        Only for the file that turned them on: the kernel allows one open file
        at a time, but FUSE sends RELEASE asynchronously, so the next opener
        (hwclock run twice in a row) may already be using the clock.
        """
        with self._lock:
            if ctx is self._irq_owner:
                self.uie = self.aie = False
                self._irq_owner = None
        self._wakeup.set()

    # ------------------------------------------------------------------ ioctls
    @ioctl(RTC_RD_TIME, rtc_time)
    def rd_time(self, ctx: Context, tm: Any) -> Any:
        return to_rtc_time(tm, int(self.now()))

    @ioctl(RTC_SET_TIME, rtc_time)
    def set_time_ioctl(self, ctx: Context, tm: Any) -> int:
        self.set_time(from_rtc_time(tm))
        log.info("rtc: set to %s UTC by pid %d", time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(self.now())),
                 ctx.pid)
        return 0

    @ioctl(RTC_ALM_READ, rtc_time)
    def alm_read(self, ctx: Context, tm: Any) -> Any:
        if self.alarm is None:
            raise OSError(errno.EINVAL, "no alarm set")
        return to_rtc_time(tm, self.alarm)

    @ioctl(RTC_ALM_SET, rtc_time)
    def alm_set(self, ctx: Context, tm: Any) -> int:
        """The legacy alarm: only hour, minute and second count; the next such moment is meant."""
        if not (0 <= tm.tm_hour < 24 and 0 <= tm.tm_min < 60 and 0 <= tm.tm_sec < 60):
            raise OSError(errno.EINVAL, "invalid alarm time")
        now = int(self.now())
        day = now - now % 86400
        when = day + tm.tm_hour * 3600 + tm.tm_min * 60 + tm.tm_sec
        if when <= now:
            when += 86400
        with self._lock:
            self.alarm, self.alarm_pending = when, False
        return 0

    @ioctl(RTC_WKALM_RD, rtc_wkalrm)
    def wkalm_rd(self, ctx: Context, alrm: Any) -> Any:
        alrm.enabled, alrm.pending = int(self.aie), int(self.alarm_pending)
        if self.alarm is not None:
            to_rtc_time(alrm.time, self.alarm)
        return alrm

    @ioctl(RTC_WKALM_SET, rtc_wkalrm)
    def wkalm_set(self, ctx: Context, alrm: Any) -> int:
        """The full-date alarm, enabled or not in one call (what rtcwake uses)."""
        when = from_rtc_time(alrm.time)
        with self._lock:
            self.alarm, self.alarm_pending, self.aie = when, False, bool(alrm.enabled)
            self._interrupts_changed(ctx)
        return 0

    @ioctl(RTC_EPOCH_READ, c.ulong)
    def epoch_read(self, ctx: Context, value: int) -> Any:
        return 0, self.epoch

    @ioctl(RTC_EPOCH_SET, None)  # a value argument: the epoch is the ioctl's argument itself
    def epoch_set(self, ctx: Context, epoch: int) -> int:
        if epoch < 1900:
            raise OSError(errno.EINVAL, "there were no RTCs before 1900")
        self.epoch = epoch
        return 0

    @ioctl(RTC_IRQP_READ, c.ulong)
    def irqp_read(self, ctx: Context, value: int) -> Any:
        return 0, self.irq_freq

    def ioctl(self, ctx: Context, cmd: int, arg: bytes, out_size: int) -> Any:
        """The argument-less interrupt switches; the rest are declared with ``@ioctl`` above."""
        with self._lock:
            if cmd == RTC_UIE_ON:
                self.uie = True
            elif cmd == RTC_UIE_OFF:
                self.uie = False
            elif cmd == RTC_AIE_ON:
                if self.alarm is None:
                    raise OSError(errno.EINVAL, "set an alarm first")
                self.aie = True
            elif cmd == RTC_AIE_OFF:
                self.aie = False
            elif cmd in (RTC_PIE_ON, RTC_PIE_OFF):
                raise OSError(errno.EINVAL, "periodic interrupts are not emulated")
            else:
                raise OSError(errno.ENOTTY, "not an rtc ioctl")
            self._interrupts_changed(ctx)
        return 0


def main(argv: Optional[List[str]] = None) -> int:
    """Serve one Rtc until Ctrl-C: ``python examples/rtc.py [--transport fuse|cuse] [--mountpoint DIR]``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--transport", choices=["auto", "fuse", "cuse"], default="auto")
    parser.add_argument("--mountpoint", help="FUSE: the directory to serve in (default: a temporary one)")
    parser.add_argument("--name", default="rtc", help="device name (CUSE: /dev/NAME; default rtc)")
    parser.add_argument("--offset", type=float, default=0.0, help="seconds ahead of the host clock at start")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    server = open_server(args.transport, mountpoint=args.mountpoint)
    clock = Rtc(offset=args.offset)
    server.add(clock, args.name)
    try:
        server.serve_forever(ready=lambda: print(f"rtc: serving {server.path(clock)} ({server.transport}); "
                                                 f"Ctrl-C to stop", file=sys.stderr, flush=True))
    finally:
        clock.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
