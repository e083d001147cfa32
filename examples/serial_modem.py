"""A Hayes-compatible modem on a serial port (``/dev/ttyUSB0``-like), emulated in Python.

What it emulates: the host side of a serial line with an AT-command modem behind it.
Bytes the program writes go to the modem; its answers come back to be read:
``AT\\r`` -> ``\\r\\nOK\\r\\n``; ``ATI`` (identity), ``AT+CSQ`` (signal quality), ``AT+CGMI``/
``+CGMM``/``+CGSN``, ``ATE0``/``ATE1`` (command echo), ``ATV0`` (numeric result codes),
``ATQ1`` (quiet), ``ATZ``/``AT&F`` (reset), ``ATS0=n`` (answer after n rings), ``ATD<number>``
-> ``CONNECT <baud>`` (then data mode: the far end echoes what it receives; ``+++`` returns
to command mode), ``ATO`` (back online), ``ATH`` (hang up), ``ATA`` (answer a ``RING``).
The serial line itself is a tty: the termios ioctls (TCGETS, TCSETS/W/F, TCGETS2/TCSETS2
for arbitrary baud rates, TCFLSH, TCSBRK/TCSBRKP, TCXONC, TIOCSBRK/TIOCCBRK), the modem control
lines (TIOCMGET/TIOCMBIS/TIOCMBIC/TIOCMSET: DTR and RTS from the host; CTS follows RTS, DSR
is on while powered, CD while connected, RI while ringing; dropping DTR hangs up, as with
``AT&D2``), the queue sizes (FIONREAD/TIOCINQ, TIOCOUTQ), exclusive mode (TIOCEXCL/TIOCNXCL),
and ``poll`` readiness for readers that wait with select and a timeout.

Client that drives it: pyserial (``serial.Serial(path, 115200, timeout=1)``: open,
baud-rate changes, ``write``/``readline``/``in_waiting``, ``cts``/``dsr``/``ri``/``cd``,
``rts``/``dtr``, ``reset_input_buffer``, ``flush``, ``send_break``); the test is
``tests/cuse/test_gallery_serial_modem.py``.

Run it (CUSE needs root and a kernel with CONFIG_CUSE)::

    python examples/serial_modem.py --transport cuse          # -> /dev/ttyFUSD0
    python -m serial.tools.miniterm /dev/ttyFUSD0 115200      # type AT<Enter>

Transport: CUSE only.  The tty ioctl numbers (``0x5401`` TCGETS, ``0x5415`` TIOCMGET, ...)
predate ``_IOC`` and encode neither size nor direction, so FUSE's restricted ioctls
copy nothing for them; over CUSE the runtime asks the kernel for the declared
``struct termios`` / ``int`` (FUSE_IOCTL_RETRY).
"""

from __future__ import annotations

import argparse
import errno
import re
import sys
import termios
import threading
from collections import deque
from typing import Any, Deque, Dict, List, Optional

from fusd_runtime import (
    IN,
    OUT,
    POLLIN,
    POLLOUT,
    POLLRDNORM,
    POLLWRNORM,
    Context,
    Device,
    ReplyHandle,
    ioctl,
    open_server,
)
from fusd_runtime.ioctl import IOR, IOW, CStruct, c

# --- facts from asm-generic/termbits.h, asm-generic/ioctls.h ----------------------------------------
_termios_fields = ("c_iflag" / c.uint, "c_oflag" / c.uint, "c_cflag" / c.uint, "c_lflag" / c.uint,
                   "c_line" / c.uchar, "c_cc" / c.array(c.uchar, 19))
#: struct termios as the kernel's TCGETS/TCSETS see it (not glibc's: 19 control characters, no speeds)
kernel_termios = CStruct(*_termios_fields, name="termios")
#: struct termios2 (TCGETS2/TCSETS2): the same plus the speeds in bits per second (used with BOTHER);
#: CStruct puts c_ispeed at 36, after the padding that follows c_cc
termios2 = CStruct(*_termios_fields, "c_ispeed" / c.uint, "c_ospeed" / c.uint, name="termios2")
TCGETS2, TCSETS2, TCSETSW2, TCSETSF2 = (IOR("T", 0x2A, termios2.sizeof()), IOW("T", 0x2B, termios2.sizeof()),
                                        IOW("T", 0x2C, termios2.sizeof()), IOW("T", 0x2D, termios2.sizeof()))
