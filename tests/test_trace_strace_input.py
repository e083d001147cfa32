"""strace input that loses nothing: pipes (vmsplice/splice/tee), fd lifetimes, unanswered
requests, -s advice, hostile lines, streaming -- on logs written the way strace 6 prints them
(checked against real daemons in test_trace_daemons.py)."""

from __future__ import annotations

import io
import json
import re

import pytest
from test_trace_decode import run_cli

from fusd_wire import Codec
from fusd_wire import constants as C
from fusd_wire.trace import Decoder, open_capture
from fusd_wire.trace.records import Record

O = C.fuse_opcode
K = Codec(45, C.InitFlags.FUSE_INIT_EXT | C.InitFlags.FUSE_MAX_PAGES, strict=False)


def hx(b: bytes) -> str:
    return "".join(f"\\x{c:02x}" for c in b)


class Log:
    """An strace -f -ttt -xx log, line by line."""

    def __init__(self, pid: int = 700) -> None:
        self.lines: list = []
        self.pid = pid
        self.t = 1_700_000_000.0

    def add(self, text: str, pid: int = 0) -> Log:
        self.t += 0.00001
        self.lines.append(f"{pid or self.pid}  {self.t:.6f} {text}")
        return self

    def read(self, fd, raw: bytes, pid: int = 0) -> Log:
        return self.add(f'read({fd}, "{hx(raw)}", 1052672) = {len(raw)}', pid)

    def writev(self, fd, raw: bytes, pid: int = 0, ret: str = "") -> Log:
        iov = [raw[:16]] + ([raw[16:]] if len(raw) > 16 else [])
        parts = ", ".join(f'{{iov_base="{hx(b)}", iov_len={len(b)}}}' for b in iov)
        return self.add(f"writev({fd}, [{parts}], {len(iov)}) = {ret or len(raw)}", pid)

    def text(self) -> str:
        return "\n".join(self.lines) + "\n"


def init_exchange(log: Log, fd=5, max_write=131072, unique=2):
    req = K.encode_request(O.FUSE_INIT, {"fuse_init_in": {"major": 7, "minor": 45, "flags": C.InitFlags.FUSE_INIT_EXT
                                                          | C.InitFlags.FUSE_MAX_PAGES}}, unique=unique)
    rep = K.encode_reply(O.FUSE_INIT, {"fuse_init_out": {"major": 7, "minor": 45, "max_write": max_write,
                                                         "flags": C.InitFlags.FUSE_MAX_PAGES, "max_pages": 32}},
                         unique=unique)
    log.add(f'openat(AT_FDCWD, "{hx(b"/dev/fuse")}", O_RDWR|O_CLOEXEC) = {fd}')
    log.read(fd, req).writev(fd, rep)


def read_req(unique, size=4096, fh=7, nodeid=2):
    return K.encode_request(O.FUSE_READ, {"fuse_read_in": {"fh": fh, "size": size}}, unique=unique, nodeid=nodeid,
                            pid=42)


def read_rep(unique, data):
    return K.encode_reply(O.FUSE_READ, {"data": data}, unique=unique)


def decode(text: str):
    problems: list = []
    cap = open_capture(text.encode(), problems.append)
    dec = Decoder(cap, problems.append)
    events = list(dec)
    dec.finish()
    return events, [str(p) for p in problems], cap


def cli(tmp_path, text: str, *opts):
    path = tmp_path / "log.strace"
    path.write_text(text)
    status, out, err = run_cli("decode", "--json", *opts, path)
    assert "Traceback" not in err
    return status, [json.loads(line) for line in out.splitlines()], err


