#!/usr/bin/env python3
"""Generate big FUSE captures (pcapng, strace logs) for the trace benchmarks and memory checks.

Captures this size are never committed: the benchmarks (``benchmarks/bench_traces.py``)
and the memory measurements in docs/traces.md make them on the fly.

The traffic is one FUSE session at 7.45: INIT, then a repeating cycle of twelve
exchanges a file system sees all the time, each request with its reply:
LOOKUP (entry), GETATTR (attr), OPEN, READ (``--payload`` bytes answered), WRITE
(``--payload`` bytes), READDIR (3 entries), FLUSH, RELEASE, LOOKUP answered ENOENT,
GETXATTR answered ENODATA, STATFS, FORGET (no reply), and a NOTIFY_POLL every
cycle.  Uniques increase by 2 as the kernel's do; timestamps advance 10 µs per
message.  Message templates are encoded once with the codec; each copy only gets
its unique patched, so generating is cheap next to decoding.

strace logs look like ``strace -f -ttt -xx -s 2097152`` of a libfuse daemon: each
request a ``read(FD, "...", 1052672) = N`` line, each reply a two-iovec
``writev``.  ``--splice`` makes every READ reply go the way libfuse's
``fuse_reply_data()`` and fuse-overlayfs send it: ``vmsplice`` of the header into
a pipe, the payload ``write``n into it (``--splice-body file``: spliced from a file,
so the body is not in the log), then ``splice`` from the pipe to /dev/fuse.
``--threads 2`` alternates two thread ids and splits every other read into
``<unfinished ...>`` / ``<... read resumed>`` lines.

    python3 tools/gen_traces.py pcapng big.pcapng --messages 10000000
    python3 tools/gen_traces.py strace big.strace --size 1G --splice
"""

from __future__ import annotations

import argparse
import os
import struct
import sys
from typing import IO, Iterator, List, Optional, Tuple

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from fusd_wire import Codec  # noqa: E402
from fusd_wire import constants as C  # noqa: E402
from fusd_wire.opcodes import OPS  # noqa: E402
from fusd_wire.trace.pcapng import (  # noqa: E402
    INBOUND,
    OUTBOUND,
    enhanced_packet_parts,
    interface_description,
    section_header,
)

O = C.fuse_opcode
T0 = 1_700_000_000_000_000_000
STEP_NS = 10_000
FUSE_FD, PIPE_R, PIPE_W, FILE_FD = 5, 7, 8, 9
_UNIQUE = struct.Struct("<Q")

#: one exchange template: (request bytes, reply bytes or None, reply goes by splice)
Template = Tuple[bytes, Optional[bytes], bool]


