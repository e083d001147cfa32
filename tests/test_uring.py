"""FUSE-over-io_uring: the ring ABI against the header, the kernel's rules, and the transport's edges.

The device behaviour itself is tested by the whole FUSE tier, which runs every
``server``-fixture test on both channels (``conftest.server``).  Here:

- the io_uring structs and constants of ``fusd_runtime.uring.abi`` against the
  machine's ``linux/io_uring.h`` (compiled with gcc);
- what the kernel does (the facts the transport is built on), with a raw ring on
  a raw mount: the INIT offer follows ``enable_uring``; REGISTER before the INIT
  reply fails EAGAIN; a ring without IORING_SETUP_SQE128 gets EINVAL;
- the transport: a queue per possible CPU pinned there, the fallback with its log
  line, replies from threads that exit right after, a callback stuck at shutdown,
  external umount / fusectl abort / SIGKILL of a ring server, recording.

``enable_uring`` is set to Y only while a server starts (``uring_enabled``: a
connection keeps io_uring afterwards) and always restored.
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
import signal
import struct
import subprocess
import sys
import threading
import time
from typing import Dict, Tuple

import pytest
from conftest import ROOT, client, fuse_available, start_server, uring_skip_reason, wait_for

from fusd_runtime import Device, Server
from fusd_runtime.examples import Hello, PipeDevice
from fusd_runtime.mount import Mount, is_mounted
from fusd_runtime.uring import abi, enable_uring_parameter, possible_cpus, uring_enabled
from fusd_runtime.uring.queue import _SQE_URING_CMD, COMMIT, REGISTER
from fusd_runtime.uring.ring import Ring, address_of
from fusd_wire import FAST
from fusd_wire import constants as C

HEADER = "/usr/include/linux/io_uring.h"
needs_uring = pytest.mark.skipif(bool(uring_skip_reason()), reason=uring_skip_reason() or "-")


# ---------------------------------------------------------------------- tier 1: the ABI against the header
C_FIELDS = {  # our field name -> the C member expression (unions and renames of the 6.1 header)
    ("io_sqring_offsets", "resv2"): "resv2", ("io_cqring_offsets", "resv2"): "resv2",
}
C_STRUCT = {"iovec": "struct iovec"}
CONSTANTS = ["IORING_SETUP_CQSIZE", "IORING_SETUP_CLAMP", "IORING_SETUP_COOP_TASKRUN", "IORING_SETUP_TASKRUN_FLAG",
             "IORING_SETUP_SQE128", "IORING_SETUP_CQE32", "IORING_SETUP_SINGLE_ISSUER", "IORING_SETUP_DEFER_TASKRUN",
             "IORING_FEAT_SINGLE_MMAP", "IORING_FEAT_NODROP", "IORING_OFF_SQ_RING", "IORING_OFF_CQ_RING",
             "IORING_OFF_SQES", "IORING_ENTER_GETEVENTS", "IORING_ENTER_REGISTERED_RING", "IORING_REGISTER_FILES",
             "IORING_REGISTER_RING_FDS", "IORING_OP_NOP", "IORING_OP_READ", "IORING_OP_URING_CMD",
             "IOSQE_FIXED_FILE", "IORING_CQE_F_MORE", "SYS_io_uring_setup", "SYS_io_uring_enter",
             "SYS_io_uring_register"]


@pytest.fixture(scope="module")
def compiled_abi(tmp_path_factory) -> Tuple[Dict[str, int], Dict[Tuple[str, str], Tuple[int, int]], Dict[str, int]]:
    """sizeof every layout, (offset, size) of every field, and every constant, as gcc sees them."""
    gcc = shutil.which("gcc")
    if gcc is None or not os.path.exists(HEADER):
        pytest.skip("needs gcc and the kernel uapi headers (linux-libc-dev) to read the io_uring ABI")
    lines = ["#include <stddef.h>", "#include <stdio.h>", "#include <sys/syscall.h>", "#include <sys/uio.h>",
             "#include <linux/io_uring.h>", "int main(void) {"]
    for name, lay in abi.LAYOUTS.items():
        ctype = C_STRUCT.get(name, f"struct {name}")
        lines.append(f'  printf("S {name} %zu\\n", sizeof({ctype}));')
        for field in lay.offset:
            member = C_FIELDS.get((name, field), field)
            lines.append(f'  printf("F {name} {field} %zu %zu\\n", offsetof({ctype}, {member}), '
                         f"sizeof((({ctype} *)0)->{member}));")
    for const in CONSTANTS:
        lines.append(f'  printf("C {const} %llu\\n", (unsigned long long)({const}));')
    lines += ["  return 0;", "}"]
    tmp = tmp_path_factory.mktemp("uring_abi")
    src, exe = tmp / "abi.c", tmp / "abi"
    src.write_text("\n".join(lines) + "\n")
    subprocess.run([gcc, "-std=gnu11", "-Wall", "-Werror", "-o", str(exe), str(src)], check=True,
                   capture_output=True, text=True)
    sizes: Dict[str, int] = {}
    fields: Dict[Tuple[str, str], Tuple[int, int]] = {}
    consts: Dict[str, int] = {}
    for line in subprocess.run([str(exe)], check=True, capture_output=True, text=True).stdout.splitlines():
        kind, *rest = line.split()
        if kind == "S":
            sizes[rest[0]] = int(rest[1])
        elif kind == "F":
            fields[(rest[0], rest[1])] = (int(rest[2]), int(rest[3]))
        else:
            consts[rest[0]] = int(rest[1])
    return sizes, fields, consts


@pytest.mark.parametrize("name", sorted(abi.LAYOUTS))
def test_io_uring_layout_matches_the_header(name, compiled_abi) -> None:
    sizes, fields, _ = compiled_abi
    lay = abi.LAYOUTS[name]
    assert lay.size == sizes[name]
    for field in lay.offset:
        off, size = fields[(name, field)]
        if (name, field) == ("io_uring_sqe", "cmd"):  # cmd[0]: a flexible area (16 bytes, 80 with SQE128)
            assert off == lay.offset[field] == 48 and abi.SQE128_CMD_SIZE == 80
            continue
        assert (lay.offset[field], lay.field_size(field)) == (off, size), f"{name}.{field}"


def test_io_uring_constants_match_the_header(compiled_abi) -> None:
    _, _, consts = compiled_abi
    assert {c: getattr(abi, c) for c in CONSTANTS} == consts


def test_layout_struct_packs_fields_at_their_offsets() -> None:
    sqe = abi.io_uring_sqe.struct("opcode", "fd", "cmd_op", "user_data", size=abi.SQE128_SIZE)
    raw = sqe.pack(46, 3, 2, 0x1122334455667788)
    assert len(raw) == 128 and raw[0] == 46 and raw[4:8] == (3).to_bytes(4, "little")
    assert raw[8:12] == (2).to_bytes(4, "little") and raw[32:40] == (0x1122334455667788).to_bytes(8, "little")
    with pytest.raises(ValueError):
        abi.io_uring_sqe.struct("off", "cmd_op")  # a union: the two overlap


def test_the_commit_command_sits_in_the_sqe_command_area() -> None:
    """REGISTER's SQE: URING_CMD on fixed file 0, cmd_op, the iovec pair, user_data; fuse_uring_cmd_req at 48."""
    raw = bytearray(128)
    _SQE_URING_CMD.pack_into(raw, 0, abi.IORING_OP_URING_CMD, abi.IOSQE_FIXED_FILE, 0, REGISTER, 0xABCD, 2, 7,
                             0, 0xFEED, 1, *([0] * 6))
    assert raw[0] == abi.IORING_OP_URING_CMD and raw[1] == abi.IOSQE_FIXED_FILE
    assert struct.unpack_from("<I", raw, 8)[0] == REGISTER and struct.unpack_from("<Q", raw, 16)[0] == 0xABCD
    assert struct.unpack_from("<I", raw, 24)[0] == 2 and struct.unpack_from("<Q", raw, 32)[0] == 7
    req = FAST.fuse_uring_cmd_req.decode(raw, 48)
    assert (req.flags, req.commit_id, req.qid) == (0, 0xFEED, 1)
    assert (REGISTER, COMMIT) == (C.FUSE_IO_URING_CMD_REGISTER, C.FUSE_IO_URING_CMD_COMMIT_AND_FETCH)