# ---------------------------------------------------------------------------------- pipes
def test_reply_spliced_from_a_pipe_whose_bytes_were_written_is_whole(tmp_path):
    """libfuse fuse_reply_data from memory: vmsplice(header), write(payload), splice(pipe -> /dev/fuse)."""
    log = Log()
    init_exchange(log)
    data = bytes(range(256)) * 40
    rep = read_rep(4, data)
    log.add("pipe2([8, 9], O_NONBLOCK|O_CLOEXEC) = 0")
    log.read(5, read_req(4, len(data)))
    log.add(f'vmsplice(9, [{{iov_base="{hx(rep[:16])}", iov_len=16}}], 1, SPLICE_F_NONBLOCK) = 16')
    log.add(f'write(9, "{hx(data)}", {len(data)}) = {len(data)}')
    log.add(f"splice(8, NULL, 5, NULL, {len(rep)}, SPLICE_F_MOVE) = {len(rep)}")
    status, objs, err = cli(tmp_path, log.text())
    assert status == 0, err
    reply = objs[-1]
    assert (reply["type"], reply["unique"], reply["opcode"], reply["len"]) == ("reply", 4, "READ", len(rep))
    assert bytes.fromhex(reply["body"]["data"]) == data and "missing" not in reply


def test_reply_whose_body_was_spliced_from_a_file_is_reported_with_its_unique(tmp_path):
    """fuse-overlayfs, fuse_reply_data from an fd: the payload never passes through user space."""
    log = Log()
    init_exchange(log)
    rep = read_rep(4, bytes(100000))
    log.add("pipe2([8, 9], O_NONBLOCK|O_CLOEXEC) = 0")
    log.read(5, read_req(4, 102400))
    log.add(f'openat(AT_FDCWD, "{hx(b"/lower/f")}", O_RDONLY) = 10')
    log.add(f'vmsplice(9, [{{iov_base="{hx(rep[:16])}", iov_len=16}}], 1, SPLICE_F_NONBLOCK) = 16')
    log.add("splice(10, [0], 9, NULL, 102400, SPLICE_F_NONBLOCK) = 100000")
    log.add("splice(10, [100000], 9, NULL, 2400, SPLICE_F_NONBLOCK) = 0")
    log.add(f"splice(8, NULL, 5, NULL, {len(rep)}, 0) = {len(rep)}")
    status, objs, err = cli(tmp_path, log.text())
    assert status == 1
    reply = objs[-1]
    assert (reply["unique"], reply["opcode"], reply["error"], reply["len"], reply["missing"]) == \
        (4, "READ", 0, 100016, 100000)
    assert "line 10, offset " in err  # the splice to /dev/fuse
    assert "unique 4 (READ): reply of 100016 bytes written with splice(2): body not in the log" in err
    assert "0 requests without a reply, 0 replies without a request, 1 incomplete messages" in err
    _, text, _ = run_cli("decode", tmp_path / "log.strace")
    assert "   unique: 4, success, outsize: 100016, reply to READ" in text


def test_header_len_fixed_after_vmsplice_is_taken_from_the_splice(tmp_path):
    """libfuse sets out->len again after a short payload copy: the pipe holds the new value."""
    log = Log()
    init_exchange(log)
    rep = read_rep(4, b"x" * 5000)
    stale = (len(rep) + 3000).to_bytes(4, "little") + rep[4:16]  # what vmsplice saw
    log.add("pipe2([8, 9], 0) = 0")
    log.read(5, read_req(4, 8000))
    log.add(f'vmsplice(9, [{{iov_base="{hx(stale)}", iov_len=16}}], 1, SPLICE_F_NONBLOCK) = 16')
    log.add(f'write(9, "{hx(rep[16:])}", 5000) = 5000')
    log.add(f"splice(8, NULL, 5, NULL, {len(rep)}, 0) = {len(rep)}")
    status, objs, err = cli(tmp_path, log.text())
    assert status == 0, err
    assert objs[-1]["len"] == len(rep) and bytes.fromhex(objs[-1]["body"]["data"]) == b"x" * 5000