def templates(payload: int = 256) -> Tuple[bytes, bytes, List[Template], bytes]:
    """(INIT request, INIT reply, the cycle's exchanges, one NOTIFY_POLL), encoded with the codec."""
    k = Codec(45, C.InitFlags.FUSE_INIT_EXT, strict=False)
    init = k.encode_request(O.FUSE_INIT, {"fuse_init_in": {"major": 7, "minor": 45, "max_readahead": 131072,
                                                           "flags": C.InitFlags.FUSE_INIT_EXT}}, unique=2)
    init_reply = k.encode_reply(O.FUSE_INIT, {"fuse_init_out": {"major": 7, "minor": 45, "max_write": 1048576,
                                                                "max_pages": 256, "max_readahead": 131072,
                                                                "flags": C.InitFlags.FUSE_MAX_PAGES}}, unique=2)
    attr = {"ino": 2, "mode": 0o100644, "nlink": 1, "size": 4096, "blksize": 4096}
    data = bytes(range(256)) * (payload // 256) + bytes(range(payload % 256))
    dirents = [{"ino": 1, "off": 1, "type": 4, "name": b"."}, {"ino": 1, "off": 2, "type": 4, "name": b".."},
               {"ino": 2, "off": 3, "type": 8, "name": b"file.txt"}]

    def ex(op, body, reply=None, error=0, nodeid=2, splice=False) -> Template:
        req = k.encode_request(op, body, unique=1, nodeid=nodeid, uid=1000, gid=1000, pid=4242)
        if reply is None and not error and not OPS_HAS_REPLY(op):
            return req, None, False
        return req, k.encode_reply(op, reply, unique=1, error=error), splice

    cycle = [
        ex(O.FUSE_LOOKUP, {"name": b"file.txt"}, {"fuse_entry_out": {"nodeid": 2, "attr": attr}}, nodeid=1),
        ex(O.FUSE_GETATTR, {"fuse_getattr_in": {}}, {"fuse_attr_out": {"attr_valid": 1, "attr": attr}}),
        ex(O.FUSE_OPEN, {"fuse_open_in": {"flags": os.O_RDWR}}, {"fuse_open_out": {"fh": 7}}),
        ex(O.FUSE_READ, {"fuse_read_in": {"fh": 7, "size": payload}}, {"data": data}, splice=True),
        ex(O.FUSE_WRITE, {"fuse_write_in": {"fh": 7, "size": payload}, "data": data},
           {"fuse_write_out": {"size": payload}}),
        ex(O.FUSE_READDIR, {"fuse_read_in": {"fh": 8, "size": 4096}}, {"dirents": dirents}, nodeid=1),
        ex(O.FUSE_FLUSH, {"fuse_flush_in": {"fh": 7}}, {}),
        ex(O.FUSE_RELEASE, {"fuse_release_in": {"fh": 7}}, {}),
        ex(O.FUSE_LOOKUP, {"name": b"missing"}, error=-2, nodeid=1),
        ex(O.FUSE_GETXATTR, {"fuse_getxattr_in": {"size": 0}, "name": b"user.x"}, error=-61),
        ex(O.FUSE_STATFS, {}, {"fuse_statfs_out": {"st": {"blocks": 1000, "bsize": 4096}}}),
        ex(O.FUSE_FORGET, {"fuse_forget_in": {"nlookup": 1}}),
    ]
    poll = k.encode_notify(C.fuse_notify_code.FUSE_NOTIFY_POLL, {"fuse_notify_poll_wakeup_out": {"kh": 9}})
    return init, init_reply, cycle, poll


def OPS_HAS_REPLY(op: int) -> bool:
    spec = OPS.get(op)
    return spec is not None and spec.has_reply


def messages(count: int, payload: int = 256) -> Iterator[Tuple[int, bytes, bool]]:
    """(direction, bytes, reply goes by splice) for ``count`` messages of the session."""
    init, init_reply, cycle, poll = templates(payload)
    yield INBOUND, init, False
    yield OUTBOUND, init_reply, False
    n = 2
    unique = 2
    while True:
        for req, rep, splice in cycle:
            unique += 2
            b = bytearray(req)
            _UNIQUE.pack_into(b, 8, unique)
            if n >= count:
                return
            yield INBOUND, bytes(b), False
            n += 1
            if rep is not None:
                r = bytearray(rep)
                _UNIQUE.pack_into(r, 8, unique)
                if n >= count:
                    return
                yield OUTBOUND, bytes(r), splice
                n += 1
        if n >= count:
            return
        yield OUTBOUND, poll, False
        n += 1


def write_pcapng(out: IO[bytes], count: int, payload: int = 256) -> int:
    """Write a pcapng of ``count`` messages; returns the bytes written."""
    chunks = [section_header(), interface_description("fuse:0", "fuse minor=45")]
    size = 0
    ts = T0
    for direction, raw, _ in messages(count, payload):
        ts += STEP_NS
        head, tail = enhanced_packet_parts(0, direction, ts, len(raw))
        chunks += (head, raw, tail)
        if len(chunks) > 3000:
            size += out.write(b"".join(chunks))
            chunks = []
    size += out.write(b"".join(chunks))
    return size


def hexs(b: bytes) -> str:
    """strace -xx form of bytes: \\x00\\x01..."""
    return ("\\x" + b.hex(":")).replace(":", "\\x") if b else ""


def strace_lines(count: int, payload: int = 256, *, splice: bool = False, splice_body: str = "write",
                 threads: int = 1) -> Iterator[str]:
    """The lines of an strace -f -ttt -xx log of a daemon that lived through ``count`` messages."""
    pids = [4100 + i for i in range(max(1, threads))]
    ts = T0
    i = 0

    def stamp() -> str:
        return f"{ts // 1_000_000_000}.{ts // 1000 % 1_000_000:06d}"

    yield f'{pids[0]}  {stamp()} openat(AT_FDCWD, "{hexs(b"/dev/fuse")}", O_RDWR|O_CLOEXEC) = {FUSE_FD}'
    if splice:
        yield f"{pids[0]}  {stamp()} pipe2([{PIPE_R}, {PIPE_W}], O_CLOEXEC|O_NONBLOCK) = 0"
        if splice_body == "file":
            yield f'{pids[0]}  {stamp()} openat(AT_FDCWD, "{hexs(b"/srv/data")}", O_RDONLY) = {FILE_FD}'
    for direction, raw, spliced in messages(count, payload):
        ts += STEP_NS
        pid = pids[i % len(pids)]
        i += 1
        if direction == INBOUND:
            if threads > 1 and i % 4 == 1:
                other = pids[(i + 1) % len(pids)]
                yield f"{pid}  {stamp()} read({FUSE_FD},  <unfinished ...>"
                yield f"{other}  {stamp()} futex(0x7f0000001000, FUTEX_WAKE_PRIVATE, 1) = 0"
                yield f'{pid}  {stamp()} <... read resumed>"{hexs(raw)}", 1052672) = {len(raw)}'
            else:
                yield f'{pid}  {stamp()} read({FUSE_FD}, "{hexs(raw)}", 1052672) = {len(raw)}'
        elif spliced and splice:
            body = raw[16:]
            yield (f'{pid}  {stamp()} vmsplice({PIPE_W}, [{{iov_base="{hexs(raw[:16])}", iov_len=16}}], 1, '
                   "SPLICE_F_NONBLOCK) = 16")
            if splice_body == "file":
                yield f"{pid}  {stamp()} splice({FILE_FD}, [0], {PIPE_W}, NULL, {len(body)}, " \
                      f"SPLICE_F_NONBLOCK) = {len(body)}"
            else:
                yield f'{pid}  {stamp()} write({PIPE_W}, "{hexs(body)}", {len(body)}) = {len(body)}'
            yield f"{pid}  {stamp()} splice({PIPE_R}, NULL, {FUSE_FD}, NULL, {len(raw)}, 0) = {len(raw)}"
        else:
            parts = [raw[:16]] + ([raw[16:]] if len(raw) > 16 else [])
            iov = ", ".join(f'{{iov_base="{hexs(p)}", iov_len={len(p)}}}' for p in parts)
            yield f"{pid}  {stamp()} writev({FUSE_FD}, [{iov}], {len(parts)}) = {len(raw)}"
    ts += STEP_NS
    yield f"{pids[0]}  {stamp()} read({FUSE_FD}, 0x7f0000100000, 1052672) = -1 ENODEV (No such device)"
    yield f"{pids[0]}  {stamp()} close({FUSE_FD}) = 0"
    yield f"{pids[0]}  {stamp()} +++ exited with 0 +++"


def write_strace(out: IO[bytes], count: int, payload: int = 256, **kw) -> int:
    """Write an strace log of ``count`` messages; returns the bytes written."""
    size = 0
    chunk: List[str] = []
    for line in strace_lines(count, payload, **kw):
        chunk.append(line)
        if len(chunk) >= 2000:
            size += out.write(("\n".join(chunk) + "\n").encode())
            chunk = []
    if chunk:
        size += out.write(("\n".join(chunk) + "\n").encode())
    return size


def _size(text: str) -> int:
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    text = text.strip().upper()
    return int(float(text[:-1]) * units[text[-1]]) if text[-1:] in units else int(text)


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                epilog="example: python3 tools/gen_traces.py strace big.strace --size 1G --splice")
    p.add_argument("format", choices=("pcapng", "strace"))
    p.add_argument("output", help="file to write")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--messages", type=int, help="number of messages")
    g.add_argument("--size", help="approximate file size instead (e.g. 500M, 1G)")
    p.add_argument("--payload", type=int, default=256, help="READ/WRITE payload bytes (default 256)")
    p.add_argument("--splice", action="store_true", help="strace: READ replies through a pipe (libfuse splice)")
    p.add_argument("--splice-body", choices=("write", "file"), default="write",
                   help="strace --splice: the payload written into the pipe (in the log) or spliced from a file")
    p.add_argument("--threads", type=int, default=1, help="strace: thread ids taking turns (2: unfinished reads)")
    args = p.parse_args(argv)
    count = args.messages
    if count is None:
        target = _size(args.size or "100M")
        probe = 2000
        import io
        buf = io.BytesIO()
        if args.format == "pcapng":
            write_pcapng(buf, probe, args.payload)
        else:
            write_strace(buf, probe, args.payload, splice=args.splice, splice_body=args.splice_body,
                         threads=args.threads)
        count = max(2, int(target / (len(buf.getvalue()) / probe)))
    with open(args.output, "wb") as f:
        if args.format == "pcapng":
            size = write_pcapng(f, count, args.payload)
        else:
            size = write_strace(f, count, args.payload, splice=args.splice, splice_body=args.splice_body,
                                threads=args.threads)
    print(f"{args.output}: {count} messages, {size} bytes", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
