"""A small SCSI disk behind a SCSI generic node (``/dev/sgN``), emulated in Python.

What it emulates: the Linux sg driver's v3 interface (``SG_IO`` with ``struct
sg_io_hdr``) in front of a direct-access block device of ``blocks`` x 512 bytes
(in memory, or a file with ``--image``): TEST UNIT READY, REQUEST SENSE,
INQUIRY (standard data and the VPD pages 0x00, 0x80 unit serial number, 0x83
device identification), READ CAPACITY(10) and (16), READ/WRITE(6), (10) and
(16), SYNCHRONIZE CACHE, MODE SENSE(6)/(10) (no pages), START STOP UNIT and
REPORT LUNS; anything else answers CHECK CONDITION with ILLEGAL REQUEST sense
data, an LBA past the end LBA OUT OF RANGE, as a disk would.  The sg driver's
own ioctls the tools use: SG_GET_VERSION_NUM (3.5.36: the v3 interface),
SG_GET/SET_RESERVED_SIZE, SG_GET/SET_TIMEOUT, SG_EMULATED_HOST, SG_GET_SCSI_ID,
SG_GET_SG_TABLESIZE (0: no scatter-gather lists), SG_GET/SET_COMMAND_Q.

The declaration does what the driver does with ``sg_io_hdr``: ``cmdp`` is read
(``cmd_len`` bytes), ``dxferp`` goes the way ``dxfer_direction`` says
(``SG_DXFER_TO_DEV`` read, ``FROM_DEV`` written, never both: a WRITE's buffer may
be read-only memory and a READ's is not copied in), ``sbp`` is written
(``mx_sb_len`` bytes), and of the header only the status fields are copied back
(``out_fields``).  The struct is declared like its C definition (``CStruct``):
the four bytes of padding before ``usr_ptr`` are computed, and ``size=88``
checks it against ``sizeof(struct sg_io_hdr)`` since ``SG_IO`` (0x2285) encodes
no size.

Clients that drive it: Debian's sg3-utils — ``sg_inq``, ``sg_readcap``,
``sg_turs``, ``sg_dd`` (READ(10)/WRITE(10) through SG_IO), ``sg_raw``; the test is
``tests/cuse/test_gallery_scsi_disk.py``.  The tools recognise an sg node by its
character major 21 (``SCSI_GENERIC_MAJOR``), so serve it with that major where
no sg driver holds it::

    python examples/scsi_disk.py --transport cuse --name sg9 --major 21 --minor 9
    sg_inq /dev/sg9; sg_readcap /dev/sg9; sg_dd if=/dev/sg9 of=/tmp/x bs=512 count=8

Transport: CUSE only.  ``SG_IO`` encodes neither size nor direction and its
argument points to three buffers, which FUSE's restricted ioctls cannot copy.
"""

from __future__ import annotations

import argparse
import errno
import sys
from typing import Any, List, Optional

from fusd_runtime import IN, INOUT, OUT, Context, Device, ioctl, open_server
from fusd_runtime.ioctl import CStruct, Pointer, c

# --- facts from <scsi/sg.h> ----------------------------------------------------------------
SG_DXFER_NONE, SG_DXFER_TO_DEV, SG_DXFER_FROM_DEV, SG_DXFER_TO_FROM_DEV = -1, -2, -3, -4
SG_INFO_CHECK = 0x1
SG_SET_TIMEOUT, SG_GET_TIMEOUT, SG_EMULATED_HOST = 0x2201, 0x2202, 0x2203
SG_GET_COMMAND_Q, SG_SET_COMMAND_Q = 0x2270, 0x2271
SG_GET_RESERVED_SIZE, SG_SET_RESERVED_SIZE, SG_GET_SCSI_ID = 0x2272, 0x2275, 0x2276
SG_GET_SG_TABLESIZE, SG_GET_VERSION_NUM, SG_IO = 0x227F, 0x2282, 0x2285
SG_VERSION = 30536  # 3.5.36: sg3-utils then speaks the v3 interface (sg_io_hdr), not v4
SG_MAX_RESERVED = 1 << 20
DRIVER_SENSE = 0x08
GOOD, CHECK_CONDITION = 0x00, 0x02
NO_SENSE, NOT_READY, MEDIUM_ERROR, ILLEGAL_REQUEST = 0x0, 0x2, 0x3, 0x5
INVALID_OPCODE, LBA_OUT_OF_RANGE, INVALID_FIELD_IN_CDB = 0x20, 0x21, 0x24