def test_requests_read_with_splice(tmp_path):
    """libfuse with FUSE_CAP_SPLICE_READ: splice(/dev/fuse -> pipe), then read the header out of the pipe;
    small requests are read out whole, a WRITE's payload may be spliced on to a file (write_buf)."""
    log = Log()
    init_exchange(log)
    log.add("pipe2([8, 9], O_NONBLOCK|O_CLOEXEC) = 0")
    small = K.encode_request(O.FUSE_GETATTR, {"fuse_getattr_in": {}}, unique=4, nodeid=1, pid=9)
    log.add(f"splice(5, NULL, 9, NULL, 1052672, 0) = {len(small)}")
    log.read(8, small)
    log.writev(5, K.encode_reply(O.FUSE_GETATTR, error=-5, unique=4))
    payload = bytes(range(256)) * 64
    write = K.encode_request(O.FUSE_WRITE, {"fuse_write_in": {"fh": 3, "size": len(payload)}, "data": payload},
                             unique=6, nodeid=2, pid=9)
    log.add(f"splice(5, NULL, 9, NULL, 1052672, 0) = {len(write)}")
    log.read(8, write[:80])
    log.add('openat(AT_FDCWD, "\\x2f\\x66", O_WRONLY) = 11')
    log.add(f"splice(8, NULL, 11, [0], {len(payload)}, SPLICE_F_NONBLOCK) = {len(payload)}")
    log.writev(5, K.encode_reply(O.FUSE_WRITE, {"fuse_write_out": {"size": len(payload)}}, unique=6))
    write2 = write[:8] + (8).to_bytes(8, "little") + write[16:]
    log.add(f"splice(5, NULL, 9, NULL, 1052672, 0) = {len(write2)}")
    log.read(8, write2[:80])
    log.add(f'read(8, "{hx(write2[80:])}", {len(payload)}) = {len(payload)}')  # write_buf into memory
    log.writev(5, K.encode_reply(O.FUSE_WRITE, {"fuse_write_out": {"size": len(payload)}}, unique=8))
    status, objs, err = cli(tmp_path, log.text())
    assert status == 1
    reqs = {o["unique"]: o for o in objs if o["type"] == "request"}
    assert reqs[4]["opcode"] == "GETATTR" and "missing" not in reqs[4]
    assert reqs[4]["where"].startswith("line 5,")  # the splice that took it
    assert reqs[6]["opcode"] == "WRITE" and reqs[6]["len"] == len(write) and reqs[6]["missing"] == len(payload)
    assert reqs[6]["body"]["fuse_write_in"]["size"] == len(payload)
    assert f"unique 6 (WRITE): request of {len(write)} bytes read with splice(2): {len(payload)} bytes of its " \
           "body were spliced on to fd 11, not in the log; 80 bytes in the capture" in err
    assert bytes.fromhex(reqs[8]["body"]["data"]) == payload and "missing" not in reqs[8]
    replies = {o["unique"]: o for o in objs if o["type"] == "reply"}
    assert replies[6]["opcode"] == "WRITE" and replies[8]["opcode"] == "WRITE"  # all paired
    assert "0 requests without a reply, 0 replies without a request, 1 incomplete" in err


def test_request_answered_before_its_body_left_the_pipe(tmp_path):
    """libfuse answers ENOSYS after reading only the header, then clears (closes) the pipe."""
    log = Log()
    init_exchange(log)
    log.add("pipe2([8, 9], O_NONBLOCK|O_CLOEXEC) = 0")
    req = K.encode_request(O.FUSE_SETXATTR, {"fuse_setxattr_in": {"size": 5000}, "name": b"user.x",
                                             "value": bytes(5000)}, unique=4, nodeid=1)
    log.add(f"splice(5, NULL, 9, NULL, 1052672, 0) = {len(req)}")
    log.read(8, req[:80])
    log.writev(5, K.encode_reply(O.FUSE_SETXATTR, error=-38, unique=4))
    log.add("close(8) = 0").add("close(9) = 0")
    events, problems, _ = decode(log.text())
    kinds = [(e.kind, e.unique) for e in events]
    assert kinds[-2:] == [("request", 4), ("reply", 4)]  # the request is shown before its reply
    assert events[-1].request is events[-2].message and events[-1].error == -38
    assert any("unique 4 (SETXATTR): request of" in p and "answered before the rest" in p for p in problems)


