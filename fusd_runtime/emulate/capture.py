"""A fusd capture (pcapng, ``fusd record --proxy`` or any ``--record``) as a :class:`Recording`.

The capture is decoded (``fusd_wire.trace``), the device's connection and node
are found as replay finds them (``replay.plan``: FUSE by the LOOKUP of its name,
CUSE by DEVNAME), and each successful OPEN starts an :class:`OpenScript` whose
operations are the device's answers to that file handle, in reply order:
READ (data or errno), WRITE (what was written and taken), IOCTL (the last
round: bytes in, bytes out, result, and the ranges of the FUSE_IOCTL_RETRY
that preceded it), POLL (events and mask).  Times are reply times since the
OPEN request.  A failed OPEN is kept as an open that fails the same way.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Tuple

from fusd_wire import constants as C
from fusd_wire.trace.decode import NOTIFY, REPLY, REQUEST

from ..replay.plan import ReplayError, choose, load
from .script import IOCTL, POLL, READ, WRITE, Op, OpenScript, Recording

OP = C.fuse_opcode
_RETRY = int(C.IoctlFlags.FUSE_IOCTL_RETRY)


class RecordingError(ValueError):
    """The file cannot be served as a recording (what is wrong, and where)."""


def _body(msg: Any, name: str) -> Any:
    body = msg.body if msg is not None else None
    return body.get(name) if body is not None else None


def from_capture(path: str, name: Optional[str] = None, *, connection: Optional[int] = None,
                 format: Optional[str] = None) -> Recording:
    """Read ``path`` (pcapng/strace capture) into a Recording of device ``name``."""
    try:
        infos = load(path, format=format)
        info, name = choose(infos, name, connection, name or "", force=True)
    except ReplayError as exc:
        raise RecordingError(f"{path}: {exc}") from None
    nodeids = {n for n, p in info.paths.items() if p == name} if info.kind == "fuse" else set()
    rec = Recording(name=name, transport=info.kind, source=path)
    opening: Dict[int, Tuple[int, int]] = {}  # OPEN unique -> (flags, request time)
    by_fh: Dict[int, Tuple[OpenScript, int]] = {}  # fh -> (script, open time)
    pending: Dict[int, Any] = {}  # unique -> request event of the device
    retries: Dict[Tuple[int, int], Tuple[List[Tuple[int, int]], List[Tuple[int, int]]]] = {}
    polled: Dict[int, Tuple[Op, int]] = {}  # kh -> (the last POLL answered for it, its open's time)
    for ev in info.events:
        msg = ev.message
        if ev.kind == NOTIFY and msg is not None and msg.header.error == C.fuse_notify_code.FUSE_NOTIFY_POLL:
            wake = _body(msg, "fuse_notify_poll_wakeup_out")
            last = polled.pop(wake.kh, None) if wake is not None else None
            if last is not None and last[0].wake_t is None:
                last[0].wake_t = max(0.0, ((ev.record.timestamp_ns or last[1]) - last[1]) / 1e9)
            continue
        if ev.kind == REQUEST and msg is not None:
            h = msg.header
            if info.kind == "fuse" and h.opcode != OP.FUSE_INTERRUPT and h.nodeid not in nodeids:
                continue
            if h.opcode == OP.FUSE_OPEN:
                open_in = _body(msg, "fuse_open_in")
                opening[h.unique] = (open_in.flags if open_in is not None else 0, ev.record.timestamp_ns or 0)
            elif h.opcode in (OP.FUSE_READ, OP.FUSE_WRITE, OP.FUSE_IOCTL, OP.FUSE_POLL):
                pending[h.unique] = ev
            continue
        if ev.kind != REPLY or msg is None or ev.unique is None:
            continue
        if ev.unique in opening:
            flags, t_open = opening.pop(ev.unique)
            if msg.header.error:
                rec.opens.append(OpenScript(flags=flags, error=-msg.header.error))
            else:
                script = OpenScript(flags=flags)
                rec.opens.append(script)
                by_fh[msg.body.fuse_open_out.fh] = (script, t_open)
            continue
        req_ev = pending.pop(ev.unique, None)
        if req_ev is None:
            continue
        op = _op(req_ev, ev, by_fh, retries)
        if op is not None:
            script, t_open = op[0]
            op[1].t = max(0.0, ((ev.record.timestamp_ns or t_open) - t_open) / 1e9)
            script.ops.append(op[1])
            if op[1].kind == POLL:
                poll_in = _body(req_ev.message, "fuse_poll_in")
                polled[poll_in.kh] = (op[1], t_open)
    if not rec.opens:
        raise RecordingError(f"{path}: device {name!r} was never opened in connection {info.id}")
    return rec


def _op(req_ev: Any, rep_ev: Any, by_fh: Dict[int, Tuple[OpenScript, int]],
        retries: Dict[Tuple[int, int], Tuple[List[Tuple[int, int]], List[Tuple[int, int]]]]) -> Any:
    """``((script, open time), Op)`` for one answered request, or None (unknown fh, a RETRY round)."""
    req, rep = req_ev.message, rep_ev.message
    opcode = req.header.opcode
    struct_name = {OP.FUSE_READ: "fuse_read_in", OP.FUSE_WRITE: "fuse_write_in", OP.FUSE_IOCTL: "fuse_ioctl_in",
                   OP.FUSE_POLL: "fuse_poll_in"}[opcode]
    inner = _body(req, struct_name)
    if inner is None or inner.fh not in by_fh:
        return None
    owner = by_fh[inner.fh]
    err = -rep.header.error if rep.header.error else 0
    if opcode == OP.FUSE_READ:
        data = bytes(_body(rep, "data") or b"") if not err else b""
        return owner, Op(READ, data=data, error=err, size=inner.size, nonblock=bool(inner.flags & 0o4000))
    if opcode == OP.FUSE_WRITE:
        out = _body(rep, "fuse_write_out")
        return owner, Op(WRITE, data=bytes(_body(req, "data") or b""), error=err,
                         size=out.size if out is not None else 0, nonblock=bool(inner.flags & 0o4000))
    if opcode == OP.FUSE_POLL:
        out = _body(rep, "fuse_poll_out")
        return owner, Op(POLL, error=err, events=inner.events, mask=out.revents if out is not None else 0)
    # IOCTL
    out = _body(rep, "fuse_ioctl_out")
    key = (inner.fh, inner.cmd)
    if out is not None and out.flags & _RETRY:
        retries[key] = ([(v.base, v.len) for v in _body(rep, "in_iov") or []],
                        [(v.base, v.len) for v in _body(rep, "out_iov") or []])
        return None
    in_iovs, out_iovs = retries.pop(key, ([], []))
    return owner, Op(IOCTL, cmd=inner.cmd, arg=inner.arg, in_data=bytes(_body(req, "data") or b""),
                     data=bytes(_body(rep, "data") or b"") if not err else b"", error=err,
                     result=out.result if out is not None else 0, in_iovs=in_iovs, out_iovs=out_iovs)


__all__ = ["RecordingError", "from_capture"]
