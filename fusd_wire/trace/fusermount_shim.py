"""The ``fusermount`` a tapped daemon runs (stdlib only: copied into a script by ``tap.py``).

libfuse 2 and 3 mount through ``fusermount``/``fusermount3`` when mount(2) is refused:
they start it with ``_FUSE_COMMFD=N`` in the environment (one end of a socketpair) and
``-o OPTIONS -- MOUNTPOINT`` as arguments, and wait for the ``/dev/fuse`` fd to come back
over fd N (``SCM_RIGHTS``, one data byte).  In the tap's private mount namespace this
script is bind-mounted over the real fusermount binaries.  It asks the tap (a Unix socket
named by ``FUSD_TAP_CONTROL``) to mount, receives the tap's relay socket in place of
``/dev/fuse`` and hands it to libfuse exactly as fusermount would.  ``-u`` (unmount) is
passed to the tap too.
"""

from __future__ import annotations

import json
import os
import socket
import sys


def main(argv: list) -> int:
    if argv[1:2] in (["--version"], ["-V"]):
        print("fusermount3 version: 3 (fusd tap)")
        return 0
    path = os.environ.get("FUSD_TAP_CONTROL")
    if not path:
        print("fusermount (fusd tap): FUSD_TAP_CONTROL is not set", file=sys.stderr)
        return 1
    unmount = any(a in ("-u", "--unmount") for a in argv[1:])
    commfd = os.environ.get("_FUSE_COMMFD")
    if not unmount and commfd is None:
        print("fusermount (fusd tap): no _FUSE_COMMFD: only libfuse's mount protocol is supported",
              file=sys.stderr)
        return 1
    ctl = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    try:
        ctl.connect(path)
        ctl.send(json.dumps({"argv": argv[1:], "cwd": os.getcwd(), "pid": os.getppid()}).encode())
        msg, fds, _, _ = socket.recv_fds(ctl, 65536, 1)
    except OSError as exc:
        print(f"fusermount (fusd tap): cannot reach the tap at {path}: {exc}", file=sys.stderr)
        return 1
    answer = json.loads(msg.decode() or "{}")
    if not answer.get("ok"):
        print(f"fusermount (fusd tap): {answer.get('error', 'refused')}", file=sys.stderr)
        return 1
    if unmount:
        return 0
    if not fds:
        print("fusermount (fusd tap): the tap sent no fd", file=sys.stderr)
        return 1
    sock = socket.socket(fileno=int(commfd))  # type: ignore[arg-type]  # checked above
    socket.send_fds(sock, [b"\0"], fds)
    sock.detach()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
