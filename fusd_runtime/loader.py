"""Finding the user's device from a command line: ``module:Class``, ``file.py:factory``, ``--arg k=v``.

``fusd serve``, ``fusd bench --device`` and ``fusd replay --device`` name a device
the way ``python -m`` names a module:

- ``sensor:Sensor`` imports ``sensor`` with the current directory first on the
  import path (as ``python -m`` does), then takes ``Sensor``;
- ``path/to/sensor.py:Sensor`` loads that file (its directory goes first on the
  import path, as ``python path/to/sensor.py`` does);
- the part after ``:`` may be a class or any factory function returning a Device;
  without it (``sensor.py``) the one Device subclass the module defines is used;
- ``--arg key=value`` become keyword arguments of that class or factory; a value
  is a Python literal if it reads as one (``2.5``, ``0o660``, ``True``, ``'x'``),
  else a string.

Mistakes raise :class:`LoadError` (a ``SystemExit``: a command exits with its
one-line message); ``status`` is 2 for what is wrong in the command line (no such
module, file or name, an argument the class does not take) and 1 for code that
failed (the module or the constructor raised).
"""

from __future__ import annotations

import ast
import difflib
import importlib
import importlib.util
import inspect
import os
import sys
import traceback
import types
from typing import Any, Callable, Dict, List, Sequence, Tuple


class LoadError(SystemExit):
    """The device could not be found or made; ``str()`` is one line saying why and what to do."""

    def __init__(self, message: str, status: int = 2) -> None:
        super().__init__(message)
        self.message = message
        self.status = status

    def __str__(self) -> str:
        return self.message


def parse_args(pairs: Sequence[str]) -> Dict[str, Any]:
    """``["rate=2.5", "unit=C"]`` -> ``{"rate": 2.5, "unit": "C"}`` (literals where they parse)."""
    out: Dict[str, Any] = {}
    for pair in pairs:
        key, sep, text = pair.partition("=")
        key = key.strip()
        if not sep or not key.isidentifier():
            raise LoadError(f"--arg wants KEY=VALUE with KEY a Python name, got {pair!r}")
        try:
            value: Any = ast.literal_eval(text)
        except (ValueError, SyntaxError, MemoryError, RecursionError):
            value = text
        out[key] = value
    return out


def load_factory(spec: str) -> Tuple[Callable[..., Any], str]:
    """``spec`` -> (the class or factory, a display name like ``sensor.py:Sensor``)."""
    where, sep, attr = spec.rpartition(":") if ":" in spec else (spec, "", "")
    if sep and not attr:
        raise LoadError(f"nothing after ':' in {spec!r}: give module:Class, file.py:Class or just the module")
    module = _import(where)
    if not attr:
        return _only_device_class(module, where), f"{where}:{_only_device_class(module, where).__name__}"
    try:
        obj = getattr(module, attr)
    except AttributeError:
        names = [n for n in vars(module) if not n.startswith("_")]
        near = difflib.get_close_matches(attr, names, n=1)
        classes = _device_classes(module)
        hint = f"did you mean {near[0]!r}? " if near else ""
        known = f"its devices: {', '.join(c.__name__ for c in classes)}" if classes else "it defines no Device class"
        raise LoadError(f"{where} has no {attr} ({hint}{known})") from None
    if not callable(obj):
        raise LoadError(f"{where}:{attr} is a {type(obj).__name__}: name a Device class or a function returning "
                        "a device")
    return obj, f"{where}:{attr}"


def load_device_class(spec: str) -> Any:
    """``module:Class`` (or ``path/to/file.py:Class``) -> the class (or factory); LoadError if not found."""
    return load_factory(spec)[0]


def make_device(factory: Callable[..., Any], kwargs: Dict[str, Any], label: str) -> Any:
    """Call the class or factory with ``kwargs``; a one-line LoadError if that fails or gives no Device."""
    from .device import Device
    check_arguments(factory, kwargs, label)
    try:
        device = factory(**kwargs)
    except Exception as exc:
        raise LoadError(f"{_call_text(label, kwargs)} raised {_where(exc)}", status=1) from None
    if not isinstance(device, Device):
        raise LoadError(f"{_call_text(label, kwargs)} returned {type(device).__name__}, not a fusd_runtime.Device",
                        status=1)
    return device


