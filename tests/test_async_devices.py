"""``async def`` callbacks and the server on asyncio, against the real kernel.

A blocking read is ``return await self.queue.get()``; a write from another client
wakes it; signals cancel it; O_NONBLOCK never waits; the server runs inside a
user's asyncio program next to another asyncio server.
"""

from __future__ import annotations

import asyncio
import errno
import os
import signal
import subprocess
import sys
import threading

import pytest
from conftest import BLOCKED_READER, INTERRUPTED_WRITER, client, fuse_available, needs_fuse, wait_for

from fusd_runtime import Context, Device, Server

pytestmark = needs_fuse


class AsyncMailbox(Device):
    """The README's Mailbox, async: a read waits for the next letter."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue = asyncio.Queue()
        self.arrivals: list = []
        self.cancelled = 0
        self.eager_tasks: list = []

    async def write(self, ctx: Context, data: bytes, offset: int) -> int:
        self.queue.put_nowait(bytes(data))
        return len(data)

    async def read(self, ctx: Context, size: int, offset: int) -> bytes:
        self.arrivals.append(ctx.pid)
        self.eager_tasks.append(asyncio.current_task())
        try:
            letter = await self.queue.get()
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        assert ctx.pid == self.arrivals[self.arrivals.index(ctx.pid)]  # the call's own fields after the await
        return letter[:size]


def test_an_async_read_blocks_and_a_write_from_another_process_wakes_it(server: Server) -> None:
    box = server.add(AsyncMailbox(), "mailbox")
    reader = subprocess.Popen([sys.executable, "-c", "import os,sys; fd=os.open(sys.argv[1], os.O_RDONLY); "
                               "print(os.read(fd, 100))", server.path("mailbox")], stdout=subprocess.PIPE, text=True)
    assert wait_for(lambda: len(box.arrivals) == 1)
    assert reader.poll() is None
    client("import os,sys; fd=os.open(sys.argv[1], os.O_WRONLY); os.write(fd, b'you have mail')",
           server.path("mailbox"))
    assert reader.communicate(timeout=20)[0].strip() == "b'you have mail'"
    assert box.eager_tasks == [None]  # its first step ran eagerly in the reader, outside any task


def test_a_thousand_suspended_reads_are_answered_in_arrival_order(server: Server) -> None:
    box = server.add(AsyncMailbox(), "mailbox")
    path = server.path("mailbox")
    results: dict = {}

    def read_one() -> None:
        fd = os.open(path, os.O_RDONLY)
        try:
            results[threading.get_native_id()] = os.read(fd, 16)
        finally:
            os.close(fd)

    threads = [threading.Thread(target=read_one) for _ in range(1000)]
    for t in threads:
        t.start()
    assert wait_for(lambda: len(box.arrivals) == 1000, 60)
    assert len(server.session.deferred) == 1000  # type: ignore[union-attr]
    fd = os.open(path, os.O_WRONLY)
    try:
        for i in range(1000):
            os.write(fd, b"%d" % i)
    finally:
        os.close(fd)
    for t in threads:
        t.join(60)
    # the i-th read to arrive got the i-th letter
    assert [results[tid] for tid in box.arrivals] == [b"%d" % i for i in range(1000)]
    assert not server.session.deferred  # type: ignore[union-attr]


def test_a_signal_cancels_the_task_and_the_caller_gets_eintr(server: Server) -> None:
    box = server.add(AsyncMailbox(), "mailbox")
    proc = subprocess.Popen([sys.executable, "-c", BLOCKED_READER, server.path("mailbox")], stdout=subprocess.PIPE,
                            text=True)
    assert proc.stdout.readline().strip() == "ready"
    assert wait_for(lambda: len(box.arrivals) == 1)
    proc.send_signal(signal.SIGUSR1)
    assert proc.communicate(timeout=20)[0].strip() == "interrupted"
    assert wait_for(lambda: box.cancelled == 1)  # CancelledError inside the callback
    assert wait_for(lambda: not server.session.deferred)  # type: ignore[union-attr]
    box.queue.put_nowait(b"for the next reader")  # nothing was consumed by the cancelled read
    fd = os.open(server.path("mailbox"), os.O_RDONLY)
    try:
        assert os.read(fd, 100) == b"for the next reader"
    finally:
        os.close(fd)


class PartialAsyncWriter(Device):
    async def write(self, ctx: Context, data: bytes, offset: int) -> int:
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            return 7  # interrupted: report what was taken, instead of EINTR
        return len(data)


def test_an_interrupted_async_write_may_answer_its_partial_count(server: Server) -> None:
    server.add(PartialAsyncWriter(), "slow")
    proc = subprocess.Popen([sys.executable, "-c", INTERRUPTED_WRITER, server.path("slow")],
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "ready"
    assert wait_for(lambda: len(server.session.deferred) == 1)  # type: ignore[union-attr]
    proc.send_signal(signal.SIGUSR1)
    assert proc.communicate(timeout=20)[0].strip() == "7"  # 7 of its 100 bytes taken


def test_nonblocking_calls_never_wait(server: Server) -> None:
    box = server.add(AsyncMailbox(), "mailbox")
    fd = os.open(server.path("mailbox"), os.O_RDONLY | os.O_NONBLOCK)
    try:
        with pytest.raises(BlockingIOError):
            os.read(fd, 10)
        assert box.cancelled == 1 and not server.session.deferred  # type: ignore[union-attr]
        box.queue.put_nowait(b"now")
        assert os.read(fd, 10) == b"now"  # a nonblocking read that need not wait is answered
    finally:
        os.close(fd)


class Raising(Device):
    async def read(self, ctx: Context, size: int, offset: int) -> bytes:
        await asyncio.sleep(0)
        raise OSError(errno.ENOSPC, "async, on purpose")

    async def write(self, ctx: Context, data: bytes, offset: int) -> int:
        raise ValueError("a bug, before any await")


def test_raising_in_a_coroutine_answers_like_a_sync_callback(server: Server) -> None:
    server.add(Raising(), "raising")
    fd = os.open(server.path("raising"), os.O_RDWR)
    try:
        with pytest.raises(OSError) as info:
            os.read(fd, 10)
        assert info.value.errno == errno.ENOSPC
        with pytest.raises(OSError) as info:
            os.write(fd, b"x")
        assert info.value.errno == errno.EIO
    finally:
        os.close(fd)


class Lines(Device):
    """A paced serial line: one line per tick, written by the device's own asyncio task."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue = asyncio.Queue()

    async def produce(self, count: int, period: float) -> None:
        for i in range(count):
            await asyncio.sleep(period)
            self.queue.put_nowait(f"$GPGGA,{i}\n".encode())

    async def read(self, ctx: Context, size: int, offset: int) -> bytes:
        return await self.queue.get()


