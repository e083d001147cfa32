"""Turn records into decoded events: requests, paired replies (with latency), notifications.

One ``Conversation`` per connection does the protocol work (pairing by unique, following
INIT); this module adds what a trace needs on top: the capture location of every message,
latency between a request and its reply, and damage reports that never stop decoding
(a message that cannot be decoded is still an event, with ``problem`` set, so output and
filters still see it and its reply still pairs).

Incomplete messages (``Record.missing``: cut by a snap length or ``strace -s``, a body
that went through a pipe) are events too: header (and the first fixed struct, when its
bytes are there) decoded, the rest shown raw as ``captured``, a problem saying what is
missing, and they still pair.  Replies to ``INTERRUPT`` (EAGAIN, ENOSYS: optional, so an
unanswered INTERRUPT is no loss) pair with their INTERRUPT.  ``finish()`` after the last
event reports what never got an answer and counts everything lost (``Summary``).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Dict, Iterable, Iterator, Optional, Tuple, Union

import construct as cs

from .. import constants as C
from ..codec import IN_HEADER_SIZE, OUT_HEADER_SIZE, Codec, Conversation, Notification, Reply, Request
from ..errors import WireError
from ..fastdecode import container_reader
from ..layouts import layout
from ..opcodes import OPS
from ..parts import Struct
from .pcapng import CaptureError
from .records import Connection, ProblemHandler, Record

REQUEST, REPLY, NOTIFY = "request", "reply", "notify"
_INTERRUPT = C.fuse_opcode.FUSE_INTERRUPT
_INIT_OPS = (C.fuse_opcode.FUSE_INIT, C.fuse_opcode.CUSE_INIT)
_MAX_INTERRUPTS = 10_000  # unanswered INTERRUPTs remembered per connection (answering one is optional)
_READ_IN_HEADER = container_reader(layout("fuse_in_header"), "fuse_in_header")
_READ_OUT_HEADER = container_reader(layout("fuse_out_header"), "fuse_out_header")


@dataclass
class Event:
    """One decoded message in capture order.

    Attributes:
        kind: ``"request"``, ``"reply"`` or ``"notify"``.
        record: where it came from (connection, direction, time, bytes, location).
        message: the decoded Request/Reply/Notification; for an undecodable message, a
            header-only one (body ``{"data": raw body}``), or None if even the header is bad.
        request: for a reply, the request it answers (None: a reply without a request).
        request_record: that request's record (its timestamp gives the latency).
        problem: what was wrong with this message, if anything.
    """

    kind: str
    record: Record
    message: Optional[Union[Request, Reply, Notification]]
    request: Optional[Request] = None
    request_record: Optional[Record] = None
    problem: Optional[str] = None

    @property
    def unique(self) -> Optional[int]:
        """The message's ``unique`` (0 for notifications); None if its header is unreadable."""
        return self.message.header.unique if self.message is not None else None

    @property
    def opcode(self) -> Optional[int]:
        """The request's opcode (for replies: the paired request's)."""
        if self.kind == REQUEST and self.message is not None:
            return self.message.header.opcode
        return self.request.opcode if self.request is not None else None

    @property
    def error(self) -> int:
        """A reply's error (negative errno); 0 for requests and notifications."""
        return self.message.header.error if self.kind == REPLY and self.message is not None else 0

    @property
    def latency_ns(self) -> Optional[int]:
        """For a reply: nanoseconds since its request; None without a request or timestamps."""
        if self.request_record is None or self.request_record.timestamp_ns is None \
                or self.record.timestamp_ns is None:
            return None
        return self.record.timestamp_ns - self.request_record.timestamp_ns

    @property
    def origin(self) -> Optional[Request]:
        """The request this event belongs to: itself for a request, the paired one for a reply."""
        if self.kind == REQUEST:
            return self.message  # type: ignore[return-value]
        return self.request


