"""The decode command on synthetic conversations built with the codec: text, JSON, filters,
stats, damaged input, exit status, and ``| head``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from fusd_wire import Codec
from fusd_wire import constants as C
from fusd_wire.__main__ import main
from fusd_wire.trace import INBOUND, OUTBOUND, Decoder, Recorder, open_capture

ROOT = Path(__file__).resolve().parent.parent
T0 = 1_700_000_000_000_000_000
US = 1000


def conversation():
    """(direction, bytes, time offset ns) of a small FUSE session, both directions."""
    k = Codec(strict=False)
    msgs = []
    t = [0]

    def req(op, body=None, **kw):
        raw = k.encode_request(op, body, **kw)
        t[0] += 10 * US
        msgs.append((INBOUND, raw, t[0]))
        return k.decode_request(raw)

    def rep(r, body=None, error=0, after=5 * US):
        t[0] += after
        msgs.append((OUTBOUND, k.encode_reply(r, body, error=error), t[0]))

    r = req(C.FUSE_INIT, {"fuse_init_in": {"major": 7, "minor": 45, "max_readahead": 65536,
                                           "flags": C.InitFlags.FUSE_INIT_EXT}}, unique=2)
    rep(r, {"fuse_init_out": {"major": 7, "minor": 45, "max_write": 65536, "max_pages": 16}})
    r = req(C.FUSE_LOOKUP, {"name": b"dev0"}, unique=4, nodeid=1, pid=4242)
    rep(r, {"fuse_entry_out": {"nodeid": 2, "attr": {"ino": 2, "mode": 0o20644, "nlink": 1}}})
    r = req(C.FUSE_LOOKUP, {"name": b"missing"}, unique=6, nodeid=1, pid=4242)
    rep(r, error=-2, after=20 * US)
    r = req(C.FUSE_OPEN, {"fuse_open_in": {"flags": os.O_RDWR}}, unique=8, nodeid=2, pid=4242)
    rep(r, {"fuse_open_out": {"fh": 7, "open_flags": C.FOPEN_DIRECT_IO}})
    r = req(C.FUSE_READ, {"fuse_read_in": {"fh": 7, "size": 4096}}, unique=10, nodeid=2, pid=4242)
    rep(r, {"data": b"hello world"}, after=100 * US)
    r = req(C.FUSE_WRITE, {"fuse_write_in": {"fh": 7, "size": 5}, "data": b"abcde"}, unique=12, nodeid=2, pid=77)
    rep(r, {"fuse_write_out": {"size": 5}})
    r = req(C.FUSE_IOCTL, {"fuse_ioctl_in": {"fh": 7, "cmd": 0x80046801, "out_size": 4}}, unique=14, nodeid=2,
            pid=4242)
    rep(r, {"fuse_ioctl_out": {"result": 0}, "data": b"\x34\x12\0\0"})
    r = req(C.FUSE_IOCTL, {"fuse_ioctl_in": {"fh": 7, "cmd": 0x5401}}, unique=16, nodeid=2, pid=4242)
    rep(r, error=-25)
    t[0] += 1 * US
    msgs.append((OUTBOUND, k.encode_notify(C.fuse_notify_code.FUSE_NOTIFY_POLL,
                                           {"fuse_notify_poll_wakeup_out": {"kh": 9}}), t[0]))
    req(C.FUSE_FORGET, {"fuse_forget_in": {"nlookup": 1}}, unique=18, nodeid=2)
    return msgs


def write_capture(path, msgs, conn="fuse0"):
    with Recorder(path) as rec:
        cid = rec.connection(conn)
        for direction, raw, dt in msgs:
            rec.record(cid, direction, raw, T0 + dt)
    return path


def run_cli(*args, stdin=None):
    """Run ``python -m fusd_wire`` in a subprocess: (exit status, stdout, stderr)."""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    r = subprocess.run([sys.executable, "-m", "fusd_wire", *map(str, args)], capture_output=True, text=True,
                       env=env, timeout=120, input=stdin)
    return r.returncode, r.stdout, r.stderr


@pytest.fixture
def cap(tmp_path):
    return write_capture(tmp_path / "conv.pcapng", conversation())


def test_text_form(cap, capsys):
    assert main(["decode", str(cap)]) == 0
    out, err = capsys.readouterr()
    assert err == ""
    lines = out.splitlines()
    assert lines[0] == "unique: 2, opcode: INIT (26), nodeid: 0, insize: 104, pid: 0"
    assert "unique: 4, opcode: LOOKUP (1), nodeid: 1, insize: 45, pid: 4242" in lines
    assert '   name: "dev0"' in lines
    assert "   unique: 6, error: -2 (ENOENT), outsize: 16, reply to LOOKUP, latency: 20.0 us" in lines
    assert "unique: 10, opcode: READ (15), nodeid: 2, insize: 80, pid: 4242" in lines
    i = lines.index("   unique: 10, success, outsize: 27, reply to READ, latency: 100.0 us")
    assert lines[i + 1] == '      data: "hello world"'
    assert any(line.startswith("   fuse_ioctl_in: fh=7 flags=0x0 cmd=0x80046801") for line in lines)
    assert "   unique: 16, error: -25 (ENOTTY), outsize: 16, reply to IOCTL, latency: 5.0 us" in lines
    assert "   NOTIFY: code=1 (POLL), length=24" in lines and "      fuse_notify_poll_wakeup_out: kh=9" in lines
    assert lines[-2:] == ["unique: 18, opcode: FORGET (2), nodeid: 2, insize: 48, pid: 0",
                          "   fuse_forget_in: nlookup=1"]


def test_json_lines(cap, capsys):
    assert main(["decode", "--json", str(cap)]) == 0
    objs = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(objs) == 18
    assert objs[0]["type"] == "request" and objs[0]["opcode"] == "INIT" and objs[0]["time"] == 0
    assert objs[2]["body"] == {"name": b"dev0".hex()}  # bytes are hex strings
    read_reply = next(o for o in objs if o["type"] == "reply" and o["unique"] == 10)
    assert read_reply["opcode"] == "READ" and read_reply["latency_us"] == 100.0
    assert bytes.fromhex(read_reply["body"]["data"]) == b"hello world"
    err = next(o for o in objs if o.get("errno") == "ENOENT")
    assert err["unique"] == 6 and err["error"] == -2
    assert objs[-2]["type"] == "notify" and objs[-2]["notify"] == "POLL"
    assert all("where" in o and o["where"].startswith("block ") for o in objs)


def _uniques(out):
    return [int(line.split(",")[0].split()[1]) for line in out.splitlines() if line.lstrip().startswith("unique:")]


@pytest.mark.parametrize("opts, expected", [
    (["--opcode", "READ,write"], [10, 10, 12, 12]),
    (["--opcode", "15"], [10, 10]),
    (["--unique", "6,16"], [6, 6, 16, 16]),
    (["--nodeid", "1"], [4, 4, 6, 6]),
    (["--pid", "77"], [12, 12]),
    (["--errors"], [6, 6, 16, 16]),
    (["--errors", "--opcode", "IOCTL"], [16, 16]),
    (["--since", "0.000180", "--until", "0.000187"], [12]),
    (["--since", "0.000070", "--until", "0.000100"], [10]),
])
def test_filters(cap, capsys, opts, expected):
    assert main(["decode", *opts, str(cap)]) == 0
    assert _uniques(capsys.readouterr().out) == expected


def test_notification_filter(cap, capsys):
    assert main(["decode", "--opcode", "NOTIFY", str(cap)]) == 0
    assert capsys.readouterr().out.splitlines()[0] == "   NOTIFY: code=1 (POLL), length=24"


def test_stats(cap, capsys):
    assert main(["decode", "--stats", str(cap)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split() == ["opcode", "count", "errors", "p50", "us", "p90", "us", "p99", "us", "max", "us"]
    rows = {line.split()[0]: line.split()[2:] for line in out[1:] if "(" in line}
    assert rows["LOOKUP"] == ["2", "1", "5.0", "20.0", "20.0", "20.0"]
    assert rows["READ"] == ["1", "0", "100.0", "100.0", "100.0", "100.0"]
    assert rows["FORGET"] == ["1", "0", "-", "-", "-", "-"]
    assert "notifications: 1" in out
    assert main(["decode", "--stats", "--json", str(cap)]) == 0
    js = {o["opcode"]: o for o in map(json.loads, capsys.readouterr().out.splitlines())}
    assert js["IOCTL"]["count"] == 2 and js["IOCTL"]["errors"] == 1 and js["IOCTL"]["max_us"] == 5.0


def test_decoder_api_reports_pending(cap):
    capture = open_capture(cap)
    dec = Decoder(capture)
    events = list(dec)
    assert [e.kind for e in events].count("reply") == 8
    assert [req.name for _, req in dec.pending()] == []  # FORGET expects no reply


# ------------------------------------------------------------------ bad input
def test_reply_without_request_and_unknown_opcode(tmp_path, capsys):
    k = Codec(strict=False)
    msgs = conversation()[:2]  # INIT
    msgs.append((OUTBOUND, k.encode_reply(C.FUSE_READ, {"data": b"x"}, unique=999), 50 * US))
    msgs.append((INBOUND, k.encode_request(4000, {"data": b"????"}, unique=20, nodeid=1), 60 * US))
    msgs.append((OUTBOUND, k.encode_reply(4000, error=-38, unique=20), 70 * US))
    path = write_capture(tmp_path / "bad.pcapng", msgs)
    assert main(["decode", str(path)]) == 1
    out, err = capsys.readouterr()
    errs = err.splitlines()
    assert len(errs) == 3
    assert "block 4, offset " in errs[0] and "unique 999 answers no request" in errs[0]
    assert "block 5, offset " in errs[1] and "unknown opcode 4000" in errs[1]
    assert "1 replies without a request" in errs[2] and "0 requests without a reply" in errs[2]
    assert "   unique: 999, success, outsize: 17, no request" in out  # still shown
    assert "unique: 20, opcode: OPCODE_4000 (4000), nodeid: 1, insize: 44, pid: 0" in out
    assert "   unique: 20, error: -38 (ENOSYS), outsize: 16, reply to OPCODE_4000, latency: 10.0 us" in out


def test_undecodable_message_is_reported_and_its_reply_still_pairs(tmp_path, capsys):
    k = Codec(strict=False)
    msgs = conversation()[:2]
    bad = bytearray(k.encode_request(C.FUSE_LOOKUP, {"name": b"abc"}, unique=30, nodeid=1))
    bad[-1] = ord("x")  # name loses its NUL terminator
    msgs.append((INBOUND, bytes(bad), 40 * US))
    msgs.append((OUTBOUND, k.encode_reply(C.FUSE_LOOKUP, error=-2, unique=30), 45 * US))
    msgs.append((INBOUND, b"\x05\x00", 50 * US))  # a capture cut mid-message
    path = write_capture(tmp_path / "bad2.pcapng", msgs)
    assert main(["decode", "--json", str(path)]) == 1
    out, err = capsys.readouterr()
    objs = [json.loads(line) for line in out.splitlines()]
    assert objs[2]["unique"] == 30 and "NUL" in objs[2]["problem"]
    assert objs[3]["opcode"] == "LOOKUP" and objs[3]["latency_us"] == 5.0
    assert "problem" in objs[4]
    assert "block 4" in err and "block 6" in err


def test_truncated_and_garbage_files_carry_on(cap, tmp_path):
    raw = cap.read_bytes()
    cut = tmp_path / "cut.pcapng"
    cut.write_bytes(raw[:-30])
    status, out, err = run_cli("decode", cut)
    assert status == 1
    assert "truncated" in err and "block 19, offset" in err and "Traceback" not in err
    assert "unique: 16, error: -25" in out  # everything before the cut is decoded
    junk = tmp_path / "junk.bin"
    junk.write_bytes(bytes(range(256)) * 4)
    status, out, err = run_cli("decode", junk)
    assert status == 1 and "not a pcapng file" in err and "offset 0" in err and out == ""


def test_usage_errors_exit_2(cap, tmp_path):
    assert run_cli("decode", tmp_path / "nope.pcapng")[0] == 2
    assert run_cli("decode", "--opcode", "FROB", cap)[0] == 2
    assert run_cli("decode", "--unique", "x", cap)[0] == 2
    assert run_cli("frobnicate")[0] == 2
    assert run_cli()[0] == 2


def test_stdin(cap):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    r = subprocess.run([sys.executable, "-m", "fusd_wire", "decode", "-"], stdin=open(cap, "rb"),
                       capture_output=True, env=env, timeout=60)
    assert r.returncode == 0 and r.stdout.startswith(b"unique: 2, opcode: INIT")


def test_pipe_closed_early_is_quiet(tmp_path):
    """``decode big | head -1``: no traceback, no 'Exception ignored' noise."""
    msgs = conversation() * 1
    k = Codec(strict=False)
    t = 1_000_000
    for i in range(3000):
        t += 1000
        msgs.append((INBOUND, k.encode_request(C.FUSE_GETATTR, {}, unique=100 + 2 * i, nodeid=1), t))
    path = write_capture(tmp_path / "big.pcapng", msgs)
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.Popen([sys.executable, "-m", "fusd_wire", "decode", str(path)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=env)
    first = proc.stdout.readline()
    proc.stdout.close()  # what head does after its lines
    err = proc.stderr.read()
    proc.stderr.close()
    status = proc.wait(timeout=120)
    assert first.startswith(b"unique: 2, opcode: INIT")
    assert err == b"", err.decode()
    assert status == 0


def _sample_events():
    """Every wire sample (all opcodes, replies, notifications, several minors) as decoded events."""
    from wire_samples import seed_corpus

    from fusd_wire.trace.records import Record
    recs = []
    for direction, codec, req, raw in seed_corpus(minors=(45,)):
        if codec.flags:
            continue  # the decoder starts at 7.45 without flags, as a capture without INIT does
        conn = 0
        if direction == "reply":
            recs.append(Record(conn, INBOUND, None, codec.encode_request(req.opcode, req.body, unique=req.unique)))
        recs.append(Record(conn, INBOUND if direction == "request" else OUTBOUND, None, raw))
    return recs


def test_json_lines_equal_the_plain_json_objects():
    """json_line hands Containers and bytes to the C encoder; it must write what json_object describes."""
    from fusd_wire.trace.render import json_line, json_object
    checked = 0
    for ev in Decoder(_sample_events()):
        assert json.loads(json_line(ev)) == json_object(ev)
        checked += 1
    assert checked > 700


def test_headers_only_decoding_counts_the_same(cap, tmp_path):
    """--stats decodes headers only; its counts, errors and latencies equal the full decode's."""
    from fusd_wire.trace.stats import Stats
    recs = _sample_events()
    for source in (recs, list(open_capture(cap))):
        full, fast = Stats(), Stats()
        d1, d2 = Decoder(source), Decoder(source, bodies=False)
        for ev in d1:
            full.add(ev)
        for ev in d2:
            fast.add(ev)
        assert full.rows() == fast.rows() and full.rows()
        assert d1.finish() == d2.finish() and d1.summary.undecodable == 0


