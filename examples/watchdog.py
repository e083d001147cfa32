"""A watchdog timer (``/dev/watchdog``-style) that "fires" when nobody feeds it.

What it emulates: the Linux watchdog API (``include/uapi/linux/watchdog.h``,
``Documentation/watchdog/watchdog-api.rst``).  Opening the device starts the
timer; every ``write`` (any data) and ``WDIOC_KEEPALIVE`` feeds it; closing it
stops the timer only after the magic close character ``'V'`` was written,
otherwise it keeps running ("watchdog did not stop!").  If it is not fed for
``timeout`` seconds it fires: instead of resetting the machine it logs the
event, appends it to ``events`` and reports ``WDIOF_CARDRESET`` in its boot
status from then on, as a board that was reset by its watchdog does.  An
optional pre-timeout fires ``pretimeout`` seconds earlier.  Ioctls:
``WDIOC_GETSUPPORT`` (``struct watchdog_info``), ``GETSTATUS``,
``GETBOOTSTATUS``, ``GETTIMEOUT``/``SETTIMEOUT``, ``GETPRETIMEOUT``/
``SETPRETIMEOUT``, ``GETTIMELEFT``, ``KEEPALIVE``, ``SETOPTIONS``.

Which client drives it: util-linux ``wdctl`` (it finds no sysfs entry for the
file and falls back to the ioctls), and the shell::

    python examples/watchdog.py --mountpoint /tmp/devs      # serves /tmp/devs/watchdog (FUSE)
    wdctl /tmp/devs/watchdog                                # identity, timeouts, flags; disarms with 'V'
    wdctl -s 10 /tmp/devs/watchdog                          # set the timeout
    echo -n x > /tmp/devs/watchdog                          # feed it (and leave it running)
    echo V > /tmp/devs/watchdog                             # magic close: stop it

Or ``fusd serve examples/watchdog.py:Watchdog``.

Transport notes: ``WDIOC_SETOPTIONS`` is numbered ``_IOR`` although the caller
passes the options *in*; the FUSE kernel only copies ``_IOR`` arguments out, so
over FUSE the device cannot see the options and answers EINVAL.  Over CUSE
(``Watchdog(unrestricted=True)``, which ``main()`` picks for ``--transport
cuse``) the argument is declared as an input and both options work.  A real
watchdog allows one open file at a time (EBUSY); this one does not refuse a
second open, because FUSE sends RELEASE asynchronously and ``wdctl -s``
reopens the device right after closing it.
"""

from __future__ import annotations

import argparse
import errno
import logging
import sys
import threading
import time
from typing import Any, List, Optional, Set, Tuple

import construct as cs

from fusd_runtime import IN, Arg, Context, Device, ioctl, open_server
from fusd_runtime.ioctl import IOR, IOWR

log = logging.getLogger("fusd.examples.watchdog")

#: ``struct watchdog_info``
watchdog_info = cs.Struct("options" / cs.Int32ul, "firmware_version" / cs.Int32ul,
                          "identity" / cs.PaddedString(32, "ascii"))
_int = cs.Int32sl

WDIOC_GETSUPPORT = IOR("W", 0, watchdog_info.sizeof())
WDIOC_GETSTATUS = IOR("W", 1, 4)
WDIOC_GETBOOTSTATUS = IOR("W", 2, 4)
WDIOC_SETOPTIONS = IOR("W", 4, 4)  # sic: _IOR, but the options go in
WDIOC_KEEPALIVE = IOR("W", 5, 4)
WDIOC_SETTIMEOUT = IOWR("W", 6, 4)
WDIOC_GETTIMEOUT = IOR("W", 7, 4)
WDIOC_SETPRETIMEOUT = IOWR("W", 8, 4)
WDIOC_GETPRETIMEOUT = IOR("W", 9, 4)
WDIOC_GETTIMELEFT = IOR("W", 10, 4)

WDIOF_CARDRESET, WDIOF_SETTIMEOUT, WDIOF_MAGICCLOSE = 0x0020, 0x0080, 0x0100
WDIOF_PRETIMEOUT, WDIOF_KEEPALIVEPING = 0x0200, 0x8000
WDIOS_DISABLECARD, WDIOS_ENABLECARD = 0x0001, 0x0002


