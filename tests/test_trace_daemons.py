"""Acceptance: Debian's FUSE daemons under the documented strace command, decoded, against their own ``-d`` logs.

For each daemon -- bindfs and fuse-zip (libfuse 2), squashfuse and squashfuse_ll
(libfuse 3), fuse-overlayfs (replies to READ with ``splice(2)`` from the lower file),
and ``tests/data/splicer_ll.c`` (libfuse 3, built here: ``fuse_reply_data`` from memory
and from an fd, ``write_buf`` into memory and into a file, splice reads) -- the test
mounts it under ``strace`` with exactly the command docs/traces.md gives
(``fusd_wire.trace.strace.RECOMMENDED``), drives real I/O (ls, cat, cp, dd, stat of a
missing name, writes where writable), unmounts, decodes the log and demands:

- every request and reply of the daemon's ``-d`` log, in order: unique, opcode, nodeid,
  insize and pid of requests; unique, error and outsize of replies (splice replies too);
- every message whose bytes went through a pipe is whole where the log has the bytes
  (libfuse's vmsplice + write), and otherwise reported, with its unique, as "written
  with splice(2): body not in the log" (or "read with splice(2)" for requests), and the
  exit status is then 1; a daemon that never splices decodes with exit status 0.

Each daemon is skipped, with the package to install, when it is missing
(``system-packages.txt`` lists them for CI).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

import pytest
from test_trace_decode import run_cli

from fusd_wire.trace.strace import DEFAULT_S, TRACE_SET

pytestmark = pytest.mark.kernel
DATA = Path(__file__).resolve().parent / "data"
REQ_RE = re.compile(r"^unique: (\d+), opcode: (\S+) \((\d+)\), nodeid: (\d+), insize: (\d+), pid: (\d+)")
REP_RE = re.compile(r"^   unique: (\d+), (?:success|error: (-\d+) \(.*\)), outsize: (\d+)")


OLD_TRACE_SET = "read,readv,write,writev"  # what docs/traces.md used to recommend: no close, no openat


def strace_command(log: Path, trace: str = TRACE_SET) -> List[str]:
    """The documented command (docs/traces.md), writing to ``log``."""
    return ["strace", "-f", "-ttt", "-xx", "-s", str(DEFAULT_S), "-e", f"trace={trace}", "-o", str(log)]


def _mounted(path: Path) -> bool:
    with open("/proc/self/mountinfo") as f:
        return any(line.split()[4] == str(path) for line in f)


def _need(*tools: str) -> None:
    missing = [t for t in tools if shutil.which(t) is None]
    if missing:
        pytest.skip(f"needs {', '.join(missing)} (apt-get install: see system-packages.txt)")
    if not os.path.exists("/dev/fuse") or os.geteuid() != 0:
        pytest.skip("needs /dev/fuse and root to mount")


def sh(cmd: str) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, shell=True, capture_output=True, text=True, timeout=60)


def run_daemon(tmp: Path, daemon: List[str], mnt: Path, drive: Callable[[], None],
               env: Optional[Dict[str, str]] = None, trace: str = TRACE_SET) -> Tuple[Path, Path]:
    """Mount ``daemon`` (which writes its -d log to stderr) under strace, ``drive()`` it, unmount."""
    log, dlog = tmp / "daemon.strace", tmp / "d.log"
    with open(dlog, "wb") as dlog_f:
        proc = subprocess.Popen(strace_command(log, trace) + daemon, stdout=dlog_f, stderr=dlog_f,
                                start_new_session=True, env=env)
    try:
        deadline = time.monotonic() + 20
        while not _mounted(mnt):
            assert proc.poll() is None, dlog.read_text(errors="replace")[-3000:]
            assert time.monotonic() < deadline, "daemon did not mount"
            time.sleep(0.05)
        drive()
    finally:
        if _mounted(mnt):
            subprocess.run(["umount", str(mnt)], capture_output=True, timeout=30)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
        if _mounted(mnt):
            subprocess.run(["umount", "-l", str(mnt)], capture_output=True, timeout=30)
    assert not _mounted(mnt)
    return log, dlog


def d_log(dlog: Path) -> list:
    """The request and reply lines of a libfuse ``-d`` log (libfuse 2 and 3 print the same)."""
    out: list = []
    for line in dlog.read_text(errors="replace").splitlines():
        m = REQ_RE.match(line)
        if m:
            out.append(("request", int(m[1]), int(m[3]), int(m[4]), int(m[5]), int(m[6])))
            continue
        m = REP_RE.match(line)
        if m:
            out.append(("reply", int(m[1]), int(m[2] or 0), int(m[3])))
    return out


def decode_and_compare(log: Path, dlog: Path) -> Tuple[int, list, str]:
    """Decode the strace log; assert it equals the -d log message for message. (status, JSON objects, stderr)"""
    status, out, err = run_cli("decode", "--json", log)
    assert status in (0, 1), err
    assert "Traceback" not in err
    ours = [json.loads(line) for line in out.splitlines()]
    got = []
    for o in ours:
        if o["type"] == "request":
            got.append(("request", o["unique"], o["opcode_num"], o["nodeid"], o["len"], o["pid"]))
        elif o["type"] == "reply":
            got.append(("reply", o["unique"], o["error"], o["len"]))
    expected = d_log(dlog)
    assert len(expected) > 20
    assert got == expected
    return status, ours, err


def splice_lines(dlog: Path) -> int:
    """Replies the daemon's -d log says went by splice (libfuse prints "(splice)")."""
    return sum(1 for line in dlog.read_text(errors="replace").splitlines() if REP_RE.match(line)
               and line.endswith("(splice)"))


