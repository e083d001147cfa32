"""Seed captures, a mutator and the oracle for fuzzing the trace readers (pcapng and strace).

Used by ``tests/test_fuzz_traces.py`` (a bounded run on every test run) and by
``tools/fuzz_traces.py`` (the long run, docs/fuzzing.md).

The promise checked: whatever the input, ``open_capture`` + ``Decoder`` + ``finish()``
+ both renderings never raise; every problem reaches ``on_problem`` as a
``CaptureError`` that says where (block or line number and a byte offset inside the
file); nothing runs away (each input's work is bounded by its size).
"""

from __future__ import annotations

import io
import os
import random
import struct
import sys
from typing import Callable, List, Tuple

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if os.path.join(ROOT, "tools") not in sys.path:
    sys.path.insert(0, os.path.join(ROOT, "tools"))

from gen_traces import messages, strace_lines, write_pcapng  # noqa: E402

from fusd_wire import Codec  # noqa: E402
from fusd_wire import constants as C  # noqa: E402
from fusd_wire.trace import CaptureError, Decoder, open_capture  # noqa: E402
from fusd_wire.trace.pcapng import (  # noqa: E402
    OUTBOUND,
    enhanced_packet_parts,
    interface_description,
    section_header,
)
from fusd_wire.trace.render import json_line, text_lines  # noqa: E402

Seed = Tuple[str, bytes]  # (format, bytes)


def _pcapng(count: int, payload: int) -> bytes:
    buf = io.BytesIO()
    write_pcapng(buf, count, payload)
    return buf.getvalue()


def _odd_pcapng() -> bytes:
    """Two sections (the second big-endian), a comment, a microsecond interface, an SPB, a foreign block."""
    out = [section_header(), interface_description("fuse:0", "fuse minor=45 flags=0x40000000")]
    for i, (direction, raw, _) in enumerate(messages(12, 64)):
        head, tail = enhanced_packet_parts(0, direction, 1_700_000_000_000_000_000 + i, len(raw),
                                           comment="c" if i % 5 == 0 else None)
        out += [head, raw, tail]
    out.append(struct.pack("<III", 0x5, 16, 0) + struct.pack("<I", 16))  # an interface statistics stub
    body = struct.pack(">IHHq", 0x1A2B3C4D, 1, 0, -1)
    out.append(struct.pack(">II", 0x0A0D0D0A, 12 + len(body)) + body + struct.pack(">I", 12 + len(body)))
    opts = struct.pack(">HH", 9, 1) + b"\x06\0\0\0" + struct.pack(">HH", 0, 0)
    idb = struct.pack(">HHI", 147, 0, 0) + opts
    out.append(struct.pack(">II", 1, 12 + len(idb)) + idb + struct.pack(">I", 12 + len(idb)))
    raw = Codec(45, strict=False).encode_reply(C.fuse_opcode.FUSE_GETATTR, error=-2, unique=4)
    spb = struct.pack(">I", len(raw)) + raw
    out.append(struct.pack(">II", 3, 12 + len(spb)) + spb + struct.pack(">I", 12 + len(spb)))
    epb = struct.pack(">IIIII", 0, 0, 5, len(raw), len(raw)) + raw + struct.pack(">HHI", 2, 4, OUTBOUND) + \
        struct.pack(">HH", 0, 0)
    out.append(struct.pack(">II", 6, 12 + len(epb)) + epb + struct.pack(">I", 12 + len(epb)))
    return b"".join(out)


def _strace(count: int, **kw) -> bytes:
    return ("\n".join(strace_lines(count, 64, **kw)) + "\n").encode()


