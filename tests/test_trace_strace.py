"""strace logs as captures: synthetic logs for every shape strace prints, then a real libfuse 3
daemon built here, run under strace, checked against its own ``-d`` log."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_trace_decode import conversation, run_cli

from fusd_wire import Codec
from fusd_wire import constants as C
from fusd_wire.trace import INBOUND, Decoder, open_capture
from fusd_wire.trace.strace import DEFAULT_S, TRACE_SET


def hx(b: bytes) -> str:
    return "".join(f"\\x{c:02x}" for c in b)


def strace_log(msgs, *, fd=3, pid=900, ttt=False, split_reads=False, prologue=True):
    """The strace -f -xx text of a daemon that lived through ``msgs``."""
    lines = []
    t0 = 1_700_000_000.0

    def p(dt, text):
        ts = f"{t0 + dt / 1e9:.6f} " if ttt else ""
        lines.append(f"{pid}  {ts}{text}")

    if prologue:  # the fd number is first a shared library, then /dev/fuse
        p(0, f'read({fd}, "{hx(b"ELF" + bytes(60))}", 832) = 63')
        p(0, f'write(2, "{hx(b"FUSE library version: 3.14.0")}", 28) = 28')
    for i, (direction, raw, dt) in enumerate(msgs):
        if direction == INBOUND:
            if split_reads and i % 2:
                p(dt - 1000, f"read({fd},  <unfinished ...>")
                lines.append(f"{pid + 1}  +++ exited with 0 +++")
                p(dt, f'<... read resumed>"{hx(raw)}", 1052672) = {len(raw)}')
            else:
                p(dt, f'read({fd}, "{hx(raw)}", 1052672) = {len(raw)}')
        else:
            iov = [raw[:16]] + ([raw[16:]] if len(raw) > 16 else [])
            parts = ", ".join(f'{{iov_base="{hx(b)}", iov_len={len(b)}}}' for b in iov)
            p(dt, f"writev({fd}, [{parts}], {len(iov)}) = {len(raw)}")
    p(msgs[-1][2] + 10, f"read({fd}, 0x7f0000000000, 1052672) = -1 ENODEV (No such device)")
    lines.append(f"{pid}  +++ exited with 0 +++")
    return "\n".join(lines) + "\n"


def test_strace_log_matches_the_pcapng_decode(tmp_path):
    from test_trace_decode import write_capture
    msgs = conversation()
    log = tmp_path / "s.txt"
    log.write_text(strace_log(msgs, split_reads=True))
    pc = write_capture(tmp_path / "s.pcapng", msgs)
    s_status, s_out, s_err = run_cli("decode", log)
    p_status, p_out, p_err = run_cli("decode", pc)
    assert (s_status, s_err) == (0, "") and p_status == 0
    strip = re.compile(r", latency: [0-9.]+ us")
    assert strip.sub("", s_out) == strip.sub("", p_out)  # no -t: no times, so no latency
    assert "latency" not in s_out


def test_strace_timestamps_give_latency_and_stats(tmp_path):
    log = tmp_path / "t.txt"
    log.write_text(strace_log(conversation(), ttt=True))
    status, out, err = run_cli("decode", "--json", log)
    assert status == 0, err
    objs = [json.loads(line) for line in out.splitlines()]
    read_reply = next(o for o in objs if o["type"] == "reply" and o["opcode"] == "READ")
    assert read_reply["latency_us"] == 100.0
    assert read_reply["where"].startswith("line ")
    status, out, _ = run_cli("decode", "--stats", log)
    assert status == 0 and re.search(r"^READ \(15\)\s+1\s+0\s+100\.0", out, re.M)


def test_fd_found_by_openat_and_mount_with_plain_escapes():
    k = Codec(strict=False)
    getattr_req = k.encode_request(C.FUSE_GETATTR, {}, unique=8, nodeid=1, pid=5)
    reply = k.encode_reply(C.FUSE_GETATTR, error=-13, unique=8)
    log = "\n".join([
        'openat(AT_FDCWD, "/dev/fuse", O_RDWR|O_CLOEXEC) = 5',
        'mount("x", "/mnt", "fuse.x", MS_NOSUID, "fd=5,rootmode=40000") = 0',
        # default strace escaping (no -xx): octal and C escapes
        "read(5, \"" + "".join(f"\\{c:o}" for c in getattr_req) + f'", 135168) = {len(getattr_req)}',
        f'write(5, "{hx(reply)}", 16) = 16',
        f'write(7, "{hx(reply)}", 16) = 16',  # not /dev/fuse
    ]) + "\n"
    problems = []
    cap = open_capture(log.encode(), problems.append)
    events = list(Decoder(cap, problems.append))
    assert [(e.kind, e.unique) for e in events] == [("request", 8), ("reply", 8)]
    assert events[1].error == -13 and events[1].opcode == C.FUSE_GETATTR
    assert problems == []  # the reply pairs with its request


def test_attached_mid_session_and_yfd_paths():
    k = Codec(strict=False)
    r1 = k.encode_request(C.FUSE_GETATTR, {}, unique=40, nodeid=1)
    r2 = k.encode_request(C.FUSE_GETATTR, {}, unique=42, nodeid=1)
    rep = k.encode_reply(C.FUSE_GETATTR, error=-2, unique=40)
    log = "\n".join([
        f'[pid 77] read(9, "{hx(r1)}", 1052672) = {len(r1)}',
        f'[pid 77] writev(9, [{{iov_base="{hx(rep)}", iov_len=16}}], 1) = 16',
        f'[pid 77] read(9, "{hx(r2)}", 1052672) = {len(r2)}',
        f'read(4</dev/fuse>, "{hx(r1)}", 1052672) = {len(r1)}',
    ]) + "\n"
    recs = list(open_capture(log.encode()))
    assert [(r.data, r.index) for r in recs] == [(r1, 1), (rep, 2), (r2, 3), (r1, 4)]


def test_bad_strace_input_is_located(tmp_path):
    msgs = conversation()[:4]
    good = strace_log(msgs, prologue=False).splitlines()
    raw = msgs[2][1]
    good[2] = f'900  read(3, "{hx(raw[:20])}"..., 1052672) = {len(raw)}'  # cut by a small -s
    good.insert(3, "900  read(3, \"\\x01\\x02")  # the log was cut mid-line
    good.insert(4, "900  read(3,  <unfinished ...>")  # and never resumed
    log = tmp_path / "bad.txt"
    log.write_text("\n".join(good) + "\n")
    status, out, err = run_cli("decode", log)
    assert status == 1
    errs = err.splitlines()
    assert any("line 3, offset " in e and "cut by strace -s" in e for e in errs)
    assert any("line 4, offset " in e and "cannot parse" in e for e in errs)
    assert any("line 5, offset " in e and "never resumed" in e for e in errs)
    assert any("answers no request" in e for e in errs)  # the LOOKUP reply lost its request
    assert "unique: 2, opcode: INIT (26)" in out


def test_log_without_fuse_traffic(tmp_path):
    log = tmp_path / "none.txt"
    log.write_text('1  write(1, "\\x68\\x69", 2) = 2\n1  +++ exited with 0 +++\n')
    status, out, err = run_cli("decode", log)
    assert status == 1 and "no /dev/fuse traffic" in err and out == ""


# ---------------------------------------------------------------------------------- real libfuse
HELLO_LL = r"""
#define FUSE_USE_VERSION 34
#include <fuse_lowlevel.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

