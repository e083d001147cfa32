"""The text of strace: one log line into a system call (name, arguments, result), cheaply.

strace prints (with ``-f``, ``-t``/``-tt``/``-ttt``/``-r``, ``-y``, ``-x``/``-xx``)::

    4100  1700000000.000010 read(5, "\\x28\\x00...", 1052672) = 40
    [pid  4101] writev(5</dev/fuse>, [{iov_base="\\x10...", iov_len=16}], 1) = 16
    4100  read(5,  <unfinished ...>
    4100  <... read resumed>"\\x28...", 1052672) = 40
    4100  close(3)              = 0
    4100  read(5, 0x7f0000100000, 1052672) = -1 ENODEV (No such device)

A FUSE daemon's log is mostly lines of hex strings megabytes long, so nothing here
runs a regular expression over a whole line or copies it more than it must: the
result is found from the end (``rfind(" = ")``), strings by their quotes, and
``-xx`` hex is turned into bytes by ``binascii`` in one pass.
"""

from __future__ import annotations

import binascii
import codecs
import re
import warnings
from typing import List, Optional, Tuple

_PREFIX = re.compile(rb"(?:\[pid +(\d+)\] +|(\d+) +)?(?:(\d+(?:[:.]\d+)+|\d{9,}) +)?")
_UNFINISHED = b" <unfinished ...>"
_DQ = 34  # '"'
_BS = 92  # '\\'


class Syntax(ValueError):
    """A line (or a string in it) strace cannot have printed this way."""


def ts_ns(text: bytes) -> Tuple[int, bool]:
    """(nanoseconds, is_absolute) of a strace timestamp: 12:34:56[.ffffff], 1700000000.123456, or -r 0.000123.

    Raises ``Syntax`` for anything else that merely looks like one.
    """
    dot = text.find(b".")
    if b":" not in text:
        if dot < 0:
            whole = int(text)
            return whole * 1_000_000_000, whole >= 100_000_000
        frac = text[dot + 1:dot + 10]
        if b"." in text[dot + 1:] or not frac:
            raise Syntax(f"not a timestamp: {text[:40]!r}")
        whole = int(text[:dot])
        return whole * 1_000_000_000 + int(frac) * _SCALE[len(frac)], whole >= 100_000_000  # small: -r deltas
    hms = (text[:dot] if dot >= 0 else text).split(b":")
    frac = text[dot + 1:dot + 10] if dot >= 0 else b"0"
    if len(hms) != 3 or not frac.isdigit() or b"." in text[dot + 1:]:
        raise Syntax(f"not a timestamp: {text[:40]!r}")
    h, m, sec = (int(x) for x in hms)
    return ((h * 60 + m) * 60 + sec) * 1_000_000_000 + int(frac) * _SCALE[len(frac)], True


_SCALE = [10 ** (9 - i) for i in range(10)]


def unescape(s: bytes) -> bytes:
    """The bytes of a strace string literal body (``-xx`` hex, ``-x``, or default C escapes).

    Raises ``Syntax`` for an escape strace never prints (``\\x`` without two hex digits, ...).
    """
    n = len(s)
    if not n & 3 and s.count(b"\\x") * 4 == n:  # every byte printed as \xHH (-xx): C speed
        hexed = s.translate(None, b"\\x")
        if len(hexed) * 2 == n:  # so the only backslashes and x's were the \x's
            try:
                return binascii.a2b_hex(hexed)
            except (binascii.Error, ValueError):
                pass
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", DeprecationWarning)  # "\\q": an escape strace never prints
            return codecs.escape_decode(s)[0]  # type: ignore[attr-defined, no-any-return]
    except (ValueError, UnicodeDecodeError, DeprecationWarning) as exc:
        raise Syntax(f"bad escape in a string: {exc}") from None


def string_end(line: bytes, q: int) -> int:
    """Index of the quote closing the string whose opening quote is at ``q`` (-1: none)."""
    find = line.find
    pos = q + 1
    while True:
        e = find(b'"', pos)
        if e < 0:
            return -1
        k = e - 1
        while line[k] == _BS:
            k -= 1
        if (e - 1 - k) % 2 == 0:  # an even run of backslashes: the quote is not escaped
            return e
        pos = e + 1