def test_pipe_closed_with_a_request_unread_and_tee(tmp_path):
    log = Log()
    init_exchange(log)
    log.add("pipe2([8, 9], 0) = 0").add("pipe2([12, 13], 0) = 0")
    req = K.encode_request(O.FUSE_LOOKUP, {"name": b"abc"}, unique=4, nodeid=1)
    log.add(f"splice(5, NULL, 9, NULL, 1052672, 0) = {len(req)}")
    log.read(8, req[:40])
    log.add("close(9) = 0").add("close(8) = 0")  # the rest gone unread
    rep = read_rep(6, b"T" * 300)
    log.read(5, read_req(6, 300))
    log.add(f'vmsplice(9, [{{iov_base="{hx(rep[:16])}", iov_len=16}}], 1, 0) = -1 EBADF (Bad file descriptor)')
    log.add(f'vmsplice(13, [{{iov_base="{hx(rep[:16])}", iov_len=16}}], 1, 0) = 16')
    log.add(f'write(13, "{hx(rep[16:])}", 300) = 300')
    log.add("pipe2([14, 15], 0) = 0").add(f"tee(12, 15, {len(rep)}, 0) = {len(rep)}")
    log.add(f"splice(14, NULL, 5, NULL, {len(rep)}, 0) = {len(rep)}")  # the tee'd copy goes to /dev/fuse
    events, problems, _ = decode(log.text())
    assert any("unique 4 (LOOKUP)" in p and "the pipe was closed before all of it was read out" in p
               for p in problems)
    reply = events[-1]
    assert reply.unique == 6 and reply.message.body.data == b"T" * 300 and not reply.record.missing


def test_pipes_named_by_y_decorations(tmp_path):
    """strace -y names pipes by inode: a trace attached after pipe2() still follows them."""
    log = Log()
    init_exchange(log)
    rep = read_rep(4, b"y" * 9000)
    pipe = hx(b"pipe:[4242]")
    log.read(5, read_req(4, 9000))
    log.add(f'vmsplice(9<{pipe}>, [{{iov_base="{hx(rep[:16])}", iov_len=16}}], 1, 0) = 16')
    log.add(f'write(9<{pipe}>, "{hx(rep[16:])}", 9000) = 9000')
    log.add(f"splice(8<{pipe}>, NULL, 5<{hx(b'/dev/fuse')}>, NULL, {len(rep)}, 0) = {len(rep)}")
    status, objs, err = cli(tmp_path, log.text())
    assert status == 0, err
    assert bytes.fromhex(objs[-1]["body"]["data"]) == b"y" * 9000


# ---------------------------------------------------------------------------------- fd lifetimes
def test_fd_number_reused_after_close_and_open(tmp_path):
    """fuse-zip writes its archive to the number /dev/fuse had: with close/openat traced, no bogus messages."""
    log = Log()
    init_exchange(log)
    log.read(5, read_req(4)).writev(5, read_rep(4, b"ok"))
    log.add("read(5, 0x7f00, 1052672) = -1 ENODEV (No such device)").add("close(5) = 0")
    log.add(f'openat(AT_FDCWD, "{hx(b"/tmp/a.zip")}", O_RDWR|O_CREAT, 0644) = 5')
    junk = read_req(900) + b"PK\x03\x04"  # bytes that look like a message, as archive bytes may
    log.add(f'write(5, "{hx(junk)}", {len(junk)}) = {len(junk)}')
    log.add(f'read(5, "{hx(read_req(902))}", 4096) = 80')
    status, objs, err = cli(tmp_path, log.text())
    assert status == 0, err
    assert [(o["type"], o["unique"]) for o in objs] == [("request", 2), ("reply", 2), ("request", 4), ("reply", 4)]