def _data_direction(hdr: Any) -> Optional[str]:
    """Which way ``dxferp`` goes: decided per call by ``dxfer_direction`` (None: no data copied)."""
    if hdr.iovec_count:  # a scatter-gather list: not emulated (SG_GET_SG_TABLESIZE says 0)
        return None
    return {SG_DXFER_TO_DEV: IN, SG_DXFER_FROM_DEV: OUT, SG_DXFER_TO_FROM_DEV: INOUT}.get(hdr.dxfer_direction)


sg_io_hdr = CStruct(
    "interface_id" / c.int, "dxfer_direction" / c.int, "cmd_len" / c.uchar, "mx_sb_len" / c.uchar,
    "iovec_count" / c.ushort, "dxfer_len" / c.uint,
    "dxferp" / Pointer("dxfer_len", direction=_data_direction),
    "cmdp" / Pointer("cmd_len", direction=IN),
    "sbp" / Pointer("mx_sb_len", direction=OUT),
    "timeout" / c.uint, "flags" / c.uint, "pack_id" / c.int, "usr_ptr" / c.pointer,
    "status" / c.uchar, "masked_status" / c.uchar, "msg_status" / c.uchar, "sb_len_wr" / c.uchar,
    "host_status" / c.ushort, "driver_status" / c.ushort, "resid" / c.int, "duration" / c.uint,
    "info" / c.uint, name="sg_io_hdr")
#: the fields the sg driver reports back: everything after ``usr_ptr``
SG_IO_OUT = ("status", "masked_status", "msg_status", "sb_len_wr", "host_status", "driver_status", "resid",
             "duration", "info")
sg_scsi_id = CStruct("host_no" / c.int, "channel" / c.int, "scsi_id" / c.int, "lun" / c.int,
                     "scsi_type" / c.int, "h_cmd_per_lun" / c.short, "d_queue_depth" / c.short,
                     "unused" / c.array(c.int, 2), name="sg_scsi_id")


class CheckCondition(Exception):
    """A SCSI command failed: the sense key and additional sense code (ASC/ASCQ) to report."""

    def __init__(self, key: int, asc: int, ascq: int = 0) -> None:
        super().__init__(f"sense key {key:#x} asc {asc:#x}/{ascq:#x}")
        self.key, self.asc, self.ascq = key, asc, ascq


def fixed_sense(key: int, asc: int, ascq: int = 0) -> bytes:
    """18 bytes of fixed-format sense data (SPC: response code 0x70, current error)."""
    return bytes([0x70, 0, key, 0, 0, 0, 0, 10, 0, 0, 0, 0, asc, ascq, 0, 0, 0, 0])