def string_at(line: bytes, q: int) -> Tuple[bytes, bool, int]:
    """(bytes, cut by -s, index after) of the string literal opening at ``q``."""
    e = string_end(line, q)
    if e < 0:
        raise Syntax("a string without its closing quote (line cut off?)")
    cut = line.startswith(b"...", e + 1)
    return unescape(line[q + 1:e]), cut, e + 4 if cut else e + 1


def iov_strings(line: bytes, start: int, end: int) -> Tuple[bytes, bool, int]:
    """(bytes, cut, sum of iov_len) of an iovec array between ``start`` and ``end``.

    The bytes are the iovecs' strings joined, up to and including the first one strace
    cut (``-s``): what follows a cut is not contiguous with it.
    """
    out: List[bytes] = []
    cut = False
    find = line.find
    pos = start
    total = 0
    while True:
        q = find(b'iov_base=', pos, end)
        if q < 0:
            break
        if line[q + 9] != _DQ:  # iov_base=0x7f...: strace could not read it
            cut = True
            break
        data, c, pos = string_at(line, q + 9)
        if not cut:
            out.append(data)
        cut = cut or c
        L = find(b"iov_len=", pos, end)
        if L > 0:
            n, pos = int_at(line, L + 8)
            total += n
    # strace shows "..." in place of elements beyond its limit: "}, ...]"
    close = line.rfind(b"]", start, end)
    if close > 0 and line[close - 3:close] == b"...":
        cut = True
    return b"".join(out) if len(out) != 1 else out[0], cut, total


def int_at(line: bytes, pos: int) -> Tuple[int, int]:
    """(value, index after) of a decimal integer at ``pos`` (``-`` allowed)."""
    m = _INT(line, pos)
    if m is None:
        raise Syntax("a number was expected")
    return int(m.group()), m.end()


_INT = re.compile(rb"-?\d+").match


def decoration_end(line: bytes, pos: int) -> int:
    """For ``-y`` decorated fds (``5</dev/fuse>``): the index after ``<...>`` starting at ``pos``."""
    e = line.find(b">", pos)
    if e < 0:
        raise Syntax("an fd decoration without its closing '>'")
    # a path in a decoration may itself contain '>' only when strace did not escape it; take
    # the shortest, which is right for every -xx log (all bytes are escaped there)
    return e + 1


def fd_at(line: bytes, pos: int) -> Tuple[int, Optional[bytes], int]:
    """(fd, -y path or None, index after) of an fd argument at ``pos``."""
    fd, p = int_at(line, pos)
    if p < len(line) and line[p] == 60:  # '<'
        e = decoration_end(line, p)
        return fd, unescape(line[p + 1:e - 1]), e
    return fd, None, p


def split_args(args: bytes) -> List[bytes]:
    """Top-level comma-separated arguments (strings, brackets, braces and -y decorations kept whole)."""
    if b'"' not in args and b"<" not in args and b"[" not in args and b"{" not in args:
        return args.split(b", ")
    out: List[bytes] = []
    depth = 0
    start = 0
    i = 0
    n = len(args)
    while i < n:
        c = args[i]
        if c == _DQ:
            e = string_end(args, i)
            if e < 0:
                raise Syntax("a string without its closing quote")
            i = e + 1
            continue
        if c in b"[{<(":
            depth += 1
        elif c in b"]}>)":
            depth -= 1
        elif c == 44 and depth == 0:  # ','
            out.append(args[start:i].strip())
            start = i + 1
        i += 1
    out.append(args[start:].strip())
    return out


def prefix(line: bytes) -> Tuple[bytes, Optional[bytes], int]:
    """(pid, timestamp text or None, index of the rest) of a line's ``-f`` and ``-t`` prefix."""
    m = _PREFIX.match(line)
    assert m is not None  # every part of _PREFIX is optional: it always matches
    return m.group(1) or m.group(2) or b"", m.group(3), m.end()


__all__ = ["Syntax", "decoration_end", "fd_at", "int_at", "iov_strings", "prefix", "split_args", "string_at",
           "string_end", "ts_ns", "unescape"]