def _strace_mix() -> bytes:
    """The shapes test_trace_strace_input.py covers: pipes, splice reads, dup, fork, -y, escapes."""
    k = Codec(45, strict=False)
    O = C.fuse_opcode

    def hx(b: bytes) -> str:
        return "".join(f"\\x{c:02x}" for c in b)

    init = k.encode_request(O.FUSE_INIT, {"fuse_init_in": {"major": 7, "minor": 45}}, unique=2)
    init_r = k.encode_reply(O.FUSE_INIT, {"fuse_init_out": {"major": 7, "minor": 45, "max_write": 4096}}, unique=2)
    rd = k.encode_request(O.FUSE_READ, {"fuse_read_in": {"size": 300}}, unique=4, nodeid=2)
    rep = k.encode_reply(O.FUSE_READ, {"data": b"x" * 300}, unique=4)
    wr = k.encode_request(O.FUSE_WRITE, {"fuse_write_in": {"size": 200}, "data": b"w" * 200}, unique=6, nodeid=2)
    wr_r = k.encode_reply(O.FUSE_WRITE, {"fuse_write_out": {"size": 200}}, unique=6)
    lines = [
        f'openat(AT_FDCWD, "{hx(b"/dev/fuse")}", O_RDWR) = 5',
        'mount("x", "/m", "fuse", 0, "fd=5,rootmode=40000") = 0',
        f'read(5, "{hx(init)}", 135168) = {len(init)}',
        f'writev(5, [{{iov_base="{hx(init_r[:16])}", iov_len=16}}, {{iov_base="{hx(init_r[16:])}", '
        f'iov_len={len(init_r) - 16}}}], 2) = {len(init_r)}',
        "pipe2([8, 9], O_NONBLOCK) = 0",
        f"read(5, \"{''.join(f'{chr(92)}{c:o}' for c in rd)}\", 135168) = {len(rd)}",
        f'vmsplice(9, [{{iov_base="{hx(rep[:16])}", iov_len=16}}], 1, SPLICE_F_NONBLOCK) = 16',
        f'write(9, "{hx(rep[16:])}", 300) = 300',
        "pipe2([16, 17], 0) = 0",
        "tee(8, 17, 10, 0) = 10",
        f"splice(8, NULL, 5<{hx(b'/dev/fuse')}>, NULL, {len(rep)}, SPLICE_F_MOVE) = {len(rep)}",
        f"splice(5, NULL, 9, NULL, 135168, 0) = {len(wr)}",
        f'read(8, "{hx(wr[:80])}", 80) = 80',
        "splice(8, NULL, 10, [0], 200, 0) = 200",
        "dup2(5, 12) = 12",
        f'writev(12, [{{iov_base="{hx(wr_r)}", iov_len={len(wr_r)}}}], 1) = {len(wr_r)}',
        "clone(child_stack=NULL, flags=SIGCHLD) = 800",
        "[pid   800] close(5) = 0",
        "ioctl(13, FUSE_DEV_IOC_CLONE, 0x7ffc) = 0",
        "fcntl(5, F_DUPFD_CLOEXEC, 0) = 14",
        "read(5,  <unfinished ...>",
        "[pid   801] read(14, 0x1000, 135168) = -1 EINTR (Interrupted system call)",
        "<... read resumed>0x2000, 135168) = -1 ENODEV (No such device)",
        "close(5)                  = 0",
        "+++ exited with 0 +++",
    ]
    return ("\n".join(f"700  1700000000.{i:06d} {line}" if not line.startswith("[pid") else line
                      for i, line in enumerate(lines)) + "\n").encode()


def seeds() -> List[Seed]:
    """Small valid captures of every shape the readers know."""
    return [
        ("pcapng", _pcapng(40, 64)),
        ("pcapng", _pcapng(6, 3000)),
        ("pcapng", _odd_pcapng()),
        ("strace", _strace(40)),
        ("strace", _strace(30, splice=True)),
        ("strace", _strace(30, splice=True, splice_body="file", threads=2)),
        ("strace", _strace_mix()),
    ]


# ---------------------------------------------------------------------------------- mutations
INTERESTING = (0, 1, 3, 4, 8, 11, 12, 16, 28, 32, 0x7F, 0xFFFF, 0x10000, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFC,
               0xFFFFFFFF)


def _bytes_mutation(rng: random.Random, data: bytearray, other: bytes) -> None:
    n = len(data)
    op = rng.randrange(9)
    if n == 0:
        data.extend(os.urandom(rng.randrange(1, 64)))
        return
    if op == 0:  # flip bits
        for _ in range(rng.randrange(1, 8)):
            data[rng.randrange(n)] ^= 1 << rng.randrange(8)
    elif op == 1:  # an aligned u32 (block types, lengths, caplen, interface ids, option headers)
        pos = rng.randrange(0, max(1, n - 4)) & ~3
        data[pos:pos + 4] = struct.pack("<I", rng.choice(INTERESTING))
    elif op == 2:  # truncate
        del data[rng.randrange(n):]
    elif op == 3:  # insert random bytes
        pos = rng.randrange(n)
        data[pos:pos] = os.urandom(rng.randrange(1, 40))
    elif op == 4:  # delete a range
        a = rng.randrange(n)
        del data[a:a + rng.randrange(1, 64)]
    elif op == 5:  # duplicate a range
        a = rng.randrange(n)
        data[a:a] = data[a:a + rng.randrange(1, 200)]
    elif op == 6:  # splice another input in
        a, b = rng.randrange(n), rng.randrange(len(other) or 1)
        data[a:] = other[b:b + rng.randrange(1, 4000)]
    elif op == 7:  # overwrite with random bytes
        a = rng.randrange(n)
        k = rng.randrange(1, 32)
        data[a:a + k] = os.urandom(k)
    else:  # set a byte to something interesting
        data[rng.randrange(n)] = rng.choice((0, 0x0A, 0x22, 0x5C, 0x3C, 0x3E, 0x28, 0x29, 0x2C, 0x3D, 0xFF))


