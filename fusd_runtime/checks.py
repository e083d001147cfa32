"""Device mistakes caught when the device is added, not at the first system call.

Without these checks a misspelt callback (``def raed``) silently answers EINVAL
forever, and a callback with the wrong parameters fails only when a client first
calls it, with a traceback from inside the session.  ``Server.add`` and
``CuseServer.add`` call :func:`check_device`, which

- raises :class:`DeviceError` for what cannot work: a callback that cannot be
  called the way the runtime calls it (``read(ctx, size, offset)``...), one that is
  not callable or is a generator (``async def`` is fine: see aio.py), a declared ioctl handler that does not
  take ``(ctx, value)``, and a public method that looks like a misspelt callback
  (``raed``, ``on_read``, FUSD's ``close``) when the callback it resembles is not
  implemented — that device could never do what the method was written for;
- warns (:class:`DeviceWarning`) where it may be intended: a name close to a
  callback the device does implement (``reads`` next to ``read``), and methods the
  runtime never calls (``mmap``, ``lseek``).

A helper whose name trips the check can start with ``_`` (never checked).
:func:`describe_result` words a callback's wrong return value the same way, for
the runtime to log.
"""

from __future__ import annotations

import difflib
import inspect
import warnings
from typing import Any, Dict, List, Optional, Tuple

from .device import Device

#: every callback and the arguments the runtime passes it (after ``self``)
CALLBACKS: Dict[str, Tuple[str, ...]] = {
    "open": ("ctx",),
    "release": ("ctx",),
    "flush": ("ctx",),
    "fsync": ("ctx", "datasync"),
    "read": ("ctx", "size", "offset"),
    "write": ("ctx", "data", "offset"),
    "ioctl": ("ctx", "cmd", "arg", "out_size"),
    "poll": ("ctx", "events"),
}

#: what each callback may return (for messages)
EXPECTED: Dict[str, str] = {
    "open": "None (or ctx.defer())",
    "release": "None",
    "flush": "None (or ctx.defer())",
    "fsync": "None (or ctx.defer())",
    "read": "bytes, bytearray or memoryview of at most `size` bytes (or ctx.defer())",
    "write": "the number of bytes taken, an int (None: all of them; or ctx.defer())",
    "ioctl": "an int result, bytes to copy out, an (int, bytes) pair, an IoctlRetry (or ctx.defer())",
    "poll": "an int poll mask (POLLIN | POLLOUT ...; or ctx.defer())",
}

#: names other device frameworks use, and the callback that does their job here
ALIASES: Dict[str, str] = {"close": "release", "unlocked_ioctl": "ioctl", "compat_ioctl": "ioctl"}
#: prefixes of callback names in C and FUSD code (``do_read``, ``on_read``)
PREFIXES = ("do_", "on_", "handle_", "fusd_")
#: file operations a device file never gets here, and why
NEVER_CALLED: Dict[str, str] = {
    "mmap": "FUSE and CUSE device files cannot be memory-mapped",
    "lseek": "a device is a stream: set seekable = True and read()/write() get the file offset",
    "llseek": "a device is a stream: set seekable = True and read()/write() get the file offset",
    "readdir": "device files are not directories",
}
#: how alike a name must be to a callback's to look misspelt (difflib ratio: "raed"/"read" is 0.75)
CUTOFF = 0.75


class DeviceError(TypeError):
    """A device that cannot work as written; the message names the class, the method and the fix."""


class DeviceWarning(UserWarning):
    """Something in a device that is probably a mistake (a name close to a callback's, say)."""


def check_device(device: Any) -> None:
    """Check ``device``'s callbacks before it is served: DeviceError, or DeviceWarning where it may be intended."""
    errors: List[str] = []
    notes: List[str] = []
    cls = type(device)
    where = cls.__name__
    for name, args in CALLBACKS.items():
        problem = _callback_problem(device, name, args)
        if problem:
            errors.append(f"{where}.{problem}")
    errors += _ioctl_handler_problems(device, where)
    for name in _own_public_methods(device):
        mistake = _lookalike(device, name)
        if mistake is not None:
            (errors if mistake[0] else notes).append(f"{where}.{name}: {mistake[1]}")
    errors += _fusd_problems(device)
    for note in notes:
        warnings.warn(note, DeviceWarning, stacklevel=3)
    if errors:
        raise DeviceError("; ".join(errors))


def describe_result(device: Any, callback: str, value: Any, detail: str = "") -> str:
    """One line for a callback's wrong return value: device, callback, the value's type, what was expected."""
    name = getattr(device, "name", "") or type(device).__name__
    shown = repr(value)
    if len(shown) > 40:
        shown = shown[:37] + "..."
    detail = f" ({detail})" if detail else ""
    return (f"device {name!r}: {callback}() returned {type(value).__name__} {shown}{detail}; expected "
            f"{EXPECTED.get(callback, 'what its docstring says')}")


# ---------------------------------------------------------------------- the pieces
def _default(name: str) -> Any:
    return Device.__dict__.get(name)


