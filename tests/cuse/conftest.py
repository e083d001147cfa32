"""The CUSE tier's fixtures: one CuseServer per module (the guest is slow), unique node names.

Runs only where /dev/cuse exists (the qemu guest of ../shared/cusevm); every
module skips cleanly elsewhere.  Clients are real: this process (other threads
are the server's readers), shell tools, and fresh interpreters started with
``-S`` (no site import: ~10x slower startup in the guest is the tier's main cost).
"""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
import textwrap
import time
from typing import Callable, Iterator

import pytest

from fusd_runtime.cuse import CuseServer, cuse_available

needs_cuse = pytest.mark.skipif(not cuse_available(),
                                reason="needs /dev/cuse and root (CUSE tier: run in ../shared/cusevm's qemu guest)")
_names = itertools.count()


def unique_name(stem: str) -> str:
    """A /dev name no other test (or earlier run) uses."""
    return f"fusdt-{os.getpid()}-{next(_names)}-{stem}"


def client(code: str, *args: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh Python process: a separate, real client."""
    proc = subprocess.run([sys.executable, "-S", "-c", textwrap.dedent(code), *args], capture_output=True,
                          text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"client failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def wait_for(predicate: Callable[[], bool], timeout: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.01)
    return predicate()


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
