"""The generated Wireshark dissector, checked by tshark itself.

For each capture, ``tshark -X lua_script:fuse.lua -r CAPTURE -T json`` must show, message by
message, the fields ``python -m fusd_wire decode --json`` shows: the header values, every
body field by its path (``fuse.fuse_read_in.size``), the pairing (``fuse.request_in``) and
latency, and a problem exactly where the decoder reports one.  The Info column must be the
decoder's text header line (libfuse ``-d`` style).

Captures: a real session recorded here by ``Server(record=...)`` (FUSE, kernel tier), a real
CUSE session recorded in the CUSE guest (``tests/data/cuse-session.pcapng``), a real
session at negotiated 7.8 with its INIT cut off (the protocol only in the interface
description), and every opcode/notification of the table at several minors (built by
``wire_samples``), plus damaged messages.
"""

from __future__ import annotations

import fcntl
import json
import os
import random
import re
import select
import shutil
import struct
import subprocess
import sys
import threading
from decimal import Decimal
from pathlib import Path
from typing import Any, Dict, List

import pytest
from conftest import needs_fuse, wait_for

from fusd_wire import Codec
from fusd_wire import constants as C
from fusd_wire.trace import INBOUND, OUTBOUND, Decoder, Recorder, open_capture
from fusd_wire.trace.render import text_lines
from fusd_wire.trace.wireshark import generate, shipped_path

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "tests" / "data"

needs_tshark = pytest.mark.skipif(shutil.which("tshark") is None,
                                  reason="needs tshark (apt-get install tshark; see system-packages.txt)")


