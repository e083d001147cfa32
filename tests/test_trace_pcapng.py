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


# ---------------------------------------------------------------------------------- resynchronising
def _big(tmp_path, n=200):
    path = tmp_path / "big.pcapng"
    _capture(path, n=n, conns=("c",))
    raw = path.read_bytes()
    return raw, list(BlockReader(raw))


def _read(raw, **kw):
    problems = []
    recs = list(open_capture(raw, problems.append, format="pcapng", **kw))
    return recs, [str(p) for p in problems], problems


@pytest.mark.parametrize("length", [0x7FFFFFF0, 0xFFFFFFFC, (64 << 20) + 4])
def test_a_huge_block_length_costs_one_block(tmp_path, length):
    """A corrupt length field used to end the decode ("capture cut mid-block") with megabytes left."""
    raw, pkts = _big(tmp_path)
    bad = pkts[3]
    damaged = raw[:bad.offset + 4] + struct.pack("<I", length) + raw[bad.offset + 8:]
    recs, msgs, problems = _read(damaged)
    assert len(recs) == len(pkts) - 1  # everything but the damaged packet
    assert [r.data for r in recs] == [p.data for p in pkts if p is not bad]
    (msg,) = msgs
    nxt = pkts[4].offset
    assert msg.startswith(f"block {bad.block}, offset {bad.offset}: ")
    assert f"skipped {nxt - bad.offset} bytes to the next valid block at offset {nxt}" in msg


def test_length_past_the_end_with_blocks_after_it(tmp_path):
    raw, pkts = _big(tmp_path, n=20)
    bad = pkts[5]
    damaged = raw[:bad.offset + 4] + struct.pack("<I", len(raw) + 4000) + raw[bad.offset + 8:]
    recs, msgs, _ = _read(damaged)
    assert len(recs) == len(pkts) - 1
    assert "a damaged length, since a valid block follows" in msgs[0] and f"offset {pkts[6].offset}" in msgs[0]


def test_every_skipped_region_is_reported_with_offsets(tmp_path):
    raw, pkts = _big(tmp_path, n=30)
    a, b = pkts[4].offset, pkts[20].offset
    damaged = raw[:a] + b"\xee" * 100 + raw[a:b] + b"\x01\x02\x03\x04" * 7 + raw[b:]
    recs, msgs, problems = _read(damaged)
    assert len(recs) == len(pkts)  # garbage between blocks loses nothing
    assert [p.offset for p in problems] == [a, b + 100]
    assert "skipped 100 bytes to the next valid block at offset" in msgs[0]
    assert "skipped 28 bytes" in msgs[1]


def test_garbage_to_the_end(tmp_path):
    raw, pkts = _big(tmp_path, n=5)
    recs, msgs, _ = _read(raw + b"\x06\x00\x00\x00" + b"\xab" * 50)
    assert len(recs) == len(pkts)
    assert msgs == [f"block {len(pkts) + 2}, offset {len(raw)}: block type 0x6 has impossible length 2880154539; "
                    "no valid block in the 54 bytes after it (to the end of the file)"]


def test_short_file_with_the_section_magic():
    """Used to say "first block type 0a0d0d0a, expected 0a0d0d0a"."""
    recs, msgs, _ = _read(b"\x0a\x0d\x0d\x0a\x1c\x00\x00\x00\x4d\x3c")
    assert recs == []
    assert msgs == ["block 0, offset 0: file of 10 bytes starts like a pcapng section header but is too short "
                    "for one (28 bytes at least)"]


@pytest.mark.parametrize("chunk", [5, 64, 1000, 1 << 20])
def test_reading_a_stream_in_chunks_equals_reading_bytes(tmp_path, monkeypatch, chunk):
    """The file reader keeps a window of CHUNK bytes: blocks and damage across window edges read the same."""
    from fusd_wire.trace import pcapng
    raw, pkts = _big(tmp_path, n=40)
    damaged = raw[:pkts[7].offset + 4] + b"\xff\xff\xff\x7f" + raw[pkts[7].offset + 8:pkts[30].offset] + \
        b"junk" * 9 + raw[pkts[30].offset:-5]
    want_recs, want_msgs, _ = _read(damaged)
    monkeypatch.setattr(pcapng, "CHUNK", chunk)
    got_recs, got_msgs, _ = _read(io.BufferedReader(io.BytesIO(damaged), 16))
    assert [(r.data, r.index, r.offset, r.timestamp_ns, r.direction) for r in got_recs] == \
        [(r.data, r.index, r.offset, r.timestamp_ns, r.direction) for r in want_recs]
    assert got_msgs == want_msgs and len(want_msgs) == 3


def test_cut_packets_are_incomplete_records(tmp_path):
    """A packet shorter than its original length is a record with ``missing`` (the decoder reports it)."""
    body = struct.pack("<IIIII", 0, 0, 1, 20, 120) + bytes(20) + struct.pack("<HHIHH", 2, 4, 1, 0, 0)
    epb = struct.pack("<II", 6, 12 + len(body)) + body + struct.pack("<I", 12 + len(body))
    raw = section_header() + interface_description("fuse0") + epb
    recs, msgs, _ = _read(raw)
    assert msgs == [] and recs[0].missing == 100 and recs[0].size == 120 and "snap length" in recs[0].why
