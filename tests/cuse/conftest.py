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
