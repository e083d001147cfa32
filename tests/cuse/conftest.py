"""The CUSE tier's fixtures: one CuseServer per module (the guest is slow), unique node names.

Runs only where /dev/cuse exists (the project runs it in a qemu guest: docs/contributing.md); every
module skips cleanly elsewhere.  Clients are real: this process (other threads
are the server's readers), shell tools, and fresh interpreters started with
``-S`` (no site import: ~10x slower startup in the guest is the tier's main cost).
"""

from __future__ import annotations

import itertools
import os
import subprocess
from typing import Callable, Iterator

import pytest
from conftest import client as _client
from conftest import wait_for as _wait_for

from fusd_runtime.cuse import CuseServer, cuse_available

needs_cuse = pytest.mark.skipif(not cuse_available(),
                                reason="needs /dev/cuse and root (the CUSE tier: docs/contributing.md)")
_names = itertools.count()


def unique_name(stem: str) -> str:
    """A /dev name no other test (or earlier run) uses."""
    return f"fusdt-{os.getpid()}-{next(_names)}-{stem}"


def client(code: str, *args: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess:
    """A fresh client process started with ``-S`` (site import skipped: the guest is slow)."""
    return _client(code, *args, timeout=timeout, check=check, isolated=True)


def wait_for(predicate: Callable[[], bool], timeout: float = 30.0) -> bool:
    """``conftest.wait_for`` with the guest's longer default."""
    return _wait_for(predicate, timeout)


@pytest.fixture(scope="module")
def cuse() -> Iterator[CuseServer]:
    """A started CuseServer shared by a module's tests; every node it made is gone afterwards."""
    if not cuse_available():
        pytest.skip("needs /dev/cuse and root")
    server = CuseServer()
    server.start()
    try:
        yield server
    finally:
        paths = [server.path(n) for n in server.devices()]
        server.stop()
        left = [p for p in paths if os.path.exists(p)]
        assert not left, f"nodes left behind: {left}"


class ReadOnlyPage:
    """One page of this process's memory holding ``data``, then made read-only (``mprotect``).

    A real driver copies an input buffer with ``copy_from_user`` only, so it
    accepts const or read-only memory; the kernel's copy-out to such a page
    fails with EFAULT.  ``addr`` is the page's address.
    """

    PROT_READ, PROT_WRITE, MAP_PRIVATE, MAP_ANONYMOUS = 1, 2, 0x02, 0x20

    def __init__(self, data: bytes) -> None:
        import ctypes
        self._libc = libc = ctypes.CDLL(None, use_errno=True)
        libc.mmap.restype = ctypes.c_void_p
        libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int,
                              ctypes.c_long]
        libc.mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
        libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
        addr = libc.mmap(None, 4096, self.PROT_READ | self.PROT_WRITE, self.MAP_PRIVATE | self.MAP_ANONYMOUS, -1, 0)
        assert addr not in (None, ctypes.c_void_p(-1).value), "mmap failed"
        self.addr: int = addr
        ctypes.memmove(addr, data, len(data))
        assert libc.mprotect(addr, 4096, self.PROT_READ) == 0, "mprotect failed"

    def read(self, n: int) -> bytes:
        import ctypes
        return ctypes.string_at(self.addr, n)

    def __enter__(self) -> ReadOnlyPage:
        return self

    def __exit__(self, *exc: object) -> None:
        self._libc.munmap(self.addr, 4096)
