"""The ``fusd`` command: one small module per subcommand, registered in ``COMMANDS``.

    fusd serve sensor.py:Sensor /tmp/devs    serve your device (FUSE directory or CUSE /dev node)
    fusd abort /tmp/devs                     free clients stuck on a server that stopped answering
    fusd demo                                start example devices and drive them with real syscalls
    fusd bench                               per-syscall round trips beside C reference servers and the kernel floor
    fusd decode capture.pcapng               decode a protocol capture (python -m fusd_wire decode)
    fusd replay cap.pcapng --device mod:Cls  replay a recording to a device, diff its replies
    fusd record --proxy /dev/ttyUSB0 --name modem   record a real device through a pass-through proxy
    fusd emulate modem.pcapng                serve a device that answers from a recording

A subcommand is a function ``main(argv) -> exit status`` in its own module, added
to ``COMMANDS`` with one line.  It parses its options with :class:`ArgumentParser`
(usage errors are one line and exit 2) and reports failures by raising
:class:`CliError` (one line, exit 1 unless it says otherwise); ``main`` below
prints them as ``fusd COMMAND: message``.  ``-v`` before the command logs what the
runtime does (mounts, devices, the negotiated protocol; and shows tracebacks of internal
errors), ``-vv`` its internals too.

Exit status: 0 done, 1 it failed, 2 the command line is wrong.
"""

from __future__ import annotations

import argparse
import difflib
import importlib
import logging
import sys
from typing import Dict, List, NoReturn, Optional, Tuple

from .loader import LoadError, load_device_class  # noqa: F401  (load_device_class: used by replay, perfserver)

#: subcommand -> ("module:function" taking argv and returning the exit status, one-line help)
COMMANDS: Dict[str, Tuple[str, str]] = {
    "serve": ("fusd_runtime.commands.serve:main", "serve a device: fusd serve sensor.py:Sensor /tmp/devs"),
    "abort": ("fusd_runtime.commands.abort:main", "abort a stuck server's FUSE connection: fusd abort /tmp/devs"),
    "demo": ("fusd_runtime.demo:main", "start example devices and drive them with real system calls"),
    "bench": ("fusd_runtime.bench:main", "per-syscall round trips beside C references: fusd bench --quick"),
    "decode": ("fusd_runtime.cli:decode", "decode a capture: fusd decode session.pcapng"),
    "replay": ("fusd_runtime.replay.command:main", "replay a recording to a device: fusd replay c.pcapng --device m:C"),
    "record": ("fusd_runtime.commands.record:main", "record a real device: fusd record --proxy /dev/rtc0 --name rtc"),
    "emulate": ("fusd_runtime.commands.emulate:main", "serve a device from a recording: fusd emulate rtc.pcapng"),
}


class CliError(LoadError):
    """A command failed: ``str()`` is the one line to print; ``status`` the exit status (1, or 2: usage)."""

    def __init__(self, message: str, status: int = 1) -> None:
        super().__init__(message, status)


class UsageError(CliError):
    """The command line is wrong (exit status 2)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, 2)


class ArgumentParser(argparse.ArgumentParser):
    """argparse whose errors are one line (``UsageError``, exit 2) instead of usage + message."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        kwargs.setdefault("formatter_class", argparse.RawDescriptionHelpFormatter)
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{message} (see {self.prog} --help)")


def decode(argv: List[str]) -> int:
    """``fusd decode`` is ``python -m fusd_wire decode``."""
    from fusd_wire.__main__ import main as wire_main
    return wire_main(["decode", *argv])


def _usage() -> str:
    width = max(len(name) for name in COMMANDS)
    lines = [f"  {name:<{width}}  {text}" for name, (_, text) in COMMANDS.items()]
    return ("usage: fusd [-v] COMMAND [ARGS...]   (fusd COMMAND --help for each)\n\n"
            + (__doc__ or "").split("\n\n")[0] + "\n\ncommands:\n" + "\n".join(lines)
            + "\n\nexample:\n  fusd serve sensor.py:Sensor /tmp/devs && cat /tmp/devs/sensor\n\n"
            "exit status: 0 done, 1 failed, 2 wrong command line\n")


def _run(command: str, argv: List[str], verbose: int) -> int:
    target, _ = COMMANDS[command]
    module_name, _, func = target.partition(":")
    try:
        return int(getattr(importlib.import_module(module_name), func)(argv) or 0)
    except LoadError as exc:  # CliError, UsageError, and the loader's own
        print(f"fusd {command}: {exc}", file=sys.stderr)
        return exc.status
    except KeyboardInterrupt:
        return 130
    except OSError as exc:  # MountError and friends: the runtime's messages say what to do
        print(f"fusd {command}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    except Exception as exc:
        if verbose:
            raise
        print(f"fusd {command}: internal error: {type(exc).__name__}: {exc} "
              f"(fusd -v {command} ... shows the traceback)".replace("\n", " "), file=sys.stderr)
        return 1


def main(argv: Optional[List[str]] = None) -> int:
    """The ``fusd`` command line; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    verbose = 0  # -v: what the runtime does (mounts, devices, protocol); -vv: also its internals (DEBUG)
    while argv and argv[0] in ("-v", "-vv", "--verbose"):
        verbose += 2 if argv.pop(0) == "-vv" else 1
    logging.basicConfig(level=logging.DEBUG if verbose > 1 else logging.INFO if verbose else logging.WARNING,
                        format="%(message)s")
    if not argv:
        print(f"fusd: no command given (commands: {', '.join(COMMANDS)}; fusd --help)", file=sys.stderr)
        return 2
    if argv[0] in ("-h", "--help", "help"):
        print(_usage(), end="")
        return 0
    command = argv[0]
    if command not in COMMANDS:
        near = difflib.get_close_matches(command, COMMANDS, n=1)
        hint = f"did you mean {near[0]!r}? " if near else ""
        print(f"fusd: unknown command {command!r} ({hint}commands: {', '.join(COMMANDS)}; fusd --help)",
              file=sys.stderr)
        return 2
    return _run(command, argv[1:], verbose)


if __name__ == "__main__":
    sys.exit(main())
