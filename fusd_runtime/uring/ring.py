"""One io_uring instance in pure Python: ``io_uring_setup``, the three shared mmaps, ``enter``.

The rings are plain memory shared with the kernel, so the hot path reads and
writes them through ``memoryview``\\ s cast to ``uint32`` (head, tail, the SQ index
array) and ``struct.pack_into``/``unpack_from`` (SQEs, CQEs) -- no per-call object
but the small ints.  The only foreign call is ``syscall(2)`` through ``ctypes``,
bound once without argument types (fastest: ~0.3 µs of ctypes per call here, half
of what ``argtypes`` or ``use_errno=True`` cost) and with the calling thread's
``errno`` read from its thread-local cell only when a call fails.

x86-64 orders stores and loads the way the ring protocol needs (the kernel reads
the SQ tail with acquire semantics after we wrote the SQE and index; we read the CQ
tail before the CQEs it covers), so no explicit barriers are needed from Python.
"""

from __future__ import annotations

import ctypes
import errno
import mmap
import os
from typing import Any, List, Optional

from . import abi

_libc = ctypes.CDLL(None)  # no use_errno: see errno_cell()
#: ``syscall(2)``; plain Python ints are passed as C ints (libffi sign-extends them into the
#: 64-bit argument registers), None as NULL; addresses must be ``ctypes.c_void_p``.  The 7th
#: argument of a call goes on the stack, where a C int leaves the upper half of its 8-byte slot
#: undefined: io_uring_enter's ``argsz`` is therefore passed as None (a 64-bit zero).
syscall = _libc.syscall
_errno_location = _libc.__errno_location
_errno_location.restype = ctypes.c_void_p
_errno_location.argtypes = []


def errno_cell() -> ctypes.c_int:
    """The calling thread's ``errno`` (read its ``.value`` right after a call returned -1).

    CPython keeps errno intact while it re-takes the GIL after a foreign call, so the
    value is the one the failed system call set.
    """
    return ctypes.c_int.from_address(_errno_location())  # type: ignore[arg-type]


def pointer(buf: Any) -> ctypes.c_void_p:
    """``buf``'s address as a pointer argument (a plain int would be passed as a 32-bit C int)."""
    return ctypes.c_void_p(address_of(buf))


def address_of(buf: Any) -> int:
    """The address of a writable buffer (bytearray, mmap), which from now on cannot be resized.

    The ctypes view made here is kept on the caller's side only through the buffer
    export it holds; callers keep the buffer alive as long as the kernel may use it.
    """
    return ctypes.addressof((ctypes.c_char * len(buf)).from_buffer(buf))


def _check(ret: int, what: str) -> int:
    if ret < 0:
        err = errno_cell().value
        raise OSError(err, f"{what}: {os.strerror(err)}")
    return ret


_PARAMS_IN = abi.io_uring_params.struct("sq_entries", "cq_entries", "flags")
_PARAMS_OUT = abi.io_uring_params.struct("sq_entries", "cq_entries", "flags", "features")
_SQ_OFF = abi.io_sqring_offsets.struct("head", "tail", "ring_mask", "ring_entries", "flags", "dropped", "array")
_CQ_OFF = abi.io_cqring_offsets.struct("head", "tail", "ring_mask", "ring_entries", "overflow", "cqes", "flags")
_RSRC_UPDATE = abi.io_uring_rsrc_update.struct("offset", "resv", "data")


