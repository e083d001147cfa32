"""The io_uring system call ABI (``linux/io_uring.h``) that the FUSE ring transport uses.

Not part of the FUSE protocol (that is ``fusd_wire``): this is the kernel's generic
asynchronous I/O interface, spoken here through ``ctypes`` and ``mmap``.  Only what
the transport needs is named, under the header's names.  Every struct is one field
table (name -> offset, struct format) from which the ``struct.Struct`` codecs and
offsets are derived; ``tests/test_uring_abi.py`` compiles the machine's
``linux/io_uring.h`` and checks each offset and size against the C compiler.
"""

from __future__ import annotations

import struct
from typing import Dict, Tuple

# --- system calls (<sys/syscall.h> names; the numbers are the same on every architecture) ---
SYS_io_uring_setup = 425
SYS_io_uring_enter = 426
SYS_io_uring_register = 427

# --- io_uring_setup(2) flags ------------------------------------------------------------------
IORING_SETUP_CQSIZE = 1 << 3  # app defines CQ size
IORING_SETUP_CLAMP = 1 << 4
IORING_SETUP_COOP_TASKRUN = 1 << 8
IORING_SETUP_TASKRUN_FLAG = 1 << 9
IORING_SETUP_SQE128 = 1 << 10  # SQEs are 128 byte: the 80-byte command area IORING_OP_URING_CMD needs
IORING_SETUP_CQE32 = 1 << 11
IORING_SETUP_SINGLE_ISSUER = 1 << 12  # only one task submits
IORING_SETUP_DEFER_TASKRUN = 1 << 13  # completion work runs when that task waits (needs SINGLE_ISSUER)

# --- io_uring_params.features -----------------------------------------------------------------
IORING_FEAT_SINGLE_MMAP = 1 << 0
IORING_FEAT_NODROP = 1 << 1

# --- mmap(2) offsets of the three areas -------------------------------------------------------
IORING_OFF_SQ_RING = 0
IORING_OFF_CQ_RING = 0x8000000
IORING_OFF_SQES = 0x10000000

# --- io_uring_enter(2) flags ------------------------------------------------------------------
IORING_ENTER_GETEVENTS = 1 << 0
IORING_ENTER_REGISTERED_RING = 1 << 4

# --- io_uring_register(2) opcodes --------------------------------------------------------------
IORING_REGISTER_FILES = 2
IORING_REGISTER_RING_FDS = 20

# --- opcodes and SQE flags ----------------------------------------------------------------------
IORING_OP_NOP = 0
IORING_OP_READ = 22
IORING_OP_URING_CMD = 46
IOSQE_FIXED_FILE = 1 << 0

# --- cqe->flags ---------------------------------------------------------------------------------
IORING_CQE_F_MORE = 1 << 1


class Layout:
    """One C struct as a field table: ``offset[name]``, ``format[name]``, ``size``.

    Fields may overlap (C unions: ``off`` and ``cmd_op`` both start at byte 8 of an
    SQE); ``struct(names)`` gives a ``struct.Struct`` that reads or writes the named
    fields, in order, at their offsets (the gaps become padding).
    """

    def __init__(self, name: str, size: int, fields: Dict[str, Tuple[int, str]]) -> None:
        self.name = name
        self.size = size
        self.offset = {n: off for n, (off, _) in fields.items()}
        self.format = {n: fmt for n, (_, fmt) in fields.items()}
        for n, (off, fmt) in fields.items():
            if off + struct.calcsize("<" + fmt) > size:
                raise AssertionError(f"{name}.{n} does not fit in {size} bytes")

    def field_size(self, name: str) -> int:
        """sizeof the field ``name``."""
        return struct.calcsize("<" + self.format[name])

    def struct(self, *names: str, base: int = 0, size: int = 0) -> struct.Struct:
        """A codec of ``names`` (ascending offsets) at their offsets, relative to ``base``.

        Gaps are pad bytes, which ``pack_into`` writes as zeros: packing writes every byte
        from ``base`` to the last field's end (to ``size`` if given).
        """
        fmt, pos = ["<"], base
        for n in names:
            off = self.offset[n]
            if off < pos:
                raise ValueError(f"{self.name}: {n} at {off} overlaps the previous field (ends at {pos})")
            if off > pos:
                fmt.append(f"{off - pos}x")
            fmt.append(self.format[n])
            pos = off + self.field_size(n)
        if size > pos:
            fmt.append(f"{size - pos}x")
        return struct.Struct("".join(fmt))


