"""The codec against messages this machine's kernel really sent and accepted.

Two sources, the same checks:
- ``tests/data/kernel-7.45-messages.json``: a capture saved by ``tools/capture_vectors.py``
  (runs anywhere, no root);
- a live session (root and /dev/fuse): ``kernel_session.KernelSession`` mounts a
  one-file filesystem whose daemon speaks only through ``fusd_wire.Codec``, child
  processes drive open/stat/read/write/ioctl/poll/close and an interrupted read.

Every message is decoded (requests with ``decode_request`` via ``Conversation.request``,
daemon messages with ``Conversation.from_daemon``, which pairs replies with their
requests and follows INIT) and re-encoded from the decoded body, and the bytes must be
identical.  On the live run the client's results also prove the other direction: the
kernel accepted every reply and notification the codec built.
"""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path
from typing import Dict, List, Tuple

import kernel_session as ks  # tests/ is on sys.path (rootdir conftest): a helper module, not a test
import pytest

from fusd_wire import Conversation, Notification, Reply, Request
from fusd_wire import constants as C

DATA = Path(__file__).parent / "data" / "kernel-7.45-messages.json"

#: Opcodes the scenario must make the kernel send.
REQUIRED = {C.FUSE_INIT, C.FUSE_LOOKUP, C.FUSE_GETATTR, C.FUSE_OPEN, C.FUSE_READ, C.FUSE_WRITE, C.FUSE_IOCTL,
            C.FUSE_POLL, C.FUSE_RELEASE, C.FUSE_FLUSH, C.FUSE_INTERRUPT}

Decoded = List[Tuple[str, object, object]]  # (direction, Request | Reply | Notification, paired request)


def replay(messages: List[Tuple[str, bytes]]) -> Decoded:
    """Decode every message in order and assert each re-encodes to the very same bytes."""
    conv = Conversation()
    out: Decoded = []
    for i, (direction, raw) in enumerate(messages):
        codec = conv.codec  # the protocol in force for this message (INIT's reply switches it after)
        where = f"message {i} ({direction}, {len(raw)} bytes)"
        if direction == "kernel":
            req = conv.request(raw)
            h = req.header
            again = codec.encode_request(req.opcode, req.body, unique=h.unique, nodeid=h.nodeid, uid=h.uid,
                                         gid=h.gid, pid=h.pid, extensions=req.extensions)
            assert again == raw, f"{where}: {req.name} re-encodes differently"
            out.append((direction, req, None))
        else:
            msg, req = conv.from_daemon(raw)
            if isinstance(msg, Notification):
                again = codec.encode_notify(msg.code, msg.body)
            else:
                assert req is not None, f"{where}: reply to unique {msg.unique} without a request"
                again = codec.encode_reply(req, msg.body, error=msg.error)
            assert again == raw, f"{where}: {msg.name} re-encodes differently"
            out.append((direction, msg, req))
    assert not {u: r for u, r in conv.pending.items() if r.opcode != C.FUSE_INTERRUPT}, \
        f"requests left without a reply: {[r.name for r in conv.pending.values()]}"
    return out


def check_scenario(decoded: Decoded, kernel_minor: int, daemon_minor: int = C.FUSE_KERNEL_MINOR_VERSION) -> None:
    """What the scenario must look like on the wire, field by field."""
    requests = [m for d, m, _ in decoded if d == "kernel"]
    replies: Dict[int, Reply] = {r.unique: m for d, m, r in decoded if isinstance(m, Reply)}
    by_op: Dict[int, List[Request]] = {}
    for r in requests:
        by_op.setdefault(r.opcode, []).append(r)
    missing = {C.opcode_name(op) for op in REQUIRED - set(by_op)}
    assert not missing, f"the capture lacks {sorted(missing)}"

    init = by_op[C.FUSE_INIT][0]
    assert (init.body.fuse_init_in.major, init.body.fuse_init_in.minor) == (7, kernel_minor)
    init_out = replies[init.unique].body.fuse_init_out
    assert init_out.minor == min(kernel_minor, daemon_minor)
    if init_out.minor >= 5:  # max_write arrived with the 24-byte init_out of 7.5
        assert init_out.max_write == ks.MAX_WRITE

    lookup = next(r for r in by_op[C.FUSE_LOOKUP] if r.body.name == ks.FILE_NAME.encode())
    assert lookup.header.nodeid == C.FUSE_ROOT_ID
    assert replies[lookup.unique].body.fuse_entry_out.nodeid == ks.FILE_INO

    opened = replies[by_op[C.FUSE_OPEN][0].unique].body.fuse_open_out
    assert opened.open_flags & C.FOPEN_DIRECT_IO

    write = by_op[C.FUSE_WRITE][0]
    assert write.body.data == b"hello fusd" and write.body.fuse_write_in.size == 10
    assert replies[write.unique].body.fuse_write_out.size == 10

    ioctl = by_op[C.FUSE_IOCTL][0]
    ioc = ioctl.body.fuse_ioctl_in
    assert (ioc.cmd, ioc.in_size, ioc.out_size, ioc.flags) == (ks.IOCTL_CMD, 8, 8, 0)  # restricted: flags 0
    assert int.from_bytes(ioctl.body.data, "little") == 41
    assert int.from_bytes(replies[ioctl.unique].body.data, "little") == 42

    polls = by_op[C.FUSE_POLL]
    assert polls[0].body.fuse_poll_in.flags & C.FUSE_POLL_SCHEDULE_NOTIFY
    wakeups = [m for d, m, _ in decoded if isinstance(m, Notification)]
    assert [n.code for n in wakeups] == [C.FUSE_NOTIFY_POLL]
    assert wakeups[0].body.fuse_notify_poll_wakeup_out.kh == polls[0].body.fuse_poll_in.kh
    assert replies[polls[-1].unique].body.fuse_poll_out.revents & ks.POLL_READY

    # INTERRUPT names the held READ; that READ, not the INTERRUPT, is answered, with -EINTR.
    interrupt = by_op[C.FUSE_INTERRUPT][0]
    held = next(r for r in by_op[C.FUSE_READ] if r.unique == interrupt.body.fuse_interrupt_in.unique)
    assert held.body.fuse_read_in.size == ks.BLOCKING_READ_SIZE
    assert interrupt.unique & 1, "the kernel marks interrupt uniques with FUSE_INT_REQ_BIT"
    assert replies[held.unique].error == -errno.EINTR
    assert interrupt.unique not in replies

    # Requests made on a caller's behalf carry its credentials; INIT and INTERRUPT have no caller.
    callers = {C.FUSE_LOOKUP, C.FUSE_GETATTR, C.FUSE_OPEN, C.FUSE_READ, C.FUSE_WRITE, C.FUSE_IOCTL, C.FUSE_POLL,
               C.FUSE_FLUSH}
    assert all(r.header.uid == 0 and r.header.pid > 0 for r in requests if r.opcode in callers)
    assert init.header.pid == interrupt.header.pid == 0
    assert held.header.pid != ioctl.header.pid, "the interrupted reader is a second process"