# ---------------------------------------------------------------------- tier 2: the kernel's rules, raw
def _raw_mount(tmp_path) -> Mount:
    mnt = tmp_path / "raw"
    mnt.mkdir()
    return Mount(str(mnt), fsname="fusdraw", watchdog=False)


def _read_init(fd: int) -> Tuple[int, int, int]:
    """(unique, minor, flags | flags2 << 32) of the kernel's INIT."""
    buf = os.read(fd, 132 * 1024)
    _, opcode, unique, *_ = FAST.fuse_in_header.struct.unpack_from(buf)
    assert opcode == C.fuse_opcode.FUSE_INIT
    major, minor, _, flags, flags2 = FAST.fuse_init_in.struct.unpack_from(buf, 40)[:5]
    return unique, minor, flags | flags2 << 32


def _register_result(ring: Ring, devfd: int) -> int:
    """Submit one FUSE_IO_URING_CMD_REGISTER (queue 0) on ``ring``; its CQE's res, or 0 if it was taken."""
    hdr, payload = bytearray(FAST.fuse_uring_req_header.size), bytearray(128 * 1024)
    iov = bytearray(32)
    struct.pack_into("<QQQQ", iov, 0, address_of(hdr), len(hdr), address_of(payload), len(payload))
    sqe = abi.io_uring_sqe.struct("opcode", "fd", "cmd_op", "addr", "len", "user_data", size=abi.io_uring_sqe.size)
    sqe.pack_into(ring.sqes, 0, abi.IORING_OP_URING_CMD, devfd, REGISTER, address_of(iov), 2, 1)
    ring.sq_array[ring.sq_tail[0] & ring.sq_mask] = 0
    ring.sq_tail[0] = (ring.sq_tail[0] + 1) & 0xFFFFFFFF
    ring.enter(1)
    # EAGAIN from the inline issue sends the command to an io-wq worker, which completes it
    # (with the same error) a moment later: poll the CQ for a while
    deadline = time.monotonic() + 5
    while ring.cq_head[0] == ring.cq_tail[0] and time.monotonic() < deadline:
        ring.enter(0, 0, abi.IORING_ENTER_GETEVENTS)
        time.sleep(0.01)
    if ring.cq_head[0] == ring.cq_tail[0]:
        return 0
    res = struct.unpack_from("<i", ring.cq, ring.cqes + (ring.cq_head[0] & ring.cq_mask) * 16 + 8)[0]
    ring.cq_head[0] = (ring.cq_head[0] + 1) & 0xFFFFFFFF
    return int(res)


