"""The ``fusd`` command as a user meets it: real mounts, real processes, the installed console script.

Every error is one line on stderr, ``fusd COMMAND: what went wrong ...: what to do``, with
exit status 2 for a wrong command line and 1 for a failure, and never a traceback.
``fusd serve`` goes to the background once its device can be opened (``-f``: stays in the
foreground) and stops when its mount is unmounted.
"""

from __future__ import annotations

import errno
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap

import pytest
from conftest import NOBODY, SYSTEM_PYTHON, needs_fuse, wait_for
from test_docs import Block, problems, run_block, sandbox_ok

from fusd_runtime.cli import COMMANDS
from fusd_runtime.mount import Mount, mount_at, umount

FUSD = os.path.join(os.path.dirname(sys.executable), "fusd")  # the console script pip installed

SENSOR = """
from fusd_runtime import Device

class Sensor(Device):
    def __init__(self, text="21.5 C", repeat=1):
        self.text = text
        self.repeat = repeat

    def open(self, ctx):
        ctx.state = (f"{self.text}\\n" * self.repeat).encode()

    def read(self, ctx, size, offset):
        data, ctx.state = ctx.state[:size], ctx.state[size:]
        return data

def make_sensor(text="made"):
    return Sensor(text=text.upper())
"""


def fusd(*args: str, cwd: str = None, timeout: float = 60, env: dict = None) -> subprocess.CompletedProcess:
    return subprocess.run([FUSD, *args], cwd=cwd, capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL, env=env)


def one_line(proc: subprocess.CompletedProcess, status: int, command: str, *fragments: str) -> str:
    """The single stderr line of a failed command; checks its status, prefix and content."""
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == status, proc.stderr
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert lines[0].startswith(f"fusd {command}: "), lines[0]
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


@pytest.fixture
def workdir(tmp_path, no_leftover_mounts):
    (tmp_path / "sensor.py").write_text(SENSOR)
    (tmp_path / "mnt").mkdir()
    started = []
    yield tmp_path, started
    mnt = str(tmp_path / "mnt")
    while mount_at(mnt) is not None:
        umount(mnt)
    for pid in started:  # a background server the test did not stop
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _started(proc: subprocess.CompletedProcess, started: list) -> int:
    """The background server's pid, from its ready line."""
    match = re.search(r"pid (\d+)\)", proc.stderr)
    assert proc.returncode == 0 and match, proc.stderr
    started.append(int(match.group(1)))
    return int(match.group(1))


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


# ---------------------------------------------------------------------- the errors the issue lists
@needs_fuse
def test_missing_mountpoint(workdir) -> None:
    tmp, _ = workdir
    one_line(fusd("serve", "sensor.py:Sensor", str(tmp / "nope"), cwd=tmp), 1, "serve",
             f"mount point {tmp / 'nope'} does not exist", "mkdir -p")


@needs_fuse
def test_non_empty_mountpoint(workdir) -> None:
    tmp, _ = workdir
    one_line(fusd("serve", "sensor.py:Sensor", str(tmp), cwd=tmp), 1, "serve", f"mount point {tmp} is not empty",
             "-o nonempty")


@needs_fuse
def test_already_mounted_mountpoint(workdir) -> None:
    tmp, _ = workdir
    with Mount(str(tmp / "mnt")):
        one_line(fusd("serve", "sensor.py:Sensor", str(tmp / "mnt"), cwd=tmp), 1, "serve",
                 "is already a FUSE mount", "fusd abort", "-o overmount")


@needs_fuse
def test_not_root_without_fusermount3(nobody_env) -> None:
    mnt, env = nobody_env
    device = os.path.join(os.path.dirname(mnt), "sensor.py")
    with open(device, "w") as f:
        f.write(SENSOR)
    os.chmod(device, 0o644)
    empty = os.path.join(os.path.dirname(mnt), "empty-bin")
    os.mkdir(empty)
    proc = subprocess.run([SYSTEM_PYTHON, "-m", "fusd_runtime", "serve", device, mnt], user=NOBODY, group=NOBODY,
                          env=dict(env, PATH=empty), capture_output=True, text=True, timeout=60)
    one_line(proc, 1, "serve", "fusermount3 not found: install the fuse3 package")


@needs_fuse
def test_background_server_as_an_ordinary_user(nobody_env) -> None:
    mnt, env = nobody_env
    device = os.path.join(os.path.dirname(mnt), "sensor.py")
    with open(device, "w") as f:
        f.write(SENSOR)
    os.chmod(device, 0o644)
    as_nobody = {"user": NOBODY, "group": NOBODY, "env": env, "capture_output": True, "text": True, "timeout": 60}
    proc = subprocess.run([SYSTEM_PYTHON, "-m", "fusd_runtime", "serve", device, mnt], **as_nobody)
    pid = int(re.search(r"pid (\d+)\)", proc.stderr).group(1)) if proc.returncode == 0 else None
    try:
        assert proc.stderr.strip().endswith(f"; stop: fusermount3 -u {mnt}"), proc.stderr
        assert subprocess.run(["cat", f"{mnt}/sensor"], **as_nobody).stdout == "21.5 C\n"
        assert subprocess.run(["fusermount3", "-u", mnt], **as_nobody).returncode == 0
        assert wait_for(lambda: not _alive(pid)), "the server did not stop when fusermount3 -u unmounted it"
    finally:
        if pid is not None and _alive(pid):
            os.kill(pid, signal.SIGKILL)