#: struct io_sqring_offsets (in io_uring_params.sq_off)
io_sqring_offsets = Layout("io_sqring_offsets", 40, {
    "head": (0, "I"), "tail": (4, "I"), "ring_mask": (8, "I"), "ring_entries": (12, "I"),
    "flags": (16, "I"), "dropped": (20, "I"), "array": (24, "I"), "resv1": (28, "I"), "resv2": (32, "Q"),
})

#: struct io_cqring_offsets (in io_uring_params.cq_off)
io_cqring_offsets = Layout("io_cqring_offsets", 40, {
    "head": (0, "I"), "tail": (4, "I"), "ring_mask": (8, "I"), "ring_entries": (12, "I"),
    "overflow": (16, "I"), "cqes": (20, "I"), "flags": (24, "I"), "resv1": (28, "I"), "resv2": (32, "Q"),
})

#: struct io_uring_params: in/out argument of io_uring_setup(2)
io_uring_params = Layout("io_uring_params", 120, {
    "sq_entries": (0, "I"), "cq_entries": (4, "I"), "flags": (8, "I"), "sq_thread_cpu": (12, "I"),
    "sq_thread_idle": (16, "I"), "features": (20, "I"), "wq_fd": (24, "I"), "resv": (28, "3I"),
    "sq_off": (40, "40s"), "cq_off": (80, "40s"),
})

#: struct io_uring_sqe (64 bytes; 128 with IORING_SETUP_SQE128, the command area growing to 80 bytes)
io_uring_sqe = Layout("io_uring_sqe", 64, {
    "opcode": (0, "B"), "flags": (1, "B"), "ioprio": (2, "H"), "fd": (4, "i"),
    "off": (8, "Q"), "cmd_op": (8, "I"), "__pad1": (12, "I"),
    "addr": (16, "Q"), "len": (24, "I"), "rw_flags": (28, "I"), "uring_cmd_flags": (28, "I"),
    "user_data": (32, "Q"), "buf_index": (40, "H"), "personality": (42, "H"), "file_index": (44, "I"),
    "addr3": (48, "Q"), "cmd": (48, "16s"),  # 16 bytes in a 64-byte SQE, 80 in a 128-byte one
})
#: bytes of an SQE with IORING_SETUP_SQE128, and of its command area (``cmd``)
SQE128_SIZE = 128
SQE128_CMD_SIZE = SQE128_SIZE - io_uring_sqe.offset["cmd"]

#: struct io_uring_cqe (16 bytes; 32 with IORING_SETUP_CQE32)
io_uring_cqe = Layout("io_uring_cqe", 16, {"user_data": (0, "Q"), "res": (8, "i"), "flags": (12, "I")})

#: struct io_uring_rsrc_update: the argument of IORING_REGISTER_RING_FDS
io_uring_rsrc_update = Layout("io_uring_rsrc_update", 16, {"offset": (0, "I"), "resv": (4, "I"), "data": (8, "Q")})

#: struct iovec (the REGISTER command's two buffers)
iovec = Layout("iovec", 16, {"iov_base": (0, "Q"), "iov_len": (8, "Q")})

LAYOUTS = {lay.name: lay for lay in (io_sqring_offsets, io_cqring_offsets, io_uring_params, io_uring_sqe,
                                      io_uring_cqe, io_uring_rsrc_update, iovec)}