@needs_uring
@pytest.mark.parametrize("enabled", [False, True])
def test_the_kernel_offers_io_uring_in_init_only_while_enable_uring_is_y(tmp_path, enabled) -> None:
    if enabled:
        with uring_enabled():
            m = _raw_mount(tmp_path)
    else:
        assert enable_uring_parameter() is False, "enable_uring is expected to be N between tests"
        m = _raw_mount(tmp_path)
    try:
        _, minor, flags = _read_init(m.fd)
        assert minor >= 42
        assert bool(flags & C.InitFlags.FUSE_OVER_IO_URING) is enabled
        assert flags & C.InitFlags.FUSE_INIT_EXT  # flags2 (where the bit travels) exists
    finally:
        m.close()


@needs_uring
def test_register_before_the_init_reply_fails_eagain_and_without_sqe128_einval(tmp_path) -> None:
    with uring_enabled():
        m = _raw_mount(tmp_path)
        try:
            _read_init(m.fd)  # not answered yet
            with Ring(8, abi.IORING_SETUP_SQE128) as ring:
                assert _register_result(ring, m.fd) == -errno.EAGAIN
            with Ring(8, 0) as ring:  # 64-byte SQEs: no room for fuse_uring_cmd_req
                assert _register_result(ring, m.fd) == -errno.EINVAL
        finally:
            m.close()


