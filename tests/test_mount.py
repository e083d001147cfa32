"""Mounts on the real kernel: identity, refusing busy mountpoints, unmounting only ours, abort, errors.

A server must only ever unmount the mount it made: each test here stacks or swaps
mounts on one directory and checks who is left mounted.  A mount nobody serves
stands in for a stuck server (the kernel holds every request until FUSE_INIT is
answered).
"""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import textwrap

import pytest
from conftest import NOBODY, SYSTEM_PYTHON, needs_fuse, wait_for

from fusd_runtime import MountError, Server
from fusd_runtime.examples import Hello
from fusd_runtime.mount import Mount, mount_at, mountinfo, umount

pytestmark = needs_fuse


@pytest.fixture
def mnt(tmp_path, no_leftover_mounts):
    d = tmp_path / "mnt"
    d.mkdir()
    yield str(d)
    while mount_at(str(d)) is not None:  # whatever a failing test left stacked there
        umount(str(d))


def _serving(server: Server, text: bytes) -> bool:
    with open(server.path("hello"), "rb") as f:
        return f.read() == text


def _hello_server(path: str, text: bytes, **kwargs) -> Server:
    srv = Server(path, **kwargs)
    srv.add(Hello(text), "hello")
    return srv.start()


def test_missing_mountpoint_says_it_does_not_exist(tmp_path) -> None:
    with pytest.raises(MountError) as info:
        Mount(str(tmp_path / "nope"))
    assert info.value.errno == errno.ENOENT
    assert "does not exist" in str(info.value) and "mkdir" in str(info.value)


def test_a_file_is_not_a_mountpoint(tmp_path) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(MountError, match="is not a directory"):
        Mount(str(tmp_path / "file"))


def test_non_empty_mountpoint_refused_unless_asked(mnt) -> None:
    open(os.path.join(mnt, "precious"), "w").close()
    with pytest.raises(MountError) as info:
        Mount(mnt)
    assert info.value.errno == errno.ENOTEMPTY and "'precious'" in str(info.value) and "nonempty" in str(info.value)
    srv = _hello_server(mnt, b"hides it", mount_options={"nonempty": True})
    try:
        assert _serving(srv, b"hides it")
    finally:
        srv.stop()
    assert os.listdir(mnt) == ["precious"]


def test_identity_and_connection_recorded_from_mountinfo(mnt) -> None:
    with Mount(mnt) as m:  # nobody answers INIT: anything that stat()ed the mountpoint would hang here
        ours = [e for e in mountinfo() if e.mountpoint == mnt]
        assert len(ours) == 1 and m.identity == ours[0]
        assert m.identity.fstype == "fuse.fusd" and m.identity.major == 0
        assert m.connection == m.identity.minor
        assert m.is_ours() and m.still_mounted()
        from fusd_runtime.mount import ensure_fusectl
        assert os.path.isfile(os.path.join(ensure_fusectl(), str(m.connection), "abort"))
    assert mount_at(mnt) is None


def test_second_server_on_a_live_mount_is_refused(mnt) -> None:
    first = _hello_server(mnt, b"first")
    try:
        second = Server(mnt)
        second.add(Hello(b"second"), "hello")
        with pytest.raises(MountError) as info:
            second.start()
        assert info.value.errno == errno.EBUSY
        assert "already a FUSE mount" in str(info.value) and "overmount" in str(info.value)
        assert _serving(first, b"first")
    finally:
        first.stop()
    assert mount_at(mnt) is None


def test_stopping_an_overmounted_second_server_leaves_the_first(mnt) -> None:
    first = _hello_server(mnt, b"first")
    try:
        second = _hello_server(mnt, b"second", mount_options={"overmount": True})
        assert _serving(second, b"second")
        second.stop()
        assert first.mount.is_ours(), "stopping the second server unmounted the first"
        assert _serving(first, b"first")
    finally:
        first.stop()
    assert mount_at(mnt) is None


