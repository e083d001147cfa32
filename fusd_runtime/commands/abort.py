"""``fusd abort DIR``: free the clients of a FUSE server that stopped answering, and unmount it.

A server stuck in a callback (or stopped with SIGSTOP, or deadlocked) leaves every
process that touches its files waiting in the kernel.  Writing 1 to the FUSE
connection's ``abort`` file in fusectl (``/sys/fs/fuse/connections/N/abort``;
``N`` is the mount's device minor, read from /proc/self/mountinfo) makes all of
them fail with ENOTCONN at once; then the mount is lazily unmounted.  Works for
any FUSE mount, not only fusd's; fusectl is mounted first if it is not (root).
The server itself is not killed: a fusd server notices and exits.
"""

from __future__ import annotations

import sys
from typing import List

from ..cli import ArgumentParser, CliError
from ..mount import abort_connection, mount_at, resolve, umount

EXAMPLES = """\
example:
  fusd abort /tmp/devs          abort the connection of the FUSE mount at /tmp/devs, then unmount it
  fusd abort --keep /tmp/devs   abort only (the mount stays, answering ENOTCONN, until umount)

exit status: 0 aborted, 1 failed (not a FUSE mount, not allowed), 2 wrong command line
"""


def main(argv: List[str]) -> int:
    """``fusd abort``: see the module docstring and ``fusd abort --help``."""
    p = ArgumentParser(prog="fusd abort", description=(__doc__ or "").split("\n\n")[0].replace("``", ""),
                       epilog=EXAMPLES)
    p.add_argument("mountpoint", metavar="MOUNTPOINT", help="where the stuck server's FUSE mount is")
    p.add_argument("--keep", action="store_true", help="abort the connection but do not unmount")
    args = p.parse_args(argv)
    path = resolve(args.mountpoint)
    top = mount_at(path)  # never stat the path: that is what hangs
    if top is None or not top.is_fuse:
        what = f"a {top.fstype} mount, not FUSE" if top is not None else "not a mount point"
        raise CliError(f"{path} is {what}: nothing to abort (grep fuse /proc/mounts lists the FUSE mounts)")
    abort_connection(top.connection)
    done = (f"aborted FUSE connection {top.connection} ({top.fstype} from {top.source} at {path}): "
            "its clients get ENOTCONN")
    if not args.keep:
        if not umount(path):
            raise CliError(f"{done}, but unmounting {path} failed: umount -l {path} (root) or fusermount3 -u -z {path}")
        done += f"; unmounted {path}"
    print(f"fusd abort: {done}", file=sys.stderr)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main(sys.argv[1:]))
