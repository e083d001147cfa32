"""What the parts of a session share: its state (declared once, for the type checker) and wire basics.

A :class:`~fusd_runtime.session.Session` is assembled from one class per concern —
``reader.ReaderLoop`` (threads, validation, dispatch, the channel's end),
``fileops.FileOps`` (OPEN, READ, WRITE, ... of device files), ``deferred.Deferrals``
(deferred answers, interrupts, async calls, poll notifications) and
``replies.Replies`` (encoding answers, failures).  They all derive from
:class:`SessionState`, which only *declares* the attributes ``Session.__init__``
sets, so each module can be read (and type-checked) on its own.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Optional, Set

from fusd_wire import FAST, Codec
from fusd_wire import constants as C

if TYPE_CHECKING:  # pragma: no cover
    from .device import Context, Device, ReplyHandle
    from .loop import EventLoop

OP = C.fuse_opcode
IN_HEADER = FAST.fuse_in_header.struct
OUT_HEADER = FAST.fuse_out_header.struct
IN_HEADER_SIZE = IN_HEADER.size
pack_out = OUT_HEADER.pack


class RequestBuffer(bytearray):
    """A reader's request buffer, with a memoryview of itself made once.

    WRITE payloads are sliced from ``view`` (one copy, or none for ``write_view``
    devices) without creating a memoryview per request.
    """

    __slots__ = ("view",)

    def __init__(self, size: int) -> None:
        super().__init__(size)
        self.view = memoryview(self)


class SessionState:
    """The attributes every part of a session uses (set by ``Session.__init__``)."""

    kind: str
    fd: int
    codec: Codec
    minor: int
    init_flags: int
    files: Dict[int, Context]
    by_device: Dict[Device, Set[Context]]
    deferred: Dict[int, ReplyHandle]
    pending_interrupts: Dict[int, float]
    ioctl_encoders: Dict[int, Callable[[Any], Any]]
    ioctl_tables: Dict[Device, Dict[int, Any]]
    ioctl_retries: int
    handlers: Dict[int, Callable[..., Optional[List[Any]]]]
    min_length: List[int]
    recorder: Any
    conn_id: int
    writev: Callable[[int, List[Any]], int]
    on_error: Optional[Callable[[BaseException], None]]
    loop: Optional[EventLoop]
    stopping: bool
    state_lock: threading.Lock
    _logged: Set[str]
    _write_data: int
    # packers derived from the negotiated minor (Session._set_minor)
    _unpack_read_in: Callable[..., Any]
    _unpack_write_in: Callable[..., Any]
    _unpack_open_in: Callable[..., Any]
    _unpack_release_in: Callable[..., Any]
    _unpack_flush_in: Callable[..., Any]
    _unpack_fsync_in: Callable[..., Any]
    _unpack_ioctl_in: Callable[..., Any]
    _unpack_poll_in: Callable[..., Any]
    _unpack_interrupt_in: Callable[..., Any]
    _pack_open_out: Callable[..., bytes]
    _pack_write_out: Callable[..., bytes]
    _pack_poll_out: Callable[..., bytes]
    _pack_ioctl_out: Callable[..., bytes]
    _pack_ioctl_iovec: Callable[..., bytes]
    _pack_poll_wakeup: Callable[..., bytes]
    _pack_write_reply: Callable[..., bytes]
    _pack_poll_reply: Callable[..., bytes]
    _pack_ioctl_reply: Callable[..., bytes]
    _pack_open_reply: Callable[..., bytes]