/* One directory (1) with one file "hello" (2) that answers a 4-byte _IOR ioctl. */
static const char *text = "hello world\n";

static void fill(fuse_ino_t ino, struct stat *st) {
    memset(st, 0, sizeof *st);
    st->st_ino = ino;
    if (ino == 1) { st->st_mode = S_IFDIR | 0755; st->st_nlink = 2; }
    else { st->st_mode = S_IFREG | 0644; st->st_nlink = 1; st->st_size = strlen(text); }
}
static void op_lookup(fuse_req_t req, fuse_ino_t parent, const char *name) {
    struct fuse_entry_param e;
    if (parent != 1 || strcmp(name, "hello") != 0) { fuse_reply_err(req, ENOENT); return; }
    memset(&e, 0, sizeof e);
    e.ino = 2;
    fill(2, &e.attr);
    fuse_reply_entry(req, &e);
}
static void op_getattr(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi) {
    struct stat st;
    (void)fi;
    if (ino != 1 && ino != 2) { fuse_reply_err(req, ENOENT); return; }
    fill(ino, &st);
    fuse_reply_attr(req, &st, 0);
}
static void op_readdir(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off, struct fuse_file_info *fi) {
    char buf[512];
    size_t n = 0;
    struct stat st;
    const char *names[] = {".", "..", "hello"};
    fuse_ino_t inos[] = {1, 1, 2};
    (void)fi;
    if (ino != 1) { fuse_reply_err(req, ENOTDIR); return; }
    memset(&st, 0, sizeof st);
    for (int i = (int)off; i < 3; i++) {
        st.st_ino = inos[i];
        st.st_mode = i < 2 ? S_IFDIR : S_IFREG;
        size_t len = fuse_add_direntry(req, buf + n, sizeof buf - n, names[i], &st, i + 1);
        if (n + len > size || n + len > sizeof buf) break;
        n += len;
    }
    fuse_reply_buf(req, buf, n);
}
static void op_open(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi) {
    if (ino != 2) { fuse_reply_err(req, EISDIR); return; }
    fuse_reply_open(req, fi);
}
static void op_read(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off, struct fuse_file_info *fi) {
    size_t len = strlen(text);
    (void)ino; (void)fi;
    if ((size_t)off >= len) { fuse_reply_buf(req, NULL, 0); return; }
    if (off + size > len) size = len - off;
    fuse_reply_buf(req, text + off, size);
}
static void op_ioctl(fuse_req_t req, fuse_ino_t ino, int cmd, void *arg, struct fuse_file_info *fi,
                     unsigned flags, const void *in_buf, size_t in_bufsz, size_t out_bufsz) {
    unsigned int v = 0x1234;
    (void)ino; (void)arg; (void)fi; (void)flags; (void)in_buf; (void)in_bufsz;
    if (out_bufsz < sizeof v) { fuse_reply_err(req, ENOTTY); return; }
    fuse_reply_ioctl(req, cmd & 0xff, &v, sizeof v);
}
static const struct fuse_lowlevel_ops ops = {
    .lookup = op_lookup, .getattr = op_getattr, .readdir = op_readdir,
    .open = op_open, .read = op_read, .ioctl = op_ioctl,
};
int main(int argc, char *argv[]) {
    struct fuse_args args = FUSE_ARGS_INIT(argc, argv);
    struct fuse_cmdline_opts opts;
    struct fuse_session *se;
    int ret = 1;
    if (fuse_parse_cmdline(&args, &opts) != 0 || !opts.mountpoint) return 2;
    se = fuse_session_new(&args, &ops, sizeof ops, NULL);
    if (se && fuse_set_signal_handlers(se) == 0) {
        if (fuse_session_mount(se, opts.mountpoint) == 0) {
            ret = fuse_session_loop(se);
            fuse_session_unmount(se);
        }
        fuse_remove_signal_handlers(se);
    }
    if (se) fuse_session_destroy(se);
    free(opts.mountpoint);
    fuse_opt_free_args(&args);
    return ret ? 1 : 0;
}
"""

CLIENT_IOCTL = ("import fcntl, sys; f = open(sys.argv[1], 'rb'); "
                "print(fcntl.ioctl(f, (2 << 30) | (4 << 16) | (ord('h') << 8) | 1, bytes(4)).hex())")


def _mounted(path: str) -> bool:
    with open("/proc/self/mountinfo") as f:
        return any(line.split()[4] == path for line in f)


def _need(*tools):
    missing = [t for t in tools if shutil.which(t) is None]
    if missing:
        pytest.skip(f"needs {', '.join(missing)} (apt-get install gcc libfuse3-dev fuse3 pkg-config strace)")


def _compare_with_d_log(capture, dlog, ordered=True):
    """Decode ``capture``; assert our request/reply sequence equals the daemon's ``-d`` log.

    ``ordered=False`` (a tap's capture): the same messages, in any order -- the relay records
    a request when the kernel sends it, which may be before the daemon's reply to one the
    kernel does not wait for (RELEASE), while the daemon logs that reply first.
    """
    status, out, err = run_cli("decode", "--json", capture)
    assert status == 0, err
    ours = [json.loads(line) for line in out.splitlines()]
    theirs = dlog.read_text(errors="replace").splitlines()

    req_re = re.compile(r"^unique: (\d+), opcode: (\S+) \((\d+)\), nodeid: (\d+), insize: (\d+), pid: (\d+)")
    rep_re = re.compile(r"^   unique: (\d+), (?:success|error: (-\d+) \(.*\)), outsize: (\d+)")
    expected = []
    for line in theirs:
        m = req_re.match(line)
        if m:
            expected.append(("request", int(m[1]), m[2], int(m[3]), int(m[4]), int(m[5]), int(m[6])))
            continue
        m = rep_re.match(line)
        if m:
            expected.append(("reply", int(m[1]), int(m[2] or 0), int(m[3])))
    got = []
    for o in ours:
        if o["type"] == "request":
            got.append(("request", o["unique"], o["opcode"], o["opcode_num"], o["nodeid"], o["len"], o["pid"]))
        elif o["type"] == "reply":
            got.append(("reply", o["unique"], o["error"], o["len"]))
    # libfuse names opcodes it does not know "???"; compare those by number only
    unknown = {e[1] for e in expected if e[0] == "request" and e[2] == "???"}
    got = [g[:2] + ("???",) + g[3:] if g[0] == "request" and g[1] in unknown else g for g in got]
    assert len(expected) > 20
    assert got == expected if ordered else sorted(got) == sorted(expected)
    return got, ours


@pytest.fixture
def hello_ll(tmp_path):
    """Our tiny libfuse 3 low-level daemon, compiled here."""
    _need("gcc", "pkg-config", "strace")
    flags = subprocess.run(["pkg-config", "--cflags", "--libs", "fuse3"], capture_output=True, text=True)
    if flags.returncode != 0:
        pytest.skip("libfuse3-dev not installed (pkg-config fuse3 fails)")
    if not os.path.exists("/dev/fuse") or os.geteuid() != 0:
        pytest.skip("needs /dev/fuse and root to mount")
    src = tmp_path / "hello_ll.c"
    src.write_text(HELLO_LL)
    exe = tmp_path / "hello_ll"
    r = subprocess.run(["gcc", "-Wall", "-O", "-o", str(exe), str(src), *flags.stdout.split()],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    return exe


@pytest.mark.kernel
def test_real_libfuse_daemon_under_strace(hello_ll, tmp_path):
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    log, dlog = tmp_path / "strace.txt", tmp_path / "d.log"
    with open(dlog, "wb") as dlog_f:
        proc = subprocess.Popen(["strace", "-f", "-ttt", "-xx", "-s", str(DEFAULT_S), "-e", f"trace={TRACE_SET}",
                                 "-o", str(log), str(hello_ll), "-d", "-f", "-s", str(mnt)],
                                stdout=subprocess.DEVNULL, stderr=dlog_f, start_new_session=True)
    try:
        deadline = time.monotonic() + 20
        while not _mounted(str(mnt)):
            assert proc.poll() is None, dlog.read_text()
            assert time.monotonic() < deadline, "daemon did not mount"
            time.sleep(0.05)
        client = [["ls", "-la", str(mnt)], ["cat", str(mnt / "hello")], ["stat", str(mnt / "hello")],
                  ["stat", str(mnt / "nope")], ["python3", "-c", CLIENT_IOCTL, str(mnt / "hello")]]
        outs = [subprocess.run(c, capture_output=True, text=True, timeout=30) for c in client]
        assert outs[1].stdout == "hello world\n"
        assert outs[3].returncode != 0
        assert outs[4].stdout.strip() == "34120000"
    finally:
        if _mounted(str(mnt)):
            subprocess.run(["umount", str(mnt)], capture_output=True, timeout=30)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
        if _mounted(str(mnt)):
            subprocess.run(["umount", "-l", str(mnt)], capture_output=True, timeout=30)
    assert not _mounted(str(mnt))

    got, ours = _compare_with_d_log(log, dlog)
    opcodes = {g[2] for g in got if g[0] == "request"}
    assert {"INIT", "LOOKUP", "GETATTR", "READDIR", "OPEN", "READ", "IOCTL"} <= opcodes
    ioctl_replies = [o for o in ours if o["type"] == "reply" and o.get("opcode") == "IOCTL"]
    assert ioctl_replies[0]["errno"] == "ENOTTY"  # Python's open() asks isatty (TCGETS) first
    assert ioctl_replies[-1]["body"]["data"] == "34120000"
    assert ioctl_replies[-1]["body"]["fuse_ioctl_out"]["result"] == 1


def _exercise(mnt):
    client = [["ls", "-la", str(mnt)], ["cat", str(mnt / "hello")], ["stat", str(mnt / "nope")],
              ["python3", "-c", CLIENT_IOCTL, str(mnt / "hello")]]
    outs = [subprocess.run(c, capture_output=True, text=True, timeout=30) for c in client]
    assert outs[1].stdout == "hello world\n" and outs[3].stdout.strip() == "34120000"


@pytest.mark.kernel
def test_live_tap_records_an_unmodified_libfuse_daemon(hello_ll, tmp_path):
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    cap, dlog = tmp_path / "tap.pcapng", tmp_path / "d.log"
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parent.parent))
    with open(dlog, "wb") as dlog_f:
        proc = subprocess.Popen([sys.executable, "-m", "fusd_wire", "tap", "-o", str(cap), str(mnt), "--",
                                 str(hello_ll), "-d", "-f", "-s", "/dev/fd/{fd}"],
                                stderr=dlog_f, stdout=subprocess.DEVNULL, env=env, start_new_session=True)
    try:
        deadline = time.monotonic() + 20
        while not _mounted(str(mnt)):
            assert proc.poll() is None, dlog.read_text()
            assert time.monotonic() < deadline, "tap did not mount"
            time.sleep(0.05)
        _exercise(mnt)
    finally:
        if _mounted(str(mnt)):
            subprocess.run(["umount", str(mnt)], capture_output=True, timeout=30)
        try:
            status = proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
            status = None
        if _mounted(str(mnt)):
            subprocess.run(["umount", "-l", str(mnt)], capture_output=True, timeout=30)
    assert not _mounted(str(mnt))
    assert status == 0, dlog.read_text()
    got, ours = _compare_with_d_log(cap, dlog, ordered=False)
    assert {"INIT", "LOOKUP", "READ", "IOCTL"} <= {g[2] for g in got if g[0] == "request"}
    assert all("latency_us" in o for o in ours if o["type"] == "reply")  # the tap timestamps everything
