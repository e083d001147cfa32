"""An evdev keyboard: a Linux input device (``/dev/input/eventN``) emulated in Python.

What it emulates: the kernel's evdev interface for a small USB-less keyboard
(``linux/input.h``): a stream of fixed-size ``struct input_event`` records
(``EV_KEY`` press/release, each report closed by ``EV_SYN``/``SYN_REPORT``),
one event queue per open file, blocking reads and poll wakeups, LED state set by
writing ``EV_LED`` events, and the ioctls that input clients issue when they
open a device: EVIOCGVERSION, EVIOCGID, EVIOCGNAME/PHYS/UNIQ, EVIOCGPROP,
EVIOCGBIT (event types, key/LED/repeat codes), EVIOCGKEY/LED/SW/SND (current
state), EVIOCGREP/EVIOCSREP, EVIOCGEFFECTS, EVIOCSCLOCKID and EVIOCGRAB.

Clients that drive it: python-evdev (``evdev.InputDevice(path)``: name,
capabilities, ``read_loop()``, ``grab()``) and Debian's ``evtest``; the tests are
``tests/test_gallery_input_device.py`` (FUSE) and ``tests/cuse/test_gallery_input_device.py``
(CUSE: grabbing, blocking reads).

Run it::

    python examples/input_device.py [--transport fuse|cuse] [--mountpoint DIR]
    fusd serve examples/input_device.py:VirtualKeyboard --mountpoint /tmp/dev

then ``evtest <path>`` in another shell; with ``python examples/input_device.py``
every line typed on its standard input is typed on the keyboard.

Transports: every evdev ioctl number encodes its size and direction, so the FUSE
directory works (the kernel copies ``_IOC_SIZE`` bytes), with one exception:
EVIOCGRAB takes its argument *by value* (``ioctl(fd, EVIOCGRAB, 1)``), and FUSE's
restricted ioctls try to copy 4 bytes from address 1 and fail with EFAULT before
the device sees the call.  Over CUSE (unrestricted ioctls) the value arrives in
``ctx.ioctl_arg`` and grabbing works as on a real device.
"""

from __future__ import annotations

import argparse
import errno
import struct
import sys
import threading
import time
from collections import deque
from typing import Any, Deque, Dict, Iterable, List, Optional, Tuple

from fusd_runtime import POLLIN, POLLOUT, POLLRDNORM, POLLWRNORM, Context, Device, ReplyHandle, ioctl, open_server
from fusd_runtime.ioctl import IOC_READ, IOR, IOW, ioc_dir, ioc_nr, ioc_size, ioc_type

# --- facts from linux/input.h and linux/input-event-codes.h ---------------------------------------
#: struct input_event on 64-bit Linux: struct timeval (two longs), __u16 type, __u16 code, __s32 value
INPUT_EVENT = struct.Struct("@qqHHi")
EV_SYN, EV_KEY, EV_MSC, EV_SW, EV_LED, EV_SND, EV_REP = 0x00, 0x01, 0x04, 0x05, 0x11, 0x12, 0x14
EV_MAX, KEY_MAX, LED_MAX, SW_MAX, SND_MAX, REP_MAX, INPUT_PROP_MAX = 0x1F, 0x2FF, 0x0F, 0x10, 0x07, 0x01, 0x1F
SYN_REPORT, SYN_DROPPED = 0, 3
LED_NUML, LED_CAPSL, LED_SCROLLL = 0, 1, 2
REP_DELAY, REP_PERIOD = 0, 1
BUS_VIRTUAL = 0x06
EV_VERSION = 0x010001

KEY_ESC, KEY_BACKSPACE, KEY_TAB, KEY_ENTER, KEY_LEFTCTRL = 1, 14, 15, 28, 29
KEY_LEFTSHIFT, KEY_RIGHTSHIFT, KEY_LEFTALT, KEY_SPACE, KEY_CAPSLOCK = 42, 54, 56, 57, 58
KEY_F1, KEY_NUMLOCK, KEY_SCROLLLOCK, KEY_F11, KEY_F12 = 59, 69, 70, 87, 88

#: The main block of a PC keyboard: the keys of each row have consecutive codes.
_ROWS = {2: "1234567890-=", 16: "qwertyuiop[]", 30: "asdfghjkl;'`", 43: "\\zxcvbnm,./"}
_SHIFTED_ROWS = {2: "!@#$%^&*()_+", 16: "QWERTYUIOP{}", 30: 'ASDFGHJKL:"~', 43: "|ZXCVBNM<>?"}
#: character -> (key code, needs shift)
KEYMAP: Dict[str, Tuple[int, bool]] = {" ": (KEY_SPACE, False), "\n": (KEY_ENTER, False), "\t": (KEY_TAB, False)}
for _first, _row in _ROWS.items():
    KEYMAP.update({ch: (_first + i, False) for i, ch in enumerate(_row)})