class ScsiDisk(Device):
    """A direct-access SCSI device of ``blocks`` blocks of ``block_size`` bytes, served as /dev/sgN."""

    mode = 0o660

    def __init__(self, blocks: int = 2048, block_size: int = 512, image: Optional[str] = None,
                 vendor: str = "FUSD", product: str = "Python disk", revision: str = "0.1",
                 serial: str = "FUSD0001") -> None:
        self.block_size = block_size
        self.image = image
        if image is not None:
            with open(image, "rb") as f:
                self.data = bytearray(f.read())
            if len(self.data) % block_size:
                raise ValueError(f"{image}: size {len(self.data)} is not a multiple of {block_size}")
        else:
            self.data = bytearray(blocks * block_size)
        self.blocks = len(self.data) // block_size
        self.vendor, self.product, self.revision, self.serial = vendor, product, revision, serial
        self.reserved = 32768
        self.timeout = 6000  # SG_SET_TIMEOUT's unit: the kernel's USER_HZ jiffies
        self.command_q = 0
        self.last_sense = fixed_sense(NO_SENSE, 0)
        self.commands: List[int] = []  # opcodes seen, for tests

    # ------------------------------------------------------------------ the sg driver's ioctls
    @ioctl(SG_GET_VERSION_NUM, c.int, OUT)
    def get_version(self, ctx: Context, _: int) -> Any:
        return 0, SG_VERSION

    @ioctl(SG_SET_RESERVED_SIZE, c.int, IN)
    def set_reserved(self, ctx: Context, size: int) -> int:
        if size < 0:
            raise OSError(errno.EINVAL, "negative reserved size")
        self.reserved = min(size, SG_MAX_RESERVED)
        return 0

    @ioctl(SG_GET_RESERVED_SIZE, c.int, OUT)
    def get_reserved(self, ctx: Context, _: int) -> Any:
        return 0, self.reserved

    @ioctl(SG_SET_TIMEOUT, c.int, IN)
    def set_timeout(self, ctx: Context, timeout: int) -> int:
        if timeout < 0:
            raise OSError(errno.EIO, "negative timeout")  # what sg answers
        self.timeout = timeout
        return 0

    @ioctl(SG_GET_TIMEOUT, None)  # no argument: the timeout is the ioctl's result
    def get_timeout(self, ctx: Context, _: int) -> int:
        return self.timeout

    @ioctl(SG_EMULATED_HOST, c.int, OUT)
    def emulated_host(self, ctx: Context, _: int) -> Any:
        return 0, 0

    @ioctl(SG_GET_SG_TABLESIZE, c.int, OUT)
    def sg_tablesize(self, ctx: Context, _: int) -> Any:
        return 0, 0  # no scatter-gather lists (iovec_count must be 0)

    @ioctl(SG_GET_COMMAND_Q, c.int, OUT)
    def get_command_q(self, ctx: Context, _: int) -> Any:
        return 0, self.command_q

    @ioctl(SG_SET_COMMAND_Q, c.int, IN)
    def set_command_q(self, ctx: Context, on: int) -> int:
        self.command_q = 1 if on else 0
        return 0

    @ioctl(SG_GET_SCSI_ID, sg_scsi_id, OUT)
    def get_scsi_id(self, ctx: Context, sid: Any) -> Any:
        sid.update(host_no=0, channel=0, scsi_id=0, lun=0, scsi_type=0, h_cmd_per_lun=1, d_queue_depth=1)
        return sid

    @ioctl(SG_IO, sg_io_hdr, INOUT, out_fields=SG_IO_OUT, size=88)
    def sg_io(self, ctx: Context, hdr: Any) -> Any:
        """One SCSI command: ``hdr.cmdp`` (bytes), ``hdr.dxferp`` (bytes in, a bytearray to fill out, or None)."""
        if hdr.interface_id != ord("S"):
            raise OSError(errno.ENOSYS, "interface_id is not 'S' (sg v3)")
        if hdr.iovec_count:
            raise OSError(errno.EINVAL, "scatter-gather lists are not emulated")
        if not 6 <= hdr.cmd_len <= 16:
            raise OSError(errno.EMSGSIZE, f"cdb of {hdr.cmd_len} bytes")
        cdb = bytes(hdr.cmdp)
        self.commands.append(cdb[0])
        hdr.status = hdr.masked_status = hdr.msg_status = hdr.sb_len_wr = 0
        hdr.host_status = hdr.driver_status = hdr.info = hdr.duration = 0
        hdr.resid = 0
        try:
            moved = self.execute(cdb, hdr.dxferp, hdr.dxfer_direction)
            hdr.resid = hdr.dxfer_len - moved if hdr.dxferp is not None else 0
            self.last_sense = fixed_sense(NO_SENSE, 0)
        except CheckCondition as cc:
            sense = fixed_sense(cc.key, cc.asc, cc.ascq)
            self.last_sense = sense
            hdr.status, hdr.masked_status = CHECK_CONDITION, CHECK_CONDITION >> 1
            hdr.driver_status, hdr.info = DRIVER_SENSE, SG_INFO_CHECK
            n = min(len(sense), hdr.mx_sb_len)
            if hdr.sbp is not None:
                hdr.sbp[:n] = sense[:n]
            hdr.sb_len_wr = n
            hdr.resid = hdr.dxfer_len
        return hdr

    # ------------------------------------------------------------------ the disk (``_cmd_*``: one per opcode)
    def execute(self, cdb: bytes, buf: Any, direction: int) -> int:
        """Run one command; return the bytes moved through ``buf``; CheckCondition on failure."""
        op = cdb[0]
        handler = _COMMANDS.get(op)
        if handler is None:
            raise CheckCondition(ILLEGAL_REQUEST, INVALID_OPCODE)
        return handler(self, cdb, buf, direction)  # type: ignore[no-any-return]

    def _data_in(self, buf: Any, data: bytes, alloc: int) -> int:
        """Return ``data`` to the initiator: as much as both the buffer and the allocation length hold."""
        if buf is None or not isinstance(buf, bytearray):
            return 0
        n = min(len(data), alloc, len(buf))
        buf[:n] = data[:n]
        return n

    def _lba(self, lba: int, count: int) -> None:
        if lba + count > self.blocks:
            raise CheckCondition(ILLEGAL_REQUEST, LBA_OUT_OF_RANGE)

    def _cmd_test_unit_ready(self, cdb: bytes, buf: Any, direction: int) -> int:
        return 0

    def _cmd_request_sense(self, cdb: bytes, buf: Any, direction: int) -> int:
        return self._data_in(buf, self.last_sense, cdb[4])

    def _cmd_inquiry(self, cdb: bytes, buf: Any, direction: int) -> int:
        alloc = int.from_bytes(cdb[3:5], "big")
        if cdb[1] & 1:  # EVPD
            page = cdb[2]
            if page == 0x00:
                body = bytes([0x00, 0x80, 0x83])
            elif page == 0x80:
                body = self.serial.encode()
            elif page == 0x83:  # one T10 vendor ID designator: vendor + serial
                ident = self.vendor.encode().ljust(8) + self.serial.encode()
                body = bytes([0x02, 0x01, 0x00, len(ident)]) + ident
            else:
                raise CheckCondition(ILLEGAL_REQUEST, INVALID_FIELD_IN_CDB)
            return self._data_in(buf, bytes([0x00, page]) + len(body).to_bytes(2, "big") + body, alloc)
        if cdb[2]:
            raise CheckCondition(ILLEGAL_REQUEST, INVALID_FIELD_IN_CDB)
        std = bytearray(36)
        std[0] = 0x00  # peripheral qualifier 0, device type 0: direct access block device
        std[2] = 0x06  # SPC-4
        std[3] = 0x12  # HISUP, response data format 2
        std[4] = len(std) - 5
        std[7] = 0x02  # CMDQUE
        std[8:16] = self.vendor.encode().ljust(8)[:8]
        std[16:32] = self.product.encode().ljust(16)[:16]
        std[32:36] = self.revision.encode().ljust(4)[:4]
        return self._data_in(buf, bytes(std), alloc)

    def _cmd_read_capacity10(self, cdb: bytes, buf: Any, direction: int) -> int:
        last = min(self.blocks - 1, 0xFFFFFFFF)
        return self._data_in(buf, last.to_bytes(4, "big") + self.block_size.to_bytes(4, "big"), 8)

    def _cmd_service_action_in16(self, cdb: bytes, buf: Any, direction: int) -> int:
        if cdb[1] & 0x1F != 0x10:  # only READ CAPACITY(16)
            raise CheckCondition(ILLEGAL_REQUEST, INVALID_FIELD_IN_CDB)
        data = (self.blocks - 1).to_bytes(8, "big") + self.block_size.to_bytes(4, "big") + bytes(20)
        return self._data_in(buf, data, int.from_bytes(cdb[10:14], "big"))

    def _rw(self, lba: int, count: int, buf: Any, write: bool) -> int:
        self._lba(lba, count)
        n = count * self.block_size
        start = lba * self.block_size
        if write:
            if buf is None or len(buf) < n:
                raise CheckCondition(ILLEGAL_REQUEST, INVALID_FIELD_IN_CDB)
            self.data[start:start + n] = bytes(buf[:n])
            if self.image is not None:
                with open(self.image, "r+b") as f:
                    f.seek(start)
                    f.write(self.data[start:start + n])
            return n
        return self._data_in(buf, bytes(self.data[start:start + n]), n)

    def _cmd_read6(self, cdb: bytes, buf: Any, direction: int) -> int:
        return self._rw(int.from_bytes(cdb[1:4], "big") & 0x1FFFFF, cdb[4] or 256, buf, False)

    def _cmd_write6(self, cdb: bytes, buf: Any, direction: int) -> int:
        return self._rw(int.from_bytes(cdb[1:4], "big") & 0x1FFFFF, cdb[4] or 256, buf, True)

    def _cmd_read10(self, cdb: bytes, buf: Any, direction: int) -> int:
        return self._rw(int.from_bytes(cdb[2:6], "big"), int.from_bytes(cdb[7:9], "big"), buf, False)

    def _cmd_write10(self, cdb: bytes, buf: Any, direction: int) -> int:
        return self._rw(int.from_bytes(cdb[2:6], "big"), int.from_bytes(cdb[7:9], "big"), buf, True)

    def _cmd_read16(self, cdb: bytes, buf: Any, direction: int) -> int:
        return self._rw(int.from_bytes(cdb[2:10], "big"), int.from_bytes(cdb[10:14], "big"), buf, False)

    def _cmd_write16(self, cdb: bytes, buf: Any, direction: int) -> int:
        return self._rw(int.from_bytes(cdb[2:10], "big"), int.from_bytes(cdb[10:14], "big"), buf, True)

    def _cmd_mode_sense6(self, cdb: bytes, buf: Any, direction: int) -> int:
        return self._data_in(buf, bytes([3, 0, 0, 0]), cdb[4])  # header only: no block descriptors, no pages

    def _cmd_mode_sense10(self, cdb: bytes, buf: Any, direction: int) -> int:
        return self._data_in(buf, bytes([0, 6, 0, 0, 0, 0, 0, 0]), int.from_bytes(cdb[7:9], "big"))

    def _cmd_report_luns(self, cdb: bytes, buf: Any, direction: int) -> int:
        return self._data_in(buf, (8).to_bytes(4, "big") + bytes(4) + bytes(8), int.from_bytes(cdb[6:10], "big"))

    def _cmd_no_data(self, cdb: bytes, buf: Any, direction: int) -> int:
        return 0  # SYNCHRONIZE CACHE, START STOP UNIT: nothing to do in memory