def test_unimportable_module(tmp_path) -> None:
    one_line(fusd("serve", "nosuch:Sensor", cwd=tmp_path), 2, "serve", "cannot import 'nosuch'",
             "give its path (fusd serve path/to/nosuch.py:Class)")
    one_line(fusd("serve", "nosuch.py:Sensor", cwd=tmp_path), 2, "serve", "no such file: nosuch.py")


def test_module_raising_on_import(tmp_path) -> None:
    (tmp_path / "broken.py").write_text("import os\nvalue = undefined_name\n")
    one_line(fusd("serve", "broken.py:Sensor", cwd=tmp_path), 1, "serve",
             "importing broken.py raised NameError: name 'undefined_name' is not defined (broken.py, line 2)")


@needs_fuse
def test_misspelt_callback(workdir) -> None:
    tmp, _ = workdir
    (tmp / "typo.py").write_text("from fusd_runtime import Device\nclass Typo(Device):\n"
                                 "    def raed(self, ctx, size, offset):\n        return b''\n")
    one_line(fusd("serve", "typo.py:Typo", str(tmp / "mnt"), cwd=tmp), 1, "serve",
             "Typo.raed: looks like a misspelt read()", "rename it to read")
    assert mount_at(str(tmp / "mnt")) is None


@needs_fuse
def test_wrong_signature(workdir) -> None:
    tmp, _ = workdir
    (tmp / "wrong.py").write_text("from fusd_runtime import Device\nclass Wrong(Device):\n"
                                  "    def read(self, ctx, size):\n        return b''\n")
    one_line(fusd("serve", "wrong.py:Wrong", str(tmp / "mnt"), cwd=tmp), 1, "serve",
             "Wrong.read(self, ctx, size) cannot be called as read(ctx, size, offset)")


# ---------------------------------------------------------------------- more usage errors
@pytest.mark.parametrize("args, fragment", [
    (["serve", "sensor:Sensr"], "sensor has no Sensr (did you mean 'Sensor'?"),
    (["serve", "sensor:Sensor", "--arg", "txt=x"], "cannot call sensor:Sensor with txt='x'"),
    (["serve", "sensor:Sensor", "--arg", "no-equals"], "--arg wants KEY=VALUE"),
    (["serve", "sensor:Sensor", "-o", "allow_othr"], "unknown mount option 'allow_othr' in -o"),
    (["serve", "sensor:Sensor", "-o", "fsname"], "mount option 'fsname': write it as fsname=VALUE"),
    (["serve", "sensor:Sensor", "--mode", "999"], "--mode wants octal permission bits"),
    (["serve", "sensor:Sensor", "--uid", "no-such-user"], "--uid: no user named 'no-such-user'"),
    (["serve"], "the following arguments are required: DEVICE (see fusd serve --help)"),
    (["serve", "sensor:Sensor", "--bogus"], "unrecognized arguments: --bogus"),
])
def test_usage_errors_exit_2(tmp_path, args, fragment) -> None:
    (tmp_path / "sensor.py").write_text(SENSOR)
    one_line(fusd(*args, cwd=tmp_path), 2, args[0], fragment)


def test_unknown_or_missing_command() -> None:
    proc = fusd("serv")
    assert proc.returncode == 2 and proc.stderr.strip() == (
        "fusd: unknown command 'serv' (did you mean 'serve'? commands: " + ", ".join(COMMANDS) + "; fusd --help)")
    proc = fusd()
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1


@needs_fuse
def test_constructor_raising(workdir) -> None:
    tmp, _ = workdir
    (tmp / "picky.py").write_text("from fusd_runtime import Device\nclass Picky(Device):\n"
                                  "    def __init__(self, rate=1):\n        raise ValueError(f'bad rate {rate}')\n")
    one_line(fusd("serve", "picky.py:Picky", "--arg", "rate=3", str(tmp / "mnt"), cwd=tmp), 1, "serve",
             "Picky(rate=3) raised ValueError: bad rate 3 (picky.py, line 4)")


# ---------------------------------------------------------------------- serving
@needs_fuse
def test_module_from_the_current_directory_in_the_background(workdir) -> None:
    tmp, started = workdir
    mnt = str(tmp / "mnt")
    proc = fusd("serve", "sensor:Sensor", mnt, cwd=tmp)  # python -m style: sensor.py of the current directory
    pid = _started(proc, started)
    assert proc.stderr.strip() == f"fusd serve: serving Sensor at {mnt}/sensor (fuse, pid {pid}); stop: umount {mnt}"
    assert subprocess.run(["cat", f"{mnt}/sensor"], capture_output=True, text=True, timeout=10).stdout == "21.5 C\n"
    umount(mnt)
    assert wait_for(lambda: not _alive(pid)), "the server did not stop when its mount was unmounted"
    assert mount_at(mnt) is None


