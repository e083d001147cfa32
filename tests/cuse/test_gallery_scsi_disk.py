"""Gallery, CUSE tier: the SCSI disk behind an sg node, driven by Debian's sg3-utils.

The node is served with character major 21 (``SCSI_GENERIC_MAJOR``, free in the
guest: no sg driver loaded), which is how sg3-utils tells an sg device: it then
asks ``SG_GET_VERSION_NUM``, speaks the v3 ``SG_IO`` interface, and ``sg_dd``
moves data with READ(10)/WRITE(10).  Each ``SG_IO`` follows three pointers of
``struct sg_io_hdr``; ``dxfer_direction`` decides whether the data buffer is
copied in (WRITE) or out (READ, INQUIRY...), and only the status fields of the
header are written back.
"""

from __future__ import annotations

import itertools
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any, Iterator, Tuple

import pytest

from examples.scsi_disk import SG_GET_VERSION_NUM, ScsiDisk
from fusd_runtime.cuse import CuseServer

from .conftest import needs_cuse, unique_name

pytestmark = [needs_cuse, pytest.mark.skipif(shutil.which("sg_inq") is None, reason="needs Debian's sg3-utils")]
SCSI_GENERIC_MAJOR = 21
_minors = itertools.count(200)


def sg(*cmd: str, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env={**os.environ, "LC_ALL": "C"})
    if check:
        assert proc.returncode == 0, f"{cmd} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
    return proc


@pytest.fixture
def disk(cuse: CuseServer) -> Iterator[Tuple[ScsiDisk, str]]:
    name = unique_name("sg")
    dev = cuse.add(ScsiDisk(blocks=2048, serial="FUSD4242"), name, major=SCSI_GENERIC_MAJOR, minor=next(_minors))
    yield dev, cuse.path(name)
    cuse.remove(name)


def test_node_is_an_sg_device(disk: Any) -> None:
    dev, path = disk
    assert os.major(os.stat(path).st_rdev) == SCSI_GENERIC_MAJOR


def test_sg_inq_sg_turs_sg_readcap(disk: Any) -> None:
    dev, path = disk
    out = sg("sg_inq", path).stdout
    assert re.search(r"Vendor identification: FUSD\s*$", out, re.M), out
    assert re.search(r"Product identification: Python disk\s*$", out, re.M), out
    assert re.search(r"Product revision level: 0\.1\s*$", out, re.M), out
    assert "PDT=0" in out
    out = sg("sg_inq", "--page=0x80", path).stdout
    assert "FUSD4242" in out, out
    sg("sg_turs", path)
    out = sg("sg_readcap", path).stdout
    assert "Last LBA=2047 (0x7ff), Number of logical blocks=2048" in out, out
    assert "Logical block length=512 bytes" in out
    out = sg("sg_readcap", "--16", path).stdout
    assert "Last LBA=2047" in out, out
    assert {0x12, 0x00, 0x25, 0x9E} <= set(dev.commands)


def test_sg_dd_write_then_read_round_trip(disk: Any, tmp_path: Path) -> None:
    dev, path = disk
    src, back = tmp_path / "src", tmp_path / "back"
    payload = os.urandom(8 * 512)
    src.write_bytes(payload)
    sg("sg_dd", f"if={src}", f"of={path}", "bs=512", "count=8", "seek=100")  # WRITE(10)
    assert bytes(dev.data[100 * 512:108 * 512]) == payload
    sg("sg_dd", f"if={path}", f"of={back}", "bs=512", "count=8", "skip=100")  # READ(10)
    assert back.read_bytes() == payload
    assert 0x2A in dev.commands and 0x28 in dev.commands
    assert dev.reserved > 0  # sg_dd sized the reserved buffer with SG_SET_RESERVED_SIZE


def test_sg_raw_read_and_an_illegal_request(disk: Any, tmp_path: Path) -> None:
    dev, path = disk
    dev.data[5 * 512:6 * 512] = b"\xa5" * 512
    out = tmp_path / "block"
    sg("sg_raw", "-r", "512", "-o", str(out), path, "28", "00", "00", "00", "00", "05", "00", "00", "01", "00")
    assert out.read_bytes() == b"\xa5" * 512
    proc = sg("sg_raw", path, "ff", "00", "00", "00", "00", "00", check=False)
    text = proc.stdout + proc.stderr
    assert proc.returncode != 0 and "Illegal Request" in text and "nvalid command operation code" in text, text
    # a READ past the end: LBA out of range, reported in the sense data the device wrote through sbp
    proc = sg("sg_raw", "-r", "512", path, "28", "00", "00", "00", "10", "00", "00", "00", "01", "00", check=False)
    assert "out of range" in (proc.stdout + proc.stderr).lower()


def test_version_num_is_what_selects_the_v3_interface(disk: Any) -> None:
    import fcntl
    import struct
    dev, path = disk
    fd = os.open(path, os.O_RDWR | os.O_NONBLOCK)
    try:
        assert struct.unpack("i", fcntl.ioctl(fd, SG_GET_VERSION_NUM, bytes(4)))[0] == 30536
    finally:
        os.close(fd)
