"""The kernel's side of a CUSE connection played over a SEQPACKET socketpair, through the real CuseSession.

For host-side tests and benchmarks of the unrestricted ioctl protocol (the host
has no CUSE): a ``CuseSession`` of ``fusd_runtime`` serves the device on one end
of the socketpair exactly as it serves ``/dev/cuse`` (one message per read and
per write), and this module plays ``fs/fuse/cuse.c`` + ``fs/fuse/ioctl.c`` on the
other end: CUSE_INIT, OPEN, and each ioctl's FUSE_IOCTL_RETRY loop over a
bytearray standing in for the caller's memory (``ioctl_model.KernelModel``'s
rules: page 0 unmapped, read-only ranges, the kernel's ENOMEM limits and EIO
checks).  Never a substitute for the guest tier where the real kernel runs.
"""

from __future__ import annotations

import errno
import os
import socket
import threading
from typing import Any, List, Optional, Tuple

from fusd_runtime.cuse import CuseSession
from fusd_runtime.ioctl import MAX_BYTES, MAX_IOV
from fusd_wire import FAST
from fusd_wire import constants as C

PAGE = 4096
_HDR = FAST.fuse_in_header.struct
_OUT = FAST.fuse_out_header.struct
_IOCTL_IN = FAST.fuse_ioctl_in.struct
_IOCTL_OUT = FAST.fuse_ioctl_out.struct
_IOVEC = FAST.fuse_ioctl_iovec.struct
_RETRY = int(C.IoctlFlags.FUSE_IOCTL_RETRY)
_UNRESTRICTED = int(C.IoctlFlags.FUSE_IOCTL_UNRESTRICTED)
OP = C.fuse_opcode


class CuseLoopback:
    """One device served by a real CuseSession (1 reader thread); this object is the kernel and the caller."""

    def __init__(self, device: Any, mem_size: int = 64 * PAGE, readers: int = 1) -> None:
        self.kernel, self.daemon = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.mem = bytearray(mem_size)
        self.readonly: List[Tuple[int, int]] = []
        self.unique = 0
        self.rounds = 0
        self.buf = bytearray(1 << 18)
        device.name = device.name or "loopback"
        self.session = _Session(device, device.name, fd=self.daemon.fileno(), readers=readers, channel=self)
        device.session = self.session
        self.session.start_readers()
        err, _ = self._call(OP.CUSE_INIT, FAST.cuse_init_in.pack(7, 38, 0, 1))  # the guest kernel's 7.38
        assert err == 0, err
        self.fh = self.open()

    # ------------------------------------------------------------------ requests
    def _send(self, opcode: int, body: bytes, nodeid: int = 0) -> int:
        self.unique += 1
        self.kernel.send(_HDR.pack(40 + len(body), opcode, self.unique, nodeid, 0, 0, os.getpid(), 0, 0) + body)
        return self.unique

    def _recv(self) -> Tuple[int, memoryview]:
        n = self.kernel.recv_into(self.buf)
        length, err, unique = _OUT.unpack_from(self.buf)
        assert length == n and unique == self.unique, (length, n, unique, self.unique)
        return err, memoryview(self.buf)[16:n]

    def _call(self, opcode: int, body: bytes, nodeid: int = 0) -> Tuple[int, memoryview]:
        self._send(opcode, body, nodeid)
        return self._recv()

    def open(self, flags: int = os.O_RDWR) -> int:
        err, body = self._call(OP.FUSE_OPEN, FAST.fuse_open_in.pack(flags, 0))
        if err:
            raise OSError(-err, os.strerror(-err))
        return int(FAST.fuse_open_out.unpack_from(body)[0])

    # ------------------------------------------------------------------ the caller's memory
    def put(self, addr: int, data: bytes) -> int:
        self.mem[addr:addr + len(data)] = data
        return addr

    def get(self, addr: int, n: int) -> bytes:
        return bytes(self.mem[addr:addr + n])

    def _readable(self, addr: int, n: int) -> bool:
        return not n or (addr >= PAGE and addr + n <= len(self.mem))

    def _writable(self, addr: int, n: int) -> bool:
        return self._readable(addr, n) and not any(a < addr + n and addr < a + m for a, m in self.readonly)

    # ------------------------------------------------------------------ fuse_do_ioctl
    def ioctl(self, cmd: int, arg: int, flags: int = _UNRESTRICTED, max_rounds: int = 64) -> int:
        """One ioctl(2) of the caller: the kernel's loop; OSError as the caller would get it.

        The kernel retries for as long as the daemon asks; a test harness should not:
        more than ``max_rounds`` retries raise RuntimeError (a daemon that never settles).
        """
        in_iovs: List[Tuple[int, int]] = []
        out_iovs: List[Tuple[int, int]] = []
        for _ in range(max_rounds + 1):
            for a, n in in_iovs:
                if not self._readable(a, n):
                    raise OSError(errno.EFAULT, "copy in")
            data = b"".join(self.mem[a:a + n] for a, n in in_iovs)
            out_size = sum(n for _, n in out_iovs)
            err, body = self._call(OP.FUSE_IOCTL, _IOCTL_IN.pack(self.fh, flags, cmd, arg, len(data), out_size) + data)
            if err:
                raise OSError(-err, os.strerror(-err))
            result, oflags, n_in, n_out = _IOCTL_OUT.unpack_from(body)
            rest = body[16:]
            if oflags & _RETRY:
                self.rounds += 1
                if n_in > MAX_IOV or n_out > MAX_IOV or n_in + n_out > MAX_IOV:
                    raise OSError(errno.ENOMEM, "kernel: too many iovecs")
                if len(rest) != 16 * (n_in + n_out):
                    raise OSError(errno.EIO, "kernel: iovec count and reply size differ")
                iovs = [_IOVEC.unpack_from(rest, 16 * i) for i in range(n_in + n_out)]
                in_iovs, out_iovs = iovs[:n_in], iovs[n_in:]
                for side in (in_iovs, out_iovs):
                    if sum(n for _, n in side) > MAX_BYTES:
                        raise OSError(errno.ENOMEM, "kernel: more than max_pages")
                continue
            if len(rest) > out_size:
                raise OSError(errno.EIO, "kernel: reply longer than out_size")
            out = bytes(rest)
            for a, n in out_iovs:
                chunk, out = out[:n], out[n:]
                if chunk:
                    if not self._writable(a, len(chunk)):
                        raise OSError(errno.EFAULT, "copy out")
                    self.mem[a:a + len(chunk)] = chunk
            return int(result)
        raise RuntimeError(f"ioctl {cmd:#x}: still asking for retries after {max_rounds} rounds")

    def close(self) -> None:
        """Stop the session like a server does; the socketpair is closed."""
        self.session.stop_readers(timeout=5.0)
        self.kernel.close()
        self.daemon.close()

    def __enter__(self) -> CuseLoopback:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class _Session(CuseSession):
    """A CuseSession whose stopping reader is woken by a request on the socketpair (no /dev node to open)."""

    def __init__(self, *args: Any, channel: Optional[CuseLoopback] = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.channel = channel
        self.wake_lock = threading.Lock()

    def wake_reader(self) -> None:
        ch = self.channel
        if ch is not None:
            with self.wake_lock:
                ch.unique += 1
                try:
                    ch.kernel.send(_HDR.pack(40 + 8, OP.FUSE_OPEN, 1 << 62 | ch.unique, 0, 0, 0, 0, 0, 0) +
                                   FAST.fuse_open_in.pack(0, 0))
                except OSError:
                    pass