def _callback_problem(device: Any, name: str, args: Tuple[str, ...]) -> Optional[str]:
    member = getattr(device, name, None)
    if member is None:
        return None
    if getattr(member, "__func__", None) is _default(name):
        return None  # the base class's own
    if not callable(member):
        return f"{name} is a {type(member).__name__}, not a method: define def {name}(self, {', '.join(args)})"
    func = getattr(member, "__func__", member)
    if inspect.isasyncgenfunction(func):
        return (f"{name} is an async generator: make it a coroutine (async def ... return), "
                f"which answers with what it returns")
    if inspect.isgeneratorfunction(func):
        return f"{name} is a generator function (it would return a generator, not {EXPECTED[name]})"
    return _signature_problem(member, name, args)


def _signature_problem(member: Any, name: str, args: Tuple[str, ...]) -> Optional[str]:
    try:
        sig = inspect.signature(member)
    except (TypeError, ValueError):
        return None  # a builtin without a signature: cannot tell
    try:
        sig.bind(*args)
    except TypeError as exc:
        self = "self, " if inspect.ismethod(member) else ""
        return (f"{name}{_with_self(member, sig)} cannot be called as {name}({', '.join(args)}), the way the "
                f"runtime calls it ({exc}): define def {name}({self}{', '.join(args)})")
    return None


def _with_self(member: Any, sig: inspect.Signature) -> str:
    text = str(sig)
    if inspect.ismethod(member):
        return "(self" + (", " + text[1:] if sig.parameters else text[1:])
    return text


def _ioctl_handler_problems(device: Any, where: str) -> List[str]:
    from .ioctl import ioctl_table
    out = []
    for spec in ioctl_table(device).values():
        if spec.handler is None:
            continue
        problem = _signature_problem(getattr(device, spec.handler), spec.handler, ("ctx", "value"))
        if problem:
            out.append(f"{where}.{problem} (the handler of declared ioctl {spec.cmd:#x})")
    return out


#: FUSD's callback table: name -> the arguments ``fusd.FusdDevice`` passes (after the file)
FUSD_CALLBACKS: Dict[str, Tuple[str, ...]] = {
    "open": ("file",), "close": ("file",), "read": ("file", "length", "offset"),
    "write": ("file", "data", "offset"), "ioctl": ("file", "cmd", "arg"), "poll": ("file", "events"),
}


def _fusd_problems(device: Any) -> List[str]:
    """The callback table of a FUSD-compatible device (``fusd.register``): unknown names, bad signatures."""
    from collections.abc import Mapping

    from .fusd import FusdDevice
    if not isinstance(device, FusdDevice):
        return []
    ops = device.ops
    table = dict(ops) if isinstance(ops, Mapping) else \
        {n: getattr(ops, n) for n in dir(ops) if not n.startswith("_") and callable(getattr(ops, n, None))}
    out = []
    for name, func in table.items():
        if name not in FUSD_CALLBACKS:
            if isinstance(ops, Mapping):
                near = difflib.get_close_matches(name, FUSD_CALLBACKS, n=1, cutoff=CUTOFF)
                hint = f"did you mean {near[0]!r}? " if near else ""
                out.append(f"fusd callback table: unknown callback {name!r} ({hint}known: {', '.join(FUSD_CALLBACKS)})")
            continue
        problem = _signature_problem(func, name, FUSD_CALLBACKS[name]) if callable(func) else \
            f"{name} is a {type(func).__name__}, not a function"
        if problem:
            out.append(f"fusd callback {problem}")
    return out


def _own_public_methods(device: Any) -> List[str]:
    """Public methods defined by the device's own classes (not Device's, not declared ioctl handlers)."""
    from .ioctl import ioctl_table
    handlers = {spec.handler for spec in ioctl_table(device).values()}
    base = set(dir(Device))
    names = []
    for klass in type(device).__mro__:
        if klass is Device or klass is object or issubclass(Device, klass):
            continue
        for name, member in vars(klass).items():
            if name.startswith("_") or name in base or name in handlers or name in names:
                continue
            if inspect.isfunction(member) or isinstance(member, (staticmethod, classmethod)):
                names.append(name)
    return names


def _lookalike(device: Any, name: str) -> Optional[Tuple[bool, str]]:
    """``(is_error, message)`` if ``name`` looks like a callback it is not; None if it does not."""
    if name in NEVER_CALLED:
        return False, f"the runtime never calls {name}() ({NEVER_CALLED[name]})"
    target = _resembles(name)
    if target is None:
        return None
    cls = type(device).__name__
    if name in ALIASES:
        what = f"what other frameworks call {name}() is {target}() here"
    elif name.startswith(PREFIXES) or name.lower() == target:
        what = f"looks like the callback {target}()"
    else:
        what = f"looks like a misspelt {target}()"
    if getattr(type(device), target, None) is not _default(target):
        return False, f"{what}; {cls} defines {target} too (rename this one to _{name} if it is a helper)"
    return True, (f"{what}, and {cls} does not define {target}, so this method is never called: rename it to "
                  f"{target}, or to _{name} if it is a helper")


def _resembles(name: str) -> Optional[str]:
    if name in ALIASES:
        return ALIASES[name]
    for prefix in PREFIXES:
        if name.startswith(prefix) and name[len(prefix):] in CALLBACKS:
            return name[len(prefix):]
    lowered = name.lower()
    if lowered in CALLBACKS:
        return lowered
    near = [c for c in CALLBACKS if abs(len(c) - len(lowered)) <= 1]
    match = difflib.get_close_matches(lowered, near, n=1, cutoff=CUTOFF)
    return match[0] if match else None