def test_enodev_and_eof_end_a_fuse_fd_without_close_traced(tmp_path):
    """The old trace set (no close/openat): ENODEV ends the fd for successful writes; read() = 0 is EOF."""
    log = Log()
    init_exchange(log, fd=5)
    log.read(5, read_req(4))
    log.add("read(5, 0x7f00, 1052672) = -1 ENODEV (No such device)")
    log.writev(5, read_rep(4, b"late"), ret="-1 ENODEV (No such device)")  # a reply to the dead connection
    log.add(f'write(5, "{hx(read_rep(4, b"zip"))}", 19) = 19')  # the number now names a file
    init_exchange(log, fd=6, unique=100)
    log.add('read(6, "", 1052672) = 0')  # EOF: not a 0-byte request, and 6 is no /dev/fuse now
    log.writev(6, read_rep(100, b"bogus"))
    status, objs, err = cli(tmp_path, log.text())
    assert [(o["type"], o["unique"], o["len"]) for o in objs] == [
        ("request", 2, 104), ("reply", 2, 80), ("request", 4, 80), ("reply", 4, 20),
        ("request", 100, 104), ("reply", 100, 80)]
    assert objs[3]["error"] == 0  # the failed write is still the daemon's answer (libfuse -d shows it)
    assert status == 0, err


def test_dup_family_and_fork_copies(tmp_path):
    log = Log()
    init_exchange(log)
    log.add("dup(5) = 20").add("dup2(5, 21) = 21").add("dup3(5, 22, O_CLOEXEC) = 22")
    log.add("fcntl(5, F_DUPFD_CLOEXEC, 30) = 30").add("fcntl(5, F_GETFL) = 0x8002 (flags O_RDWR|O_LARGEFILE)")
    for i, fd in enumerate((20, 21, 22, 30)):
        log.read(fd, read_req(10 + 2 * i)).writev(fd, read_rep(10 + 2 * i, b"d"))
    log.add("close(5) = 0")  # the copies stay
    log.read(20, read_req(40)).writev(20, read_rep(40, b"e"))
    # a forked child closing its copy does not touch the parent's table; a thread's close does
    log.add("clone(child_stack=NULL, flags=CLONE_CHILD_CLEARTID|CLONE_CHILD_SETTID|SIGCHLD) = 701")
    log.add("close(20) = 0", pid=701)
    log.read(20, read_req(42)).writev(20, read_rep(42, b"f"))
    log.add("clone3({flags=CLONE_VM|CLONE_FS|CLONE_FILES|CLONE_SIGHAND|CLONE_THREAD, exit_signal=0} => "
            "{parent_tid=[702]}, 88) = 702")
    log.add("close(20) = 0", pid=702)
    log.add(f'write(20, "{hx(read_rep(44, b"g"))}", 17) = 17')  # 20 is closed: not /dev/fuse
    status, objs, err = cli(tmp_path, log.text())
    assert status == 0, err
    assert [o["unique"] for o in objs if o["type"] == "reply"] == [2, 10, 12, 14, 16, 40, 42]


# ---------------------------------------------------------------------------------- what is reported
def test_unanswered_requests_are_reported_but_not_those_without_replies(tmp_path):
    log = Log()
    init_exchange(log)
    log.read(5, read_req(4))  # never answered
    log.read(5, K.encode_request(O.FUSE_FORGET, {"fuse_forget_in": {"nlookup": 1}}, unique=6, nodeid=2))
    log.read(5, K.encode_request(O.FUSE_BATCH_FORGET, {"fuse_batch_forget_in": {"count": 1},
                                                       "forgets": [{"nodeid": 2, "nlookup": 1}]}, unique=8))
    log.read(5, read_req(10)).read(5, K.encode_request(O.FUSE_INTERRUPT, {"fuse_interrupt_in": {"unique": 10}},
                                                       unique=11))
    log.writev(5, read_rep(10, b""))  # interrupted, answered anyway: fine
    log.read(5, read_req(12)).read(5, K.encode_request(O.FUSE_INTERRUPT, {"fuse_interrupt_in": {"unique": 12}},
                                                       unique=13))
    log.writev(5, K.encode_reply(O.FUSE_INTERRUPT, error=-11, unique=13))  # EAGAIN: "send it again"
    log.writev(5, read_rep(12, b""))
    status, objs, err = cli(tmp_path, log.text())
    assert status == 1
    lines = err.splitlines()
    assert lines[0].endswith("unique 4 (READ, nodeid 2): request without a reply in the capture")
    assert "line 4, offset " in lines[0]
    assert lines[1].endswith("1 requests without a reply, 0 replies without a request, 0 incomplete messages; "
                             "1 problem(s) reported above")
    assert len(lines) == 2
    eagain = next(o for o in objs if o["type"] == "reply" and o["unique"] == 13)
    assert eagain["opcode"] == "INTERRUPT" and eagain["errno"] == "EAGAIN" and "problem" not in eagain