def _tree(src: Path) -> None:
    src.mkdir()
    for i in range(3):
        (src / f"f{i}.bin").write_bytes(os.urandom(60_000 * (i + 1)))
    (src / "dir").mkdir()
    (src / "dir" / "small").write_text("hello\n")


def _read_all(mnt: Path, src: Path) -> None:
    assert sh(f"ls -la {mnt} {mnt}/dir").returncode == 0
    for name in ("f0.bin", "f1.bin", "f2.bin", "dir/small"):
        assert (mnt / name).read_bytes() == (src / name).read_bytes()
    assert sh(f"stat {mnt}/nope").returncode != 0


def _write_some(mnt: Path, src: Path) -> None:
    assert sh(f"dd if=/dev/urandom of={mnt}/new bs=256k count=3 status=none && cp {src}/f1.bin {mnt}/dir/ "
              f"&& rm {mnt}/f0.bin").returncode == 0  # no sync(1): it waits on every mount of the machine


# ---------------------------------------------------------------------------------- daemons
def test_bindfs_libfuse2(tmp_path):
    _need("bindfs", "strace")
    src, mnt = tmp_path / "src", tmp_path / "mnt"
    _tree(src)
    mnt.mkdir()
    log, dlog = run_daemon(tmp_path, ["bindfs", "-d", "-f", str(src), str(mnt)], mnt,
                           lambda: (_read_all(mnt, src), _write_some(mnt, src)))
    status, ours, err = decode_and_compare(log, dlog)
    assert status == 0, err
    assert {"INIT", "LOOKUP", "READ", "WRITE", "UNLINK", "READDIR"} <= {o.get("opcode") for o in ours}


@pytest.mark.parametrize("trace", [TRACE_SET, OLD_TRACE_SET], ids=["documented", "without-close-openat"])
def test_fuse_zip_libfuse2_reuses_the_fd_number(tmp_path, trace):
    """fuse-zip writes its archive at unmount, to the fd number /dev/fuse had; without close/openat
    in the log only the ENODEV at unmount says the number stopped being /dev/fuse."""
    _need("fuse-zip", "zip", "unzip", "strace")
    src, mnt = tmp_path / "src", tmp_path / "mnt"
    _tree(src)
    mnt.mkdir()
    subprocess.run(["zip", "-qr", str(tmp_path / "a.zip"), "."], cwd=src, check=True)
    log, dlog = run_daemon(tmp_path, ["fuse-zip", "-d", str(tmp_path / "a.zip"), str(mnt)], mnt,
                           lambda: (_read_all(mnt, src), _write_some(mnt, src)), trace=trace)
    status, ours, err = decode_and_compare(log, dlog)
    assert status == 0, err
    assert sh(f"unzip -l {tmp_path}/a.zip | grep -q dir/f1.bin").returncode == 0  # it did write the archive


@pytest.mark.parametrize("daemon", ["squashfuse", "squashfuse_ll"])
def test_squashfuse(tmp_path, daemon):
    _need(daemon, "mksquashfs", "strace")
    src, mnt = tmp_path / "src", tmp_path / "mnt"
    _tree(src)
    mnt.mkdir()
    subprocess.run(["mksquashfs", str(src), str(tmp_path / "img"), "-quiet", "-noappend"], check=True)
    log, dlog = run_daemon(tmp_path, [daemon, "-d", str(tmp_path / "img"), str(mnt)], mnt,
                           lambda: _read_all(mnt, src))
    status, ours, err = decode_and_compare(log, dlog)
    assert status == 0, err


