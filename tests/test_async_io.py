"""Asynchronous direct I/O (io_uring, libaio) reaches FUSE-directory devices like read(2)/write(2) does.

The kernel answers an asynchronous direct read at or past i_size with 0 bytes
without asking the daemon (fs/fuse/file.c ``fuse_direct_IO``); a device file that
reported ``st_size`` 0 therefore read as empty through io_uring.  The clients
here are small C programs compiled at test time against Debian's liburing-dev
and libaio-dev (skipped with the reason when a compiler or header is missing).
"""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest
from conftest import needs_fuse, wait_for

from fusd_runtime import Context, Device, Server
from fusd_runtime.examples import PipeDevice

pytestmark = needs_fuse

URING_CLIENT = r"""
#include <liburing.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
/* uring_rw PATH read OFFSET LENGTH | PATH write OFFSET DATA: one io_uring read or write, result on stdout */
int main(int argc, char **argv) {
    struct io_uring ring; struct io_uring_sqe *sqe; struct io_uring_cqe *cqe;
    char buf[256]; int write_ = strcmp(argv[2], "write") == 0;
    int fd = open(argv[1], write_ ? O_WRONLY : O_RDONLY);
    if (fd < 0) { perror("open"); return 2; }
    if (io_uring_queue_init(4, &ring, 0) < 0) { perror("io_uring_queue_init"); return 3; }
    sqe = io_uring_get_sqe(&ring);
    if (write_) io_uring_prep_write(sqe, fd, argv[4], strlen(argv[4]), atoll(argv[3]));
    else io_uring_prep_read(sqe, fd, buf, atoi(argv[4]) < (int)sizeof buf ? atoi(argv[4]) : sizeof buf,
                            atoll(argv[3]));
    io_uring_submit(&ring);
    if (io_uring_wait_cqe(&ring, &cqe) < 0) { perror("wait"); return 4; }
    if (cqe->res < 0) { printf("error %d\n", -cqe->res); return 0; }
    if (write_) printf("wrote %d\n", cqe->res);
    else printf("read %d %.*s\n", cqe->res, cqe->res, buf);
    return 0;
}
"""

AIO_CLIENT = r"""
#include <libaio.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
/* aio_read PATH OFFSET: one libaio read of the device */
int main(int argc, char **argv) {
    io_context_t ctx = 0; struct iocb cb, *cbs[1] = {&cb}; struct io_event ev; char buf[256];
    int fd = open(argv[1], O_RDONLY);
    if (fd < 0 || io_setup(4, &ctx) < 0) { perror("setup"); return 2; }
    io_prep_pread(&cb, fd, buf, sizeof buf, atoll(argv[2]));
    if (io_submit(ctx, 1, cbs) != 1) { perror("io_submit"); return 3; }
    if (io_getevents(ctx, 1, 1, &ev, NULL) != 1) { perror("io_getevents"); return 4; }
    if ((long)ev.res < 0) { printf("error %ld\n", -(long)ev.res); return 0; }
    printf("read %ld %.*s\n", (long)ev.res, (int)ev.res, buf);
    return 0;
}
"""


def _build(tmp_path_factory, name: str, source: str, lib: str, header: str) -> str:
    if not shutil.which("gcc"):
        pytest.skip("needs gcc to build the C client")
    if not os.path.exists(f"/usr/include/{header}"):
        pytest.skip(f"needs /usr/include/{header} (Debian package {lib}-dev, in system-packages.txt)")
    d = tmp_path_factory.mktemp(name)
    src = d / f"{name}.c"
    src.write_text(source)
    exe = d / name
    subprocess.run(["gcc", "-O1", "-o", str(exe), str(src), f"-l{lib.replace('lib', '', 1)}"], check=True,
                   capture_output=True)
    return str(exe)


@pytest.fixture(scope="module")
def uring_rw(tmp_path_factory) -> str:
    return _build(tmp_path_factory, "uring_rw", URING_CLIENT, "liburing", "liburing.h")


@pytest.fixture(scope="module")
def aio_read(tmp_path_factory) -> str:
    return _build(tmp_path_factory, "aio_read", AIO_CLIENT, "libaio", "libaio.h")


class Counter(Device):
    """A stream: every read returns the next line."""

    def __init__(self) -> None:
        self.n = 0
        self.written: list = []

    def read(self, ctx: Context, size: int, offset: int) -> bytes:
        self.n += 1
        return f"line {self.n}".encode()

    def write(self, ctx: Context, data: bytes, offset: int) -> int:
        self.written.append(data)
        return len(data)


class Table(Device):
    """A seekable device with a size: offsets select bytes of the table."""

    seekable = True
    size = 64

    TABLE = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"

    def read(self, ctx: Context, size: int, offset: int) -> bytes:
        return self.TABLE[offset:offset + size]


def test_io_uring_reads_and_writes_a_stream_device(server: Server, uring_rw: str) -> None:
    dev = server.add(Counter(), "counter")
    run = lambda *a: subprocess.run([uring_rw, server.path("counter"), *a], capture_output=True, text=True,  # noqa: E731
                                    timeout=30).stdout.strip()
    assert run("read", "0", "6") == "read 6 line 1"
    assert run("read", "-1", "6") == "read 6 line 2"  # -1: the file position (a stream's is 0)
    # io_uring reads a regular file on after a short read until its buffer is full (or a read
    # answers b""): the device's answers arrive concatenated, as a stream's bytes
    assert run("read", "0", "20") == "read 20 line 3line 4line 5li"
    assert run("write", "0", "via io_uring") == "wrote 12"
    assert dev.written == [b"via io_uring"]


def test_io_uring_reads_a_seekable_device_at_its_offsets(server: Server, uring_rw: str) -> None:
    server.add(Table(), "table")
    run = lambda off, n: subprocess.run([uring_rw, server.path("table"), "read", off, n],  # noqa: E731
                                        capture_output=True, text=True, timeout=30).stdout.strip()
    assert run("0", "64") == "read 64 " + Table.TABLE.decode()
    assert run("60", "4") == "read 4 89+/"
    assert run("64", "10") == "read 0"  # its size is its end, as for a file


def test_libaio_reads_a_stream_device(server: Server, aio_read: str) -> None:
    server.add(Counter(), "counter")
    out = subprocess.run([aio_read, server.path("counter"), "0"], capture_output=True, text=True, timeout=30)
    assert out.stdout.strip() == "read 6 line 1", out.stderr


def test_a_blocking_read_through_io_uring_is_woken_by_a_write(server: Server, uring_rw: str) -> None:
    """io_uring waits for a pollable file with POLL (and our NOTIFY_POLL), then reads."""
    pipe = server.add(PipeDevice(), "pipe")
    proc = subprocess.Popen([uring_rw, server.path("pipe"), "read", "0", "5"], stdout=subprocess.PIPE, text=True)
    session = server.session
    assert wait_for(lambda: len(pipe.readers) == 1 or any(c.poll_kh is not None for c in
                                                            session.by_device.get(pipe, ())))
    assert proc.poll() is None
    fd = os.open(server.path("pipe"), os.O_WRONLY)
    os.write(fd, b"woken")
    os.close(fd)
    assert proc.communicate(timeout=30)[0].strip() == "read 5 woken"