for _first, _row in _SHIFTED_ROWS.items():
    KEYMAP.update({ch: (_first + i, True) for i, ch in enumerate(_row)})

#: the key codes this keyboard has: ESC .. F10, the lock keys, the keypad block, F11, F12
KEYS = sorted(set(range(KEY_ESC, 84)) | {KEY_F11, KEY_F12})
LEDS = (LED_NUML, LED_CAPSL, LED_SCROLLL)

# ioctl numbers: the fixed ones, and the nr of the ones whose size is the caller's buffer length
EVIOCGVERSION = IOR("E", 0x01, 4)
EVIOCGID = IOR("E", 0x02, 8)  # struct input_id: bustype, vendor, product, version (__u16 each)
EVIOCGREP = IOR("E", 0x03, 8)  # unsigned int[2]: delay, period (ms)
EVIOCSREP = IOW("E", 0x03, 8)
EVIOCGEFFECTS = IOR("E", 0x84, 4)
EVIOCGRAB = IOW("E", 0x90, 4)  # the argument is the int itself, not a pointer to it
EVIOCSCLOCKID = IOW("E", 0xA0, 4)
NR_GNAME, NR_GPHYS, NR_GUNIQ, NR_GPROP = 0x06, 0x07, 0x08, 0x09
NR_GKEY, NR_GLED, NR_GSND, NR_GSW = 0x18, 0x19, 0x1A, 0x1B
NR_GBIT = 0x20  # EVIOCGBIT(ev, len) is nr 0x20 + ev
EV_REL, EV_ABS, EV_FF = 0x02, 0x03, 0x15
#: the event types EVIOCGBIT answers for (0: the types themselves) and their highest code
EVIOCGBIT_MAX = {0: EV_MAX, EV_KEY: KEY_MAX, EV_REL: 0x0F, EV_ABS: 0x3F, EV_MSC: 0x07, EV_LED: LED_MAX,
                 EV_SND: SND_MAX, EV_FF: 0x7F, EV_SW: SW_MAX}