# ---------------------------------------------------------------------- tier 2: the transport
class WhichQueue(Device):
    """Reads answer which ring queue carried them (the channel a handler replies on is the entry)."""

    seekable = True

    def read(self, ctx, size, offset):
        return b"%d\n" % ctx.fd.queue.qid


@needs_uring
def test_one_queue_per_possible_cpu_each_thread_on_its_cpu(no_leftover_mounts) -> None:
    srv = start_server("uring")
    try:
        srv.add(WhichQueue(), "which")
        queues = srv.session.queues  # type: ignore[union-attr]
        assert [q.qid for q in queues] == possible_cpus()
        allowed = os.sched_getaffinity(0)
        for q in queues:
            expected = {q.qid} if q.qid in allowed else allowed
            assert os.sched_getaffinity(q.thread.native_id) == expected
        # a client running on CPU c is served by queue c
        for cpu in sorted(allowed):
            out = subprocess.run(["taskset", "-c", str(cpu), sys.executable, "-c",
                                  "import os, sys\nfd = os.open(sys.argv[1], os.O_RDONLY)\n"
                                  "print(os.pread(fd, 10, 0).decode().strip())", srv.path("which")],
                                 capture_output=True, text=True, timeout=30)
            assert out.stdout.strip() == str(cpu), out.stderr
    finally:
        srv.stop()


@pytest.mark.skipif(not fuse_available() or enable_uring_parameter() is not False,
                    reason="needs root, /dev/fuse and the fuse enable_uring parameter set to N")
def test_without_the_kernels_offer_it_falls_back_to_read_write_and_says_why(no_leftover_mounts, caplog) -> None:
    with caplog.at_level(logging.WARNING, logger="fusd"):
        srv = Server(transport="uring")  # enable_uring is N: INIT offers no FUSE_OVER_IO_URING
        srv.start()
    try:
        assert srv.transport == "fuse"
        lines = [r.getMessage() for r in caplog.records if "io_uring" in r.getMessage()]
        assert len(lines) == 1 and "enable_uring is N" in lines[0] and "read/write" in lines[0]
        srv.add(Hello(), "hello")
        assert "Hello from a Python device" in client("import sys; print(open(sys.argv[1]).read())",
                                                      srv.path("hello")).stdout
        assert not getattr(srv.session, "queues", [])
    finally:
        srv.stop()


class LateAnswers(Device):
    """Every read is answered by a new thread that exits right after answering."""

    def read(self, ctx, size, offset):
        handle = ctx.defer()
        threading.Thread(target=lambda: (time.sleep(0.01), handle.reply(b"late\n"))).start()
        return handle


@needs_uring
def test_replies_from_threads_that_exit_keep_the_entries_working(no_leftover_mounts) -> None:
    """The kernel hands an entry's next request to whoever submitted its last command and cancels it
    when that thread exits: replies from other threads must be submitted by the queue's own."""
    srv = start_server("uring")
    try:
        srv.add(LateAnswers(), "late")
        out = client("""
            import os, sys
            fd = os.open(sys.argv[1], os.O_RDONLY)
            print(b"".join(os.read(fd, 10) for _ in range(200)).count(b"late"))
        """, srv.path("late"))
        assert out.stdout.strip() == "200"
    finally:
        srv.stop()


class Stuck(Device):
    """A read that sleeps without deferring (a device bug the server must survive at shutdown)."""

    def __init__(self) -> None:
        self.entered = threading.Event()

    def read(self, ctx, size, offset):
        self.entered.set()
        time.sleep(8)
        return b"too late\n"


def _ring_fds() -> int:
    n = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            n += "io_uring" in os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            pass
    return n


