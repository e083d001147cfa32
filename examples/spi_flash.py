"""An SPI NOR flash chip behind a spidev node (``/dev/spidevB.C``), emulated in Python.

What it emulates: the Linux spidev interface to one chip select, with a
Winbond W25Q80-like 1 MiB serial flash on it: JEDEC ID (0x9F -> EF 40 14),
manufacturer/device ID (0x90), release from power-down / device ID (0xAB),
READ (0x03) and FAST READ (0x0B) from a 24-bit address, READ STATUS (0x05),
WRITE ENABLE / DISABLE (0x06 / 0x04), PAGE PROGRAM (0x02: up to 256 bytes,
wrapping inside the page, bits only go 1 -> 0, needs write enable), SECTOR
ERASE (0x20, 4 KiB), BLOCK ERASE (0xD8, 64 KiB) and CHIP ERASE (0xC7/0x60).
Like the chip, it acts when chip select is released: at the end of a message,
or after a transfer with ``cs_change``.  Bytes it does not drive read 0xFF.

The spidev ioctls: ``SPI_IOC_MESSAGE(N)`` (an array of N ``struct
spi_ioc_transfer``, declared once for every N with ``Sized``; ``tx_buf`` and
``rx_buf`` are u64 addresses, either may be 0: no data sent — zeros are shifted
out — or received), ``SPI_IOC_RD/WR_MODE``, ``_MODE32``, ``_LSB_FIRST``,
``_BITS_PER_WORD`` and ``_MAX_SPEED_HZ``; ``read``/``write`` are half-duplex
transfers of one message each, as on spidev.  A message longer than spidev's
``bufsiz`` (4096 bytes) answers EMSGSIZE, as spidev does.

Clients that drive it: Debian's spi-tools (``spi-config -d PATH -q``, ``spi-pipe``)
and py-spidev (``spidev.SpiDev().open_path(PATH)``, ``xfer2``); the test is
``tests/cuse/test_gallery_spi_flash.py``::

    python examples/spi_flash.py --transport cuse        # -> /dev/spidev0.0
    spi-config -d /dev/spidev0.0 -q
    printf '\\x9f\\0\\0\\0' | spi-pipe -d /dev/spidev0.0 -b 4 | xxd   # ff ef 40 14

Transport: CUSE only.  ``SPI_IOC_MESSAGE``'s transfers point to the data
buffers; FUSE's restricted ioctls copy only the array (the mode ioctls alone
would work there).
"""

from __future__ import annotations

import argparse
import errno
import sys
from typing import Any, List, Optional

from fusd_runtime import IN, OUT, Context, Device, ioctl, open_server
from fusd_runtime.ioctl import IOR, IOW, CStruct, Pointer, Sized, c

# --- facts from <linux/spi/spidev.h>, <linux/spi/spi.h> ------------------------------------
SPI_IOC_MAGIC = "k"
spi_ioc_transfer = CStruct(
    "tx_buf" / Pointer("len", direction=IN, optional=True, c_type=c.u64),  # 0: shift out zeros
    "rx_buf" / Pointer("len", direction=OUT, optional=True, c_type=c.u64),  # 0: discard what comes in
    "len" / c.u32, "speed_hz" / c.u32, "delay_usecs" / c.u16, "bits_per_word" / c.u8, "cs_change" / c.u8,
    "tx_nbits" / c.u8, "rx_nbits" / c.u8, "word_delay_usecs" / c.u8, "pad" / c.u8, name="spi_ioc_transfer")


def SPI_IOC_MESSAGE(n: int) -> int:
    """``_IOW('k', 0, char[n * sizeof(struct spi_ioc_transfer)])``."""
    return IOW(SPI_IOC_MAGIC, 0, n * spi_ioc_transfer.sizeof())


SPI_IOC_RD_MODE, SPI_IOC_WR_MODE = IOR(SPI_IOC_MAGIC, 1, 1), IOW(SPI_IOC_MAGIC, 1, 1)
SPI_IOC_RD_LSB_FIRST, SPI_IOC_WR_LSB_FIRST = IOR(SPI_IOC_MAGIC, 2, 1), IOW(SPI_IOC_MAGIC, 2, 1)
SPI_IOC_RD_BITS_PER_WORD, SPI_IOC_WR_BITS_PER_WORD = IOR(SPI_IOC_MAGIC, 3, 1), IOW(SPI_IOC_MAGIC, 3, 1)
SPI_IOC_RD_MAX_SPEED_HZ, SPI_IOC_WR_MAX_SPEED_HZ = IOR(SPI_IOC_MAGIC, 4, 4), IOW(SPI_IOC_MAGIC, 4, 4)
SPI_IOC_RD_MODE32, SPI_IOC_WR_MODE32 = IOR(SPI_IOC_MAGIC, 5, 4), IOW(SPI_IOC_MAGIC, 5, 4)
SPI_CPHA, SPI_CPOL, SPI_CS_HIGH, SPI_LSB_FIRST, SPI_3WIRE, SPI_LOOP, SPI_NO_CS, SPI_READY = (
    0x01, 0x02, 0x04, 0x08, 0x10, 0x20, 0x40, 0x80)
