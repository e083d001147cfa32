"""The reader trusts nothing: messages that lie about their size, short bodies, EOF — over a socket.

The real kernel never sends such messages, but the session also serves sockets
(replay, the loopback kernel, tests) and a reader must never hand a device bytes
of another request.  Here the kernel's side is played by hand over an
``AF_UNIX``/``SOCK_SEQPACKET`` socketpair (one message per read, like /dev/fuse)
through the real ``FuseSession``; the bytes are built from the header layout
(``struct`` with the field sizes of fuse_kernel.h), then corrupted field by field.
No root needed.
"""

from __future__ import annotations

import errno
import logging
import os
import socket
import struct

import pytest
from conftest import wait_for

from fusd_runtime import Context, Device
from fusd_runtime.fusefs import FuseSession
from fusd_runtime.registry import Registry

# fuse_in_header: len u32, opcode u32, unique u64, nodeid u64, uid u32, gid u32, pid u32, total_extlen u16, pad u16
IN_HEADER = struct.Struct("<IIQQIIIHH")
OUT_HEADER = struct.Struct("<IiQ")  # fuse_out_header: len u32, error i32, unique u64
INIT, LOOKUP, OPEN, READ, WRITE = 26, 1, 14, 15, 16
# fuse_init_in (7.36+): major, minor, max_readahead, flags, flags2, unused[11]
INIT_IN = struct.Struct("<IIII I 11I")
OPEN_IN = struct.Struct("<II")  # flags, open_flags
READ_IN = struct.Struct("<QQIIQII")  # fh, offset, size, read_flags, lock_owner, flags, padding
WRITE_IN = struct.Struct("<QQIIQII")  # fh, offset, size, write_flags, lock_owner, flags, padding


class Sink(Device):
    """Remembers every write it was handed."""

    def __init__(self) -> None:
        self.writes: list = []

    def write(self, ctx: Context, data: bytes, offset: int) -> int:
        self.writes.append(bytes(data))
        return len(data)

    def read(self, ctx: Context, size: int, offset: int) -> bytes:
        return b"r" * min(size, 3)