@needs_uring
def test_stop_closes_the_rings_even_under_a_callback_that_never_returns(no_leftover_mounts, caplog) -> None:
    """An open ring keeps the connection alive and the unmount waiting: stop() must close every ring,
    retiring the one whose thread is stuck, before it unmounts."""
    before = _ring_fds()
    srv = start_server("uring")
    stuck = srv.add(Stuck(), "stuck")
    reader = subprocess.Popen([sys.executable, "-c", "import os, sys\nfd = os.open(sys.argv[1], os.O_RDONLY)\n"
                               "try:\n    os.read(fd, 10)\nexcept OSError as e:\n    print(e.errno)",
                               srv.path("stuck")], stdout=subprocess.PIPE, text=True)
    assert stuck.entered.wait(10)
    t0 = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="fusd"):
        srv.stop()
    assert time.monotonic() - t0 < 8  # not waiting for the callback
    assert _ring_fds() == before
    assert any("closing its ring under it" in r.getMessage() for r in caplog.records)
    assert reader.communicate(timeout=20)[0].strip() in (str(errno.ECONNABORTED), str(errno.ENOTCONN),
                                                         str(errno.ENODEV))
    assert not is_mounted(srv.mountpoint or "/nonexistent")


RING_SERVER = """
import sys
sys.path.insert(0, {root!r})
from fusd_runtime import Server
from fusd_runtime.examples import Hello
srv = Server(sys.argv[1], transport="uring")
srv.add(Hello(), "hello")
srv.serve_forever(ready=lambda: print("serving", srv.transport, flush=True))
print("serve_forever returned", flush=True)
"""


def _ring_server(tmp_path) -> subprocess.Popen:
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    with uring_enabled():
        proc = subprocess.Popen([sys.executable, "-c", RING_SERVER.format(root=ROOT), str(mnt)],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        line = proc.stdout.readline().strip()
    if line != "serving uring":
        proc.kill()
        raise AssertionError(f"ring server did not start: {line!r} {proc.stderr.read()}")
    proc.mnt = str(mnt)  # type: ignore[attr-defined]
    return proc


def _finish(proc: subprocess.Popen) -> Tuple[int, str, str]:
    try:
        out, err = proc.communicate(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        raise AssertionError(f"the server did not exit:\n{out}\n{err}") from None
    return proc.returncode, out, err


@needs_uring
def test_an_external_umount_ends_a_ring_server_with_a_message(tmp_path) -> None:
    proc = _ring_server(tmp_path)
    assert "Hello" in client("import sys; print(open(sys.argv[1]).read())", proc.mnt + "/hello").stdout
    subprocess.run(["umount", proc.mnt], check=True, timeout=20)
    rc, out, err = _finish(proc)
    assert rc == 0 and "serve_forever returned" in out
    assert "unmounted" in err and "Traceback" not in err
    assert not is_mounted(proc.mnt)


@needs_uring
def test_a_fusectl_abort_ends_a_ring_server_with_a_message(tmp_path) -> None:
    proc = _ring_server(tmp_path)
    if not os.path.isdir("/sys/fs/fuse/connections") or not os.listdir("/sys/fs/fuse/connections"):
        subprocess.run(["mount", "-t", "fusectl", "none", "/sys/fs/fuse/connections"], capture_output=True)
    with open("/proc/self/mountinfo") as f:
        conn = next(line.split()[2].split(":")[1] for line in f if line.split()[4] == proc.mnt)
    with open(f"/sys/fs/fuse/connections/{conn}/abort", "w") as f:
        f.write("1")
    rc, out, err = _finish(proc)
    assert rc == 0 and "serve_forever returned" in out
    assert "aborted" in err and "Traceback" not in err
    assert not is_mounted(proc.mnt)


@needs_uring
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL])
def test_a_ring_server_killed_or_terminated_leaves_no_mount(tmp_path, sig) -> None:
    proc = _ring_server(tmp_path)
    try:
        proc.send_signal(sig)
        proc.wait(timeout=20)
        assert wait_for(lambda: not is_mounted(proc.mnt), timeout=15), "the watchdog must unmount"
        assert os.listdir(proc.mnt) == []
    finally:
        proc.kill()
        proc.communicate()


