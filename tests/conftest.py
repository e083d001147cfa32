"""Shared fixtures: real kernel round trips need root and /dev/fuse; nothing may be left mounted."""

from __future__ import annotations

import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)


def fuse_available() -> bool:
    return os.path.exists("/dev/fuse") and os.geteuid() == 0


needs_fuse = pytest.mark.skipif(not fuse_available(), reason="needs root and /dev/fuse (kernel FUSE tier)")


def _our_mounts() -> set:
    """Mount points this test process mounted that are still mounted (other processes' are theirs)."""
    from fusd_runtime.mount import Mount, is_mounted
    return {m for m in Mount.history if is_mounted(m)}


@pytest.fixture
def no_leftover_mounts():
    """Fails the test if it leaves a mount of its own behind."""
    before = _our_mounts()
    yield
    after = _our_mounts() - before
    assert not after, f"test left mounts behind: {after}"


@pytest.fixture
def server(no_leftover_mounts):
    """A started FUSE Server in a temp dir; stopped (and unmounted) after the test."""
    if not fuse_available():
        pytest.skip("needs root and /dev/fuse (kernel FUSE tier)")
    from fusd_runtime import Server
    srv = Server()
    srv.start()
    try:
        yield srv
    finally:
        srv.stop()
