"""The live tap with daemons this project did not write: Debian's bindfs (libfuse 2, mounts
through fusermount) and fuse-overlayfs (libfuse 3, replies with splice(2)), each checked
against its own ``-d`` log; the relay's reassembly of spliced replies and its refusals.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal
import struct
import subprocess
import sys
from pathlib import Path
from typing import Dict, List, Tuple

import pytest
from conftest import needs_fuse, wait_for

from fusd_wire.trace import OUTBOUND, open_capture

ROOT = Path(__file__).resolve().parent.parent
ENV = dict(os.environ, PYTHONPATH=str(ROOT))


def _mounted(path: Path) -> bool:
    with open("/proc/self/mountinfo") as f:
        return any(line.split()[4] == str(path) for line in f)


def _mount_line(path: Path) -> str:
    with open("/proc/mounts") as f:
        return next((line for line in f if line.split()[1] == str(path)), "")


def abort_connection(path: Path) -> None:
    """Abort the FUSE connection mounted at ``path`` (fusectl): frees clients stuck in a request."""
    with open("/proc/self/mountinfo") as f:
        dev = next((line.split()[2] for line in f if line.split()[4] == str(path)), None)
    if dev is not None and os.path.exists(f"/sys/fs/fuse/connections/{dev.split(':')[1]}/abort"):
        with open(f"/sys/fs/fuse/connections/{dev.split(':')[1]}/abort", "w") as f:
            f.write("1")


def client(args: List[str], mnt: Path, timeout: float = 30) -> subprocess.CompletedProcess:
    """Run a client of the mount; if it hangs (a reply never came), abort the connection first."""
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        abort_connection(mnt)
        proc.kill()
        proc.communicate(timeout=30)
        raise AssertionError(f"{args} hung: a reply never reached the kernel") from None
    return subprocess.CompletedProcess(args, proc.returncode, out, err)


def _need(tool: str) -> None:
    if shutil.which(tool) is None:
        pytest.skip(f"needs {tool} (see system-packages.txt)")


class Tapped:
    """``python -m fusd_wire tap`` running a daemon; stopping always unmounts and reaps."""

    def __init__(self, tmp: Path, mnt: Path, daemon: List[str]) -> None:
        self.cap, self.log, self.mnt = tmp / "tap.pcapng", tmp / "daemon.log", mnt
        self._log = open(self.log, "wb")
        self.proc = subprocess.Popen([sys.executable, "-m", "fusd_wire", "tap", "-o", str(self.cap), str(mnt), "--",
                                      *daemon], stdout=subprocess.DEVNULL, stderr=self._log, env=ENV,
                                     start_new_session=True)
        if not wait_for(lambda: _mounted(mnt) or self.proc.poll() is not None, 30) or not _mounted(mnt):
            self.stop()
            raise AssertionError(f"the tap did not mount:\n{self.log.read_text(errors='replace')}")

    def stop(self) -> int:
        if _mounted(self.mnt):
            subprocess.run(["umount", str(self.mnt)], capture_output=True, timeout=30)
        try:
            status = self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            abort_connection(self.mnt)
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)
            status = -9
        if _mounted(self.mnt):
            subprocess.run(["umount", "-l", str(self.mnt)], capture_output=True, timeout=30)
        self._log.close()
        return status


REQ = re.compile(r"^unique: (\d+), opcode: (\S+) \((\d+)\), nodeid: (\d+), insize: (\d+), pid: (\d+)")
REP = re.compile(r"^   unique: (\d+), (?:success|error: (-\d+) \(.*\)), outsize: (\d+)")


def against_d_log(cap: Path, log: Path) -> List[Dict]:
    """Our decode of the tap's capture holds every request and reply of the daemon's own -d log.

    Compared per unique (a multi-threaded daemon's log and the relay see concurrent
    requests in slightly different orders); returns the decoded messages.
    """
    r = subprocess.run([sys.executable, "-m", "fusd_wire", "decode", "--json", str(cap)], capture_output=True,
                       text=True, env=ENV, timeout=120)
    assert r.returncode == 0, r.stderr
    ours = [json.loads(line) for line in r.stdout.splitlines()]
    theirs: List[Tuple] = []
    for line in log.read_text(errors="replace").splitlines():
        m = REQ.match(line)
        if m:
            theirs.append(("request", int(m[1]), int(m[3]), int(m[4]), int(m[5]), int(m[6])))
            continue
        m = REP.match(line)
        if m:
            theirs.append(("reply", int(m[1]), int(m[2] or 0), int(m[3])))
    got = [("request", o["unique"], o["opcode_num"], o["nodeid"], o["len"], o["pid"]) if o["type"] == "request"
           else ("reply", o["unique"], o["error"], o["len"]) for o in ours if o["type"] in ("request", "reply")]
    assert len(theirs) > 20
    assert sorted(got) == sorted(theirs)
    return ours


# ---------------------------------------------------------------------------------- libfuse 2
@needs_fuse
@pytest.mark.kernel
def test_tap_records_a_libfuse2_daemon_mounting_through_fusermount(tmp_path):
    """bindfs links libfuse 2, which cannot take /dev/fd/N: it mounts through our fusermount."""
    _need("bindfs")
    src, mnt = tmp_path / "src", tmp_path / "mnt"
    src.mkdir()
    mnt.mkdir()
    (src / "file").write_bytes(b"through bindfs\n")
    tap = Tapped(tmp_path, mnt, ["bindfs", "-d", "-s", str(src), str(mnt)])
    try:
        line = _mount_line(mnt)
        assert line.split()[0] == str(src) and "allow_other" in line  # the daemon's own mount options
        assert (mnt / "file").read_bytes() == b"through bindfs\n"
        (mnt / "new").write_bytes(b"written")
        assert sorted(os.listdir(mnt)) == ["file", "new"]
        os.unlink(mnt / "new")
        assert not (src / "new").exists()
    finally:
        status = tap.stop()
    assert not _mounted(mnt)
    assert status == 0, tap.log.read_text(errors="replace")
    ours = against_d_log(tap.cap, tap.log)
    ops = {o["opcode"] for o in ours if o["type"] == "request"}
    assert {"INIT", "LOOKUP", "GETATTR", "OPEN", "READ", "CREATE", "WRITE", "UNLINK"} <= ops, ops


@needs_fuse
@pytest.mark.kernel
def test_the_tapped_daemon_runs_without_cap_sys_admin_in_its_own_mount_namespace(tmp_path):
    _need("bindfs")
    src, mnt = tmp_path / "src", tmp_path / "mnt"
    src.mkdir()
    mnt.mkdir()
    tap = Tapped(tmp_path, mnt, ["bindfs", "-f", str(src), str(mnt)])
    try:
        pids = subprocess.run(["pgrep", "-P", str(tap.proc.pid)], capture_output=True, text=True).stdout.split()
        assert pids
        status = Path(f"/proc/{pids[0]}/status").read_text()
        bounding = int(re.search(r"CapBnd:\s*([0-9a-f]+)", status)[1], 16)
        assert not bounding & (1 << 21)  # CAP_SYS_ADMIN
        assert os.readlink(f"/proc/{pids[0]}/ns/mnt") != os.readlink("/proc/self/ns/mnt")
        # the host's fusermount3 is untouched
        assert subprocess.run(["fusermount3", "--version"], capture_output=True, text=True).stdout \
            .startswith("fusermount3 version: 3.")
    finally:
        tap.stop()
    assert not _mounted(mnt)


# ---------------------------------------------------------------------------------- splice
@needs_fuse
@pytest.mark.kernel
@pytest.mark.parametrize("form", ["fusermount", "fd"])
def test_tap_reassembles_a_splicing_daemons_replies(tmp_path, form):
    """fuse-overlayfs replies to READ with splice(2): a 64-256 KiB reply reaches the socket in
    several packets.  The file read through the tap must be the file, every reply whole
    (mounted through our fusermount, or given the socket as /dev/fd/N)."""
    _need("fuse-overlayfs")
    lower, upper, work, mnt = (tmp_path / n for n in ("lower", "upper", "work", "mnt"))
    for d in (lower, upper, work, mnt):
        d.mkdir()
    blob = os.urandom(1 << 20)
    (lower / "big").write_bytes(blob)
    tap = Tapped(tmp_path, mnt, ["fuse-overlayfs", "-d", "-o", f"lowerdir={lower},upperdir={upper},workdir={work}",
                                 str(mnt) if form == "fusermount" else "/dev/fd/{fd}"])
    try:
        got = client(["md5sum", str(mnt / "big")], mnt).stdout
        assert got.split()[0] == hashlib.md5(blob).hexdigest()
    finally:
        status = tap.stop()
    assert not _mounted(mnt)
    assert status == 0, tap.log.read_text(errors="replace")
    ours = against_d_log(tap.cap, tap.log)
    big = [o for o in ours if o["type"] == "reply" and o.get("opcode") == "READ" and o["len"] > 65536]
    assert big and all(bytes.fromhex(o["body"]["data"]) in blob for o in big)
    joined = [r for r in open_capture(str(tap.cap)) if r.direction == OUTBOUND and "reassembled" in r.comment]
    assert joined, "no reply came in fragments: the test did not exercise splice"
    assert {len(r.data) for r in joined} & {o["len"] for o in big}


# ---------------------------------------------------------------------------------- refusals
def _out(unique: int, body: bytes, length: int = 0) -> bytes:
    return struct.pack("<IiQ", length or 16 + len(body), 0, unique) + body


def test_reassembler_joins_fragments_by_the_header_len():
    from fusd_wire.trace.tap import Reassembler
    j = Reassembler({7})
    whole = _out(7, bytes(range(256)) * 40)
    assert j.feed(whole[:100]) is None and j.incomplete == 100
    assert j.feed(whole[100:4096]) is None
    assert j.feed(whole[4096:]) == (whole, 3)
    assert j.feed(_out(8, b"x")) == (_out(8, b"x"), 1)


@pytest.mark.parametrize("packets, reason", [
    ([b"\x10\x00\x00\x00"], "shorter than a fuse_out_header"),
    ([_out(7, b"abc", length=17)], "says 17"),
    ([_out(7, b"a" * 8, length=40), b"b" * 30], "add up to 54"),
    ([_out(7, b"a" * 8, length=4000), _out(9, b"other reply")], "interleave"),
    ([_out(7, b"", length=1 << 30)], "more than any FUSE message"),
])
def test_reassembler_refuses_what_cannot_be_one_message(packets, reason):
    from fusd_wire.trace.tap import Reassembler, TapError
    j = Reassembler({7, 9})
    with pytest.raises(TapError, match=reason):
        for p in packets:
            j.feed(p)


def test_mount_options_follow_fusermount():
    from fusd_wire.trace.tap import mount_options
    flags, kernel, fsname, subtype, ignored = mount_options("rw,nosuid,nodev,noatime,allow_other,default_permissions,"
                                                            "fsname=/src,subtype=bindfs,auto_unmount,weird=1")
    assert flags == 2 | 4 | 1024 and kernel == ["allow_other", "default_permissions"]
    assert (fsname, subtype, ignored) == ("/src", "bindfs", ["weird=1"])
    assert mount_options("ro")[0] & 1


BAD_DAEMON = r"""
import os, struct, sys
fd = int(sys.argv[1])
from fusd_wire import Codec
codec = Codec()
while True:
    req = codec.decode_request(os.read(fd, 1 << 20))
    if req.opcode == 26:  # INIT
        out = {"major": 7, "minor": 45, "max_readahead": 65536, "max_write": 65536, "flags": 0}
        os.write(fd, codec.encode_reply(req, {"fuse_init_out": out}))
    else:  # a reply whose fragments overrun its header's len: the tap must not pass it on
        os.write(fd, struct.pack("<IiQ", 40, 0, req.unique) + bytes(8))
        os.write(fd, bytes(64))
"""


@needs_fuse
@pytest.mark.kernel
def test_tap_refuses_a_reply_that_overruns_its_length(tmp_path):
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    daemon = tmp_path / "bad_daemon.py"
    daemon.write_text(BAD_DAEMON)
    tap = Tapped(tmp_path, mnt, [sys.executable, str(daemon), "{fd}"])
    try:
        stat = client(["stat", str(mnt)], mnt)
        assert stat.returncode != 0  # the client got an error, never the garbage
        assert wait_for(lambda: tap.proc.poll() is not None, 30)
    finally:
        status = tap.stop()
    assert not _mounted(mnt)
    err = tap.log.read_text(errors="replace")
    assert status == 1 and "fusd tap: the reply to unique" in err and "add up to 88" in err, err
    refused = [r for r in open_capture(str(tap.cap)) if "refused by the tap" in r.comment]
    assert len(refused) == 1 and refused[0].data == bytes(64)


def test_tap_without_a_daemon_command_is_a_usage_error():
    r = subprocess.run([sys.executable, "-m", "fusd_wire", "tap", "-o", "/tmp/x.pcapng", "/tmp"], capture_output=True,
                       text=True, env=ENV)
    assert r.returncode == 2 and "no daemon command" in r.stderr