def _recorded_session(tmp_path, transport: str) -> list:
    """Record one client session on ``transport``; the decoded messages as (direction, opcode, error, data)."""
    import json
    cap = tmp_path / f"{transport}.pcapng"
    srv = Server(record=str(cap), transport=transport)
    with uring_enabled():
        srv.start()
    try:
        assert srv.transport == transport
        srv.add(PipeDevice(), "pipe")
        client("""
            import os, sys
            fd = os.open(sys.argv[1], os.O_RDWR)
            os.write(fd, b"through the ring")
            print(os.read(fd, 100))
            os.close(fd)
        """, srv.path("pipe"))
    finally:
        srv.stop()
    out = subprocess.run([sys.executable, "-m", "fusd_wire", "decode", "--json", str(cap)], capture_output=True,
                         text=True, timeout=60, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    volatile = ("lock_owner", "atime", "mtime", "ctime", "atimensec", "mtimensec", "ctimensec")

    def stable(value):  # drop what differs from run to run (times of the mount, lock owners)
        if isinstance(value, dict):
            return {k: stable(v) for k, v in value.items() if k not in volatile}
        return value

    seen = []
    wakeups = set()
    for line in out.stdout.splitlines():
        msg = json.loads(line)
        body = msg.get("body") or {}
        if msg["opcode"] == "LOOKUP" and body.get("name") == b".fusd-wakeup".hex():
            wakeups.add(msg["unique"])  # how the read/write readers are stopped: not the client's
        if msg["unique"] in wakeups or msg["opcode"] == "INIT":
            continue
        seen.append((msg["type"], msg["dir"], msg["opcode"], msg.get("error"), msg["len"],
                     json.dumps(stable(body), sort_keys=True)))
    return seen


@needs_uring
def test_a_ring_server_records_what_read_write_carries(tmp_path, no_leftover_mounts) -> None:
    """The capture of a ring session shows the same requests and replies as a read/write one
    (the ring's split header/op/payload buffers reassembled into the /dev/fuse message)."""
    ring = _recorded_session(tmp_path, "uring")
    plain = _recorded_session(tmp_path, "fuse")
    assert ring == plain
    ops = [m[2] for m in ring]
    assert ops.count("WRITE") == ops.count("READ") == 2  # request and reply each
    assert any('"through the ring"' in m[5] or "7468726f756768" in m[5] for m in ring if m[2] == "WRITE")


@needs_uring
def test_a_burst_of_blocked_readers_beyond_the_first_entries_is_all_served(no_leftover_mounts) -> None:
    """Blocked readers hold their entries.  A request that finds no free entry waits in the kernel,
    which hands it out only when an entry commits -- not when a new one registers -- so the queue
    must grow before it runs out; 1000 readers arriving at once, then 1000 writes."""
    srv = start_server("uring")
    try:
        pipe = srv.add(PipeDevice(), "pipe")
        path = srv.path("pipe")
        got: list = []

        def read_one() -> None:
            fd = os.open(path, os.O_RDONLY)
            try:
                got.append(os.read(fd, 100))
            finally:
                os.close(fd)

        threads = [threading.Thread(target=read_one, daemon=True) for _ in range(1000)]
        for t in threads:
            t.start()
        assert wait_for(lambda: len(pipe.readers) == 1000, 60), f"{len(pipe.readers)} of 1000 reads arrived"
        queues = srv.session.queues  # type: ignore[union-attr]
        assert sum(len(q.entries) for q in queues) > 1000
        fd = os.open(path, os.O_WRONLY)
        try:
            for i in range(1000):
                os.write(fd, b"%03d" % i)
        finally:
            os.close(fd)
        for t in threads:
            t.join(30)
        assert sorted(got) == [b"%03d" % i for i in range(1000)]
    finally:
        srv.stop()


@needs_uring
def test_a_caller_waiting_for_the_rings_is_served_when_they_become_ready(tmp_path, monkeypatch,
                                                                        no_leftover_mounts) -> None:
    """A system call made right after the mount waits in the kernel until every CPU's queue has
    registered; the REGISTER that completes the set wakes it, and its request may be delivered
    before that queue's thread has left the registration step.  The request must be served, not
    taken for a REGISTER completion (that lost it: the caller hung forever in D state).  The window
    is real but narrow: here the last queue pauses before and after its REGISTERs, and the caller
    runs on that queue's CPU."""
    from fusd_runtime.uring.queue import FuseQueue

    last = max(possible_cpus())
    if last not in os.sched_getaffinity(0):
        pytest.skip(f"needs to run a process on CPU {last}")
    real_submit = FuseQueue._submit

    def submit(self, min_complete=0, flags=0):
        if self.qid == last and not self.registered.is_set():  # registering: a wider window
            time.sleep(0.5 if not flags else 0.3)
        return real_submit(self, min_complete, flags)

    monkeypatch.setattr(FuseQueue, "_submit", submit)
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    caller = subprocess.Popen(["taskset", "-c", str(last), sys.executable, "-c", """if True:
        import os, sys, time
        mnt = sys.argv[1]
        while not any(line.split()[4] == mnt for line in open("/proc/self/mountinfo")):
            time.sleep(0.001)
        os.stat(mnt)  # GETATTR of the root: waits until the rings are ready
        print("served")
        """, str(mnt)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        srv = start_server("uring", mountpoint=str(mnt))
        try:
            out, err = caller.communicate(timeout=15)
            assert out.strip() == "served", err
        finally:
            srv.stop()  # (a lost request is ended here: the caller exits)
    finally:
        if caller.poll() is None:
            caller.kill()
        caller.wait(10)


@needs_uring
@pytest.mark.parametrize("enabled", [True, False])
def test_fusd_serve_transport_uring_says_which_channel_serves(tmp_path, enabled, no_leftover_mounts) -> None:
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    cmd = [sys.executable, "-m", "fusd_runtime", "serve", "-f", "fusd_runtime.examples:Hello", str(mnt),
           "--transport", "uring"]
    if enabled:
        with uring_enabled():
            proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True, cwd=ROOT)
            line = proc.stderr.readline()
    else:
        proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True, cwd=ROOT)
        warning, line = proc.stderr.readline(), proc.stderr.readline()
        assert "io_uring transport not used" in warning and "enable_uring is N" in warning
    try:
        assert "serving Hello" in line and ("(uring, pid" if enabled else "(fuse, pid") in line, line
        with open(mnt / "hello") as f:
            assert "Hello from a Python device" in f.read()
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=20) == 0
        assert not is_mounted(str(mnt))
    finally:
        proc.kill()
        proc.wait()
        proc.stderr.close()