def test_fuse_overlayfs_splices_read_replies(tmp_path):
    _need("fuse-overlayfs", "strace")
    src, mnt = tmp_path / "lower", tmp_path / "mnt"
    _tree(src)
    mnt.mkdir()
    (tmp_path / "upper").mkdir()
    (tmp_path / "work").mkdir()
    opts = f"lowerdir={src},upperdir={tmp_path}/upper,workdir={tmp_path}/work"
    log, dlog = run_daemon(tmp_path, ["fuse-overlayfs", "-d", "-o", opts, str(mnt)], mnt,
                           lambda: (_read_all(mnt, src), _write_some(mnt, src)))
    status, ours, err = decode_and_compare(log, dlog)
    spliced = [o for o in ours if o.get("missing")]
    assert spliced and len(spliced) == splice_lines(dlog)
    assert status == 1  # the bodies are not in the log: said so, and the exit status says so
    for o in spliced:
        assert o["type"] == "reply" and o["opcode"] == "READ" and o["problem"].startswith(f"unique {o['unique']} ")
        assert "written with splice(2): body not in the log" in o["problem"]
        assert f"unique {o['unique']} (READ): reply of {o['len']} bytes written with splice(2)" in err
    assert re.search(r"\d+ requests, \d+ replies, .*0 requests without a reply, 0 replies without a request, "
                     rf"{len(spliced)} incomplete messages", err)


@pytest.fixture
def splicer(tmp_path):
    """tests/data/splicer_ll.c built here (libfuse 3)."""
    _need("gcc", "pkg-config", "strace")
    flags = subprocess.run(["pkg-config", "--cflags", "--libs", "fuse3"], capture_output=True, text=True)
    if flags.returncode != 0:
        pytest.skip("libfuse3-dev not installed (pkg-config fuse3 fails)")
    exe = tmp_path / "splicer_ll"
    r = subprocess.run(["gcc", "-Wall", "-O", "-o", str(exe), str(DATA / "splicer_ll.c"), *flags.stdout.split()],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    return exe


@pytest.fixture
def big_pipes():
    """libfuse reads requests with splice only into a pipe of its whole buffer (1 MiB + 4 KiB),
    over the default /proc/sys/fs/pipe-max-size; raised for the test, restored after."""
    knob = Path("/proc/sys/fs/pipe-max-size")
    old = knob.read_text().strip()
    try:
        knob.write_text("2097152")
    except OSError as exc:
        pytest.skip(f"cannot raise {knob}: {exc}")
    try:
        yield
    finally:
        knob.write_text(old)


def test_fuse_reply_data_and_splice_reads(splicer, big_pipes, tmp_path):
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    backing = tmp_path / "backing"
    backing.write_bytes(os.urandom(300_000))
    env = dict(os.environ, SPLICER_FILE=str(backing), SPLICER_SINK=str(tmp_path / "sink"))

    def drive() -> None:
        assert (mnt / "small").read_text() == "hello world\n"
        assert (mnt / "mem").read_bytes() == bytes((i * 7) & 0xFF for i in range(65536))
        assert (mnt / "file").read_bytes() == backing.read_bytes()
        for sink in ("sink", "memsink"):  # 64 KiB writes: big enough for libfuse's zero-copy path
            assert sh(f"dd if={backing} of={mnt}/{sink} bs=64k conv=notrunc status=none").returncode == 0
        assert (tmp_path / "sink").read_bytes() == backing.read_bytes()

    log, dlog = run_daemon(tmp_path, [str(splicer), "-d", "-f", "-s", str(mnt)], mnt, drive, env)
    status, ours, err = decode_and_compare(log, dlog)
    assert status == 1
    text = log.read_text()
    assert "vmsplice(" in text and re.search(r"splice\(\d+, NULL, \d+, NULL, 1052672, 0\) = \d+", text)
    reads = {o["unique"]: o for o in ours if o["type"] == "request" and o["opcode"] == "READ"}
    replies = [o for o in ours if o["type"] == "reply" and o.get("opcode") == "READ"]
    mem = [o for o in replies if reads[o["unique"]]["nodeid"] == 3 and o["len"] > 16]  # inode 3: "mem"
    # fuse_reply_data from memory: header vmspliced, payload write(2)n into the pipe: all in the log
    assert mem and all("missing" not in o for o in mem)
    assert bytes.fromhex("".join(o["body"]["data"] for o in mem)) == bytes((i * 7) & 0xFF for i in range(65536))
    # ... from an fd: the payload is spliced from the file, only the header is in the log
    from_file = [o for o in replies if o.get("missing")]
    assert from_file and all("written with splice(2): body not in the log" in o["problem"] for o in from_file)
    assert len(from_file) + len(mem) == splice_lines(dlog)
    # requests read with splice: whole where read out of the pipe (memsink), reported where spliced on (sink)
    writes = [o for o in ours if o["type"] == "request" and o["opcode"] == "WRITE"]
    cut = [o for o in writes if o.get("missing")]
    assert cut and all("read with splice(2)" in o["problem"] and "spliced on to fd" in o["problem"] for o in cut)
    assert all(o["body"]["fuse_write_in"]["size"] == o["missing"] for o in cut)  # header and write_in shown
    whole = [o for o in writes if not o.get("missing")]
    assert whole and b"".join(bytes.fromhex(o["body"]["data"]) for o in whole) == backing.read_bytes()
