"""``fusd serve``: serve your device from a module, the way a libfuse filesystem is run.

Like a libfuse daemon it goes to the background once the device can be opened (the
command returns then, and says where the device is and how to stop it), or stays in
the foreground with ``-f`` (Ctrl-C stops it).  Either way it stops, unmounting, on
SIGINT/SIGTERM or when its mount is unmounted (``umount DIR``, ``fusermount3 -u DIR``).
Mount options come with ``-o`` (comma-separated, repeatable), the device file's
permissions with ``--mode/--uid/--gid``, the device's constructor arguments with
``--arg NAME=VALUE``.  How the device is named: :mod:`fusd_runtime.loader`.
"""

from __future__ import annotations

import grp
import logging
import os
import pwd
import sys
from typing import Any, Callable, Dict, List, Optional

from ..cli import ArgumentParser, CliError, UsageError
from ..loader import LoadError, check_arguments, load_factory, make_device, parse_args

log = logging.getLogger("fusd")

EXAMPLES = """\
example (fusd_runtime.examples ships with fusd; serving it as root):
  mkdir -p /tmp/devs && fusd serve fusd_runtime.examples:Hello /tmp/devs && cat /tmp/devs/hello && umount /tmp/devs

more:
  fusd serve sensor.py:Sensor /tmp/devs            your file; back in the background once /tmp/devs/sensor is ready
  fusd serve -f sensor:Sensor /tmp/devs            module sensor from the current directory, in the foreground
  fusd serve -d sensor.py:Sensor /tmp/devs         every request and reply printed as served (libfuse -d; implies -f)
  fusd -v serve -f sensor.py:Sensor /tmp/devs      log mounts, devices and the negotiated protocol (-vv: more)
  fusd serve gps.py:Gps --arg rate=2 -o allow_other,ro --mode 0640 --gid dialout /tmp/devs
  fusd serve --transport cuse modem.py:make_modem  a /dev node made by a factory (root, a kernel with CUSE)
  fusd serve --transport uring sensor.py:Sensor /tmp/devs   through FUSE-over-io_uring, a ring per CPU

mount options (-o, comma-separated):
  allow_other          other users may open the devices (as a user: needs user_allow_other in /etc/fuse.conf)
  default_permissions  file modes are enforced: always on in fusd (accepted for libfuse habits)
  ro | rw              mount read-only (opening a device for writing fails with EROFS) | read-write (default)
  nonempty             mount over a directory that has files in it (they are hidden while mounted)
  overmount            mount on top of another FUSE mount (never unmounted by us)
  fsname=NAME          the mount's type is fuse.NAME (default fuse.fusd)
  readers=N            reader threads (default 2, or 1 when the process may use one CPU only)
  auto_unmount         unmount when the server dies, even by SIGKILL: always on in fusd

exit status: 0 served and stopped cleanly, 1 failed, 2 wrong command line
"""

#: -o options: name -> (takes a value?, what it sets)
MOUNT_OPTIONS: Dict[str, bool] = {
    "allow_other": False, "default_permissions": False, "ro": False, "rw": False, "nonempty": False,
    "overmount": False, "fsname": True, "readers": True, "auto_unmount": False,
}


def build_parser() -> ArgumentParser:
    """The options of ``fusd serve`` (a subcommand adding options adds them here)."""
    p = ArgumentParser(prog="fusd serve", description=(__doc__ or "").split("\n\n")[0].replace("``", ""),
                       epilog=EXAMPLES)
    p.add_argument("device", metavar="DEVICE",
                   help="module:Class, file.py:Class, module:factory, or a module/file defining one Device class")
    p.add_argument("mountpoint_arg", nargs="?", metavar="MOUNTPOINT",
                   help="FUSE: the empty directory to serve in (default: a temporary one)")
    p.add_argument("--mountpoint", help="the same as MOUNTPOINT")
    p.add_argument("-o", dest="options", action="append", default=[], metavar="OPT[,OPT...]",
                   help="mount options (listed below)")
    p.add_argument("-f", "--foreground", action="store_true", help="stay in the foreground (Ctrl-C stops)")
    p.add_argument("--arg", action="append", default=[], metavar="NAME=VALUE",
                   help="a constructor argument of the device (repeatable); VALUE is a Python literal or a string")
    p.add_argument("--name", help="device name (default: the device's name, or its class name lowercased)")
    p.add_argument("--mode", help="permission bits of the device file, octal (default: the device's, 0666)")
    p.add_argument("--uid", help="owner of the device file: a user name or number (default: the server's)")
    p.add_argument("--gid", help="group of the device file: a group name or number (default: the server's)")
    p.add_argument("--transport", choices=["auto", "fuse", "uring", "cuse"], default="auto",
                   help="auto: CUSE where /dev/cuse exists and we are root, else a FUSE directory; uring: a FUSE "
                        "directory served through FUSE-over-io_uring (the kernel offers it while "
                        "/sys/module/fuse/parameters/enable_uring is Y; else read/write, with a warning)")
    p.add_argument("--readers", type=int, help="reader threads (the same as -o readers=N)")
    p.add_argument("--record", metavar="FILE.pcapng", help="record every message to a pcapng capture")
    p.add_argument("-d", "--debug", action="store_true",
                   help="print each request and its reply as served, libfuse -d style (implies -f; logger fusd.debug)")
    return p


