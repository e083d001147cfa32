"""Text (libfuse ``-d``-like) and JSON-lines forms of decoded events.

Text, per message, in capture order::

    unique: 12, opcode: READ (15), nodeid: 2, insize: 80, pid: 4242
       fuse_read_in: fh=3 offset=0 size=4096 read_flags=0 lock_owner=0 flags=0x8000
       unique: 12, success, outsize: 21, latency: 35.2 us
          data: "hello world\\n"

The header lines are libfuse's own format (so a libfuse ``-d`` log and our decode of the
same run can be compared line by line); the indented field lines are ours.

JSON: one object per message; bytes are lowercase hex strings (lossless, one rule for
every bytes value: names, data, xattr values).
"""

from __future__ import annotations

import json
from typing import Any, Dict, List, Optional

from .. import constants as C
from ..codec import errno_name
from ..layouts import layout
from ..opcodes import NOTIFICATIONS, OPS
from .decode import NOTIFY, REPLY, REQUEST, Event

_HEX_KEYS = ("flags", "flags2", "mask", "events", "revents", "valid", "fattr_flags", "open_flags", "read_flags",
             "write_flags", "fsync_flags", "getattr_flags", "release_flags", "lk_flags", "setxattr_flags")


#: byte -> how the text form shows it (printable ASCII as is; quotes, backslash, controls escaped)
_BYTE_TEXT = {c: (chr(c) if 32 <= c < 127 and c not in (34, 92) else
                  {10: "\\n", 9: "\\t", 0: "\\0", 34: '\\"', 92: "\\\\"}.get(c, f"\\x{c:02x}")) for c in range(256)}


def _fmt_bytes(b: bytes, limit: int) -> str:
    shown = b if limit < 0 else b[:limit]
    text = shown.decode("latin-1").translate(_BYTE_TEXT)
    more = f"... ({len(b)} bytes)" if len(shown) < len(b) else ""
    return f'"{text}"{more}'


_INT_FORM: Dict[str, str] = {}  # field name -> "o" (modes), "x" (flags, masks), "d"


def _int_form(key: str) -> str:
    form = _INT_FORM.get(key)
    if form is None:
        form = _INT_FORM[key] = "o" if key.endswith("mode") else \
            "x" if key in _HEX_KEYS or key.endswith("_flags") or key == "cmd" else "d"
    return form


def _fmt_value(key: str, value: Any, limit: int) -> str:
    t = type(value)
    if t is int:
        form = _INT_FORM.get(key) or _int_form(key)
        return str(value) if form == "d" else f"0{value:o}" if form == "o" else f"{value:#x}"
    if t is bytes or t is bytearray:
        return _fmt_bytes(bytes(value), limit)
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int):
        return _fmt_value(key, int(value), limit)
    if isinstance(value, dict):
        return "{" + _fmt_fields(value, limit) + "}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_fmt_value(key, v, limit) for v in value) + "]"
    return str(value)


_HIDDEN = ("_", "padding", "unused", "reserved")


def _items(container: Any) -> List[tuple]:
    return [(k, v) for k, v in container.items() if not k.startswith(_HIDDEN)
            or not k.startswith("_") and _nonzero(v)]


def _nonzero(v: Any) -> bool:
    return any(_nonzero(x) for x in v) if isinstance(v, (list, tuple)) else bool(v)


def _fmt_fields(container: Any, limit: int) -> str:
    return " ".join([f"{k}={_fmt_value(k, v, limit)}" for k, v in _items(container)])


def body_lines(body: Any, indent: str, limit: int) -> List[str]:
    """One line per part of a message body: structs as ``name: k=v ...``, lists one item per line."""
    lines: List[str] = []
    if body is None:
        return lines
    for key, value in _items(body):
        if value is None:  # an optional part that is absent in this message
            continue
        if isinstance(value, dict):
            lines.append(f"{indent}{key}: {_fmt_fields(value, limit)}")
        elif isinstance(value, (list, tuple)) and value and isinstance(value[0], dict):
            for i, item in enumerate(value):
                lines.append(f"{indent}{key}[{i}]: {_fmt_fields(item, limit)}")
        else:
            lines.append(f"{indent}{key}: {_fmt_value(key, value, limit)}")
    return lines