@dataclass
class Summary:
    """What a decode lost or could not pair (``Decoder.finish()``); all zero for a clean capture."""

    requests: int = 0
    replies: int = 0
    notifications: int = 0
    unanswered: int = 0  #: requests that expect a reply and got none in the capture
    orphan_replies: int = 0  #: replies whose request is not in the capture
    incomplete: int = 0  #: messages with bytes missing (Record.missing)
    undecodable: int = 0  #: messages the codec refused (shown raw)

    @property
    def lost(self) -> bool:
        """True when some message, or part of one, is not in the capture, or could not be paired."""
        return bool(self.unanswered or self.orphan_replies or self.incomplete)

    def line(self) -> str:
        """One line for the end of a decode: ``1200 requests, 1188 replies, ...``."""
        parts = [f"{self.requests} requests", f"{self.replies} replies"]
        if self.notifications:
            parts.append(f"{self.notifications} notifications")
        parts.append(f"{self.unanswered} requests without a reply")
        parts.append(f"{self.orphan_replies} replies without a request")
        parts.append(f"{self.incomplete} incomplete messages")
        if self.undecodable:
            parts.append(f"{self.undecodable} undecodable")
        return ", ".join(parts)


class _Conn:
    def __init__(self, info: Optional[Connection]) -> None:
        minor = info.minor if info is not None and info.minor is not None else C.FUSE_KERNEL_MINOR_VERSION
        minor = min(max(minor, 0), C.FUSE_KERNEL_MINOR_VERSION)  # a newer protocol: its layouts start as ours
        flags = info.flags if info is not None and info.flags is not None else 0
        flags &= (1 << 64) - 1
        self.conv = Conversation(Codec(minor, flags, strict=False))
        self.records: Dict[int, Record] = {}
        self.interrupts: OrderedDict[int, Tuple[Request, Record]] = OrderedDict()


def _raw_request(data: bytes) -> Optional[Request]:
    if len(data) < IN_HEADER_SIZE:
        return None
    return Request(_READ_IN_HEADER(data, 0), cs.Container(data=data[IN_HEADER_SIZE:]))


def _raw_out(data: bytes) -> Optional[cs.Container]:
    if len(data) < OUT_HEADER_SIZE:
        return None
    return _READ_OUT_HEADER(data, 0)


