"""Replay: play the kernel's side of a capture to a device on the loopback kernel and diff its replies.

    import io
    from fusd_runtime.examples import PipeDevice
    from fusd_runtime.loopback import LoopbackKernel
    from fusd_runtime.replay import replay
    from fusd_wire.trace import Recorder

    capture = io.BytesIO()                       # or a file: Server(record="s.pcapng"), fusd serve --record
    with Recorder(capture) as rec, LoopbackKernel("fuse", recorder=rec) as kernel:
        kernel.add(PipeDevice(), "pipe")
        kernel.start()
        with kernel.open("pipe") as f:
            f.write(b"hi")
            assert f.read(2) == b"hi"
    result = replay(capture.getvalue(), PipeDevice(), name="pipe")   # fusd replay s.pcapng --device m:C
    assert result.ok, result.summary()

- ``plan``: which captured requests are played, in which order, what to wait for.
- ``runner``: the loopback kernel sends them to a fresh session of the device.
- ``compare``: captured and replayed replies decoded and diffed field by field.
- ``command``: the ``fusd replay`` command.

It used to live in ``fusd_wire.trace.replay``; it runs a device, so it belongs to
the runtime (``fusd_wire`` keeps the capture formats and the decoder).
"""

from .compare import DIFFERS, MISSING, SAME, Diff, Outcome, ReplayResult, compare_reply
from .plan import ConnInfo, ReplayError, Step, build_steps, choose, load
from .runner import Replayer, replay

__all__ = ["DIFFERS", "MISSING", "SAME", "ConnInfo", "Diff", "Outcome", "ReplayError", "ReplayResult", "Replayer",
           "Step", "build_steps", "choose", "compare_reply", "load", "replay"]