TIOCSBRK, TIOCCBRK, TCSBRKP = 0x5427, 0x5428, 0x5425  # break on / off (no argument); timed break
BOTHER = 0o010000
TIOCM_DTR, TIOCM_RTS, TIOCM_CTS, TIOCM_CAR, TIOCM_RNG, TIOCM_DSR = 0x002, 0x004, 0x020, 0x040, 0x080, 0x100
_int = c.int

#: B<rate> constant -> bits per second, for the rates termios knows
BAUD_RATES: Dict[int, int] = {getattr(termios, f"B{rate}"): rate for rate in (
    0, 50, 75, 110, 134, 150, 200, 300, 600, 1200, 1800, 2400, 4800, 9600, 19200, 38400, 57600, 115200,
    230400, 460800, 500000, 576000, 921600, 1000000, 1152000, 1500000, 2000000, 2500000, 3000000, 3500000,
    4000000) if hasattr(termios, f"B{rate}")}

RESULT_CODES = {"OK": 0, "CONNECT": 1, "RING": 2, "NO CARRIER": 3, "ERROR": 4, "NO DIALTONE": 6, "BUSY": 7}
_COMMAND = re.compile(r"&[A-Z]\d*|\+[A-Z0-9]+(=[^;]*|\?)?;?|S\d+(=\d+|\?)|D.*|[A-Z]\d*")


def default_termios() -> Dict[str, Any]:
    """What a freshly opened Linux serial port reports: 9600 8N1, cooked mode (``tty_std_termios``)."""
    cc = [0] * 19
    cc[termios.VINTR], cc[termios.VQUIT], cc[termios.VERASE], cc[termios.VKILL] = 3, 28, 127, 21
    cc[termios.VEOF], cc[termios.VMIN], cc[termios.VSTART], cc[termios.VSTOP], cc[termios.VSUSP] = 4, 1, 17, 19, 26
    return dict(c_iflag=termios.ICRNL | termios.IXON, c_oflag=termios.OPOST | termios.ONLCR,
                c_cflag=termios.B9600 | termios.CS8 | termios.CREAD | termios.HUPCL,
                c_lflag=termios.ISIG | termios.ICANON | termios.ECHO | termios.ECHOE | termios.ECHOK
                | termios.ECHOCTL | termios.ECHOKE | termios.IEXTEN,
                c_line=0, c_cc=cc, c_ispeed=9600, c_ospeed=9600)


