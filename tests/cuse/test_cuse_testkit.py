"""The test kit in the CUSE tier: a real /dev node next to the loopback kernel's CUSE.

The same client calls on both must give the device the same requests (the guest
kernel speaks 7.38), and the kit's pointer ioctls and interrupts must work on a
real node as they do on the loopback (``tests/test_testkit.py`` has the FUSE side).
"""

from __future__ import annotations

import errno
import os

import pytest
from ioctl_schemas import XFER, xfer
from test_testkit import Blocker, Echo, Spi, _device_requests, _scenario

from fusd_runtime.testing import serve

from .conftest import needs_cuse

pytestmark = needs_cuse


def test_loopback_cuse_sends_what_kernel_cuse_sends() -> None:
    with serve(Echo(), backend="kernel", transport="cuse") as real:
        _scenario(real)
        from_kernel = _device_requests(real)
    with serve(Echo(), "echo", backend="loopback", transport="cuse", minor=38) as loop:
        _scenario(loop)
        from_loopback = _device_requests(loop)
    assert from_loopback == from_kernel and len(from_kernel) >= 8


@pytest.mark.parametrize("backend", ["kernel", "loopback"])
def test_pointer_ioctl_and_interrupt_on_a_real_node(backend: str) -> None:
    with serve(Spi(), backend=backend, transport="cuse") as dev:
        tx, rx = dev.alloc(b"abc"), dev.alloc(4)
        with dev.open() as f:
            assert f.ioctl(XFER, dev.alloc(xfer.build(dict(tx=tx.addr, rx=rx.addr, tx_len=3, rx_len=4)))) == 3
        assert rx.read() == b"ABC\0"
    with serve(Blocker(), backend=backend, transport="cuse") as dev:
        with dev.open(os.O_RDONLY) as f:
            call = f.start_read(8)
            dev.wait_for(lambda: dev.device.pending, what="the blocked read")
            assert call.interrupt()
            with pytest.raises(OSError) as exc:
                call.result(60)
            assert exc.value.errno == errno.EINTR