def test_cut_message_gets_the_s_the_connection_needs(tmp_path):
    log = Log()
    init_exchange(log, max_write=1048576)
    payload = bytes(1048576)
    write = K.encode_request(O.FUSE_WRITE, {"fuse_write_in": {"size": len(payload)}, "data": payload}, unique=4)
    log.add(f'read(5, "{hx(write[:1048576])}"..., 1052672) = {len(write)}')  # strace -s 1048576
    log.writev(5, K.encode_reply(O.FUSE_WRITE, {"fuse_write_out": {"size": len(payload)}}, unique=4))
    status, objs, err = cli(tmp_path, log.text())
    assert status == 1
    assert objs[2]["unique"] == 4 and objs[2]["missing"] == 80 and objs[3]["opcode"] == "WRITE"
    assert "unique 4 (WRITE): request of 1048656 bytes cut by strace -s" in err
    assert "1 message(s) were cut by strace -s 1048576 (the first here): rerun strace with -s 1048656 or more" in err


@pytest.mark.parametrize("line,what", [
    ('read(5, "\\x2x\\x00", 2) = 2', "read: bad escape in a string"),
    ('read(5, "\\x", 1) = 1', "read: bad escape in a string"),
    ('read(5, "\\q", 1) = 1', "read: bad escape in a string"),
    ('writev(5, [{iov_base="\\x10\\x00', "cannot parse this system call line"),
    ('splice(5, NULL) = 80', "splice: splice needs 6 arguments"),
    ('dup2(5<\\x2f\\x64, 9) = 9', "dup2: an fd decoration without its closing '>'"),
    ('read(zz, "\\x00", 1) = 1', "read: a number was expected"),
])
def test_hostile_lines_are_located(tmp_path, line, what):
    log = Log()
    init_exchange(log)
    log.add(line)
    log.read(5, read_req(4)).writev(5, read_rep(4, b"still decoded"))
    status, objs, err = cli(tmp_path, log.text())
    assert status == 1 and "Traceback" not in err
    assert re.search(rf"line 4, offset \d+: {re.escape(what)}", err), err
    assert objs[-1]["unique"] == 4 and objs[-1]["opcode"] == "READ"


def test_a_process_killed_in_a_call(tmp_path):
    log = Log()
    init_exchange(log)
    log.add("read(5,  <unfinished ...>")
    log.add("<... read resumed> <unfinished ...>) = ?")
    log.add("+++ killed by SIGKILL +++")
    status, objs, err = cli(tmp_path, log.text())
    assert status == 0, err
    assert len(objs) == 2


def test_the_log_is_streamed(tmp_path):
    """Records come out while the log is still being read (bounded memory for any log size)."""
    log = Log()
    init_exchange(log)
    for u in range(4, 20004, 2):
        log.read(5, read_req(u)).writev(5, read_rep(u, b"z" * 100))
    raw = log.text().encode()

    class Counting(io.RawIOBase):
        def __init__(self) -> None:
            self.pos = 0

        def readable(self) -> bool:
            return True

        def readinto(self, b) -> int:
            n = min(len(b), len(raw) - self.pos)
            b[:n] = raw[self.pos:self.pos + n]
            self.pos += n
            return n

    src = Counting()
    cap = open_capture(io.BufferedReader(src, 65536), format="strace")
    first = next(iter(cap))
    assert isinstance(first, Record) and first.data[4:8] == O.FUSE_INIT.to_bytes(4, "little")
    assert src.pos < len(raw) // 20, (src.pos, len(raw))
