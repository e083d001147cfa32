"""fusd_wire: the FUSE/CUSE wire protocol (7.45) as declarative construct schemas.

- ``constants``: every constant of ``fuse_kernel.h``, named as there.
- ``schemas``: one construct Struct per kernel struct.
- ``layouts``: the same structs as older protocol minors see them.
- ``fastpath``: precompiled ``struct.Struct`` codecs derived from the schemas (hot path).
- ``opcodes``: the one opcode/notification table.
- ``codec``: whole-message decode/encode, both directions, any minor.

No I/O here; the server lives in ``fusd_runtime``.
"""

from .codec import Codec, Conversation, Notification, Reply, Request, errno_name
from .errors import WireError
from .fastpath import FAST, FastStruct
from .opcodes import NOTIFICATIONS, OPS, NotifySpec, OpSpec

__all__ = [
    "Codec", "Conversation", "FAST", "FastStruct", "NOTIFICATIONS", "Notification", "NotifySpec", "OPS",
    "OpSpec", "Reply", "Request", "WireError", "errno_name",
]
__version__ = "0.1.0"
