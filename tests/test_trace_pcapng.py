"""pcapng container: our writer, our reader, and what capinfos/tshark make of our files."""

from __future__ import annotations

import io
import shutil
import struct
import subprocess
import threading

import pytest

from fusd_wire.trace import INBOUND, LINKTYPE_FUSE, OUTBOUND, CaptureError, Recorder, open_capture
from fusd_wire.trace.pcapng import BlockReader, interface_description, option, section_header

T0 = 1_700_000_000_123_456_789


def _capture(path, n=5, conns=("fuse0", "cuse1")):
    with Recorder(path) as rec:
        ids = [rec.connection(name, minor=45, flags=0x1234) for name in conns]
        for i in range(n):
            for cid in ids:
                rec.record(cid, INBOUND, bytes([i]) * (40 + i), T0 + i * 1000 + cid)
                rec.record(cid, OUTBOUND, [b"\x10" * 16, bytes([i]) * i], T0 + i * 1000 + 500 + cid,
                           comment=f"reply {i}" if i % 2 else None)
    return ids


def test_round_trip(tmp_path):
    path = tmp_path / "a.pcapng"
    _capture(path)
    cap = open_capture(path)
    recs = list(cap)
    assert cap.format == "pcapng"
    assert len(recs) == 20
    assert {c.name for c in cap.connections.values()} == {"fuse0", "cuse1"}
    assert cap.connections[0].minor == 45 and cap.connections[0].flags == 0x1234
    first = recs[0]
    assert (first.conn, first.direction, first.timestamp_ns, first.data) == (0, INBOUND, T0, b"\0" * 40)
    out = [r for r in recs if r.direction == OUTBOUND and r.conn == 1]
    assert [r.data for r in out] == [b"\x10" * 16 + bytes([i]) * i for i in range(5)]
    assert out[1].comment == "reply 1" and out[0].comment == ""
    assert all(r.timestamp_ns >= T0 for r in recs)


def test_recorder_file_object_and_close_rules():
    buf = io.BytesIO()
    rec = Recorder(buf)
    cid = rec.connection("x")
    rec.record(cid, OUTBOUND, bytearray(b"abc"), 5)
    with pytest.raises(ValueError):
        rec.record(7, INBOUND, b"x")
    rec.close()
    rec.close()  # idempotent
    with pytest.raises(ValueError):
        rec.record(cid, INBOUND, b"x")
    assert not buf.closed  # not ours to close
    recs = list(open_capture(buf.getvalue()))
    assert [(r.data, r.timestamp_ns) for r in recs] == [(b"abc", 5)]


def test_threads_never_interleave(tmp_path):
    path = tmp_path / "t.pcapng"
    with Recorder(path) as rec:
        cid = rec.connection("c")

        def work(k):
            for i in range(300):
                rec.record(cid, INBOUND, [bytes([k]) * 7, bytes([k]) * (i % 13)])

        threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    recs = list(open_capture(path))
    assert len(recs) == 1200
    for r in recs:
        assert len(set(r.data)) == 1 and len(r.data) >= 7  # each message whole, nobody else's bytes inside


def test_microsecond_resolution_and_big_endian_are_read():
    """Files written by other tools: default if_tsresol (µs), big-endian sections."""
    def be_block(btype, body):
        total = 12 + len(body)
        return struct.pack(">II", btype, total) + body + struct.pack(">I", total)
    shb = be_block(0x0A0D0D0A, struct.pack(">IHHq", 0x1A2B3C4D, 1, 0, -1))
    idb = be_block(1, struct.pack(">HHI", LINKTYPE_FUSE, 0, 0))  # no if_tsresol: microseconds
    data = b"\x01\x02\x03\x04\x05"
    epb = be_block(6, struct.pack(">IIIII", 0, 0, 1500, 5, 5) + data + b"\0\0\0"
                   + struct.pack(">HHI", 2, 4, 2) + b"\0\0\0\0")
    recs = list(open_capture(shb + idb + epb))
    assert [(r.timestamp_ns, r.data, r.direction) for r in recs] == [(1_500_000, data, OUTBOUND)]