_TOKENS = [b"\\x", b"\\x4", b"\\xZZ", b'"', b"...", b"<", b">", b"[", b"]", b"{", b"}", b" = ", b" = -1 ENODEV",
           b" <unfinished ...>", b"<... read resumed>", b"<... splice resumed>", b"(", b")", b", ", b"\\",
           b"999999999999999999999", b"-5", b"0x7fff", b"?", b"+++ exited with 0 +++", b"pipe:[7]",
           b"\\x2f\\x64\\x65\\x76\\x2f\\x66\\x75\\x73\\x65", b"splice(", b"vmsplice(", b"read(", b"writev(",
           b"close(", b"dup2(", b"fcntl(", b"F_DUPFD", b"clone(", b"CLONE_FILES", b"iov_base=", b"iov_len=",
           b"[pid 12] ", b"12:34:56.5 ", b"0.000001 "]


def _line_mutation(rng: random.Random, data: bytearray, other: bytes) -> None:
    lines = bytes(data).split(b"\n")
    n = len(lines)
    op = rng.randrange(8)
    i = rng.randrange(n)
    if op == 0:  # delete lines
        del lines[i:i + rng.randrange(1, 4)]
    elif op == 1:  # duplicate a line
        lines.insert(rng.randrange(n), lines[i])
    elif op == 2:  # swap two lines
        j = rng.randrange(n)
        lines[i], lines[j] = lines[j], lines[i]
    elif op == 3:  # cut a line short
        lines[i] = lines[i][:rng.randrange(len(lines[i]) + 1)]
    elif op == 4:  # insert a token somewhere in a line
        pos = rng.randrange(len(lines[i]) + 1)
        lines[i] = lines[i][:pos] + rng.choice(_TOKENS) + lines[i][pos:]
    elif op == 5:  # change a number
        line = lines[i]
        digits = [k for k, c in enumerate(line) if 48 <= c <= 57]
        if digits:
            k = rng.choice(digits)
            lines[i] = line[:k] + str(rng.choice(INTERESTING)).encode() + line[k + 1:]
    elif op == 6:  # a line from another log
        other_lines = other.split(b"\n")
        lines.insert(i, rng.choice(other_lines))
    else:  # a byte-level change inside one line
        b = bytearray(lines[i])
        _bytes_mutation(rng, b, other)
        lines[i] = bytes(b).replace(b"\n", b" ")
    data[:] = b"\n".join(lines)


def mutate(rng: random.Random, fmt: str, data: bytes, other: bytes) -> bytes:
    """One fuzz input: 1-4 stacked mutations of a seed (line-level ones for strace logs)."""
    out = bytearray(data)
    for _ in range(rng.choice((1, 1, 1, 2, 3, 4))):
        if fmt == "strace" and rng.random() < 0.7:
            _line_mutation(rng, out, other)
        else:
            _bytes_mutation(rng, out, other)
    return bytes(out)


# ---------------------------------------------------------------------------------- the oracle
class Finding(Exception):
    """A broken promise: an exception escaped, or a problem did not say where."""


def check(fmt: str, data: bytes, *, forced: bool = True) -> Tuple[int, int]:
    """Decode ``data`` with its format forced, and as detected if that differs; returns (events, problems).

    Raises ``Finding`` (with the original exception chained) if a promise is broken.
    """
    events = problems = 0
    detected = open_capture(data, format=None).format
    modes = (fmt, None) if forced and detected != fmt else (None,) if not forced else (fmt,)
    for format_ in modes:
        got: List[CaptureError] = []

        def report(err: CaptureError, got: List[CaptureError] = got) -> None:
            if not isinstance(err, CaptureError):
                raise Finding(f"on_problem got {type(err).__name__}: {err!r}")
            if err.block is None or err.offset is None or not 0 <= err.offset <= len(data) + 1:
                raise Finding(f"problem without a location inside the file: {err!s}")
            got.append(err)

        try:
            cap = open_capture(data, report, format=format_)
            dec = Decoder(cap, report)
            for ev in dec:
                events += 1
                text_lines(ev, limit=16)
                json_line(ev)
            dec.finish()
            stats = Decoder(open_capture(data, report, format=format_), report, bodies=False)
            for _ in stats:
                pass
            stats.finish()
        except Finding:
            raise
        except Exception as exc:  # noqa: BLE001 - any escape is the finding
            raise Finding(f"{type(exc).__name__}: {exc}") from exc
        problems += len(got)
    return events, problems


Checker = Callable[[str, bytes], Tuple[int, int]]
__all__ = ["Finding", "check", "mutate", "seeds"]