def parse_mount_options(groups: List[str]) -> Dict[str, Any]:
    """``["allow_other,ro", "fsname=gps"]`` -> ``{"allow_other": True, "ro": True, "fsname": "gps"}``."""
    out: Dict[str, Any] = {}
    for group in groups:
        for item in filter(None, (x.strip() for x in group.split(","))):
            name, sep, value = item.partition("=")
            if name not in MOUNT_OPTIONS:
                raise UsageError(f"unknown mount option {name!r} in -o (known: {', '.join(MOUNT_OPTIONS)})")
            if MOUNT_OPTIONS[name] != bool(sep) or (sep and not value):
                want = f"{name}=VALUE" if MOUNT_OPTIONS[name] else name
                raise UsageError(f"mount option {item!r}: write it as {want}")
            out[name] = value if sep else True
    if "ro" in out and "rw" in out:
        raise UsageError("mount options ro and rw contradict each other")
    if "readers" in out:
        out["readers"] = _positive(out["readers"], "-o readers")
    return out


def _positive(text: Any, what: str) -> int:
    try:
        n = int(text)
    except ValueError:
        n = 0
    if n < 1:
        raise UsageError(f"{what} wants a positive number, got {text!r}")
    return n


def parse_mode(text: Optional[str]) -> Optional[int]:
    """``"0640"``, ``"640"`` or ``"0o640"`` -> 0o640."""
    if text is None:
        return None
    try:
        mode = int(text[2:] if text.lower().startswith("0o") else text, 8)
    except ValueError:
        mode = -1
    if not 0 <= mode <= 0o7777:
        raise UsageError(f"--mode wants octal permission bits like 0660, got {text!r}")
    return mode


def parse_owner(text: Optional[str], kind: str) -> Optional[int]:
    """A user/group name or number -> its number."""
    if text is None:
        return None
    if text.isdigit():
        return int(text)
    try:
        return pwd.getpwnam(text).pw_uid if kind == "uid" else grp.getgrnam(text).gr_gid
    except KeyError:
        raise UsageError(f"--{kind}: no {'user' if kind == 'uid' else 'group'} named {text!r}") from None


class Plan:
    """Everything the command line says, checked before anything is mounted (usage errors exit 2 here)."""

    def __init__(self, args: Any) -> None:
        self.options = parse_mount_options(args.options)
        self.mode = parse_mode(args.mode)
        self.uid = parse_owner(args.uid, "uid")
        self.gid = parse_owner(args.gid, "gid")
        if args.mountpoint and args.mountpoint_arg and args.mountpoint != args.mountpoint_arg:
            raise UsageError(f"two mountpoints given: {args.mountpoint_arg} and --mountpoint {args.mountpoint}")
        mountpoint = args.mountpoint or args.mountpoint_arg
        self.mountpoint = os.path.abspath(mountpoint) if mountpoint else None  # before the daemon's chdir("/")
        if args.readers is not None:
            self.options["readers"] = _positive(args.readers, "--readers")
        self.record = os.path.abspath(args.record) if args.record else None
        self.debug = bool(getattr(args, "debug", False))
        self.transport = args.transport
        self.name = args.name
        self.factory, self.label = load_factory(args.device)
        self.kwargs = parse_args(args.arg)
        check_arguments(self.factory, self.kwargs, self.label)

    def server_kwargs(self) -> Dict[str, Any]:
        o = self.options
        mount_options = {k: True for k in ("nonempty", "overmount") if o.get(k)}
        if o.get("ro"):
            mount_options["read_only"] = True
        kwargs: Dict[str, Any] = {"mountpoint": self.mountpoint, "record": self.record, "readers": o.get("readers"),
                                  "mount_options": mount_options, "debug": self.debug}
        if o.get("allow_other"):
            kwargs["allow_other"] = True
        if o.get("fsname"):
            kwargs["fsname"] = o["fsname"]
        return kwargs