def _damage(tmp_path):
    path = tmp_path / "d.pcapng"
    _capture(path, n=3, conns=("c",))
    return path.read_bytes()


def test_truncated_file_reports_block_and_offset(tmp_path):
    raw = _damage(tmp_path)
    problems = []
    recs = list(open_capture(raw[:-10], problems.append))
    assert len(recs) == 5
    (err,) = problems
    assert isinstance(err, CaptureError) and "truncated" in str(err)
    last = list(BlockReader(raw))[-1]
    assert (err.block, err.offset) == (last.block, last.offset) == (7, 520)
    with pytest.raises(CaptureError, match="block 7"):
        list(open_capture(raw[:-10]))  # without a handler the first problem raises


def test_garbage_in_the_middle_is_skipped(tmp_path):
    raw = _damage(tmp_path)
    blocks = list(BlockReader(raw))
    cut = blocks[2].offset
    bad = raw[:cut] + b"\xff" * 8 + raw[cut + 8:]  # the 3rd packet's header is destroyed
    problems = []
    recs = list(open_capture(bad, problems.append))
    assert len(recs) == 5  # one packet lost, the reader resynchronised on the next
    assert problems and "offset " + str(cut) in str(problems[0])


def test_not_pcapng_and_empty(tmp_path):
    problems = []
    assert list(open_capture(b"\x00\x01garbage" * 10, problems.append, format="pcapng")) == []
    assert "not a pcapng file" in str(problems[0]) and "offset 0" in str(problems[0])
    problems.clear()
    assert list(open_capture(b"", problems.append, format="pcapng")) == []
    assert "empty" in str(problems[0])


def test_foreign_link_type_skipped_with_report():
    body = struct.pack("<IIIII", 0, 0, 1, 4, 4) + b"abcd" + option(0, b"")
    epb = struct.pack("<II", 6, 12 + len(body)) + body + struct.pack("<I", 12 + len(body))
    raw = section_header() + interface_description("eth0", linktype=1) + epb
    problems = []
    assert list(open_capture(raw, problems.append)) == []
    assert "link type 1" in str(problems[0])


def _run(cmd):
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60)


@pytest.mark.skipif(shutil.which("capinfos") is None, reason="capinfos not installed (apt-get install tshark)")
def test_capinfos_accepts_our_file(tmp_path):
    path = tmp_path / "c.pcapng"
    _capture(path, n=4)
    r = _run(["capinfos", "-M", str(path)])
    assert r.returncode == 0, r.stderr
    assert "pcapng" in r.stdout
    assert "Number of packets:   16" in r.stdout or "Number of packets: 16" in " ".join(r.stdout.split())
    assert "nanoseconds" in r.stdout
    assert "Number of interfaces in file: 2" in r.stdout
    assert "fuse0" in r.stdout and "cuse1" in r.stdout


@pytest.mark.skipif(shutil.which("tshark") is None, reason="tshark not installed (apt-get install tshark)")
def test_tshark_reads_directions_timestamps_comments(tmp_path):
    path = tmp_path / "s.pcapng"
    _capture(path, n=2, conns=("fuse0",))
    r = _run(["tshark", "-r", str(path), "-T", "fields", "-e", "frame.packet_flags_direction",
              "-e", "frame.time_epoch", "-e", "frame.len", "-e", "frame.comment"])
    assert r.returncode == 0, r.stderr
    assert "rror" not in r.stderr and "appears to be damaged" not in r.stderr
    rows = [line.split("\t") for line in r.stdout.splitlines()]
    assert [int(row[0], 16) for row in rows] == [1, 2, 1, 2]
    assert rows[0][1].startswith("1700000000.123456789")
    assert [int(row[2]) for row in rows] == [40, 16, 41, 17]
    assert rows[3][3] == "reply 1"