def test_the_server_runs_inside_a_users_loop_next_to_another_asyncio_server(no_leftover_mounts) -> None:
    async def main() -> list:
        async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            writer.write((await reader.readline()).upper())
            await writer.drain()
            writer.close()

        tcp = await asyncio.start_server(echo, "127.0.0.1", 0)
        port = tcp.sockets[0].getsockname()[1]
        lines = Lines()
        async with Server() as server:
            server.add(lines, "gps")
            assert server.loop is asyncio.get_running_loop()
            producer = asyncio.get_running_loop().create_task(lines.produce(3, 0.05))
            got = await asyncio.get_running_loop().run_in_executor(None, _read_lines, server.path("gps"), 3)
            r, w = await asyncio.open_connection("127.0.0.1", port)
            w.write(b"hello tcp\n")
            echoed = await r.readline()
            w.close()
            await producer
        tcp.close()
        await tcp.wait_closed()
        return [got, echoed, server.stopped]

    got, echoed, stopped = asyncio.run(main())
    assert got == [b"$GPGGA,0\n", b"$GPGGA,1\n", b"$GPGGA,2\n"]
    assert echoed == b"HELLO TCP\n" and stopped


def _read_lines(path: str, n: int) -> list:
    fd = os.open(path, os.O_RDONLY)
    try:
        return [os.read(fd, 100) for _ in range(n)]
    finally:
        os.close(fd)


def test_serve_is_cancellable_and_leaves_nothing(no_leftover_mounts) -> None:
    seen: list = []

    async def main() -> None:
        server = Server()
        task = asyncio.get_running_loop().create_task(server.serve(ready=lambda: seen.append(server.mountpoint)))
        while not seen:
            await asyncio.sleep(0.01)
        server.add(Lines(), "gps")
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert server.stopped

    asyncio.run(main())
    from fusd_runtime.mount import is_mounted
    assert seen and not is_mounted(seen[0])


@pytest.mark.skipif(not fuse_available(), reason="needs root and /dev/fuse")
def test_device_tasks_run_as_device_code(server: Server) -> None:
    class Sensor(Device):
        def __init__(self) -> None:
            self.value = 0
            self.started = False

        async def tick(self) -> None:
            for _ in range(3):
                await asyncio.sleep(0.02)
                self.value += 1
                self.notify_poll()

        def read(self, ctx: Context, size: int, offset: int) -> bytes:
            if not self.started:
                self.started = True
                self.call_soon(self.tick)  # an async function: runs as the device's own task
            return b"%d\n" % self.value

    sensor = server.add(Sensor(), "sensor")
    fd = os.open(server.path("sensor"), os.O_RDONLY)
    try:
        assert os.read(fd, 10) == b"0\n"
        assert wait_for(lambda: sensor.value == 3)
        assert os.read(fd, 10) == b"3\n"
    finally:
        os.close(fd)


def test_readers_that_stood_in_for_the_loop_leave_no_running_loop_behind(server: Server) -> None:
    """A reader that ran async work as the parked loop's stand-in gives the loop back entirely."""
    seen: list = []

    class Plain(Device):  # no async callbacks: its code runs in reader threads, outside asyncio
        def write(self, ctx: Context, data: bytes, offset: int) -> int:
            try:
                seen.append(asyncio.get_running_loop())
            except RuntimeError:
                seen.append(None)
            return len(data)

    box = server.add(AsyncMailbox(), "mailbox")
    server.add(Plain(), "plain")
    for _ in range(3):  # a read woken by a write: the write's reader runs the woken task too
        reader = threading.Thread(target=lambda: _read_lines(server.path("mailbox"), 1))
        reader.start()
        assert wait_for(lambda: len(box.arrivals) >= 1)
        fd = os.open(server.path("mailbox"), os.O_WRONLY)
        os.write(fd, b"letter")
        os.close(fd)
        reader.join(20)
        box.arrivals.clear()
        fd = os.open(server.path("plain"), os.O_WRONLY)
        for _ in range(10):
            os.write(fd, b"x")
        os.close(fd)
    assert seen == [None] * 30