class HayesModem(Device):
    """The modem and the tty it sits behind.

    ``ring()`` (any thread) announces an incoming call.  ``sent`` keeps what the
    far end received in data mode, ``dialed`` the numbers dialed.
    """

    mode = 0o660
    manufacturer, model, serial_number, revision = "FUSD", "Hayes-compatible 56k (emulated)", "0042", "1.0"

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.tty = default_termios()
        self.rx: bytearray = bytearray()  # modem -> host: what read() returns
        self.readers: Deque[ReplyHandle] = deque()
        self.opens = 0  # open files of the port (exclusive mode, HUPCL on last close)
        self.line = bytearray()  # the command being typed
        self.lines_out = TIOCM_DTR | TIOCM_RTS  # what the host drives (raised by open, as the tty layer does)
        self.exclusive = False
        self.breaks = 0
        self.dialed: List[str] = []
        self.sent = bytearray()
        self.reset()

    # --- the modem --------------------------------------------------------------------------
    def reset(self) -> None:
        """ATZ / AT&F: factory settings, on hook."""
        self.echo, self.verbose, self.quiet, self.auto_answer = True, True, False, 0
        self.online = self.connected = self.ringing = False
        self.rings = 0
        self.plus_count = 0

    @property
    def baud(self) -> int:
        """The line speed the host set (bits per second)."""
        cbaud = self.tty["c_cflag"] & termios.CBAUD
        return self.tty["c_ospeed"] if cbaud == BOTHER else BAUD_RATES.get(cbaud, 0)

    def _to_host(self, data: bytes) -> None:
        self.rx += data
        while self.readers and self.rx:
            handle = self.readers.popleft()
            chunk = bytes(self.rx[:handle.size])
            if handle.reply(chunk):
                del self.rx[:len(chunk)]
        self.notify_poll()

    def _result(self, code: str, suffix: str = "") -> None:
        if self.quiet:
            return
        if self.verbose:
            self._to_host(f"\r\n{code}{suffix}\r\n".encode())
        else:
            self._to_host(f"{RESULT_CODES[code]}\r".encode())

    def _info(self, text: str) -> None:
        self._to_host(f"\r\n{text}\r\n".encode() if self.verbose else f"{text}\r\n".encode())

    def _connect(self) -> None:
        self.connected = self.online = True
        self.ringing = False
        self.rings = 0
        self._result("CONNECT", f" {self.baud}")

    def hang_up(self, announce: bool = True) -> None:
        """Carrier lost (ATH, DTR dropped): back to command mode."""
        was = self.connected
        self.connected = self.online = False
        if was and announce:
            self._result("NO CARRIER")

    def ring(self) -> None:
        """An incoming call: RING (and RI up); answered after S0 rings or by ATA."""
        with self.lock:
            if self.connected:
                return
            self.ringing = True
            self.rings += 1
            self._result("RING")
            if self.auto_answer and self.rings >= self.auto_answer:
                self._connect()

    def _execute(self, line: str) -> None:
        """One command line (without ``AT`` and CR): run its commands left to right."""
        rest = line.upper().replace(" ", "")
        while rest:
            m = _COMMAND.match(rest)
            if m is None:
                return self._result("ERROR")
            cmd, rest = m.group(0), rest[m.end():]
            outcome = self._command(cmd)
            if outcome is not None:  # the command produced its own final result (or ERROR)
                return None if outcome == "" else self._result(outcome)
        self._result("OK")

    def _command(self, cmd: str) -> Optional[str]:
        """Run one command; None means "carry on", a result code ends the line ("" = already answered)."""
        letter, arg = cmd[0], cmd[1:]
        n = int(arg) if arg.isdigit() else 0
        if letter == "E":
            self.echo = bool(n)
        elif letter == "V":
            self.verbose = bool(n)
        elif letter == "Q":
            self.quiet = bool(n)
        elif letter == "Z" or cmd.startswith("&F"):
            self.reset()
        elif letter == "I":
            self._info({0: f"{self.manufacturer} {self.model}", 1: "255",  # I1: the ROM checksum
                        3: f"{self.manufacturer} {self.model} rev {self.revision}"}.get(n, self.model))
        elif letter == "H":
            self.hang_up(announce=False)
        elif letter == "O":
            if not self.connected:
                return "NO CARRIER"
            self.online = True
            self._result("CONNECT", f" {self.baud}")
            return ""
        elif letter == "A":
            if not self.ringing:
                return "NO CARRIER"
            self._connect()
            return ""
        elif letter == "D":
            number = re.sub(r"[^0-9*#,+]", "", arg)  # ATDT/ATDP: tone or pulse, same here
            if not number:
                return "NO DIALTONE"
            if not self.lines_out & TIOCM_DTR:
                return "NO CARRIER"
            self.dialed.append(number)
            if number.endswith("#"):  # a test number: always engaged
                return "BUSY"
            self._connect()
            return ""
        elif letter == "S":
            if arg == "0?":
                self._info(f"{self.auto_answer:03d}")
            elif arg.startswith("0="):
                self.auto_answer = int(arg[2:])  # other S registers are accepted and ignored
        elif letter == "&":
            pass  # &C, &D, &K ...: accepted, the emulation behaves as &C1 &D2
        elif letter == "+":
            return self._extended(cmd.rstrip(";"))
        else:
            return "ERROR"
        return None

    def _extended(self, cmd: str) -> Optional[str]:
        answers = {"+CSQ": "+CSQ: 24,99", "+CGMI": self.manufacturer, "+CGMM": self.model,
                   "+CGSN": self.serial_number, "+GMR": self.revision, "+CGMR": self.revision,
                   "+CREG?": "+CREG: 0,1", "+CBC": "+CBC: 0,100"}
        if cmd not in answers:
            return "ERROR"
        self._info(answers[cmd])
        return None

    def _from_host(self, data: bytes) -> None:
        for byte in data:
            ch = bytes([byte])
            if self.online:
                self.plus_count = self.plus_count + 1 if ch == b"+" else 0
                self.sent += ch
                self._to_host(ch)  # the far end echoes
                if self.plus_count == 3:  # the escape sequence: back to command mode, still connected
                    self.online = False
                    self.plus_count = 0
                    self._result("OK")
                continue
            if self.echo:
                self._to_host(ch)
            if ch == b"\r":
                text = self.line.decode("ascii", "replace").strip()
                self.line.clear()
                if text.upper().startswith("AT"):
                    self._execute(text[2:])
                elif text:
                    self._result("ERROR")
            elif ch in (b"\b", b"\x7f"):
                del self.line[-1:]
            elif ch != b"\n":
                self.line += ch

    # --- the tty file ---------------------------------------------------------------------
    def open(self, ctx: Context) -> None:
        with self.lock:
            if self.exclusive and self.opens:
                raise OSError(errno.EBUSY, "port is in exclusive mode (TIOCEXCL)")
            if not self.opens:
                self.lines_out |= TIOCM_DTR | TIOCM_RTS  # the tty layer raises DTR/RTS on first open
            self.opens += 1

    def release(self, ctx: Context) -> None:
        with self.lock:
            self.opens -= 1
            if not self.opens:  # last close: HUPCL drops DTR, which hangs up
                self.exclusive = False
                if self.tty["c_cflag"] & termios.HUPCL:
                    self.lines_out &= ~(TIOCM_DTR | TIOCM_RTS)
                    self.hang_up(announce=False)

    def write(self, ctx: Context, data: bytes, offset: int) -> int:
        with self.lock:
            self._from_host(data)
        return len(data)

    def read(self, ctx: Context, size: int, offset: int) -> Any:
        with self.lock:
            if self.rx:
                data = bytes(self.rx[:size])
                del self.rx[:size]
                return data
            if ctx.nonblock:
                raise BlockingIOError(errno.EAGAIN, "nothing received")
            if self.tty["c_cc"][termios.VMIN] == 0:
                return b""  # raw mode with VMIN 0: a read returns what is there, even nothing (VTIME ignored)
            handle = ctx.defer(on_interrupt=self.readers.remove)
            self.readers.append(handle)
            return handle

    def poll(self, ctx: Context, events: int) -> int:
        return POLLOUT | POLLWRNORM | (POLLIN | POLLRDNORM if self.rx else 0)

    # --- termios ----------------------------------------------------------------------------
    @ioctl(termios.TCGETS, kernel_termios, OUT)
    def tcgets(self, ctx: Context, t: Any) -> Any:
        t.update({k: v for k, v in self.tty.items() if k in t})
        return t

    def _set(self, t: Any, flush: bool) -> int:
        with self.lock:
            self.tty.update({k: (list(v) if k == "c_cc" else v) for k, v in t.items() if not k.startswith("_")})
            cbaud = t.c_cflag & termios.CBAUD
            if "c_ispeed" not in t and cbaud != BOTHER:  # TCSETS: the speed is the B<rate> in c_cflag;
                self.tty["c_ispeed"] = self.tty["c_ospeed"] = BAUD_RATES.get(cbaud, 0)  # BOTHER keeps the old
            if flush:
                self.rx.clear()
            if cbaud == termios.B0:  # B0 means "hang up": drop DTR
                self.lines_out &= ~TIOCM_DTR
                self.hang_up()
        return 0

    @ioctl(termios.TCSETS, kernel_termios, IN)
    def tcsets(self, ctx: Context, t: Any) -> int:
        return self._set(t, flush=False)

    @ioctl(termios.TCSETSW, kernel_termios, IN)
    def tcsetsw(self, ctx: Context, t: Any) -> int:
        return self._set(t, flush=False)  # nothing is ever waiting to be sent: no drain needed

    @ioctl(termios.TCSETSF, kernel_termios, IN)
    def tcsetsf(self, ctx: Context, t: Any) -> int:
        return self._set(t, flush=True)

    @ioctl(TCGETS2, termios2)
    def tcgets2(self, ctx: Context, t: Any) -> Any:
        t.update(self.tty)
        return t

    @ioctl(TCSETS2, termios2)
    def tcsets2(self, ctx: Context, t: Any) -> int:
        return self._set(t, flush=False)

    @ioctl(TCSETSW2, termios2)
    def tcsetsw2(self, ctx: Context, t: Any) -> int:
        return self._set(t, flush=False)

    @ioctl(TCSETSF2, termios2)
    def tcsetsf2(self, ctx: Context, t: Any) -> int:
        return self._set(t, flush=True)

    @ioctl(termios.TCFLSH)  # by value: TCIFLUSH, TCOFLUSH, TCIOFLUSH
    def tcflsh(self, ctx: Context, queue: int) -> int:
        if queue not in (termios.TCIFLUSH, termios.TCOFLUSH, termios.TCIOFLUSH):
            raise OSError(errno.EINVAL, "bad queue selector")
        if queue != termios.TCOFLUSH:
            with self.lock:
                self.rx.clear()
        return 0

    @ioctl(termios.TCSBRK)  # by value: 0 sends a break (tcsendbreak), anything else drains (tcdrain)
    def tcsbrk(self, ctx: Context, arg: int) -> int:
        if arg == 0:
            self.breaks += 1
        return 0

    @ioctl(TCSBRKP)  # by value: a break of N tenths of a second (glibc's tcsendbreak with a duration)
    def tcsbrkp(self, ctx: Context, _: None) -> int:
        self.breaks += 1
        return 0

    @ioctl(termios.TCXONC)  # by value: TCOOFF, TCOON, TCIOFF, TCION: nothing is throttled here
    def tcxonc(self, ctx: Context, _: None) -> int:
        return 0

    @ioctl(TIOCSBRK)
    def break_on(self, ctx: Context, _: None) -> int:
        self.breaks += 1
        return 0

    @ioctl(TIOCCBRK)
    def break_off(self, ctx: Context, _: None) -> int:
        return 0

    # --- modem control lines, queues, exclusive mode --------------------------------------------
    def modem_lines(self) -> int:
        """TIOCMGET's view: the host's DTR/RTS plus what the modem drives."""
        lines = self.lines_out | TIOCM_DSR
        if self.lines_out & TIOCM_RTS:
            lines |= TIOCM_CTS  # hardware flow control: the modem is always ready to receive
        if self.connected:
            lines |= TIOCM_CAR
        if self.ringing:
            lines |= TIOCM_RNG
        return lines

    def _set_lines(self, value: int) -> int:
        with self.lock:
            dtr_dropped = self.lines_out & TIOCM_DTR and not value & TIOCM_DTR
            self.lines_out = value & (TIOCM_DTR | TIOCM_RTS)
            if dtr_dropped:
                self.hang_up()  # &D2: DTR on->off hangs up
        return 0

    @ioctl(termios.TIOCMGET, _int, OUT)
    def tiocmget(self, ctx: Context, _: int) -> Any:
        return 0, self.modem_lines()

    @ioctl(termios.TIOCMSET, _int, IN)
    def tiocmset(self, ctx: Context, value: int) -> int:
        return self._set_lines(value)

    @ioctl(termios.TIOCMBIS, _int, IN)
    def tiocmbis(self, ctx: Context, value: int) -> int:
        return self._set_lines(self.lines_out | value)

    @ioctl(termios.TIOCMBIC, _int, IN)
    def tiocmbic(self, ctx: Context, value: int) -> int:
        return self._set_lines(self.lines_out & ~value)

    @ioctl(termios.FIONREAD, _int, OUT)  # also TIOCINQ
    def fionread(self, ctx: Context, _: int) -> Any:
        return 0, len(self.rx)

    @ioctl(termios.TIOCOUTQ, _int, OUT)
    def tiocoutq(self, ctx: Context, _: int) -> Any:
        return 0, 0  # the modem takes every byte at once

    @ioctl(termios.TIOCEXCL)
    def tiocexcl(self, ctx: Context, _: None) -> int:
        self.exclusive = True
        return 0

    @ioctl(termios.TIOCNXCL)
    def tiocnxcl(self, ctx: Context, _: None) -> int:
        self.exclusive = False
        return 0


def main(argv: Optional[List[str]] = None) -> int:
    """Serve one modem until Ctrl-C."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--transport", choices=["auto", "fuse", "cuse"], default="auto",
                        help="the tty ioctls need cuse; fuse refuses to serve this device, saying why")
    parser.add_argument("--mountpoint", help="FUSE: directory to serve in (default: a temporary one)")
    parser.add_argument("--name", default="ttyFUSD0", help="device name (default: ttyFUSD0)")
    args = parser.parse_args(argv)
    kwargs = {"mountpoint": args.mountpoint} if args.mountpoint else {}
    server = open_server(args.transport, **kwargs)
    try:
        server.add(HayesModem(), args.name)
    except ValueError as exc:  # FUSE refuses the tty ioctl declarations, naming CuseServer
        raise SystemExit(f"serial_modem: {exc}") from None
    server.serve_forever(ready=lambda: print(f"modem at {server.path(args.name)} ({server.transport}); "
                                             "Ctrl-C stops", file=sys.stderr, flush=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
