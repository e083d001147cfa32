"""What every server does to a device before any request can reach it — in one place.

``Server.add``, ``CuseServer.add`` and the loopback kernel all call
:func:`prepare_device`: the device's mistakes are caught here (``checks.py``:
misspelt callbacks, signatures the runtime cannot call; ``ioctl.check_ioctls``:
declarations the transport cannot serve), and its strand is made (``strand.py``)
— the event loop itself for a device with ``async def`` callbacks — before the
device becomes visible, so the first OPEN already finds it.
"""

from __future__ import annotations

from typing import Any

from .aio import is_asyncio_device
from .checks import check_device
from .ioctl import check_ioctls
from .strand import give_loop_strand, strand_of


def prepare_device(device: Any, transport: str, events: Any) -> None:
    """Check ``device`` for ``transport`` ("fuse" or "cuse") and give it its strand (``events``: the loop)."""
    check_ioctls(device, transport)
    check_device(device)
    if is_asyncio_device(device):
        give_loop_strand(device, events)
    else:
        strand_of(device)
