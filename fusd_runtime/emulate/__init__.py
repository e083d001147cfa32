"""Emulate a device from a recording: ``fusd record --proxy`` captures, umockdev and evemu files.

- ``script``: the one model every source becomes (Recording -> OpenScript -> Op).
- ``capture``: a fusd pcapng capture as a Recording.
- ``umockdev``: umockdev's ``*.ioctl`` and ``*.script`` files; ``evemu``: evemu device
  descriptions and event files (``evemu-record``, ``umockdev-record --evemu-events``).
- ``device``: ``EmulatedDevice``, which answers new clients from a Recording.
- ``load_recording(path)``: any of those files, by its content.
"""

from .capture import RecordingError, from_capture
from .device import EmulatedDevice
from .load import load_recording
from .script import Op, OpenScript, Recording, ioctl_key

__all__ = ["EmulatedDevice", "Op", "OpenScript", "Recording", "RecordingError", "from_capture", "ioctl_key",
           "load_recording"]