class Decoder:
    """Decode a stream of records (``Capture``) into ``Event``s, reporting problems as it goes.

    ``bodies=False``: headers only (what counts, pairing, errors and latencies need, as for
    ``--stats``): a well-formed message gets ``body`` None and its body is not checked;
    INIT, and anything whose header is wrong, is still decoded in full and reported.

    ``connections``: the capture's connection table (read lazily: pcapng fills it while
    being iterated), used for the starting protocol of connections whose INIT is missing.
    """

    def __init__(self, records: Iterable[Record], on_problem: Optional[ProblemHandler] = None,
                 connections: Optional[Dict[int, Connection]] = None, *, bodies: bool = True) -> None:
        self.records = records
        self.bodies = bodies
        self.on_problem = on_problem
        self.connections = connections if connections is not None else getattr(records, "connections", {})
        self._conns: Dict[int, _Conn] = {}
        self.summary = Summary()

    def _problem(self, rec: Record, msg: str) -> str:
        if self.on_problem is not None:
            self.on_problem(CaptureError(msg, block=rec.index, offset=rec.offset, where=rec.where))
        return msg

    def pending(self) -> Iterator[Tuple[Record, Request]]:
        """Requests still waiting for a reply (call after iterating)."""
        for conn in self._conns.values():
            for unique, req in conn.conv.pending.items():
                rec = conn.records.get(unique)
                if rec is not None:
                    yield rec, req

    def finish(self) -> Summary:
        """After the last event: report every request still waiting for its reply; the totals.

        Requests that get no reply by design (FORGET, BATCH_FORGET, NOTIFY_REPLY, an
        INTERRUPT nobody answered) are not reported.
        """
        for rec, req in self.pending():
            self.summary.unanswered += 1
            self._problem(rec, f"unique {req.unique} ({req.name}, nodeid {req.header.nodeid}): request without a "
                               "reply in the capture")
        return self.summary

    def __iter__(self) -> Iterator[Event]:
        """Decode the records lazily, one Event per record, replies paired with their requests."""
        conns = self._conns
        summary = self.summary
        request = self._request if self.bodies else self._head_request
        reply = self._from_daemon if self.bodies else self._head_reply
        for rec in self.records:
            conn = conns.get(rec.conn)
            if conn is None:
                conn = conns[rec.conn] = _Conn(self.connections.get(rec.conn))
            if rec.missing:
                summary.incomplete += 1
                yield self._incomplete(conn, rec)
            elif rec.direction == 1:
                summary.requests += 1
                yield request(conn, rec)
            else:
                yield reply(conn, rec)

    def _head_request(self, conn: _Conn, rec: Record) -> Event:
        """A request, header only (``bodies=False``); anything unusual goes the full way."""
        data = rec.data
        if len(data) < IN_HEADER_SIZE:
            return self._request(conn, rec)
        header = _READ_IN_HEADER(data, 0)
        op = header["opcode"]
        spec = OPS.get(op)
        if spec is None or header["len"] != len(data) or op in _INIT_OPS:
            return self._request(conn, rec)
        req = Request(header, None)
        if spec.reply is not None:
            unique = header["unique"]
            conn.conv.pending[unique] = req
            conn.records[unique] = rec
        elif op == _INTERRUPT:
            self._remember_interrupt(conn, req, rec)
        return Event(REQUEST, rec, req)

    def _head_reply(self, conn: _Conn, rec: Record) -> Event:
        """A reply, header only (``bodies=False``); notifications, INIT and oddities go the full way."""
        data = rec.data
        if len(data) < OUT_HEADER_SIZE:
            return self._from_daemon(conn, rec)
        header = _READ_OUT_HEADER(data, 0)
        unique, error = header["unique"], header["error"]
        pending = conn.conv.pending
        req = pending.get(unique) if unique else None
        if (req is None or header["len"] != len(data) or req.header["opcode"] in _INIT_OPS
                or error and (len(data) != OUT_HEADER_SIZE or not -4095 <= error < 0)):
            return self._from_daemon(conn, rec)
        del pending[unique]
        self.summary.replies += 1
        return Event(REPLY, rec, Reply(header, req.header["opcode"], None), req, conn.records.pop(unique, None))

    def _request(self, conn: _Conn, rec: Record) -> Event:
        req: Optional[Request]
        problem: Optional[str]
        try:
            req = conn.conv.request(rec.data)
        except WireError as exc:
            self.summary.undecodable += 1
            problem = self._problem(rec, f"request: {exc}")
            req = _raw_request(rec.data)
            if req is not None:
                conn.conv.pending[req.unique] = req
                conn.records[req.unique] = rec
            return Event(REQUEST, rec, req, problem=problem)
        problem = None
        h = req.header
        unique = h["unique"]
        spec = OPS.get(h["opcode"])
        if spec is None:
            problem = self._problem(rec, f"request: unique {unique}: unknown opcode {h['opcode']}; "
                                         "body shown raw")
        elif h["opcode"] == _INTERRUPT:
            self._remember_interrupt(conn, req, rec)
        if unique in conn.conv.pending:
            conn.records[unique] = rec
        return Event(REQUEST, rec, req, problem=problem)

    @staticmethod
    def _remember_interrupt(conn: _Conn, req: Request, rec: Record) -> None:
        conn.interrupts[req.unique] = (req, rec)
        if len(conn.interrupts) > _MAX_INTERRUPTS:
            conn.interrupts.popitem(last=False)

    def _incomplete(self, conn: _Conn, rec: Record) -> Event:
        """A message the capture holds only part of: what the header says, the rest raw."""
        data, size, why = rec.data, rec.size, rec.why or "not all in the capture"
        if rec.inbound:
            self.summary.requests += 1
            if len(data) < IN_HEADER_SIZE:
                return Event(REQUEST, rec, None, problem=self._problem(
                    rec, f"request of {size} bytes {why}: only {len(data)} bytes in the capture, not even "
                         "its header"))
            header = _READ_IN_HEADER(data, 0)
            spec = OPS.get(header.opcode)
            body = cs.Container()
            pos = IN_HEADER_SIZE
            first = spec.request[0] if spec is not None and spec.request else None
            if isinstance(first, Struct):
                con = layout(first.struct_name, conn.conv.codec.minor, conn.conv.codec.flags)
                if len(data) - pos >= con.sizeof():
                    body[first.name] = container_reader(con, first.struct_name)(data, pos)
                    pos += con.sizeof()
            body["captured"] = data[pos:]
            req = Request(header, body)
            if spec is None or spec.has_reply:
                conn.conv.pending[header.unique] = req
                conn.records[header.unique] = rec
            elif header.opcode == _INTERRUPT:
                self._remember_interrupt(conn, req, rec)
            return Event(REQUEST, rec, req, problem=self._problem(
                rec, f"unique {header.unique} ({C.opcode_name(header.opcode)}): request of {size} bytes {why}; "
                     f"{len(data)} bytes in the capture"))
        if len(data) < OUT_HEADER_SIZE:
            self.summary.replies += 1
            return Event(REPLY, rec, None, problem=self._problem(
                rec, f"reply of {size} bytes {why}: only {len(data)} bytes in the capture, not even its header "
                     "(which request it answers is unknown)"))
        header = _READ_OUT_HEADER(data, 0)
        if header.unique == 0:
            self.summary.notifications += 1
            return Event(NOTIFY, rec, Notification(header, cs.Container(captured=data[OUT_HEADER_SIZE:])),
                         problem=self._problem(rec, f"notification of {size} bytes {why}; {len(data)} bytes in "
                                                    "the capture"))
        self.summary.replies += 1
        answered, req_rec = self._take_request(conn, header.unique)
        msg = Reply(header, answered.opcode if answered is not None else 0,
                    None if header.error else cs.Container(captured=data[OUT_HEADER_SIZE:]))
        of = f"{answered.name}" if answered is not None else "answers no request in the capture"
        if answered is None:
            self.summary.orphan_replies += 1
        return Event(REPLY, rec, msg, answered, req_rec, problem=self._problem(
            rec, f"unique {header.unique} ({of}): reply of {size} bytes {why}; {len(data)} bytes in the capture"))

    def _take_request(self, conn: _Conn, unique: int) -> Tuple[Optional[Request], Optional[Record]]:
        """The request a reply answers (an INTERRUPT's too), now answered."""
        req = conn.conv.pending.pop(unique, None)
        if req is not None:
            return req, conn.records.pop(unique, None)
        hit = conn.interrupts.pop(unique, None)
        return hit if hit is not None else (None, None)

    def _from_daemon(self, conn: _Conn, rec: Record) -> Event:
        header = _raw_out(rec.data)
        if header is None:
            self.summary.replies += 1
            self.summary.undecodable += 1
            return Event(REPLY, rec, None, problem=self._problem(
                rec, f"reply: {len(rec.data)} bytes, shorter than fuse_out_header ({OUT_HEADER_SIZE})"))
        if header.unique == 0:
            self.summary.notifications += 1
            try:
                note = conn.conv.codec.decode_notify(rec.data)
            except WireError as exc:
                return Event(NOTIFY, rec, Notification(header, cs.Container(data=rec.data[OUT_HEADER_SIZE:])),
                             problem=self._problem(rec, f"notification: {exc}"))
            problem = None
            if C.notify_name(header.error).startswith("NOTIFY_"):
                problem = self._problem(rec, f"notification: unknown code {header.error}; body shown raw")
            return Event(NOTIFY, rec, note, problem=problem)
        self.summary.replies += 1
        unique = header["unique"]
        req = conn.conv.pending.get(unique)
        if req is None:
            hit = conn.interrupts.pop(unique, None)
            if hit is not None:  # an INTERRUPT's answer (EAGAIN: send it again; ENOSYS: not supported)
                try:
                    return Event(REPLY, rec, conn.conv.codec.decode_reply(rec.data, hit[0]), hit[0], hit[1])
                except WireError as exc:
                    self.summary.undecodable += 1
                    return Event(REPLY, rec, Reply(header, _INTERRUPT, cs.Container(data=rec.data[OUT_HEADER_SIZE:])),
                                 hit[0], hit[1], problem=self._problem(rec, f"reply to INTERRUPT: {exc}"))
            self.summary.orphan_replies += 1
            return Event(REPLY, rec, Reply(header, 0, cs.Container(data=rec.data[OUT_HEADER_SIZE:])), problem=(
                self._problem(rec, f"reply: unique {unique} answers no request in the capture")))
        req_rec = conn.records.pop(unique, None)
        try:
            msg = conn.conv.answer(rec.data, req)
        except WireError as exc:
            self.summary.undecodable += 1
            return Event(REPLY, rec, Reply(header, req.opcode, cs.Container(data=rec.data[OUT_HEADER_SIZE:])),
                         req, req_rec, problem=self._problem(rec, f"reply to {req.name}: {exc}"))
        return Event(REPLY, rec, msg, req, req_rec)


def decode_records(records: Iterable[Record], on_problem: Optional[ProblemHandler] = None) -> Iterator[Event]:
    """Convenience: ``Decoder(records, on_problem)`` iterated."""
    return iter(Decoder(records, on_problem))


__all__ = ["Decoder", "Event", "NOTIFY", "REPLY", "REQUEST", "Summary", "decode_records", "Any"]
