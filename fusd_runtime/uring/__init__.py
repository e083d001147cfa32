"""FUSE-over-io_uring (protocol 7.42+): the kernel's ring transport, in pure Python.

Requests arrive in buffers registered with the kernel through io_uring
``IORING_OP_URING_CMD`` commands on /dev/fuse, and replies leave through the same
buffers, one ``io_uring_enter`` per round trip, instead of a read(2) and a
write(2).  ``Server(transport="uring")`` selects it; it falls back to read/write
(with a log line) where the kernel does not offer it.

- ``abi``: the io_uring system call ABI (constants and struct layouts).
- ``ring``: one io_uring (setup, the shared mmaps, enter) through ctypes.
- ``queue``: one FUSE queue: its entries (the reply channels) and its thread.
- ``session``: the FUSE session on top: INIT negotiation, a queue per CPU, fallback.
"""

from __future__ import annotations

from .session import UringFuseSession, enable_uring_parameter, possible_cpus, uring_enabled

__all__ = ["UringFuseSession", "enable_uring_parameter", "possible_cpus", "uring_enabled"]