_COMMANDS = {
    0x00: ScsiDisk._cmd_test_unit_ready, 0x03: ScsiDisk._cmd_request_sense, 0x12: ScsiDisk._cmd_inquiry,
    0x25: ScsiDisk._cmd_read_capacity10, 0x9E: ScsiDisk._cmd_service_action_in16,
    0x08: ScsiDisk._cmd_read6, 0x0A: ScsiDisk._cmd_write6, 0x28: ScsiDisk._cmd_read10, 0x2A: ScsiDisk._cmd_write10,
    0x88: ScsiDisk._cmd_read16, 0x8A: ScsiDisk._cmd_write16,
    0x1A: ScsiDisk._cmd_mode_sense6, 0x5A: ScsiDisk._cmd_mode_sense10, 0xA0: ScsiDisk._cmd_report_luns,
    0x35: ScsiDisk._cmd_no_data, 0x91: ScsiDisk._cmd_no_data, 0x1B: ScsiDisk._cmd_no_data,
}


def main(argv: Optional[List[str]] = None) -> int:
    """Serve one disk until Ctrl-C."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     epilog="example: %(prog)s --transport cuse --name sg9 --major 21 --minor 9")
    parser.add_argument("--transport", choices=["auto", "fuse", "cuse"], default="auto",
                        help="SG_IO needs cuse; fuse refuses to serve this device, saying why")
    parser.add_argument("--name", default="sg-fusd", help="device name under /dev (default: sg-fusd)")
    parser.add_argument("--major", type=int, default=0,
                        help="character major; 21 (SCSI_GENERIC_MAJOR) makes sg3-utils treat it as sg")
    parser.add_argument("--minor", type=int, default=0, help="character minor (with --major)")
    parser.add_argument("--blocks", type=int, default=2048, help="disk size in 512-byte blocks (default 2048)")
    parser.add_argument("--image", help="a file holding the disk's blocks (written through)")
    args = parser.parse_args(argv)
    server = open_server(args.transport)
    try:
        disk = ScsiDisk(args.blocks, image=args.image)
        if server.transport == "cuse":
            server.add(disk, args.name, major=args.major, minor=args.minor)
        else:
            server.add(disk, args.name)
    except (ValueError, OSError) as exc:  # FUSE refuses SG_IO's declaration, naming CuseServer
        raise SystemExit(f"scsi_disk: {exc}") from None
    server.serve_forever(ready=lambda: print(f"disk at {server.path(args.name)} ({server.transport}, "
                                             f"{disk.blocks} blocks); Ctrl-C stops", file=sys.stderr, flush=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