def serve(plan: Plan, notify: Callable[[str], None], foreground: bool) -> int:
    """Make the device, serve it until stopped; ``notify(message)`` once it can be opened."""
    from ..checks import DeviceError
    from ..cuse import open_server

    device = make_device(plan.factory, plan.kwargs, plan.label)
    try:
        server = open_server(plan.transport, **plan.server_kwargs())
    except RuntimeError as exc:
        raise CliError(f"{exc}; use --transport fuse") from None
    name = plan.name or device.name or type(device).__name__.lower()
    try:
        server.add(device, name, mode=plan.mode, uid=plan.uid, gid=plan.gid)
    except DeviceError as exc:
        raise CliError(f"{exc}") from None
    except ValueError as exc:
        raise CliError(f"cannot serve {plan.label}: {exc}") from None

    def ready() -> None:
        where = server.path(device)
        if foreground:
            stop = "Ctrl-C to stop"
        elif server.transport == "cuse":
            stop = f"stop: kill {os.getpid()}"
        else:
            stop = f"stop: {'umount' if os.geteuid() == 0 else 'fusermount3 -u'} {getattr(server, 'mountpoint', '')}"
        notify(f"serving {type(device).__name__} at {where} ({server.transport}, pid {os.getpid()}); {stop}")

    server.serve_forever(ready=ready)
    return 0


# ---------------------------------------------------------------------- into the background
def _background(run: Callable[[Callable[[str], None]], int]) -> int:
    """Fork; the child serves and says when it is ready (or why it failed) through a pipe; we print that."""
    r, w = os.pipe()
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:  # the server
        os.close(r)
        os._exit(_child(run, w))
    os.close(w)
    with os.fdopen(r, "rb") as f:
        report = f.read().decode(errors="replace")
    kind, _, rest = report.partition("\t")
    if kind == "ready":
        print(f"fusd serve: {rest}", file=sys.stderr)
        return 0
    _, status = os.waitpid(pid, 0)
    code = os.waitstatus_to_exitcode(status) if hasattr(os, "waitstatus_to_exitcode") else status >> 8
    if kind == "error":
        code_text, _, message = rest.partition("\t")
        raise CliError(message, int(code_text))
    raise CliError(f"the server exited before its device was ready (exit status {code})", 1)


def _child(run: Callable[[Callable[[str], None]], int], w: int) -> int:
    os.setsid()
    reported = [False]

    def notify(message: str) -> None:
        os.write(w, f"ready\t{message}".encode())
        os.close(w)
        reported[0] = True
        _detach()

    try:
        return run(notify)
    except LoadError as exc:
        status, message = exc.status, str(exc)
    except OSError as exc:
        status, message = 1, str(exc.strerror or exc)
    except BaseException as exc:  # noqa: B036 - everything must reach the parent as one line
        status, message = 1, f"internal error: {type(exc).__name__}: {exc}"
    if not reported[0]:
        os.write(w, f"error\t{status}\t{message}".encode())
        os.close(w)
    else:
        log.error("fusd serve: %s", message)
    return status


def _detach() -> None:
    """What libfuse's daemonize does: stdio to /dev/null, out of the directory; logs to syslog if there is one."""
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    os.close(null)
    os.chdir("/")
    if os.path.exists("/dev/log"):
        import logging.handlers
        try:
            handler = logging.handlers.SysLogHandler(address="/dev/log")
        except OSError:
            return
        handler.setFormatter(logging.Formatter(f"fusd[{os.getpid()}]: %(message)s"))
        logging.getLogger().addHandler(handler)


def main(argv: List[str]) -> int:
    """``fusd serve``: see the module docstring and ``fusd serve --help``."""
    args = build_parser().parse_intermixed_args(argv)
    plan = Plan(args)
    foreground = args.foreground or getattr(args, "debug", False)  # libfuse: -d implies -f
    if foreground:
        return serve(plan, lambda message: print(f"fusd serve: {message}", file=sys.stderr, flush=True), True)
    return _background(lambda notify: serve(plan, notify, False))