def test_stopping_a_covered_server_leaves_the_one_on_top(mnt, caplog) -> None:
    first = _hello_server(mnt, b"first")
    second = _hello_server(mnt, b"second", mount_options={"overmount": True})
    try:
        first.stop()
        assert second.mount.is_ours() and _serving(second, b"second")
        assert "is on top of ours" in caplog.text
    finally:
        second.stop()
    top = mount_at(mnt)
    assert top is not None and top.identity == first.mount.identity.identity  # the first's, ended, uncovered
    umount(mnt)


def test_close_does_not_unmount_a_mount_that_replaced_ours(mnt) -> None:
    first = _hello_server(mnt, b"first")
    try:
        umount(mnt)  # an operator unmounts it ...
        second = _hello_server(mnt, b"second")  # ... and starts another server there
        try:
            first.stop()
            assert second.mount.is_ours() and _serving(second, b"second")
        finally:
            second.stop()
    finally:
        first.stop()
    assert mount_at(mnt) is None


SERVE_AND_WAIT = """
import sys
from fusd_runtime import Server
from fusd_runtime.examples import Hello
srv = Server(sys.argv[1])
srv.add(Hello(b"killed one"), "hello")
srv.serve_forever(ready=lambda: print("ready", flush=True))
"""


def _children(pid: int) -> list:
    with open(f"/proc/{pid}/task/{pid}/children") as f:
        return [int(x) for x in f.read().split()]


def test_watchdog_of_a_killed_server_leaves_the_mount_on_top(mnt) -> None:
    proc = subprocess.Popen([sys.executable, "-c", textwrap.dedent(SERVE_AND_WAIT), mnt], stdout=subprocess.PIPE,
                            text=True)
    try:
        assert proc.stdout.readline().strip() == "ready"
        watchdogs = _children(proc.pid)
        assert watchdogs, "the server started no watchdog"
        killed = mount_at(mnt)
        second = _hello_server(mnt, b"second", mount_options={"overmount": True})
        try:
            proc.send_signal(signal.SIGKILL)
            proc.wait(10)
            assert wait_for(lambda: not any(os.path.exists(f"/proc/{w}") for w in watchdogs))
            assert second.mount.is_ours(), "the killed server's watchdog unmounted the server on top"
            assert _serving(second, b"second")
        finally:
            second.stop()
        assert mount_at(mnt).identity == killed.identity  # the killed one's: never ours to unmount
        umount(mnt)
    finally:
        proc.kill()
        proc.wait()


def test_watchdog_unmounts_a_killed_server(mnt) -> None:
    proc = subprocess.Popen([sys.executable, "-c", textwrap.dedent(SERVE_AND_WAIT), mnt], stdout=subprocess.PIPE,
                            text=True)
    try:
        assert proc.stdout.readline().strip() == "ready"
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        assert wait_for(lambda: mount_at(mnt) is None), "the watchdog did not unmount after SIGKILL"
    finally:
        proc.kill()
        proc.wait()


STUCK_CLIENT = """
import os, sys
print("stat", flush=True)
try:
    os.stat(sys.argv[1])
    print("answered")
except OSError as exc:
    print(__import__("errno").errorcode[exc.errno])
"""


def test_abort_frees_a_client_stuck_on_an_unanswering_server(mnt) -> None:
    with Mount(mnt) as m:  # nobody serves it: the kernel holds the client's request
        proc = subprocess.Popen([sys.executable, "-c", textwrap.dedent(STUCK_CLIENT), mnt], stdout=subprocess.PIPE,
                                text=True)
        try:
            assert proc.stdout.readline().strip() == "stat"
            assert wait_for(lambda: _waiting(m.connection) == 2)  # INIT and the client's GETATTR
            m.abort()
            out, _ = proc.communicate(timeout=10)
            assert out.strip() == "ENOTCONN"
        finally:
            proc.kill()
            proc.wait()
    assert mount_at(mnt) is None


def _waiting(connection: int) -> int:
    from fusd_runtime.mount import connection_dir
    with open(os.path.join(connection_dir(connection), "waiting")) as f:
        return int(f.read())


