"""Gallery, CUSE tier: the SPI flash behind a spidev node, driven by spi-tools and py-spidev.

``spi-config -q`` reads the mode, LSB-first, bits per word and speed with the
spidev ioctls; ``spi-pipe`` sends each block of its stdin as one
``SPI_IOC_MESSAGE(1)`` and writes what came back; py-spidev's ``xfer2`` sends
one transfer, ``SpiDev.mode``/``max_speed_hz`` set the configuration.  Every
transfer's ``tx_buf``/``rx_buf`` are followed through FUSE_IOCTL_RETRY rounds by
the runtime, from the ``Sized(spi_ioc_transfer)`` declaration.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import os
import shutil
import subprocess
import sys

import pytest

from examples.spi_flash import JEDEC_ID, SPI_IOC_MESSAGE, SpiFlash, spi_ioc_transfer
from fusd_runtime.cuse import CuseServer
from fusd_runtime.ioctl import compile_schema

from .conftest import ReadOnlyPage, needs_cuse, unique_name

pytestmark = needs_cuse


def run(*cmd: str, data: bytes = b"") -> bytes:
    proc = subprocess.run(cmd, input=data, capture_output=True, timeout=120)
    assert proc.returncode == 0, f"{cmd} failed ({proc.returncode}): {proc.stderr.decode(errors='replace')}"
    return proc.stdout


@pytest.fixture
def flash(cuse: CuseServer):
    name = unique_name("spidev")
    dev = cuse.add(SpiFlash(), name)
    yield dev, cuse.path(name)
    cuse.remove(name)


@pytest.mark.skipif(shutil.which("spi-config") is None, reason="needs Debian's spi-tools")
def test_spi_config_and_spi_pipe(flash) -> None:
    dev, path = flash
    out = run("spi-config", "-d", path, "-q").decode()
    assert out.strip() == f"{path}: mode=0, lsb=0, bits=8, speed=50000000, spiready=0"
    run("spi-config", "-d", path, "-m", "3", "-s", "1000000")
    assert "mode=3, lsb=0, bits=8, speed=1000000" in run("spi-config", "-d", path, "-q").decode()
    assert dev.spi_mode == 3 and dev.max_speed_hz == 1_000_000

    # JEDEC ID: one 4-byte message, the first byte clocked while the command goes out
    assert run("spi-pipe", "-d", path, "-b", "4", "-n", "1", data=b"\x9f\0\0\0") == b"\xff" + JEDEC_ID
    # write enable, page program at 0x001000, then read it back: three messages of spi-pipe -b
    run("spi-pipe", "-d", path, "-b", "1", "-n", "1", data=b"\x06")
    run("spi-pipe", "-d", path, "-b", "9", "-n", "1", data=b"\x02\x00\x10\x00fusd!")
    got = run("spi-pipe", "-d", path, "-b", "9", "-n", "1", data=b"\x03\x00\x10\x00" + bytes(5))
    assert got == b"\xff" * 4 + b"fusd!"
    assert bytes(dev.mem[0x1000:0x1005]) == b"fusd!"


PY_SPIDEV_CLIENT = """
import sys
import spidev
spi = spidev.SpiDev()
spi.open_path(sys.argv[1])
print(spi.mode, spi.bits_per_word)
spi.max_speed_hz = 2000000
spi.mode = 0b01
print(spi.xfer2([0x9F, 0, 0, 0]))
spi.xfer2([0x06])
spi.xfer2([0x02, 0x00, 0x20, 0x00] + list(b"hello"))
print(bytes(spi.xfer2([0x03, 0x00, 0x20, 0x00] + [0] * 5)[4:]))
print(spi.xfer2([0x05, 0]))
spi.close()
"""


def test_py_spidev_xfer2_and_settings(flash) -> None:
    """py-spidev in its own process: its C calls keep the GIL across ioctl(), so it cannot share ours."""
    pytest.importorskip("spidev")
    dev, path = flash
    proc = subprocess.run([sys.executable, "-c", PY_SPIDEV_CLIENT, path], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout.splitlines()
    assert out[0] == "0 8"
    assert out[1] == str([0xFF, *JEDEC_ID])
    assert out[2] == repr(b"hello")
    assert out[3] == "[255, 0]"  # WEL cleared by the program
    assert dev.max_speed_hz == 2_000_000 and dev.spi_mode == 1 and bytes(dev.mem[0x2000:0x2005]) == b"hello"


def test_two_transfers_one_message_read_only_tx_and_null_buffers(flash) -> None:
    """spidev's full message form: the command from read-only memory, rx_buf 0 then tx_buf 0."""
    dev, path = flash
    dev.mem[0x1000:0x1004] = b"abcd"
    rx = ctypes.create_string_buffer(4)
    enc = compile_schema(spi_ioc_transfer).encode
    fd = os.open(path, os.O_RDWR)
    try:
        with ReadOnlyPage(b"\x03\x00\x10\x00") as cmd:
            msg = bytearray(enc(dict(tx_buf=cmd.addr, rx_buf=0, len=4))  # the command: nothing received
                            + enc(dict(tx_buf=0, rx_buf=ctypes.addressof(rx), len=4)))  # data: zeros shifted out
            assert fcntl.ioctl(fd, SPI_IOC_MESSAGE(2), msg) == 8
        assert rx.raw == b"abcd"
        # a 4097-byte message is more than spidev's bufsiz: EMSGSIZE from the device, as spidev says
        with pytest.raises(OSError) as exc:
            fcntl.ioctl(fd, SPI_IOC_MESSAGE(1), bytearray(enc(dict(tx_buf=0, rx_buf=0, len=4097))))
        assert exc.value.errno == errno.EMSGSIZE
    finally:
        os.close(fd)
