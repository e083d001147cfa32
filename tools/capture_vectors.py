#!/usr/bin/env python3
"""Regenerate tests/data/kernel-7.45-messages.json from this machine's kernel.

Why: the codec's byte vectors should include messages the real kernel produced,
not only ones we wrote by hand from the header.  This mounts the tiny test daemon
of ``tests/kernel_session.py`` (root and /dev/fuse needed), drives
open/stat/read/write/ioctl/poll/close and an interrupted read through it from
child processes, and saves a small selection of the raw messages (both
directions, in order) as hex.  ``tests/test_real_messages.py`` decodes each one
and re-encodes it byte for byte.

    sudo python3 tools/capture_vectors.py [--output PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from kernel_session import KernelSession, available, run_scenario, select_vectors  # noqa: E402

from fusd_wire import constants as C  # noqa: E402

DEFAULT_OUTPUT = ROOT / "tests" / "data" / "kernel-7.45-messages.json"
LIMIT = 8 * 1024


def capture() -> dict:
    reason = available()
    if reason:
        raise SystemExit(f"cannot capture: {reason}")
    with tempfile.TemporaryDirectory(prefix="fusd-capture-") as tmp:
        with KernelSession(Path(tmp) / "mnt") as session:
            client, interrupted = run_scenario(session)
    if session.kernel_minor != 45:
        raise SystemExit(f"this kernel speaks 7.{session.kernel_minor}; the file name promises 7.45")
    if interrupted != "interrupted":
        raise SystemExit(f"the interrupted read ended with {interrupted!r}")
    messages = []
    for direction, raw in select_vectors(session.messages):
        unique = int.from_bytes(raw[8:16], "little")
        if direction == "kernel":
            what = C.opcode_name(int.from_bytes(raw[4:8], "little"))
        elif unique == 0:
            what = "NOTIFY_" + C.notify_name(int.from_bytes(raw[4:8], "little", signed=True))
        else:
            what = "reply"
        messages.append({"dir": direction, "what": what, "hex": raw.hex()})
    return {
        "note": ("Raw FUSE messages captured from a real kernel by tools/capture_vectors.py: the daemon of "
                 "tests/kernel_session.py (fusd_wire.Codec, one FOPEN_DIRECT_IO file 'dev') mounted as "
                 "fuse.fusdtest; child processes did stat, open, fstat, read(10), write, "
                 "ioctl(_IOWR('E', 2, u64)), poll (first answer 0 + NOTIFY_POLL, then POLLIN), close, and a "
                 "read() held by the daemon until SIGUSR1 made the kernel send INTERRUPT (answered -EINTR). "
                 "dir 'kernel' = kernel -> daemon, 'daemon' = daemon -> kernel; in capture order. Only the "
                 "first two requests of each opcode (and their replies) are kept, none over 320 bytes."),
        "kernel_release": platform.release(),
        "kernel_minor": session.kernel_minor,
        "client": client,
        "messages": messages,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    args = parser.parse_args()
    text = json.dumps(capture(), indent=1) + "\n"
    if len(text) > LIMIT:
        raise SystemExit(f"{len(text)} bytes is over the {LIMIT}-byte budget for test data; tighten select_vectors")
    os.makedirs(args.output.parent, exist_ok=True)
    args.output.write_text(text)
    print(f"wrote {args.output} ({len(text)} bytes)")


if __name__ == "__main__":
    main()
