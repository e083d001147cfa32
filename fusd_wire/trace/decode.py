"""Turn records into decoded events: requests, paired replies (with latency), notifications.

One ``Conversation`` per connection does the protocol work (pairing by unique, following
INIT); this module adds what a trace needs on top: the capture location of every message,
latency between a request and its reply, and damage reports that never stop decoding
(a message that cannot be decoded is still an event, with ``problem`` set, so output and
filters still see it and its reply still pairs).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, Iterable, Iterator, Optional, Tuple, Union

import construct as cs

from .. import constants as C
from ..codec import IN_HEADER_SIZE, OUT_HEADER_SIZE, Codec, Conversation, Notification, Reply, Request
from ..errors import WireError
from ..fastpath import FAST
from .pcapng import CaptureError
from .records import Connection, ProblemHandler, Record

REQUEST, REPLY, NOTIFY = "request", "reply", "notify"


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


class _Conn:
    def __init__(self, info: Optional[Connection]) -> None:
        minor = info.minor if info is not None and info.minor is not None else C.FUSE_KERNEL_MINOR_VERSION
        flags = info.flags if info is not None and info.flags is not None else 0
        self.conv = Conversation(Codec(minor, flags, strict=False))
        self.records: Dict[int, Record] = {}


def _raw_request(data: bytes) -> Optional[Request]:
    if len(data) < IN_HEADER_SIZE:
        return None
    header = cs.Container(zip(("len", "opcode", "unique", "nodeid", "uid", "gid", "pid", "total_extlen", "padding"),
                              FAST.fuse_in_header.unpack_from(data)))
    return Request(header, cs.Container(data=data[IN_HEADER_SIZE:]))


def _raw_out(data: bytes) -> Optional[cs.Container]:
    if len(data) < OUT_HEADER_SIZE:
        return None
    return cs.Container(zip(("len", "error", "unique"), FAST.fuse_out_header.unpack_from(data)))


class Decoder:
    """Decode a stream of records (``Capture``) into ``Event``s, reporting problems as it goes.

    ``connections``: the capture's connection table (read lazily: pcapng fills it while
    being iterated), used for the starting protocol of connections whose INIT is missing.
    """

    def __init__(self, records: Iterable[Record], on_problem: Optional[ProblemHandler] = None,
                 connections: Optional[Dict[int, Connection]] = None) -> None:
        self.records = records
        self.on_problem = on_problem
        self.connections = connections if connections is not None else getattr(records, "connections", {})
        self._conns: Dict[int, _Conn] = {}

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

    def __iter__(self) -> Iterator[Event]:
        """Decode the records lazily, one Event per record, replies paired with their requests."""
        for rec in self.records:
            conn = self._conns.get(rec.conn)
            if conn is None:
                conn = self._conns[rec.conn] = _Conn(self.connections.get(rec.conn))
            if rec.inbound:
                yield self._request(conn, rec)
            else:
                yield self._from_daemon(conn, rec)

    def _request(self, conn: _Conn, rec: Record) -> Event:
        req: Optional[Request]
        problem: Optional[str]
        try:
            req = conn.conv.request(rec.data)
        except WireError as exc:
            problem = self._problem(rec, f"request: {exc}")
            req = _raw_request(rec.data)
            if req is not None:
                conn.conv.pending[req.unique] = req
                conn.records[req.unique] = rec
            return Event(REQUEST, rec, req, problem=problem)
        problem = None
        if req.spec is None:
            problem = self._problem(rec, f"request: unique {req.unique}: unknown opcode {req.opcode}; "
                                         "body shown raw")
        if req.unique in conn.conv.pending:
            conn.records[req.unique] = rec
        return Event(REQUEST, rec, req, problem=problem)

    def _from_daemon(self, conn: _Conn, rec: Record) -> Event:
        header = _raw_out(rec.data)
        if header is None:
            return Event(REPLY, rec, None, problem=self._problem(
                rec, f"reply: {len(rec.data)} bytes, shorter than fuse_out_header ({OUT_HEADER_SIZE})"))
        if header.unique == 0:
            try:
                note = conn.conv.codec.decode_notify(rec.data)
            except WireError as exc:
                return Event(NOTIFY, rec, Notification(header, cs.Container(data=rec.data[OUT_HEADER_SIZE:])),
                             problem=self._problem(rec, f"notification: {exc}"))
            problem = None
            if C.notify_name(header.error).startswith("NOTIFY_"):
                problem = self._problem(rec, f"notification: unknown code {header.error}; body shown raw")
            return Event(NOTIFY, rec, note, problem=problem)
        req = conn.conv.pending.get(header.unique)
        req_rec = conn.records.pop(header.unique, None)
        if req is None:
            return Event(REPLY, rec, Reply(header, 0, cs.Container(data=rec.data[OUT_HEADER_SIZE:])), problem=(
                self._problem(rec, f"reply: unique {header.unique} answers no request in the capture")))
        try:
            msg, _ = conn.conv.from_daemon(rec.data)
        except WireError as exc:
            conn.conv.pending.pop(header.unique, None)
            return Event(REPLY, rec, Reply(header, req.opcode, cs.Container(data=rec.data[OUT_HEADER_SIZE:])),
                         req, req_rec, problem=self._problem(rec, f"reply to {req.name}: {exc}"))
        return Event(REPLY, rec, msg, req, req_rec)


def decode_records(records: Iterable[Record], on_problem: Optional[ProblemHandler] = None) -> Iterator[Event]:
    """Convenience: ``Decoder(records, on_problem)`` iterated."""
    return iter(Decoder(records, on_problem))


__all__ = ["Decoder", "Event", "NOTIFY", "REPLY", "REQUEST", "decode_records", "Any"]