class Kernel:
    """The kernel's end of the socketpair: send requests, read answers."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.unique = 100

    def send(self, opcode: int, body: bytes, nodeid: int = 1, length: int = -1) -> int:
        self.unique += 2
        msg = IN_HEADER.pack(40 + len(body) if length < 0 else length, opcode, self.unique, nodeid, 0, 0, 4242, 0, 0)
        self.sock.send(msg + body)
        return self.unique

    def answer(self, timeout: float = 10) -> tuple:
        self.sock.settimeout(timeout)
        data = self.sock.recv(1 << 20)
        length, error, unique = OUT_HEADER.unpack_from(data)
        assert length == len(data)
        return unique, error, data[16:]

    def call(self, opcode: int, body: bytes, nodeid: int = 1) -> tuple:
        unique = self.send(opcode, body, nodeid)
        got_unique, error, payload = self.answer()
        assert got_unique == unique
        return error, payload


@pytest.fixture
def rig():
    kernel_end, daemon_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    sink = Sink()
    registry = Registry(os.geteuid(), os.getegid())
    registry.add("sink", sink, 0o666, os.geteuid(), os.getegid())
    ended = []
    session = FuseSession(daemon_end.fileno(), registry, "<socket>", readers=1,
                          on_end=lambda s, reason, exc: ended.append(reason))
    sink.session = session
    session.start_readers()
    kernel = Kernel(kernel_end)
    error, _ = kernel.call(INIT, INIT_IN.pack(7, 45, 131072, 0, 0, *([0] * 11)), nodeid=0)
    assert error == 0
    error, entry = kernel.call(LOOKUP, b"sink\0")
    nodeid = struct.unpack_from("<Q", entry)[0]
    error, opened = kernel.call(OPEN, OPEN_IN.pack(os.O_RDWR, 0), nodeid=nodeid)
    assert error == 0
    fh = struct.unpack_from("<Q", opened)[0]
    yield kernel, sink, session, fh, nodeid, ended
    kernel_end.close()
    for t in session.threads:
        t.join(5)
    daemon_end.close()


def test_a_write_whose_size_field_lies_is_refused_and_nothing_stale_reaches_the_device(rig, caplog) -> None:
    kernel, sink, session, fh, nodeid, _ = rig
    assert kernel.call(WRITE, WRITE_IN.pack(fh, 0, 12, 0, 0, 0, 0) + b"hello device", nodeid)[0] == 0
    with caplog.at_level(logging.WARNING, logger="fusd"):
        # fuse_write_in.size says 100, but only 5 bytes follow: the rest of the buffer is the last request's
        error, _ = kernel.call(WRITE, WRITE_IN.pack(fh, 0, 100, 0, 0, 0, 0) + b"short", nodeid)
    assert error == -errno.EIO
    assert sink.writes == [b"hello device"]
    assert "malformed FUSE_WRITE request" in caplog.text and "fuse_write_in.size 100 but 5 payload bytes" in caplog.text
    assert kernel.call(WRITE, WRITE_IN.pack(fh, 0, 2, 0, 0, 0, 0) + b"ok", nodeid)[0] == 0  # still serving
    assert sink.writes == [b"hello device", b"ok"]


def test_a_header_len_that_disagrees_with_the_bytes_read_is_refused(rig, caplog) -> None:
    kernel, sink, session, fh, nodeid, _ = rig
    with caplog.at_level(logging.WARNING, logger="fusd"):
        unique = kernel.send(WRITE, WRITE_IN.pack(fh, 0, 4, 0, 0, 0, 0) + b"data", nodeid, length=500)
        assert kernel.answer() == (unique, -errno.EIO, b"")
    assert "header says len 500, 84 bytes were read" in caplog.text
    assert sink.writes == []


def test_a_body_shorter_than_its_fixed_struct_is_refused(rig, caplog) -> None:
    kernel, sink, session, fh, nodeid, _ = rig
    with caplog.at_level(logging.WARNING, logger="fusd"):
        unique = kernel.send(READ, READ_IN.pack(fh, 0, 10, 0, 0, 0, 0)[:20], nodeid)  # 20 of fuse_read_in's 40
        assert kernel.answer() == (unique, -errno.EIO, b"")
    assert "60 bytes, its fixed request struct needs 80" in caplog.text
    error, data = kernel.call(READ, READ_IN.pack(fh, 0, 10, 0, 0, 0, 0), nodeid)
    assert (error, data) == (0, b"rrr")


def test_a_lookup_name_without_its_nul_is_refused(rig) -> None:
    kernel, sink, session, fh, nodeid, _ = rig
    error, _ = kernel.call(LOOKUP, b"sink")  # no terminating NUL inside the message
    assert error == -errno.EIO
    assert kernel.call(LOOKUP, b"sink\0")[0] == 0


def test_fragments_shorter_than_a_header_are_ignored_and_the_reader_lives(rig) -> None:
    kernel, sink, session, fh, nodeid, _ = rig
    kernel.sock.send(b"\x08\0\0\0\x10\0\0\0")  # "len 8, WRITE": nothing to answer (no unique)
    assert kernel.call(WRITE, WRITE_IN.pack(fh, 0, 3, 0, 0, 0, 0) + b"yes", nodeid)[0] == 0
    assert sink.writes == [b"yes"]


def test_end_of_file_ends_the_session_without_spinning(rig) -> None:
    kernel, sink, session, fh, nodeid, ended = rig
    reader = session.threads[0]
    kernel.sock.shutdown(socket.SHUT_WR)  # the peer is gone: read() returns 0
    assert wait_for(lambda: not reader.is_alive(), 10)
    assert ended == ["end of file on the channel"]  # the owner (a server) is told once, and stops