def text_lines(ev: Event, *, limit: int = 64, origin_ns: Optional[int] = None) -> List[str]:
    """The text form of one event (several lines)."""
    rec, msg = ev.record, ev.message
    when = ""
    if origin_ns is not None and rec.timestamp_ns is not None:
        when = f", time: {(rec.timestamp_ns - origin_ns) / 1e9:.6f}"
    conn = f", conn: {rec.conn}" if rec.conn else ""
    lines: List[str] = []
    if ev.kind == REQUEST:
        if msg is None:
            lines.append(f"unique: ?, opcode: ?, insize: {rec.size}{conn}{when}")
        else:
            h = msg.header
            op = h["opcode"]
            lines.append(f"unique: {h['unique']}, opcode: {C.opcode_name(op)} ({op}), nodeid: {h['nodeid']}, "
                         f"insize: {rec.size}, pid: {h['pid']}{conn}{when}")
            lines.extend(body_lines(msg.body, "   ", limit))
            for ext in getattr(msg, "extensions", None) or []:
                lines.append(f"   extension: {_fmt_fields(ext, limit) if isinstance(ext, dict) else ext}")
    elif ev.kind == REPLY:
        if msg is None:
            lines.append(f"   unique: ?, outsize: {rec.size}{conn}{when}")
        else:
            h = msg.header
            status = "success" if h['error'] == 0 else f"error: {h['error']} ({errno_name(h['error'])})"
            lat = ev.latency_ns
            tail = f", latency: {lat / 1000:.1f} us" if lat is not None else ""
            of = f", reply to {C.opcode_name(ev.request.opcode)}" if ev.request is not None else ", no request"
            lines.append(f"   unique: {h['unique']}, {status}, outsize: {rec.size}{of}{tail}{conn}{when}")
            lines.extend(body_lines(msg.body, "      ", limit))
    elif ev.kind == NOTIFY and msg is not None:
        h = msg.header
        lines.append(f"   NOTIFY: code={h['error']} ({C.notify_name(h['error'])}), length={rec.size}{conn}{when}")
        lines.extend(body_lines(msg.body, "      ", limit))
    if ev.problem:
        lines.append(f"   !! {ev.problem} [{rec.location()}]")
    return lines


def jsonable(value: Any) -> Any:
    """Containers to dicts, bytes to hex, drop construct internals."""
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value).hex()
    if isinstance(value, dict):
        return {k: jsonable(v) for k, v in value.items() if not k.startswith("_")}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, (int, float, str)) or value is None:
        return value
    return str(value)


def _has_hidden(parts: Any) -> bool:
    """Whether a part list holds struct fields named ``_...`` (which JSON leaves out)."""
    def walk(con: Any) -> bool:
        while hasattr(con, "subcon") and not hasattr(con, "subcons"):
            con = con.subcon
        return any((sc.name or "").startswith("_") or walk(sc) for sc in getattr(con, "subcons", ()))
    return any(walk(layout(p.struct_name)) for p in parts or () if p.struct_name is not None)


#: opcodes/notify codes whose bodies need ``jsonable`` (the others go to the C encoder as they are)
_CLEAN_REQUESTS = {op for op, spec in OPS.items() if _has_hidden(spec.request)}
_CLEAN_REPLIES = {op for op, spec in OPS.items() if _has_hidden(spec.reply)}
_CLEAN_NOTIFY = {code for code, spec in NOTIFICATIONS.items() if _has_hidden(spec.body)}


def json_object(ev: Event, *, origin_ns: Optional[int] = None, raw: bool = False) -> Dict[str, Any]:
    """The JSON form of one event (see docs/traces.md for the keys).

    ``raw``: leave bytes values as bytes where the JSON encoder will turn them into hex
    (``json_line``); otherwise every value is plain JSON already.
    """
    rec, msg = ev.record, ev.message
    obj: Dict[str, Any] = {"type": ev.kind, "conn": rec.conn, "dir": "in" if rec.inbound else "out",
                           "len": rec.size}
    if rec.missing:
        obj["missing"] = rec.missing
    if rec.timestamp_ns is not None:
        obj["ts_ns"] = rec.timestamp_ns
        if origin_ns is not None:
            obj["time"] = round((rec.timestamp_ns - origin_ns) / 1e9, 9)
    obj["where"] = rec.location()
    if msg is not None:
        h = msg.header
        if ev.kind == REQUEST:
            obj.update(unique=h["unique"], opcode=C.opcode_name(h["opcode"]), opcode_num=h["opcode"],
                       nodeid=h["nodeid"], uid=h["uid"], gid=h["gid"], pid=h["pid"])
        elif ev.kind == REPLY:
            obj.update(unique=h['unique'], error=h['error'], errno=errno_name(h['error']))
            if ev.request is not None:
                obj.update(opcode=C.opcode_name(ev.request.opcode), opcode_num=ev.request.opcode)
            lat = ev.latency_ns
            if lat is not None:
                obj["latency_us"] = round(lat / 1000, 3)
        else:
            obj.update(code=h['error'], notify=C.notify_name(h['error']))
        body = msg.body
        if raw and body is not None and not _needs_clean(ev, h):
            obj["body"] = body
        else:
            obj["body"] = jsonable(body)
        extensions = getattr(msg, "extensions", None)  # requests only
        if extensions:
            obj["extensions"] = jsonable(extensions)
    if ev.problem:
        obj["problem"] = ev.problem
    return obj


def _json_default(value: Any) -> Any:
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value).hex()
    return str(value)


_ENCODE = json.JSONEncoder(separators=(",", ":"), default=_json_default).encode


def _needs_clean(ev: Event, h: Any) -> bool:
    if ev.kind == REQUEST:
        return h['opcode'] in _CLEAN_REQUESTS
    if ev.kind == REPLY:
        return ev.request is not None and ev.request.opcode in _CLEAN_REPLIES
    return h['error'] in _CLEAN_NOTIFY


def json_line(ev: Event, *, origin_ns: Optional[int] = None) -> str:
    """``json_object`` as one line of JSON."""
    return _ENCODE(json_object(ev, origin_ns=origin_ns, raw=True))