def test_damaged_messages_are_still_reported_with_headers_only(tmp_path, capsys):
    k = Codec(strict=False)
    msgs = conversation()[:2]
    msgs.append((INBOUND, k.encode_request(C.FUSE_LOOKUP, {"name": b"abc"}, unique=30, nodeid=1)[:-2], 40 * US))
    msgs.append((OUTBOUND, k.encode_reply(C.FUSE_LOOKUP, error=-2, unique=30) + b"xx", 45 * US))
    path = write_capture(tmp_path / "bad3.pcapng", msgs)
    assert main(["decode", "--stats", str(path)]) == 1
    err = capsys.readouterr().err
    assert "fuse_in_header.len is 44 but the message has 42 bytes" in err
    assert "fuse_out_header.len is 16 but the message has 18 bytes" in err


@pytest.mark.parametrize("kind", ["pcapng", "strace"])
def test_stdin_pipe_trickling_in(cap, tmp_path, kind):
    """A pipe that delivers the first bytes slowly: detection waits for enough of them."""
    import time
    if kind == "strace":
        def hx(raw):
            return "".join(f"\\x{c:02x}" for c in raw)
        data = "".join(f'700  read(5, "{hx(raw)}", 4096) = {len(raw)}\n' if d == INBOUND else
                       f'700  write(5, "{hx(raw)}", {len(raw)}) = {len(raw)}\n'
                       for d, raw, _ in conversation()).encode()
    else:
        data = cap.read_bytes()
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    p = subprocess.Popen([sys.executable, "-m", "fusd_wire", "decode", "-"], stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    p.stdin.write(data[:2])
    p.stdin.flush()
    time.sleep(0.3)
    p.stdin.write(data[2:])
    p.stdin.close()
    out, err = p.stdout.read(), p.stderr.read()
    assert p.wait(timeout=60) == 0, err
    assert out.startswith(b"unique: 2, opcode: INIT") and b"unique: 18, opcode: FORGET" in out