IN_PRIVATE_NAMESPACE = """
import os, subprocess, sys
from fusd_runtime.mount import FUSECTL_DIR, Mount, mountinfo, umount
def fusectl():
    return any(m.fstype == "fusectl" for m in mountinfo())
while fusectl():
    umount(FUSECTL_DIR)
print("fusectl before:", fusectl())
with Mount(sys.argv[1]) as m:
    m.abort()
    print("fusectl after:", fusectl())
"""


@pytest.mark.skipif(not os.path.exists("/usr/bin/unshare"), reason="needs unshare(1) (util-linux)")
def test_abort_mounts_fusectl_when_needed(mnt) -> None:
    # A private mount namespace: unmounting fusectl there leaves the machine's alone.
    out = subprocess.run(["unshare", "--mount", "--propagation", "private", sys.executable, "-c",
                          textwrap.dedent(IN_PRIVATE_NAMESPACE), mnt], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split("\n")[:2] == ["fusectl before: False", "fusectl after: True"], out.stdout
    assert mount_at(mnt) is None  # the namespace's mounts died with it


def test_read_only_mount_refuses_writers(mnt) -> None:
    srv = _hello_server(mnt, b"ro", mount_options={"read_only": True})
    try:
        assert _serving(srv, b"ro")
        with pytest.raises(OSError) as info:
            os.open(srv.path("hello"), os.O_WRONLY)
        assert info.value.errno == errno.EROFS
    finally:
        srv.stop()


def test_a_renamed_mountpoint_is_still_unmounted(tmp_path, no_leftover_mounts) -> None:
    (tmp_path / "a" / "mnt").mkdir(parents=True)
    srv = _hello_server(str(tmp_path / "a" / "mnt"), b"moved")
    try:
        os.rename(tmp_path / "a", tmp_path / "b")  # pytest does this to old tmp directories
        assert srv.mount.still_mounted() and mount_at(str(tmp_path / "b" / "mnt")) is not None
    finally:
        srv.stop()
    left = mount_at(str(tmp_path / "b" / "mnt")) is not None
    while mount_at(str(tmp_path / "b" / "mnt")) is not None:
        umount(str(tmp_path / "b" / "mnt"))
    assert not left, "the server left its mount behind"


def test_unmounted_by_an_operator_still_mounted_says_so(mnt) -> None:
    with Mount(mnt) as m:
        assert m.still_mounted()
        umount(mnt)
        assert not m.still_mounted() and not m.is_ours()


# ---------------------------------------------------------------------- as an ordinary user
ALLOW_OTHER = """
import sys
from fusd_runtime import MountError, Server
try:
    Server(sys.argv[1], allow_other=True).start()
except MountError as exc:
    print(exc.strerror)
"""


# fusermount3 behind a wrapper that closes the fd-passing socket, then takes a second to exit: the
# window a loaded machine opens between fusermount3's failure and its exit status, made certain.
SLOW_FUSERMOUNT3 = """#!/bin/sh
/usr/bin/fusermount3 "$@"
rc=$?
eval "exec $_FUSE_COMMFD>&-"
sleep 1
exit $rc
"""


def test_fusermount3_message_reaches_the_user(nobody_env) -> None:
    mnt, env = nobody_env
    wrapper = os.path.join(os.path.dirname(mnt), "bin")
    os.mkdir(wrapper)
    with open(os.path.join(wrapper, "fusermount3"), "w") as f:
        f.write(SLOW_FUSERMOUNT3)
    os.chmod(os.path.join(wrapper, "fusermount3"), 0o755)
    env = dict(env, PATH=wrapper + ":" + env["PATH"])
    out = subprocess.run([SYSTEM_PYTHON, "-c", textwrap.dedent(ALLOW_OTHER), mnt], user=NOBODY, group=NOBODY,
                         env=env, capture_output=True, text=True, timeout=60)
    assert "user_allow_other" in out.stdout and "fuse.conf" in out.stdout, out.stdout + out.stderr
    assert "no file descriptor received" not in out.stdout