def bitmap(bits: Iterable[int], maxbit: int) -> bytes:
    """A kernel bitmap as evdev copies it out: ``BITS_TO_LONGS(maxbit)`` longs of little-endian bits."""
    out = bytearray((maxbit + 63) // 64 * 8)
    for b in bits:
        out[b // 8] |= 1 << (b % 8)
    return bytes(out)


class _Client:
    """One open file: evdev gives every reader its own queue of events."""

    __slots__ = ("queue", "waiting")

    def __init__(self) -> None:
        self.queue: Deque[bytes] = deque()
        self.waiting: Optional[ReplyHandle] = None  # a blocked read(2)


class VirtualKeyboard(Device):
    """A keyboard with LEDs and key repeat settings, fed by ``key_down``/``key_up``/``tap``/``type_text``.

    The producer methods may be called from any thread (they take the device's
    lock; replies and poll notifications are thread-safe in the runtime).
    """

    mode = 0o660
    queue_limit = 1024  # events per client before the oldest are dropped (SYN_DROPPED), like evdev's buffer

    def __init__(self, name: str = "fusd virtual keyboard", phys: str = "fusd/input0", uniq: str = "",
                 vendor: int = 0x1D6B, product: int = 0x0104, version: int = 0x0001) -> None:
        self.device_name, self.phys, self.uniq = name, phys, uniq
        self.input_id = struct.pack("<4H", BUS_VIRTUAL, vendor, product, version)
        self.keys_down: set = set()
        self.leds_on: set = set()
        self.repeat = [250, 33]  # REP_DELAY, REP_PERIOD in ms: the kernel's defaults
        self.clients: Dict[int, _Client] = {}
        self.grabbed_by: Optional[int] = None  # fh of the client that grabbed the device
        self.lock = threading.Lock()

    # --- producing events -------------------------------------------------------------------
    def emit(self, events: Iterable[Tuple[int, int, int]]) -> None:
        """Deliver ``(type, code, value)`` events, stamped now, to every reader (or the grabbing one)."""
        now = time.time()
        sec, usec = int(now), int((now % 1) * 1_000_000)
        records = [INPUT_EVENT.pack(sec, usec, t, c, v) for t, c, v in events]
        with self.lock:
            targets = [self.clients[self.grabbed_by]] if self.grabbed_by is not None else list(self.clients.values())
            for client in targets:
                client.queue.extend(records)
                if len(client.queue) > self.queue_limit:  # a reader that does not keep up loses the backlog
                    client.queue.clear()
                    client.queue.append(INPUT_EVENT.pack(sec, usec, EV_SYN, SYN_DROPPED, 0))
                if client.waiting is not None:
                    handle, client.waiting = client.waiting, None
                    handle.reply(self._take(client, handle.size))
        self.notify_poll()

    def key_down(self, code: int) -> None:
        """Key down, then SYN_REPORT."""
        with self.lock:
            self.keys_down.add(code)
        self.emit([(EV_KEY, code, 1), (EV_SYN, SYN_REPORT, 0)])

    def key_up(self, code: int) -> None:
        """Key up, then SYN_REPORT."""
        with self.lock:
            self.keys_down.discard(code)
        self.emit([(EV_KEY, code, 0), (EV_SYN, SYN_REPORT, 0)])

    def tap(self, code: int, shift: bool = False) -> None:
        """Press and release a key (with left shift held around it if ``shift``)."""
        if shift:
            self.key_down(KEY_LEFTSHIFT)
        self.key_down(code)
        self.key_up(code)
        if shift:
            self.key_up(KEY_LEFTSHIFT)

    def type_text(self, text: str) -> None:
        """Type ``text`` (US layout); characters without a key are skipped."""
        for ch in text:
            if ch in KEYMAP:
                self.tap(*KEYMAP[ch])

    # --- the file interface -----------------------------------------------------------------
    def open(self, ctx: Context) -> None:
        with self.lock:
            self.clients[ctx.fh] = _Client()

    def release(self, ctx: Context) -> None:
        with self.lock:
            self.clients.pop(ctx.fh, None)
            if self.grabbed_by == ctx.fh:
                self.grabbed_by = None

    def _take(self, client: _Client, size: int) -> bytes:
        n = min(len(client.queue), size // INPUT_EVENT.size)
        return b"".join(client.queue.popleft() for _ in range(n))

    def read(self, ctx: Context, size: int, offset: int) -> Any:
        if size < INPUT_EVENT.size:  # evdev refuses buffers that cannot hold one whole event
            raise OSError(errno.EINVAL, "read buffer smaller than struct input_event")
        with self.lock:
            client = self.clients[ctx.fh]
            if client.queue:
                return self._take(client, size)
            if ctx.nonblock:
                raise BlockingIOError(errno.EAGAIN, "no events")

            def interrupted(handle: ReplyHandle) -> None:
                with self.lock:
                    if client.waiting is handle:
                        client.waiting = None

            client.waiting = ctx.defer(on_interrupt=interrupted)
            return client.waiting

    def write(self, ctx: Context, data: bytes, offset: int) -> int:
        """Writing events injects them, as evdev does: EV_LED sets the LEDs, EV_KEY presses keys."""
        if len(data) < INPUT_EVENT.size:
            raise OSError(errno.EINVAL, "write smaller than struct input_event")
        n = len(data) // INPUT_EVENT.size
        changes: List[Tuple[int, int, int]] = []
        with self.lock:
            for i in range(n):
                _, _, etype, code, value = INPUT_EVENT.unpack_from(data, i * INPUT_EVENT.size)
                if etype == EV_LED and code in LEDS and (code in self.leds_on) != bool(value):
                    (self.leds_on.add if value else self.leds_on.discard)(code)
                    changes.append((etype, code, 1 if value else 0))
                elif etype == EV_KEY and code in KEYS and value in (0, 1) and (code in self.keys_down) != bool(value):
                    (self.keys_down.add if value else self.keys_down.discard)(code)
                    changes.append((etype, code, value))
        if changes:
            self.emit(changes + [(EV_SYN, SYN_REPORT, 0)])
        return n * INPUT_EVENT.size

    def poll(self, ctx: Context, events: int) -> int:
        with self.lock:
            client = self.clients.get(ctx.fh)
            ready = bool(client and client.queue)
        return POLLOUT | POLLWRNORM | (POLLIN | POLLRDNORM if ready else 0)

    # --- ioctls ------------------------------------------------------------------------------
    @ioctl(EVIOCGRAB, None)  # no argument data: the int is ctx.ioctl_arg (reaches us on CUSE only)
    def grab(self, ctx: Context, _: None) -> int:
        with self.lock:
            if ctx.ioctl_arg:
                if self.grabbed_by is not None:
                    raise OSError(errno.EBUSY, "grabbed by another client")
                self.grabbed_by = ctx.fh
            else:
                if self.grabbed_by != ctx.fh:
                    raise OSError(errno.EINVAL, "not grabbed by this client")
                self.grabbed_by = None
        return 0

    def ioctl(self, ctx: Context, cmd: int, arg: bytes, out_size: int) -> Any:
        """The sized evdev ioctls, as raw bytes: the kernel copied ``_IOC_SIZE(cmd)`` bytes for us."""
        if cmd == EVIOCGVERSION:
            return struct.pack("<i", EV_VERSION)
        if cmd == EVIOCGID:
            return self.input_id
        if cmd == EVIOCGREP:
            return struct.pack("<2I", *self.repeat)
        if cmd == EVIOCSREP:
            self.repeat = list(struct.unpack("<2I", arg))
            return 0
        if cmd == EVIOCGEFFECTS:
            return struct.pack("<i", 0)  # no force feedback
        if cmd == EVIOCSCLOCKID:
            return 0  # timestamps are wall-clock (CLOCK_REALTIME) whatever is asked
        if ioc_type(cmd) != ord("E") or ioc_dir(cmd) != IOC_READ:
            raise OSError(errno.ENOTTY, "unknown ioctl")
        nr, size = ioc_nr(cmd), ioc_size(cmd)
        if nr in (NR_GNAME, NR_GPHYS, NR_GUNIQ):
            text = {NR_GNAME: self.device_name, NR_GPHYS: self.phys, NR_GUNIQ: self.uniq}[nr]
            if not text:
                raise OSError(errno.ENOENT, "no such string")  # what evdev answers for a missing phys/uniq
            data = (text.encode() + b"\0")[:size]  # truncated without NUL, as evdev's str_to_user does
            return len(data), data  # the kernel returns the number of bytes copied
        with self.lock:  # a snapshot: producer threads change the key state
            states = {NR_GPROP: (), NR_GKEY: set(self.keys_down), NR_GLED: set(self.leds_on), NR_GSND: (), NR_GSW: ()}
        maxes = {NR_GPROP: INPUT_PROP_MAX, NR_GKEY: KEY_MAX, NR_GLED: LED_MAX, NR_GSND: SND_MAX, NR_GSW: SW_MAX}
        if nr in states:
            return self._bits(states[nr], maxes[nr], size)
        if NR_GBIT <= nr <= NR_GBIT + EV_MAX:
            ev = nr - NR_GBIT
            if ev not in EVIOCGBIT_MAX:  # evdev answers only these types (EV_REP is read with EVIOCGREP)
                raise OSError(errno.EINVAL, "no bitmap for this event type")
            have = {0: (EV_SYN, EV_KEY, EV_LED, EV_REP), EV_KEY: KEYS, EV_LED: LEDS}.get(ev, ())
            return self._bits(have, EVIOCGBIT_MAX[ev], size)
        raise OSError(errno.ENOTTY, "unknown evdev ioctl")

    @staticmethod
    def _bits(bits: Iterable[int], maxbit: int, size: int) -> Tuple[int, bytes]:
        data = bitmap(bits, maxbit)[:size]
        return len(data), data  # like evdev's bits_to_user: the length copied is the result


def main(argv: Optional[List[str]] = None) -> int:
    """Serve one keyboard; each line read from stdin is typed on it."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--transport", choices=["auto", "fuse", "cuse"], default="auto")
    parser.add_argument("--mountpoint", help="FUSE: directory to serve in (default: a temporary one)")
    parser.add_argument("--name", default="fusd-kbd", help="device name (default: fusd-kbd)")
    args = parser.parse_args(argv)
    kwargs = {"mountpoint": args.mountpoint} if args.mountpoint else {}
    server = open_server(args.transport, **kwargs)
    keyboard = VirtualKeyboard()
    server.add(keyboard, args.name)

    def typist() -> None:
        for line in sys.stdin:
            keyboard.type_text(line)

    def ready() -> None:
        print(f"keyboard at {server.path(args.name)} ({server.transport}); type lines here, Ctrl-C stops",
              file=sys.stderr, flush=True)
        threading.Thread(target=typist, daemon=True).start()

    server.serve_forever(ready=ready)
    return 0


if __name__ == "__main__":
    sys.exit(main())