@needs_uring
def test_fusd_bench_transport_uring_measures_beside_the_c_reference(no_leftover_mounts) -> None:
    if shutil.which("gcc") is None:
        pytest.skip("needs gcc for the C client and the C reference")
    bench = [sys.executable, "-m", "fusd_runtime", "bench", "--transport", "uring", "--ops", "pread1,ioctl",
             "--no-floors", "--iterations", "300"]
    refused = subprocess.run(bench, capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert refused.returncode == 2 and "--enable-uring" in refused.stderr  # the bench changes nothing unasked
    out = subprocess.run(bench + ["--enable-uring", "--refs", "uring_fuse"], capture_output=True, text=True,
                         timeout=300, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert " via uring, " in lines[0]
    assert "uring_fuse µs" in lines[1]  # its column, measured in the same rounds
    rows = {line.split()[0]: line for line in lines[2:4]}
    assert set(rows) == {"pread1", "ioctl"} and all(line.count("x") >= 1 for line in rows.values())  # ratios
    assert enable_uring_parameter() is False  # put back


def test_no_mount_and_no_y_left_behind() -> None:
    """Runs last in this file: nothing of ours stays mounted, enable_uring is back to N."""
    if enable_uring_parameter() is not None:
        assert enable_uring_parameter() is False
    assert not [m for m in Mount.history if is_mounted(m)]

