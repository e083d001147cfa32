"""Traces: record FUSE traffic to pcapng, read captures (ours or strace logs), decode them.

- ``pcapng``: the container's blocks (write) and a tolerant block reader.
- ``recorder``: ``Recorder`` -- what the runtime calls per message (thread-safe, cheap).
- ``records``: ``Record``/``Connection``, what every reader yields.
- ``reader``: ``open_capture()`` -- format detection, pcapng records.
- ``strace``: records from ``strace -f -xx`` logs of any FUSE daemon (``strace_syntax``:
  the lines; ``strace_state``/``strace_calls``/``strace_fds``: fds, pipes and the
  messages passing through them).
- ``decode``: ``Decoder`` -- records to events, replies paired with requests, latency,
  and ``finish()``'s ``Summary`` of what is missing.
- ``live``: ``DebugSink`` -- a recorder-like sink that decodes messages as they are served.
- ``render``/``stats``/``command``: the ``python -m fusd_wire decode`` command.
- ``tap`` (+ ``fusermount_shim``): ``python -m fusd_wire tap``, recording an unmodified daemon.
- ``wireshark`` (+ ``wireshark_engine.lua``): the generated Lua dissector (``fuse.lua``).
"""

from .decode import Decoder, Event, Summary, decode_records
from .live import DebugSink
from .pcapng import INBOUND, LINKTYPE_FUSE, OUTBOUND, CaptureError
from .reader import Capture, open_capture
from .recorder import Recorder
from .records import Connection, Record

__all__ = [
    "INBOUND", "LINKTYPE_FUSE", "OUTBOUND", "Capture", "CaptureError", "Connection", "DebugSink", "Decoder", "Event",
    "Record", "Recorder", "Summary", "decode_records", "open_capture",
]
