"""Per-opcode summary: requests, error replies, latency percentiles (µs)."""

from __future__ import annotations

import math
from array import array
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from .. import constants as C
from .decode import REPLY, REQUEST, Event


def percentile(sorted_values: List[float], p: float) -> Optional[float]:
    """Nearest-rank percentile (no interpolation: every value printed was measured)."""
    if not sorted_values:
        return None
    rank = max(1, math.ceil(p / 100 * len(sorted_values)))
    return sorted_values[rank - 1]


@dataclass
class OpStats:
    opcode: int
    count: int = 0
    replies: int = 0
    errors: int = 0
    latencies_us: array[float] = field(default_factory=lambda: array("d"))  # 8 bytes a reply, not 32

    def summary(self) -> Dict[str, Any]:
        lat = sorted(self.latencies_us)  # type: ignore[type-var]
        return {"opcode": C.opcode_name(self.opcode), "opcode_num": self.opcode, "count": self.count,
                "replies": self.replies, "errors": self.errors, "p50_us": percentile(lat, 50),
                "p90_us": percentile(lat, 90), "p99_us": percentile(lat, 99), "max_us": lat[-1] if lat else None}


class Stats:
    """Accumulates events; ``rows()`` gives one summary per opcode, busiest first."""

    def __init__(self) -> None:
        self.ops: Dict[int, OpStats] = {}
        self.notifications = 0

    def add(self, ev: Event) -> None:
        kind = ev.kind
        if kind == REQUEST:
            if ev.message is not None:
                op = ev.message.header["opcode"]
                st = self.ops.get(op)
                if st is None:
                    st = self.ops[op] = OpStats(op)
                st.count += 1
        elif kind == REPLY:
            req = ev.request
            if req is None:
                return
            op = req.header["opcode"]
            st = self.ops.get(op)
            if st is None:
                st = self.ops[op] = OpStats(op)
            st.replies += 1
            if ev.message is not None and ev.message.header["error"]:
                st.errors += 1
            rr = ev.request_record
            if rr is not None and rr.timestamp_ns is not None and ev.record.timestamp_ns is not None:
                st.latencies_us.append((ev.record.timestamp_ns - rr.timestamp_ns) / 1000)
        elif kind == "notify":
            self.notifications += 1

    def rows(self) -> List[Dict[str, Any]]:
        return [s.summary() for s in sorted(self.ops.values(), key=lambda s: (-s.count, s.opcode))]

    def table(self) -> str:
        def f(v: object) -> str:
            return "-" if v is None else f"{v:.1f}"
        head = f"{'opcode':<16}{'count':>8}{'errors':>8}{'p50 us':>10}{'p90 us':>10}{'p99 us':>10}{'max us':>10}"
        lines = [head]
        for r in self.rows():
            lines.append(f"{r['opcode'] + ' (' + str(r['opcode_num']) + ')':<16}{r['count']:>8}{r['errors']:>8}"
                         f"{f(r['p50_us']):>10}{f(r['p90_us']):>10}{f(r['p99_us']):>10}{f(r['max_us']):>10}")
        if self.notifications:
            lines.append(f"notifications: {self.notifications}")
        return "\n".join(lines)