SPI_TX_DUAL, SPI_TX_QUAD, SPI_RX_DUAL, SPI_RX_QUAD = 0x100, 0x200, 0x400, 0x800
#: the mode bits this "controller" supports (what spidev checks WR_MODE32 against)
MODE_BITS = SPI_CPHA | SPI_CPOL | SPI_CS_HIGH | SPI_LSB_FIRST | SPI_3WIRE | SPI_NO_CS | SPI_READY
BUFSIZ = 4096  # spidev's default bufsiz module parameter

# --- the chip: Winbond W25Q80 (8 Mbit) ---------------------------------------------------
JEDEC_ID = bytes([0xEF, 0x40, 0x14])
DEVICE_ID = 0x13
SIZE = 1 << 20
PAGE, SECTOR, BLOCK = 256, 4096, 65536
READ, FAST_READ, PROGRAM, RDSR, WREN, WRDI = 0x03, 0x0B, 0x02, 0x05, 0x06, 0x04
SECTOR_ERASE, BLOCK_ERASE, CHIP_ERASE, CHIP_ERASE2, JEDEC, MFR_ID, RELEASE_PD = (
    0x20, 0xD8, 0xC7, 0x60, 0x9F, 0x90, 0xAB)
WEL = 0x02


class SpiFlash(Device):
    """A spidev node with a serial NOR flash on its chip select."""

    def __init__(self, image: Optional[bytes] = None) -> None:
        self.mem = bytearray(image if image is not None else b"\xff" * SIZE)
        if len(self.mem) != SIZE:
            raise ValueError(f"a W25Q80 holds {SIZE} bytes, the image has {len(self.mem)}")
        self.spi_mode = 0  # SPI mode bits (``mode`` is the Device's: the node's permissions)
        self.lsb_first = 0
        self.bits_per_word = 8
        self.max_speed_hz = 50_000_000
        self.status = 0
        self.cycle = bytearray()  # MOSI bytes since chip select was asserted
        self.messages = 0

    # ------------------------------------------------------------------ spidev ioctls
    @ioctl(SPI_IOC_MESSAGE(0), Sized(spi_ioc_transfer), IN)
    def message(self, ctx: Context, xfers: List[Any]) -> int:
        """One SPI message: chip select held across its transfers (unless ``cs_change``)."""
        if sum(x.len for x in xfers) > BUFSIZ:
            raise OSError(errno.EMSGSIZE, f"a message carries at most {BUFSIZ} bytes (spidev bufsiz)")
        for x in xfers:
            if x.bits_per_word not in (0, 8) or x.tx_nbits > 1 or x.rx_nbits > 1:
                raise OSError(errno.EINVAL, "only single-wire 8-bit words")
        total = 0
        self.messages += 1
        for i, x in enumerate(xfers):
            tx = x.tx_buf if x.tx_buf is not None else bytes(x.len)
            rx = self.clock(tx)
            if x.rx_buf is not None:
                x.rx_buf[:] = rx
            total += x.len
            if x.cs_change and i != len(xfers) - 1:
                self.deselect()
        self.deselect()
        return total

    @ioctl(SPI_IOC_RD_MODE, c.u8)
    def rd_mode(self, ctx: Context, _: int) -> Any:
        return 0, self.spi_mode & 0xFF

    @ioctl(SPI_IOC_WR_MODE, c.u8)
    def wr_mode(self, ctx: Context, mode: int) -> int:
        return self._set_mode(mode | (self.spi_mode & ~0xFF))

    @ioctl(SPI_IOC_RD_MODE32, c.u32)
    def rd_mode32(self, ctx: Context, _: int) -> Any:
        return 0, self.spi_mode

    @ioctl(SPI_IOC_WR_MODE32, c.u32)
    def wr_mode32(self, ctx: Context, mode: int) -> int:
        return self._set_mode(mode)

    def _set_mode(self, mode: int) -> int:
        if mode & ~MODE_BITS:
            raise OSError(errno.EINVAL, f"mode bits {mode & ~MODE_BITS:#x} not supported")
        self.spi_mode = mode
        self.lsb_first = 1 if mode & SPI_LSB_FIRST else 0
        return 0

    @ioctl(SPI_IOC_RD_LSB_FIRST, c.u8)
    def rd_lsb(self, ctx: Context, _: int) -> Any:
        return 0, self.lsb_first

    @ioctl(SPI_IOC_WR_LSB_FIRST, c.u8)
    def wr_lsb(self, ctx: Context, lsb: int) -> int:
        return self._set_mode((self.spi_mode | SPI_LSB_FIRST) if lsb else (self.spi_mode & ~SPI_LSB_FIRST))

    @ioctl(SPI_IOC_RD_BITS_PER_WORD, c.u8)
    def rd_bits(self, ctx: Context, _: int) -> Any:
        return 0, self.bits_per_word

    @ioctl(SPI_IOC_WR_BITS_PER_WORD, c.u8)
    def wr_bits(self, ctx: Context, bits: int) -> int:
        if bits not in (0, 8):
            raise OSError(errno.EINVAL, "the flash speaks 8-bit words only")
        self.bits_per_word = 8
        return 0

    @ioctl(SPI_IOC_RD_MAX_SPEED_HZ, c.u32)
    def rd_speed(self, ctx: Context, _: int) -> Any:
        return 0, self.max_speed_hz

    @ioctl(SPI_IOC_WR_MAX_SPEED_HZ, c.u32)
    def wr_speed(self, ctx: Context, hz: int) -> int:
        if hz == 0:
            raise OSError(errno.EINVAL, "speed 0")
        self.max_speed_hz = hz
        return 0

    # ------------------------------------------------------------------ half duplex, as spidev
    def read(self, ctx: Context, size: int, offset: int) -> bytes:
        if size > BUFSIZ:
            raise OSError(errno.EMSGSIZE, f"at most {BUFSIZ} bytes")
        rx = self.clock(bytes(size))
        self.deselect()
        return rx

    def write(self, ctx: Context, data: bytes, offset: int) -> int:
        if len(data) > BUFSIZ:
            raise OSError(errno.EMSGSIZE, f"at most {BUFSIZ} bytes")
        self.clock(data)
        self.deselect()
        return len(data)

    # ------------------------------------------------------------------ the chip
    def clock(self, tx: bytes) -> bytes:
        """Shift ``tx`` out with chip select asserted; return what the flash shifted back."""
        start = len(self.cycle)
        self.cycle += tx
        mosi = self.cycle
        n = len(tx)
        cmd = mosi[0] if mosi else 0
        out = bytearray(b"\xff" * n)

        def fill(first: int, data: Any) -> None:
            """MISO bytes ``data`` from cycle position ``first`` on (clipped to this transfer)."""
            lo = max(first, start)
            hi = min(first + len(data), start + n)
            if hi > lo:
                out[lo - start:hi - start] = data[lo - first:hi - first]

        if cmd in (READ, FAST_READ):
            header = 4 if cmd == READ else 5
            if len(mosi) > header:
                addr = int.from_bytes(mosi[1:4], "big") % SIZE
                count = len(mosi) - header
                fill(header, (self.mem + self.mem)[addr:addr + count] if addr + count > SIZE
                     else self.mem[addr:addr + count])
        elif cmd == JEDEC:
            fill(1, JEDEC_ID)
        elif cmd == RDSR:
            fill(1, bytes([self.status]) * max(len(mosi) - 1, 0))
        elif cmd == MFR_ID:
            fill(4, bytes([JEDEC_ID[0], DEVICE_ID]) * max((len(mosi) - 3) // 2, 1))
        elif cmd == RELEASE_PD:
            fill(4, bytes([DEVICE_ID]) * max(len(mosi) - 4, 0))
        return bytes(out)

    def deselect(self) -> None:
        """Chip select released: the command that was clocked in takes effect."""
        mosi, self.cycle = bytes(self.cycle), bytearray()
        if not mosi:
            return
        cmd = mosi[0]
        if cmd == WREN:
            self.status |= WEL
        elif cmd == WRDI:
            self.status &= ~WEL
        elif cmd in (PROGRAM, SECTOR_ERASE, BLOCK_ERASE, CHIP_ERASE, CHIP_ERASE2):
            if not self.status & WEL:
                return  # ignored without write enable, as on the chip
            self.status &= ~WEL
            if cmd in (CHIP_ERASE, CHIP_ERASE2):
                self.mem[:] = b"\xff" * SIZE
                return
            if len(mosi) < 4:
                return
            addr = int.from_bytes(mosi[1:4], "big") % SIZE
            if cmd == PROGRAM:
                page = addr - addr % PAGE
                for i, b in enumerate(mosi[4:4 + PAGE]):  # wraps inside the page
                    a = page + (addr % PAGE + i) % PAGE
                    self.mem[a] &= b
            else:
                unit = SECTOR if cmd == SECTOR_ERASE else BLOCK
                base = addr - addr % unit
                self.mem[base:base + unit] = b"\xff" * unit


def main(argv: Optional[List[str]] = None) -> int:
    """Serve one flash until Ctrl-C."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     epilog="example: %(prog)s --transport cuse; then spi-config -d /dev/spidev0.0 -q")
    parser.add_argument("--transport", choices=["auto", "fuse", "cuse"], default="auto",
                        help="SPI_IOC_MESSAGE needs cuse; fuse refuses to serve this device, saying why")
    parser.add_argument("--name", default="spidev0.0", help="device name under /dev (default: spidev0.0)")
    parser.add_argument("--image", help="a 1 MiB file with the flash's initial contents")
    args = parser.parse_args(argv)
    image = None
    if args.image:
        with open(args.image, "rb") as f:
            image = f.read()
    server = open_server(args.transport)
    try:
        server.add(SpiFlash(image), args.name)
    except ValueError as exc:  # FUSE refuses the SPI_IOC_MESSAGE declaration, naming CuseServer
        raise SystemExit(f"spi_flash: {exc}") from None
    server.serve_forever(ready=lambda: print(f"flash at {server.path(args.name)} ({server.transport}); "
                                             "Ctrl-C stops", file=sys.stderr, flush=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
