"""C layouts (``CStruct``) against the kernel and libc headers, byte for byte.

A C program compiled here against ``<scsi/sg.h>``, ``<linux/spi/spidev.h>``,
``<linux/i2c.h>``/``<linux/i2c-dev.h>``, ``<linux/rtc.h>`` and ``<asm-generic/termbits.h>`` prints ``sizeof``
and every ``offsetof`` of the structs the gallery and the tests declare, and
the bytes of each struct filled with known values.  The numbers come from the
compiler, never from our code: a padding rule got wrong, a field of the wrong
width or a missing field fails here.  Then the compiled codec decodes the C
bytes to the same values and encodes them back to the same bytes.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any, Dict, List, Tuple

import pytest

from examples.rtc import rtc_time as gallery_rtc_time
from examples.rtc import rtc_wkalrm as gallery_rtc_wkalrm
from examples.scsi_disk import sg_io_hdr, sg_scsi_id
from examples.serial_modem import kernel_termios, termios2
from examples.spi_flash import spi_ioc_transfer
from fusd_runtime.ioctl import CStruct, c, compile_schema

# struct name, C type, header, {field: value} to fill (pointers given as integers)
i2c_msg = CStruct("addr" / c.u16, "flags" / c.u16, "len" / c.u16, "buf" / c.pointer, name="i2c_msg")
i2c_rdwr_ioctl_data = CStruct("msgs" / c.pointer, "nmsgs" / c.u32, name="i2c_rdwr_ioctl_data")
rtc_time = CStruct(*(n / c.int for n in ("tm_sec", "tm_min", "tm_hour", "tm_mday", "tm_mon", "tm_year", "tm_wday",
                                         "tm_yday", "tm_isdst")), name="rtc_time")
rtc_wkalrm = CStruct("enabled" / c.uchar, "pending" / c.uchar, "time" / rtc_time, name="rtc_wkalrm")

CASES: List[Tuple[CStruct, str, str, Dict[str, Any]]] = [
    (sg_io_hdr, "struct sg_io_hdr", "scsi/sg.h", dict(
        interface_id=ord("S"), dxfer_direction=-3, cmd_len=10, mx_sb_len=32, iovec_count=0, dxfer_len=4096,
        dxferp=0x7F0000001000, cmdp=0x7F0000002000, sbp=0x7F0000003000, timeout=60000, flags=1, pack_id=-7,
        usr_ptr=0x1234, status=2, masked_status=1, msg_status=3, sb_len_wr=18, host_status=0x101,
        driver_status=8, resid=-512, duration=17, info=1)),
    (sg_scsi_id, "struct sg_scsi_id", "scsi/sg.h", dict(
        host_no=1, channel=2, scsi_id=3, lun=4, scsi_type=5, h_cmd_per_lun=-6, d_queue_depth=7)),
    (spi_ioc_transfer, "struct spi_ioc_transfer", "linux/spi/spidev.h", dict(
        tx_buf=0x7F0000004000, rx_buf=0x7F0000005000, len=4096, speed_hz=1000000, delay_usecs=300,
        bits_per_word=8, cs_change=1, tx_nbits=1, rx_nbits=2, word_delay_usecs=5, pad=0)),
    (i2c_msg, "struct i2c_msg", "linux/i2c.h", dict(addr=0x50, flags=1, len=4, buf=0x7F0000006000)),
    (i2c_rdwr_ioctl_data, "struct i2c_rdwr_ioctl_data", "linux/i2c-dev.h", dict(msgs=0x7F0000007000, nmsgs=2)),
    (rtc_time, "struct rtc_time", "linux/rtc.h", dict(
        tm_sec=1, tm_min=2, tm_hour=3, tm_mday=4, tm_mon=5, tm_year=126, tm_wday=6, tm_yday=7, tm_isdst=-1)),
    (rtc_wkalrm, "struct rtc_wkalrm", "linux/rtc.h", dict(enabled=1, pending=0)),
    (kernel_termios, "struct termios", "asm-generic/termbits.h", dict(c_iflag=1, c_oflag=2, c_cflag=0o10277, c_lflag=4,
                                                               c_line=5)),
    (termios2, "struct termios2", "asm-generic/termbits.h", dict(c_iflag=1, c_cflag=0o10000, c_line=2, c_ispeed=250000,
                                                          c_ospeed=250001)),
]


def _c_value(v: Any) -> str:
    return f"(__typeof__(s.x))0x{v:x}ULL" if isinstance(v, int) and v > 0xFFFF else str(v)


def c_program() -> str:
    """Prints, per case: ``S <name> <sizeof>``, ``F <name> <field> <offset>``, ``B <name> <hex bytes>``."""
    lines = ["#include <stdio.h>", "#include <stddef.h>", "#include <string.h>", "#include <stdint.h>",
             "#include <sys/types.h>"]
    for hdr in sorted({h for _, _, h, _ in CASES}):
        lines.append(f"#include <{hdr}>")
    lines.append("int main(void) {")
    for schema, ctype, _, values in CASES:
        n = schema.c_name
        lines.append(f'  printf("S {n} %zu\\n", sizeof({ctype}));')
        for f in schema.c_fields:
            lines.append(f'  printf("F {n} {f} %zu\\n", offsetof({ctype}, {f}));')
        lines.append("  {")
        lines.append(f"    {ctype} s; memset(&s, 0, sizeof s);")
        for f, v in values.items():
            cast = "(void *)(uintptr_t)" if f in ("dxferp", "cmdp", "sbp", "usr_ptr", "buf", "msgs") else ""
            lines.append(f"    s.{f} = {cast}{v}{'ULL' if isinstance(v, int) and v > 0xFFFF else ''};")
        lines.append(f'    printf("B {n} ");')
        lines.append("    for (size_t i = 0; i < sizeof s; i++) printf(\"%02x\", ((unsigned char *)&s)[i]);")
        lines.append('    printf("\\n");')
        lines.append("  }")
    lines.append("  return 0;\n}")
    return "\n".join(lines) + "\n"


@pytest.fixture(scope="module")
def compiled(tmp_path_factory: Any) -> Dict[str, Any]:
    if shutil.which("gcc") is None:
        pytest.skip("needs gcc (system-packages.txt)")
    for _, _, hdr, _ in CASES:
        if not Path("/usr/include", hdr).exists():
            pytest.skip(f"needs /usr/include/{hdr} (linux-libc-dev, libc6-dev)")
    d = tmp_path_factory.mktemp("layout")
    (d / "layout.c").write_text(c_program())
    subprocess.run(["gcc", "-Wall", "-Werror", "-o", str(d / "layout"), str(d / "layout.c")], check=True,
                   capture_output=True)
    out = subprocess.run([str(d / "layout")], check=True, capture_output=True, text=True).stdout
    facts: Dict[str, Any] = {}
    for line in out.splitlines():
        kind, name, *rest = line.split()
        entry = facts.setdefault(name, {"offsets": {}})
        if kind == "S":
            entry["size"] = int(rest[0])
        elif kind == "F":
            entry["offsets"][rest[0]] = int(rest[1])
        else:
            entry["bytes"] = bytes.fromhex(rest[0])
    return facts


@pytest.mark.parametrize("schema, ctype, header, values", CASES, ids=[c[0].c_name for c in CASES])
def test_cstruct_matches_the_compiler(compiled: Dict[str, Any], schema: CStruct, ctype: str, header: str,
                                      values: Dict[str, Any]) -> None:
    facts = compiled[schema.c_name]
    assert schema.sizeof() == facts["size"], f"sizeof({ctype})"
    assert schema.c_offsets == facts["offsets"], f"offsetof in {ctype}"
    raw = facts["bytes"]
    codec = compile_schema(schema)
    value = codec.decode(raw)
    for f, v in values.items():
        assert value[f] == v, f
    assert codec.encode(value) == raw  # the same bytes back, padding included (C zeroed it too)
    assert schema.build(schema.parse(raw)) == raw  # and construct, the spec, agrees


def test_the_gallerys_rtc_structs_are_these() -> None:
    assert gallery_rtc_time.c_offsets == rtc_time.c_offsets and gallery_rtc_time.sizeof() == rtc_time.sizeof()
    assert gallery_rtc_wkalrm.c_offsets == rtc_wkalrm.c_offsets and gallery_rtc_wkalrm.sizeof() == 40


def test_sg_io_hdr_pads_before_usr_ptr_and_is_88_bytes() -> None:
    assert sg_io_hdr.c_offsets["pack_id"] == 48 and sg_io_hdr.c_offsets["usr_ptr"] == 56
    assert sg_io_hdr.sizeof() == 88 and not sg_io_hdr.abi_neutral  # i386: 64 bytes, 4-byte pointers
    assert spi_ioc_transfer.sizeof() == 32 and spi_ioc_transfer.c_size32 == 32  # "the same in 64bit and 32bit"