# ------------------------------------------------------------------------------------- saved

def load_saved() -> Tuple[dict, List[Tuple[str, bytes]]]:
    doc = json.loads(DATA.read_text())
    return doc, [(m["dir"], bytes.fromhex(m["hex"])) for m in doc["messages"]]


def test_saved_capture_is_small_and_complete():
    assert DATA.stat().st_size < 8 * 1024
    doc, messages = load_saved()
    assert doc["kernel_minor"] == 45
    assert {d for d, _ in messages} == {"kernel", "daemon"}


def test_saved_messages_roundtrip_byte_identical():
    doc, messages = load_saved()
    decoded = replay(messages)
    assert len(decoded) == len(messages)
    check_scenario(decoded, doc["kernel_minor"])


def test_saved_messages_name_what_they_hold():
    """The 'what' labels of the file agree with the decoder (they are for human readers)."""
    doc, messages = load_saved()
    for entry, (_, msg, _) in zip(doc["messages"], replay(messages)):
        if entry["dir"] == "kernel":
            assert entry["what"] == msg.name
        elif isinstance(msg, Notification):
            assert entry["what"] == "NOTIFY_" + msg.name


# ------------------------------------------------------------------------------------- live

def _children() -> List[int]:
    """Child process ids of this process (all threads), from /proc."""
    pids: List[int] = []
    for task in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{task}/children") as f:
                pids += [int(p) for p in f.read().split()]
        except FileNotFoundError:
            pass
    return pids


@pytest.fixture(autouse=True)
def no_leftovers():
    """Teardown of every test here: no test mount in /proc/mounts, no child process left."""
    before = set(_children())
    yield
    assert not [m for m in ks.MOUNTPOINTS if ks.mounted(m)], "a test mount was left behind"
    assert set(_children()) <= before, f"child processes left behind: {set(_children()) - before}"


#: Minors the daemon answers INIT with.  Old ones make the kernel use the compat layouts
#: (init_out 24 B < 7.23, entry_out/attr_out/write_in short < 7.9): the codec must agree.
DAEMON_MINORS = [
    45, 38, 22, 12, 9, 8,
]


@pytest.fixture(params=DAEMON_MINORS, ids=lambda m: f"7.{m}")
def daemon_minor(request):
    return request.param


@pytest.mark.kernel
def test_live_session_roundtrip(tmp_path, daemon_minor):
    """One session per daemon minor; afterwards no mount and no child process may be left."""
    reason = ks.available()
    if reason:
        pytest.skip(reason)
    with ks.KernelSession(tmp_path / "mnt", minor=daemon_minor) as session:
        _live_checks(session, daemon_minor)


def _live_checks(live_session: ks.KernelSession, daemon_minor: int) -> None:
    client, interrupted = ks.run_scenario(live_session)
    # The kernel accepted every reply the codec built: the client saw exactly the daemon's answers.
    assert client == {"root_is_dir": True, "size": ks.FILE_SIZE, "read": ks.READ_DATA[:10].hex(), "written": 10,
                      "ioctl_result": 0, "ioctl_out": 42, "poll": [1]}
    assert interrupted == "interrupted"
    assert live_session.kernel_minor is not None and live_session.kernel_minor >= 7
    messages = list(live_session.messages)
    assert live_session.error is None, f"the codec refused a kernel message: {live_session.error!r}"
    decoded = replay(messages)
    check_scenario(decoded, live_session.kernel_minor, daemon_minor)
    # The selection saved by tools/capture_vectors.py replays on its own too.
    replay(ks.select_vectors(messages))


@pytest.mark.kernel
def test_live_session_unmounts_when_the_test_body_fails(tmp_path):
    """The context manager's promise: an exception inside still unmounts and closes."""
    reason = ks.available()
    if reason:
        pytest.skip(reason)
    mnt = tmp_path / "mnt"
    with pytest.raises(ZeroDivisionError):
        with ks.KernelSession(mnt) as session:
            assert ks.mounted(str(mnt))
            os.stat(session.file)  # the daemon is alive and answering
            raise ZeroDivisionError("the test body failed")
    assert not ks.mounted(str(mnt))
    assert session._fd == -1