@pytest.fixture(scope="module")
def lua(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("ws") / "fuse.lua"
    r = subprocess.run([sys.executable, "-m", "fusd_wire", "wireshark", "-o", str(path)], capture_output=True,
                       text=True, cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert r.returncode == 0, r.stderr
    return path


def tshark(lua: Path, capture: Path, *args: str) -> str:
    r = subprocess.run(["tshark", "-X", f"lua_script:{lua}", "-r", str(capture), *args], capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "Lua" not in r.stderr, r.stderr  # a script error is printed, not fatal: fail on it
    return r.stdout


def tshark_packets(lua: Path, capture: Path, two_pass: bool = False) -> List[Dict[str, Any]]:
    out = tshark(lua, capture, *(["-2"] if two_pass else []), "-T", "json", "--no-duplicate-keys")
    return [p["_source"]["layers"] for p in json.loads(out)]


def tshark_info(lua: Path, capture: Path) -> List[str]:
    return tshark(lua, capture, "-T", "fields", "-e", "_ws.col.Info").splitlines()


def decode_events(capture: Path) -> List[Dict[str, Any]]:
    r = subprocess.run([sys.executable, "-m", "fusd_wire", "decode", "--json", str(capture)], capture_output=True,
                       text=True, env=dict(os.environ, PYTHONPATH=str(ROOT)), timeout=300)
    assert r.returncode in (0, 1), r.stderr
    return [json.loads(line) for line in r.stdout.splitlines()]


# ---------------------------------------------------------------------------------- flattening
def flat_tshark(layer: Any, out: Dict[str, List[str]], problems: List[str]) -> Dict[str, List[str]]:
    """fuse.* leaves of one packet's tree, by field name, in tree order; subtrees are walked."""
    for key, value in layer.items():
        values = value if isinstance(value, list) else [value]
        for v in values:
            if key == "_ws.expert":
                for e in (v if isinstance(v, list) else [v]):
                    if isinstance(e, dict) and e.get("_ws.expert.message") is not None:
                        problems.append(e["_ws.expert.message"])
                    elif isinstance(e, dict):
                        flat_tshark(e, out, problems)
            elif isinstance(v, dict):
                flat_tshark(v, out, problems)
            elif key.startswith("fuse."):
                out.setdefault(key, []).append(v)
            elif key == "_ws.expert.message":
                problems.append(v)
    return out


def flat_body(value: Any, path: str, out: Dict[str, List[Any]]) -> Dict[str, List[Any]]:
    """The same for a ``decode --json`` body: dict keys joined by dots, lists transparent."""
    if isinstance(value, dict):
        if path == "fuse.info":  # the CUSE info blob: a dict of KEY=VALUE strings
            for k, v in value.items():
                out.setdefault(path, []).append(f"{k}={v}")
            return out
        for k, v in value.items():
            flat_body(v, f"{path}.{k}", out)
    elif isinstance(value, list):
        for v in value:
            flat_body(v, path, out)
    elif value is not None:  # None: an optional part this message's form leaves out
        out.setdefault(path, []).append(value)
    return out


def same_value(ours: Any, shown: str) -> bool:
    """Does tshark's shown value equal the decoder's JSON value?  Ints in any base; bytes as hex."""
    if isinstance(ours, bool) or ours is None:
        return False
    if isinstance(ours, int):
        text = shown.strip()
        if len(text) > 1 and text.startswith("0") and text[1] in "01234567":
            return int(text, 8) == ours
        return int(text, 0) == ours
    if shown == ours or shown.replace(":", "") == ours:  # text, or bytes (tshark: "68:69")
        return True
    try:  # a name: tshark shows the bytes as UTF-8, invalid sequences as U+FFFD
        return shown == bytes.fromhex(ours).decode("utf-8", "replace")
    except ValueError:
        return False


HEADER = {"unique": "fuse.unique", "nodeid": "fuse.nodeid", "uid": "fuse.uid",
          "gid": "fuse.gid", "pid": "fuse.pid", "error": "fuse.error", "code": "fuse.notify_code",
          "opcode_num": "fuse.opcode"}
#: shown by tshark, not by decode --json: header fields the JSON leaves out, and the links
EXTRA = {"fuse.type", "fuse.total_extlen", "fuse.padding", "fuse.request_in", "fuse.response_in", "fuse.latency",
         "fuse.unique", "fuse.len", "fuse.error", "fuse.notify_code", "fuse.opcode", "fuse.nodeid", "fuse.uid",
         "fuse.gid", "fuse.pid"}


def compare(lua: Path, capture: Path, *, expect_problems: bool = False) -> List[Dict[str, Any]]:
    """Assert tshark's view of ``capture`` equals the decoder's, message by message."""
    ours = decode_events(capture)
    packets = tshark_packets(lua, capture)
    assert len(packets) == len(ours)
    info = tshark_info(lua, capture)
    heads = [text_lines(ev)[0].strip() for ev in Decoder(open_capture(str(capture), on_problem=lambda e: None))]
    last_request: Dict[Any, int] = {}
    problems_seen = 0
    for i, (obj, pkt) in enumerate(zip(ours, packets)):
        where = f"frame {i + 1} ({obj.get('opcode', obj.get('notify'))} {obj['type']} unique {obj.get('unique')})"
        problems: List[str] = []
        shown = flat_tshark(pkt.get("fuse", {}), {}, problems)
        assert shown.get("fuse.type") == [obj["type"]], where
        assert int(pkt["frame"]["frame.cap_len"]) == obj["len"], where
        if "problem" in obj:
            problems_seen += 1
            assert problems, f"{where}: decode says {obj['problem']!r}, tshark shows no problem"
        else:
            assert not problems, f"{where}: tshark says {problems}, decode shows no problem"
        for key, field in HEADER.items():
            if key in obj:
                assert field in shown and same_value(obj[key], shown[field][0]), (where, key, shown.get(field))
        if obj["type"] == "request" and "unique" in obj:
            last_request[(obj["conn"], obj["unique"])] = i + 1
        if obj["type"] == "reply" and "opcode_num" in obj:
            assert shown["fuse.request_in"] == [str(last_request[(obj["conn"], obj["unique"])])], where
        if "latency_us" in obj:
            seconds = Decimal(shown["fuse.latency"][0])
            assert round(float(seconds * 1_000_000), 3) == obj["latency_us"], where
        body: Dict[str, List[Any]] = {}
        if obj.get("body") is not None:
            flat_body(obj["body"], "fuse", body)
        if "extensions" in obj:
            flat_body(obj["extensions"], "fuse.extensions", body)
        got = {k: v for k, v in shown.items() if k not in EXTRA}
        assert sorted(got) == sorted(body), f"{where}: fields differ: tshark {sorted(got)}, decode {sorted(body)}"
        for key, values in body.items():
            assert len(values) == len(got[key]) and all(same_value(a, b) for a, b in zip(values, got[key])), \
                f"{where}: {key}: decode {values!r}, tshark {got[key]!r}"
        assert info[i] == _head(heads[i]), where
    assert bool(problems_seen) == expect_problems
    return ours


def _head(line: str) -> str:
    """Our text header line without what the Info column leaves out (latency, connection)."""
    return re.sub(r", (latency|conn): .*$", "", line)


# ---------------------------------------------------------------------------------- the shipped file
def test_shipped_dissector_is_current():
    """The file installed with the package is what the generator makes (regenerate with
    ``python -m fusd_wire wireshark -o fusd_wire/trace/fuse.lua``)."""
    with open(shipped_path(), encoding="utf-8") as f:
        assert f.read() == generate(), "fusd_wire/trace/fuse.lua is stale: regenerate it"


def test_generation_names_every_field_once():
    text = generate()
    abbrevs = [line.split('"')[1] for line in text.splitlines() if line.startswith('F["')]
    assert len(abbrevs) == len(set(abbrevs))
    for field in ("fuse.fuse_read_in.size", "fuse.fuse_entry_out.attr.ino", "fuse.dirents.dirent.name",
                  "fuse.dirents.name", "fuse.forgets.nodeid", "fuse.in_iov.base", "fuse.in_iov.iov_base",
                  "fuse.fuse_notify_poll_wakeup_out.kh", "fuse.info", "fuse.nodeids", "fuse.secctx.contexts.name"):
        assert field in abbrevs, field


def test_an_unknown_predicate_stops_generation(monkeypatch):
    from fusd_wire import opcodes
    from fusd_wire.parts import Data
    from fusd_wire.trace import wireshark
    spec = opcodes.OPS[C.fuse_opcode.FUSE_READ]
    odd = spec.__class__(spec.opcode, spec.name, spec.request, (Data("data", when=lambda ctx: True),))
    monkeypatch.setitem(opcodes.OPS, spec.opcode, odd)
    with pytest.raises(wireshark.GenerationError, match="has no Lua"):
        wireshark.generate()


# ---------------------------------------------------------------------------------- real sessions
def _drive_fuse_session(srv) -> None:
    """Real system calls: lookups, reads, a directory listing, poll woken by a notification, ioctls,
    a blocked read interrupted by a signal, xattrs and statfs the runtime refuses."""
    from fusd_runtime.examples import COUNTER_ADD, COUNTER_GET
    with open(srv.path("hello"), "rb") as f:
        assert f.read().startswith(b"Hello")
    os.listdir(srv.mountpoint)
    with pytest.raises(FileNotFoundError):
        os.stat(os.path.join(srv.mountpoint, "nope"))
    fd = os.open(srv.path("pipe"), os.O_RDWR)
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    assert not poller.poll(0)
    writer = os.open(srv.path("pipe"), os.O_WRONLY)
    threading.Timer(0.1, os.write, (writer, b"wake")).start()
    assert poller.poll(10_000)
    assert os.read(fd, 16) == b"wake"
    os.close(writer)
    c = os.open(srv.path("counter"), os.O_RDWR)
    assert struct.unpack("<Q", fcntl.ioctl(c, COUNTER_ADD, struct.pack("<Q", 5)))[0] == 5
    assert struct.unpack("<Q", fcntl.ioctl(c, COUNTER_GET, bytes(8)))[0] == 5
    os.close(c)
    for call in (lambda: os.getxattr(srv.path("hello"), "user.x"), lambda: os.statvfs(srv.mountpoint)):
        try:
            call()
        except OSError:
            pass
    # a read blocked in the device, interrupted: INTERRUPT and its EINTR/ENOENT answer
    child = subprocess.Popen([sys.executable, "-c", "import os,sys; os.read(os.open(sys.argv[1], os.O_RDONLY), 8)",
                              srv.path("pipe")])
    assert wait_for(lambda: bool(srv.devices()["pipe"].readers) or child.poll() is not None)
    child.kill()
    child.wait()
    os.close(fd)


@needs_tshark
@needs_fuse
@pytest.mark.kernel
def test_tshark_shows_what_decode_shows_for_a_real_fuse_session(lua, tmp_path, no_leftover_mounts):
    from fusd_runtime import Server
    from fusd_runtime.examples import Counter, Hello, PipeDevice
    cap = tmp_path / "fuse-session.pcapng"
    with Server(record=str(cap)) as srv:
        srv.add(Hello(), "hello")
        srv.add(PipeDevice(), "pipe")
        srv.add(Counter(), "counter")
        _drive_fuse_session(srv)
    ours = compare(lua, cap)
    opcodes = {o.get("opcode") for o in ours}
    assert {"INIT", "LOOKUP", "GETATTR", "OPEN", "READ", "WRITE", "READDIR", "POLL", "IOCTL", "RELEASE",
            "INTERRUPT"} <= opcodes, opcodes
    assert any(o["type"] == "notify" for o in ours) and any(o.get("errno") == "ENOENT" for o in ours)
    # two passes: requests also link forward to their replies
    packets = tshark_packets(lua, cap, two_pass=True)
    replies = {o["unique"]: i for i, o in enumerate(ours) if o["type"] == "reply" and "opcode" in o}
    for obj, pkt in zip(ours, packets):
        if obj["type"] == "request" and obj["unique"] in replies and obj["opcode"] != "INTERRUPT":
            assert pkt["fuse"]["fuse.response_in"] == str(replies[obj["unique"]] + 1)


@needs_tshark
def test_tshark_shows_what_decode_shows_for_a_real_cuse_session(lua):
    """Recorded in the CUSE guest (kernel 7.38) by tools/record_cuse_session.py: CUSE_INIT with the
    DEVNAME blob, reads, writes, an unrestricted ioctl's FUSE_IOCTL_RETRY rounds, poll."""
    cap = DATA / "cuse-session.pcapng"
    ours = compare(lua, cap)
    assert ours[0]["opcode"] == "CUSE_INIT" and ours[1]["body"]["info"]["DEVNAME"]
    assert any(o.get("opcode") == "IOCTL" and o["type"] == "reply"
               and o["body"].get("fuse_ioctl_out", {}).get("flags", 0) & C.IoctlFlags.FUSE_IOCTL_RETRY for o in ours)
    assert "CUSE" in tshark(lua, cap)  # the protocol column says which


@needs_tshark
@needs_fuse
@pytest.mark.kernel
def test_the_protocol_comes_from_the_interface_description(lua, tmp_path):
    """A real session negotiated at 7.8 (old, shorter entry/attr/write layouts), recorded without
    its INIT: only the interface description says the minor.  Without it, both decoders must
    misread the same messages (the test would not show anything otherwise)."""
    import kernel_session as ks
    reason = ks.available()
    if reason:
        pytest.skip(reason)
    with ks.KernelSession(tmp_path / "mnt", minor=8) as session:
        ks.run_scenario(session)
    msgs = list(session.messages)
    assert struct.unpack_from("<I", msgs[0][1], 4)[0] == C.fuse_opcode.FUSE_INIT and msgs[1][0] == "daemon"
    assert any(len(data) == 16 + C.FUSE_COMPAT_ENTRY_OUT_SIZE for who, data in msgs if who == "daemon")
    for name, minor in (("with.pcapng", 8), ("without.pcapng", None)):
        with Recorder(tmp_path / name) as rec:
            conn = rec.connection("fuse:3", minor=minor, flags=0 if minor else None)
            for who, data in msgs[2:]:  # INIT request and reply cut off
                rec.record(conn, INBOUND if who == "kernel" else OUTBOUND, data)
    ours = compare(lua, tmp_path / "with.pcapng")
    assert any(o["type"] == "reply" and "fuse_entry_out" in o.get("body", {}) for o in ours)
    compare(lua, tmp_path / "without.pcapng", expect_problems=True)


# ---------------------------------------------------------------------------------- the whole table
def _table_capture(path: Path, seed: int = 1) -> None:
    """Every opcode (each reply form) and notification, at minors with different layouts."""
    import wire_samples as ws
    rng = random.Random(seed)
    with Recorder(path) as rec:
        t = 1_800_000_000_000_000_000
        for minor, flags in ws.fuzz_protocols((8, 9, 15, 23, 31, 38, 45)):
            codec = Codec(minor, flags)
            conn = rec.connection(f"fuse:{minor}", minor=minor, flags=flags)
            for spec in ws.ops_at(minor):
                if spec.opcode in (C.fuse_opcode.FUSE_INIT, C.fuse_opcode.CUSE_INIT):
                    continue  # would switch the protocol mid-connection: the real sessions have INIT
                for variant in ws.variants_for(spec):
                    raw, _ = ws.random_request(codec, spec, rng, variant, small=True)
                    t += 1000
                    rec.record(conn, INBOUND, raw, timestamp_ns=t)
                    if spec.has_reply:
                        req = codec.decode_request(raw)
                        rep = ws.random_reply(codec, spec, req, rng, variant, small=True)[0] if rng.random() < .8 \
                            else codec.encode_reply(req, error=-rng.randint(1, 133))
                        t += 2345
                        rec.record(conn, OUTBOUND, rep, timestamp_ns=t)
            for nspec in ws.notifications_at(minor):
                t += 10
                rec.record(conn, OUTBOUND, ws.random_notify(codec, nspec, rng, small=True)[0], timestamp_ns=t)


@needs_tshark
def test_every_opcode_and_notification_at_every_layout(lua, tmp_path):
    cap = tmp_path / "table.pcapng"
    _table_capture(cap)
    ours = compare(lua, cap)
    from fusd_wire.opcodes import NOTIFICATIONS, OPS
    assert {o["opcode_num"] for o in ours if o["type"] == "request"} == set(OPS) - {C.fuse_opcode.FUSE_INIT,
                                                                                     C.fuse_opcode.CUSE_INIT}
    assert {o["code"] for o in ours if o["type"] == "notify"} == set(NOTIFICATIONS)
    assert any("extensions" in o for o in ours)


@needs_tshark
def test_damaged_messages_are_problems_in_both(lua, tmp_path):
    """Mutated messages (wire_samples.mutate: lengths, counts, truncation): wherever the decoder
    reports a problem tshark shows one too, and the rest still decodes the same."""
    import wire_samples as ws
    rng = random.Random(7)
    cap = tmp_path / "damaged.pcapng"
    with Recorder(cap) as rec:
        for minor, flags in ((45, 0), (38, ws.codec_flags(38, True)), (9, 0)):
            codec = Codec(minor, flags)
            conn = rec.connection(f"fuse:{minor}", minor=minor, flags=flags)
            for spec in ws.ops_at(minor):
                if spec.opcode in (C.fuse_opcode.FUSE_INIT, C.fuse_opcode.CUSE_INIT):
                    continue
                raw, _ = ws.random_request(codec, spec, rng, ws.Variant(), small=True)
                bad = rng.random() < 0.5
                rec.record(conn, INBOUND, ws.mutate(rng, raw, "request") if bad else raw)
                if spec.has_reply and not bad:
                    req = codec.decode_request(raw)
                    rep = ws.random_reply(codec, spec, req, rng, ws.Variant(), small=True)[0]
                    rec.record(conn, OUTBOUND, ws.mutate(rng, rep, "reply", raw) if rng.random() < 0.5 else rep)
            rec.record(conn, OUTBOUND, b"\x10\x00\x00\x00\x00\x00\x00\x00\x63" + bytes(7))  # answers nothing
            rec.record(conn, OUTBOUND, b"\x0c\x00\x00\x00")  # shorter than a header
    compare(lua, cap, expect_problems=True)