class Ring:
    """An io_uring: SQ and CQ rings and the SQE array mapped into this process.

    Args:
        entries: SQ size (rounded up to a power of two by the kernel).
        flags: ``IORING_SETUP_*`` (the FUSE transport needs ``IORING_SETUP_SQE128``).
        cq_entries: CQ size (``IORING_SETUP_CQSIZE``); default twice ``entries``.

    Attributes:
        fd: the ring's file descriptor.
        sq_entries, cq_entries: the sizes the kernel chose.
        sqe_size: 64 or 128 bytes.
        sqes: the SQE array (an mmap: ``pack_into`` SQEs at ``index * sqe_size``).
        sq_array: the SQ index ring (``uint32`` memoryview); ``sq_tail``/``sq_head`` one-element views.
        cq: the CQ ring mmap; CQE ``i`` at ``cqes + (i & cq_mask) * cqe_size``; ``cq_head``/``cq_tail`` views.
    """

    def __init__(self, entries: int, flags: int = abi.IORING_SETUP_SQE128, cq_entries: Optional[int] = None) -> None:
        params = bytearray(abi.io_uring_params.size)
        if cq_entries is not None:
            flags |= abi.IORING_SETUP_CQSIZE
        _PARAMS_IN.pack_into(params, 0, 0, cq_entries or 0, flags)
        self.fd = _check(syscall(abi.SYS_io_uring_setup, entries, pointer(params)), "io_uring_setup")
        self._views: List[memoryview] = []
        self._maps: List[mmap.mmap] = []
        try:
            self._map(params)
        except BaseException:
            self.close()
            raise

    def _map(self, params: bytearray) -> None:
        self.sq_entries, self.cq_entries, self.flags, self.features = _PARAMS_OUT.unpack_from(params)
        sq = dict(zip(("head", "tail", "ring_mask", "ring_entries", "flags", "dropped", "array"),
                      _SQ_OFF.unpack_from(params, abi.io_uring_params.offset["sq_off"])))
        cq = dict(zip(("head", "tail", "ring_mask", "ring_entries", "overflow", "cqes", "flags"),
                      _CQ_OFF.unpack_from(params, abi.io_uring_params.offset["cq_off"])))
        self.sqe_size = abi.SQE128_SIZE if self.flags & abi.IORING_SETUP_SQE128 else abi.io_uring_sqe.size
        self.cqe_size = 2 * abi.io_uring_cqe.size if self.flags & abi.IORING_SETUP_CQE32 else abi.io_uring_cqe.size
        sq_size = sq["array"] + self.sq_entries * 4
        cq_size = cq["cqes"] + self.cq_entries * self.cqe_size
        prot, share = mmap.PROT_READ | mmap.PROT_WRITE, mmap.MAP_SHARED | mmap.MAP_POPULATE
        if self.features & abi.IORING_FEAT_SINGLE_MMAP:
            size = max(sq_size, cq_size)
            sq_map = cq_map = self._mmap(size, share, prot, abi.IORING_OFF_SQ_RING)
        else:
            sq_map = self._mmap(sq_size, share, prot, abi.IORING_OFF_SQ_RING)
            cq_map = self._mmap(cq_size, share, prot, abi.IORING_OFF_CQ_RING)
        self.sqes = self._mmap(self.sq_entries * self.sqe_size, share, prot, abi.IORING_OFF_SQES)
        self.sq, self.cq = sq_map, cq_map
        self.sq_head = self._u32(sq_map, sq["head"])
        self.sq_tail = self._u32(sq_map, sq["tail"])
        self.sq_mask = self._u32(sq_map, sq["ring_mask"])[0]
        self.sq_array = self._u32(sq_map, sq["array"], self.sq_entries)
        self.cq_head = self._u32(cq_map, cq["head"])
        self.cq_tail = self._u32(cq_map, cq["tail"])
        self.cq_mask = self._u32(cq_map, cq["ring_mask"])[0]
        self.cq_overflow = self._u32(cq_map, cq["overflow"])
        self.cqes = cq["cqes"]

    def _mmap(self, size: int, flags: int, prot: int, offset: int) -> mmap.mmap:
        m = mmap.mmap(self.fd, size, flags=flags, prot=prot, offset=offset)
        self._maps.append(m)
        return m

    def _u32(self, m: mmap.mmap, offset: int, count: int = 1) -> memoryview:
        view = memoryview(m)[offset:offset + 4 * count].cast("I")
        self._views.append(view)
        return view

    # ------------------------------------------------------------------ calls
    def enter(self, to_submit: int, min_complete: int = 0, flags: int = 0) -> int:
        """``io_uring_enter(2)``; retried on EINTR; OSError on failure.

        ``to_submit`` must not exceed the SQEs published (``submit_pending()``): when the
        kernel submits fewer than asked it returns at once, without waiting for
        ``min_complete`` completions.
        """
        while True:
            ret = syscall(abi.SYS_io_uring_enter, self.fd, to_submit, min_complete, flags, None, None)
            if ret >= 0:
                return ret
            err = errno_cell().value
            if err != errno.EINTR:
                raise OSError(err, f"io_uring_enter: {os.strerror(err)}")

    def register(self, opcode: int, arg: int, nr: int) -> int:
        """``io_uring_register(2)`` with a pointer argument; OSError on failure."""
        return _check(syscall(abi.SYS_io_uring_register, self.fd, opcode, ctypes.c_void_p(arg), nr),
                      "io_uring_register")

    def register_files(self, fds: List[int]) -> None:
        """Make ``fds`` fixed files 0..n-1 (IOSQE_FIXED_FILE: no file refcount per SQE)."""
        arr = (ctypes.c_int * len(fds))(*fds)
        self.register(abi.IORING_REGISTER_FILES, ctypes.addressof(arr), len(fds))

    def register_ring_fd(self) -> int:
        """Register this ring's fd for the calling thread; returns the index for
        ``IORING_ENTER_REGISTERED_RING`` (skips the fd lookup on every enter).  Per thread."""
        arg = bytearray(abi.io_uring_rsrc_update.size)
        _RSRC_UPDATE.pack_into(arg, 0, 0xFFFFFFFF, 0, self.fd)  # offset -1: any free slot
        self.register(abi.IORING_REGISTER_RING_FDS, address_of(arg), 1)
        return int(_RSRC_UPDATE.unpack_from(arg)[0])

    def submit_pending(self) -> int:
        """SQEs published (tail moved) but not yet consumed by the kernel."""
        return (self.sq_tail[0] - self.sq_head[0]) & 0xFFFFFFFF

    # ------------------------------------------------------------------ teardown
    def close(self) -> None:
        """Unmap and close: once no mapping or fd refers to it, the kernel tears the ring
        down and cancels what is still in flight.  Idempotent."""
        self._unmap()
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def retire(self) -> None:
        """``close()`` for a ring whose thread may still run (stuck in a callback).

        The views are released (that thread's next use raises ValueError, never touches
        freed memory) and the fd number is pointed at /dev/null instead of closed, so a
        late ``io_uring_enter`` on it fails with EOPNOTSUPP rather than reaching a ring
        that reused the number.  ``close()`` later closes that placeholder.
        """
        self._unmap()
        if self.fd >= 0:
            null = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
            try:
                os.dup2(null, self.fd)  # drops our reference to the ring
            finally:
                os.close(null)

    def _unmap(self) -> None:
        for view in self._views:
            view.release()
        self._views = []
        for m in {id(m): m for m in self._maps}.values():
            m.close()
        self._maps = []

    def __enter__(self) -> Ring:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