@needs_fuse
def test_foreground_stops_on_sigint(workdir) -> None:
    tmp, started = workdir
    mnt = str(tmp / "mnt")
    proc = subprocess.Popen([FUSD, "serve", "-f", "sensor.py:Sensor", mnt], cwd=tmp, stderr=subprocess.PIPE,
                            text=True)
    try:
        line = proc.stderr.readline()
        assert line.strip() == f"fusd serve: serving Sensor at {mnt}/sensor (fuse, pid {proc.pid}); Ctrl-C to stop"
        with open(f"{mnt}/sensor") as f:
            assert f.read() == "21.5 C\n"
        proc.send_signal(signal.SIGINT)
        assert proc.wait(20) == 0
        assert mount_at(mnt) is None
    finally:
        proc.kill()
        proc.wait()


@needs_fuse
def test_constructor_arguments_and_factories(workdir) -> None:
    tmp, started = workdir
    mnt = str(tmp / "mnt")
    _started(fusd("serve", "sensor.py:Sensor", "--arg", "text=hello there", "--arg", "repeat=2", "--name", "s1",
                  mnt, cwd=tmp), started)
    with open(f"{mnt}/s1") as f:
        assert f.read() == "hello there\nhello there\n"
    umount(mnt)
    _started(fusd("serve", "sensor.py:make_sensor", "--arg", "text=quiet", mnt, cwd=tmp), started)
    with open(f"{mnt}/sensor") as f:  # named after the class of what the factory returned
        assert f.read() == "QUIET\n"
    umount(mnt)


@needs_fuse
def test_mount_options_and_file_attributes(workdir) -> None:
    tmp, started = workdir
    mnt = str(tmp / "mnt")
    _started(fusd("serve", "sensor.py", "-o", "ro,allow_other", "-o", "default_permissions,fsname=thermo",
                  "--mode", "0640", "--uid", "nobody", "--gid", str(NOBODY), mnt, cwd=tmp), started)
    st = os.stat(f"{mnt}/sensor")
    assert (st.st_mode & 0o7777, st.st_uid, st.st_gid) == (0o640, NOBODY, NOBODY)
    top = mount_at(mnt)
    assert top.fstype == "fuse.thermo" and "ro" in top.options.split(",")
    with pytest.raises(OSError) as info:
        os.open(f"{mnt}/sensor", os.O_WRONLY)
    assert info.value.errno == errno.EROFS
    umount(mnt)


# ---------------------------------------------------------------------- fusd abort
STUCK_CLIENT = """
import errno, os, sys
print("stat", flush=True)
try:
    os.stat(sys.argv[1])
    print("answered")
except OSError as exc:
    print(errno.errorcode[exc.errno])
"""


@needs_fuse
def test_abort_frees_stuck_clients_and_unmounts(workdir) -> None:
    tmp, _ = workdir
    mnt = str(tmp / "mnt")
    with Mount(mnt) as m:  # a server that never answers: its clients wait in the kernel
        client = subprocess.Popen([sys.executable, "-c", textwrap.dedent(STUCK_CLIENT), mnt], stdout=subprocess.PIPE,
                                  text=True)
        try:
            assert client.stdout.readline().strip() == "stat"
            proc = fusd("abort", mnt)
            assert proc.returncode == 0, proc.stderr
            assert proc.stderr.strip() == (f"fusd abort: aborted FUSE connection {m.connection} (fuse.fusd from "
                                           f"{m.source} at {mnt}): its clients get ENOTCONN; unmounted {mnt}")
            assert client.communicate(timeout=10)[0].strip() == "ENOTCONN"
            assert mount_at(mnt) is None
        finally:
            client.kill()
            client.wait()


def test_abort_refuses_what_is_not_a_fuse_mount(tmp_path) -> None:
    one_line(fusd("abort", str(tmp_path)), 1, "abort", f"{tmp_path} is not a mount point: nothing to abort")
    one_line(fusd("abort", "/proc"), 1, "abort", "/proc is a proc mount, not FUSE")


# ---------------------------------------------------------------------- --help
@pytest.mark.parametrize("command", list(COMMANDS))
def test_every_command_help_has_an_example(command: str) -> None:
    proc = fusd(command, "--help")
    assert proc.returncode == 0, proc.stderr
    examples = proc.stdout.split("example", 1)
    assert len(examples) == 2, f"fusd {command} --help has no example"
    assert re.search(rf"^\s+(mkdir .*&& )?(fusd|python -m fusd_wire) {command}\b", examples[1], re.M), examples[1]


@sandbox_ok
def test_serve_help_example_works() -> None:
    line = next(x.strip() for x in fusd("serve", "--help").stdout.splitlines() if x.strip().startswith("mkdir"))
    block = Block("fusd serve --help", 1, "sh", line + "\n")
    where = tempfile.mkdtemp(prefix="fusd-help-", dir="/var/tmp")  # the sandbox has a /tmp of its own
    try:
        report = run_block(block, where)
    finally:
        shutil.rmtree(where, ignore_errors=True)
    assert not problems(block, report), report
    assert report["output"].endswith("; stop: umount /tmp/devs\nHello from a Python device!\n")
