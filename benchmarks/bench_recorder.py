"""What recording and live debug cost per message (docs/traces.md has the numbers).

* ``record-held``: ``Recorder.record()`` of an 80-byte READ request, the file written only
  when 64 KiB are buffered (``flush_interval=None``, the old behaviour);
* ``record-timed``: the same with the background flush every 0.2 s (the default: a
  capture is readable while it is recorded).  ``record()`` itself does the same work;
  the difference is the flusher taking the lock and writing, amortised;
* ``debug``: ``DebugSink.record()`` of the same request and its 4 KiB reply: decoded
  and formatted (``decode``'s text), handed to a no-op ``emit`` -- the price of
  ``Server(debug=True)`` per message, paid only when debugging.

    python -m pytest benchmarks/bench_recorder.py --benchmark-enable --benchmark-only

Under the project's default ``--benchmark-disable`` each runs once, as a plain test.
"""

from __future__ import annotations

import pytest

from fusd_wire import Codec
from fusd_wire.trace import INBOUND, OUTBOUND, DebugSink, Recorder

CODEC = Codec(45)
REQUEST = CODEC.encode_request(15, {"fuse_read_in": {"fh": 7, "size": 4096, "flags": 0o100002}}, unique=10, nodeid=2,
                               pid=4242)
REPLY = CODEC.encode_reply(15, {"data": bytes(4096)}, unique=10)


@pytest.mark.parametrize("flush", [None, 0.2], ids=["record-held", "record-timed"])
def test_recorder_record(benchmark, tmp_path, flush):
    benchmark.group = "recorder"
    rec = Recorder(tmp_path / "bench.pcapng", flush_interval=flush)
    conn = rec.connection("fuse:3")
    record = rec.record

    def many():
        for _ in range(1000):
            record(conn, INBOUND, REQUEST)

    benchmark(many)
    rec.close()
    assert (tmp_path / "bench.pcapng").stat().st_size > 1000 * len(REQUEST)


def test_debug_sink_request_and_reply(benchmark):
    benchmark.group = "recorder"
    lines = []
    sink = DebugSink(lines.append)
    conn = sink.connection("fuse:3")

    def pair():
        lines.clear()
        sink.record(conn, INBOUND, REQUEST)
        sink.record(conn, OUTBOUND, [REPLY[:16], REPLY[16:]])

    benchmark(pair)
    assert lines[0].startswith("unique: 10, opcode: READ (15)") and "reply to READ" in lines[1]