class Watchdog(Device):
    """The timer.  ``events`` lists ``(kind, wall time)``: "pretimeout" and "expired".

    ``nowayout`` = True ignores the magic close (the timer can never be stopped
    once started, like the kernel's ``nowayout`` parameter).  A monitor thread
    sleeps until the deadline; feeding moves the deadline and wakes it.
    """

    name = "watchdog"
    mode = 0o600
    identity = "fusd software watchdog"
    options = WDIOF_SETTIMEOUT | WDIOF_MAGICCLOSE | WDIOF_KEEPALIVEPING | WDIOF_PRETIMEOUT | WDIOF_CARDRESET
    min_timeout, max_timeout = 1, 3600

    def __init__(self, timeout: int = 60, *, nowayout: bool = False, unrestricted: bool = False) -> None:
        self.timeout = timeout
        self.pretimeout = 0
        self.nowayout = nowayout
        self.running = False
        self.deadline = 0.0  # time.monotonic() when it fires
        self.pretimeout_fired = False
        self.pinged = False  # fed since the last WDIOC_GETSTATUS (WDIOF_KEEPALIVEPING)
        self.allow_release = False  # the last writer wrote 'V': closing stops the timer
        self.bootstatus = 0
        self.events: List[Tuple[str, float]] = []
        self.keepalives = 0
        self.opens: Set[Context] = set()
        self._cond = threading.Condition()  # guards the timer state; the monitor thread waits on it
        self._monitor: Optional[threading.Thread] = None
        self._closing = False
        if unrestricted:  # CUSE: let the runtime copy SETOPTIONS' argument in (see the module docstring)
            self.ioctls = {WDIOC_SETOPTIONS: Arg(_int, IN)}

    # ------------------------------------------------------------------ the timer
    def start(self) -> None:
        """Arm the timer (opening the device does this)."""
        with self._cond:
            if not self.running:
                log.info("watchdog: started, timeout %d s", self.timeout)
            self.running = True
            self._feed()
            if self._monitor is None:
                self._closing = False
                self._monitor = threading.Thread(target=self._watch, name="watchdog-monitor", daemon=True)
                self._monitor.start()

    def halt(self) -> None:
        """Disarm the timer (magic close, or ``WDIOS_DISABLECARD``)."""
        with self._cond:
            if self.running:
                log.info("watchdog: stopped")
            self.running = False
            self._cond.notify_all()

    def keepalive(self) -> None:
        """Feed the dog: the deadline is ``timeout`` seconds from now again."""
        with self._cond:
            self.keepalives += 1
            self.pinged = True
            if self.running:
                self._feed()

    def _feed(self) -> None:
        self.deadline = time.monotonic() + self.timeout
        self.pretimeout_fired = False
        self._cond.notify_all()

    def time_left(self) -> float:
        return max(0.0, self.deadline - time.monotonic()) if self.running else 0.0

    def _watch(self) -> None:
        with self._cond:
            while not self._closing:
                if not self.running:
                    self._cond.wait()
                    continue
                now = time.monotonic()
                if self.pretimeout and not self.pretimeout_fired and now >= self.deadline - self.pretimeout:
                    self.pretimeout_fired = True
                    self._fire("pretimeout")
                if now >= self.deadline:
                    self._fire("expired")
                    self.running = False  # the "machine" was reset: nothing runs the timer any more
                    self.bootstatus |= WDIOF_CARDRESET
                    continue
                until = self.deadline - self.pretimeout if self.pretimeout and not self.pretimeout_fired \
                    else self.deadline
                self._cond.wait(max(0.0, until - now))

    def _fire(self, kind: str) -> None:
        self.events.append((kind, time.time()))
        if kind == "expired":
            log.warning("watchdog: not fed for %d s: the machine would be reset now", self.timeout)
        else:
            log.warning("watchdog: pre-timeout, %d s before the reset", self.pretimeout)

    def stop_monitor(self) -> None:
        """End the monitor thread (when the device is no longer served)."""
        with self._cond:
            self._closing = True
            self._cond.notify_all()
            monitor, self._monitor = self._monitor, None
        if monitor is not None:
            monitor.join(2)

    # ------------------------------------------------------------------ file operations
    def open(self, ctx: Context) -> None:
        with self._cond:
            self.opens.add(ctx)
        self.start()

    def write(self, ctx: Context, data: bytes, offset: int) -> int:
        """Any write feeds the dog; a 'V' in it allows the next close to stop it (the magic close)."""
        with self._cond:
            self.allow_release = b"V" in data and not self.nowayout
        self.keepalive()
        return len(data)

    def release(self, ctx: Context) -> None:
        with self._cond:
            self.opens.discard(ctx)
            if self.opens:  # another open file still drives it (see the module docstring)
                return
            allow, self.allow_release = self.allow_release, False
        if allow:
            self.halt()
        elif self.running:
            log.warning("watchdog: closed without the magic 'V': watchdog did not stop!")

    # ------------------------------------------------------------------ ioctls
    @ioctl(WDIOC_GETSUPPORT, watchdog_info)
    def get_support(self, ctx: Context, info: Any) -> Any:
        info.options, info.firmware_version, info.identity = self.options, 1, self.identity
        return info

    @ioctl(WDIOC_GETSTATUS, _int)
    def get_status(self, ctx: Context, value: int) -> Tuple[int, int]:
        with self._cond:
            status = (WDIOF_MAGICCLOSE if self.allow_release else 0) | (WDIOF_KEEPALIVEPING if self.pinged else 0)
            self.pinged = False
        return 0, status

    @ioctl(WDIOC_GETBOOTSTATUS, _int)
    def get_bootstatus(self, ctx: Context, value: int) -> Tuple[int, int]:
        return 0, self.bootstatus

    @ioctl(WDIOC_SETTIMEOUT, _int)
    def set_timeout(self, ctx: Context, seconds: int) -> Tuple[int, int]:
        if not self.min_timeout <= seconds <= self.max_timeout:
            raise OSError(errno.EINVAL, f"timeout must be {self.min_timeout}..{self.max_timeout} s")
        with self._cond:
            self.timeout = seconds
            if self.pretimeout >= seconds:
                self.pretimeout = 0
        self.keepalive()  # as the kernel does: a new timeout starts from now
        return 0, self.timeout

    @ioctl(WDIOC_GETTIMEOUT, _int)
    def get_timeout(self, ctx: Context, value: int) -> Tuple[int, int]:
        return 0, self.timeout

    @ioctl(WDIOC_SETPRETIMEOUT, _int)
    def set_pretimeout(self, ctx: Context, seconds: int) -> Tuple[int, int]:
        if not 0 <= seconds < self.timeout:
            raise OSError(errno.EINVAL, "the pre-timeout must be shorter than the timeout")
        with self._cond:
            self.pretimeout = seconds
            self.pretimeout_fired = False
            self._cond.notify_all()
        return 0, self.pretimeout

    @ioctl(WDIOC_GETPRETIMEOUT, _int)
    def get_pretimeout(self, ctx: Context, value: int) -> Tuple[int, int]:
        return 0, self.pretimeout

    @ioctl(WDIOC_GETTIMELEFT, _int)
    def get_timeleft(self, ctx: Context, value: int) -> Tuple[int, int]:
        return 0, int(self.time_left() + 0.5)

    def ioctl(self, ctx: Context, cmd: int, arg: Any, out_size: int) -> Any:
        """KEEPALIVE (its argument is ignored) and SETOPTIONS (declared as an input only over CUSE)."""
        if cmd == WDIOC_KEEPALIVE:
            self.keepalive()
            return 0
        if cmd == WDIOC_SETOPTIONS:
            if not isinstance(arg, int):
                raise OSError(errno.EINVAL, "WDIOC_SETOPTIONS needs unrestricted ioctls (CUSE): "
                                            "over FUSE its _IOR argument is never copied in")
            if arg & WDIOS_DISABLECARD:
                if self.nowayout:
                    raise OSError(errno.EPERM, "nowayout: the watchdog cannot be stopped")
                self.halt()
            if arg & WDIOS_ENABLECARD:
                self.start()
            if arg & ~(WDIOS_DISABLECARD | WDIOS_ENABLECARD):
                raise OSError(errno.EINVAL, f"unsupported options {arg:#x}")
            return 0
        raise OSError(errno.ENOTTY, "not a watchdog ioctl")


def main(argv: Optional[List[str]] = None) -> int:
    """Serve one Watchdog until Ctrl-C: ``python examples/watchdog.py [--transport fuse|cuse] [--mountpoint DIR]``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--transport", choices=["auto", "fuse", "cuse"], default="auto")
    parser.add_argument("--mountpoint", help="FUSE: the directory to serve in (default: a temporary one)")
    parser.add_argument("--name", default="watchdog", help="device name (CUSE: /dev/NAME; default watchdog)")
    parser.add_argument("--timeout", type=int, default=60, help="seconds without a keepalive before it fires")
    parser.add_argument("--nowayout", action="store_true", help="ignore the magic close")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    server = open_server(args.transport, mountpoint=args.mountpoint)
    dog = Watchdog(args.timeout, nowayout=args.nowayout, unrestricted=server.transport == "cuse")
    server.add(dog, args.name)
    try:
        server.serve_forever(ready=lambda: print(f"watchdog: serving {server.path(dog)} ({server.transport}); "
                                                 f"Ctrl-C to stop", file=sys.stderr, flush=True))
    finally:
        dog.stop_monitor()
    return 0


if __name__ == "__main__":
    sys.exit(main())