def check_arguments(factory: Callable[..., Any], kwargs: Dict[str, Any], label: str) -> None:
    """LoadError (usage) unless ``factory(**kwargs)`` binds: names the arguments it does take."""
    try:
        sig = inspect.signature(factory)
    except (TypeError, ValueError):
        return
    try:
        sig.bind(**kwargs)
    except TypeError as exc:
        takes = [n for n, p in sig.parameters.items() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
        short = label.rpartition(":")[2] or label
        have = f"{short} takes {', '.join(takes)}" if takes else f"{short} takes no arguments"
        given = _kwargs_text(kwargs) or "no arguments"
        raise LoadError(f"cannot call {label} with {given}: {exc} ({have}; give them as --arg NAME=VALUE)") from None


# ---------------------------------------------------------------------- importing
def _import(where: str) -> types.ModuleType:
    if where.endswith(".py") or os.sep in where:
        return _import_file(where)
    cwd = os.getcwd()
    if cwd not in sys.path and "" not in sys.path:
        sys.path.insert(0, cwd)  # what python -m does: the current directory first
    try:
        return importlib.import_module(where)
    except ModuleNotFoundError as exc:
        if exc.name is not None and (where == exc.name or where.startswith(exc.name + ".")):
            raise LoadError(f"cannot import {where!r}: no module of that name in {cwd} or on the import path; "
                            f"run from the directory that holds {where.split('.')[0]}.py, or give its path "
                            f"(fusd serve path/to/{where.split('.')[-1]}.py:Class)") from None
        raise LoadError(f"importing {where} raised {_where(exc)}", status=1) from None
    except Exception as exc:
        raise LoadError(f"importing {where} raised {_where(exc)}", status=1) from None


def _import_file(path: str) -> types.ModuleType:
    full = os.path.abspath(path)
    if not os.path.isfile(full):
        raise LoadError(f"no such file: {path}" + ("" if path.endswith(".py") else " (a module name has no '/')"))
    name = os.path.splitext(os.path.basename(full))[0]
    spec = importlib.util.spec_from_file_location(name if name.isidentifier() else "fusd_user_device", full)
    if spec is None or spec.loader is None:
        raise LoadError(f"cannot load {path}: not a Python file")
    module = importlib.util.module_from_spec(spec)
    directory = os.path.dirname(full)
    if directory not in sys.path:
        sys.path.insert(0, directory)  # what python FILE does: its siblings import
    registered = spec.name not in sys.modules
    if registered:
        sys.modules[spec.name] = module  # dataclasses, pickle and friends look classes up here
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        if registered:
            sys.modules.pop(spec.name, None)
        raise LoadError(f"importing {path} raised {_where(exc)}", status=1) from None
    return module


def _device_classes(module: types.ModuleType) -> List[type]:
    from .device import Device
    return [obj for obj in vars(module).values() if isinstance(obj, type) and issubclass(obj, Device)
            and obj.__module__ == module.__name__]


def _only_device_class(module: types.ModuleType, where: str) -> type:
    classes = _device_classes(module)
    if len(classes) == 1:
        return classes[0]
    if not classes:
        raise LoadError(f"{where} defines no fusd_runtime.Device subclass: name what to serve ({where}:factory)")
    names = ", ".join(c.__name__ for c in classes)
    raise LoadError(f"{where} defines several devices ({names}): say which, e.g. {where}:{classes[0].__name__}")


# ---------------------------------------------------------------------- messages
def _where(exc: BaseException) -> str:
    """``NameError: name 'x' is not defined (sensor.py, line 12)``: the innermost frame of the traceback."""
    text = f"{type(exc).__name__}: {exc}".replace("\n", " ")
    frames = traceback.extract_tb(exc.__traceback__)
    if frames:
        frame = frames[-1]
        text += f" ({os.path.basename(frame.filename)}, line {frame.lineno})"
    return text


def _kwargs_text(kwargs: Dict[str, Any]) -> str:
    return ", ".join(f"{k}={v!r}" for k, v in kwargs.items())


def _call_text(label: str, kwargs: Dict[str, Any]) -> str:
    return f"{label.rpartition(':')[2] or label}({_kwargs_text(kwargs)})"
