"""The reference servers ``fusd bench`` measures fusd against: C sources built at run time.

Each ``*.c`` file in this directory is one reference server, serving the same
perf device as fusd's ``perfserver`` (``perfdev.h`` holds what they share).  The
contract a reference keeps (header, build, argv, what it serves, readiness,
skipping, stopping) is ``README.md`` here; this module is the bench's side of
it: :func:`discover` reads the headers, :func:`build` compiles a reference (or
says why it cannot), and :class:`RefError` is the one error a malformed header
raises.

Adding a reference (e.g. ``uring_fuse.c``, a C io_uring FUSE server) means
adding its ``.c`` file with the header block; nothing here changes.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence, Tuple

#: this directory: the sources, ``perfdev.h`` and ``README.md``
HERE = os.path.dirname(os.path.abspath(__file__))
#: the transports a reference may serve (``transport:`` in its header)
TRANSPORTS = ("fuse", "cuse")
#: exit status of a reference that cannot run here (after one ``SKIP: reason`` line on stderr)
EXIT_SKIP = 3
#: flags every build gets; a reference adds its own with ``libs:`` and ``pkg-config:``
CFLAGS = ("-O2", "-Wall")

_HEADER_KEYS = ("name", "transport", "title", "pkg-config", "libs", "needs")


class RefError(ValueError):
    """A reference's header block is malformed: the message names the file, the line and what is wrong."""


@dataclass(frozen=True)
class Reference:
    """One reference server, as its header block describes it."""

    name: str  #: the column name (``[a-z0-9_]+``, the file's stem)
    transport: str  #: ``fuse`` or ``cuse``
    title: str  #: one line for the table's legend
    source: str  #: the ``.c`` file
    pkg_config: Tuple[str, ...] = ()  #: pkg-config packages (``--cflags --libs``); missing ones skip it
    libs: Tuple[str, ...] = ()  #: extra compiler arguments after the source
    needs: Tuple[str, ...] = ()  #: paths that must exist (``/dev/fuse``), else it is skipped


def parse_header(path: str) -> Reference:
    """The :class:`Reference` a source's leading ``/* fusd-bench-ref ... */`` block describes."""
    with open(path, encoding="utf-8") as f:
        lines = f.read().splitlines()
    where = os.path.basename(path)
    if not lines or lines[0].strip() != "/* fusd-bench-ref":
        raise RefError(f"{where}:1: a reference starts with the line '/* fusd-bench-ref' (see README.md)")
    fields: Dict[str, str] = {}
    for no, line in enumerate(lines[1:], start=2):
        text = line.strip()
        if text.startswith("*/"):
            break
        text = text.lstrip("*").strip()
        if not text:
            continue
        key, sep, value = text.partition(":")
        key = key.strip()
        if not sep or key not in _HEADER_KEYS:
            raise RefError(f"{where}:{no}: expected 'KEY: value' with KEY one of {', '.join(_HEADER_KEYS)}, "
                           f"got {text!r}")
        if key in fields:
            raise RefError(f"{where}:{no}: {key} given twice")
        fields[key] = value.strip()
    else:
        raise RefError(f"{where}: the header block is not closed with '*/'")
    for key in ("name", "transport", "title"):
        if not fields.get(key):
            raise RefError(f"{where}: the header has no {key}:")
    stem = os.path.splitext(where)[0]
    if fields["name"] != stem or not re.fullmatch(r"[a-z0-9_]+", stem):
        raise RefError(f"{where}: name: {fields['name']!r} must be the file's stem, made of [a-z0-9_]")
    if fields["transport"] not in TRANSPORTS:
        raise RefError(f"{where}: transport: {fields['transport']!r} is not one of {', '.join(TRANSPORTS)}")
    return Reference(name=fields["name"], transport=fields["transport"], title=fields["title"], source=path,
                     pkg_config=tuple(fields.get("pkg-config", "").split()),
                     libs=tuple(fields.get("libs", "").split()), needs=tuple(fields.get("needs", "").split()))


def discover(directory: str = HERE, transport: Optional[str] = None) -> List[Reference]:
    """Every reference in ``directory`` (sorted by name), optionally only those of one transport."""
    refs = [parse_header(os.path.join(directory, n)) for n in sorted(os.listdir(directory)) if n.endswith(".c")]
    return [r for r in refs if transport is None or r.transport == transport]


def compiler() -> Optional[str]:
    """The C compiler on PATH (gcc, else cc), or None."""
    return shutil.which("gcc") or shutil.which("cc")


def cache_dir() -> str:
    """Where built programs are kept (``$XDG_CACHE_HOME/fusd``, default ``~/.cache/fusd``)."""
    return os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "fusd")


def build_c(name: str, source: str, args: Sequence[str] = (), include: Sequence[str] = (),
            progress: Optional[Callable[[str], None]] = None) -> Tuple[Optional[str], str]:
    """Compile ``source`` (C text) once per (text, flags, compiler) into the cache: ``(exe, "")``.

    ``(None, reason)`` when there is no compiler or the build fails (the reason is
    the compiler's first error line).  The ``include`` directories are searched for
    ``#include "..."``; their ``.h`` files are part of what the cache key covers.
    """
    cc = compiler()
    if cc is None:
        return None, "no C compiler (gcc or cc) on PATH"
    key = hashlib.sha256()
    for part in (source, cc, *CFLAGS, *args):
        key.update(part.encode() + b"\0")
    for directory in include:
        for h in sorted(n for n in os.listdir(directory) if n.endswith(".h")):
            with open(os.path.join(directory, h), "rb") as f:
                key.update(h.encode() + b"\0" + f.read())
    cache = cache_dir()
    exe = os.path.join(cache, f"{name}-{key.hexdigest()[:12]}")
    if os.access(exe, os.X_OK):
        return exe, ""
    try:
        os.makedirs(cache, exist_ok=True)
        src = exe + ".c"
        with open(src, "w", encoding="utf-8") as f:
            f.write(source)
        if progress:
            progress(f"compiling {name} with {cc}")
        tmp = f"{exe}.tmp{os.getpid()}"
        cmd = [cc, *CFLAGS, *(f"-I{d}" for d in include), "-o", tmp, src, *args]
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        if out.returncode != 0:
            errors = [line for line in out.stderr.splitlines() if "error" in line] or out.stderr.splitlines()
            return None, f"build failed: {errors[0].strip() if errors else 'exit status ' + str(out.returncode)}"
        os.replace(tmp, exe)
        return exe, ""
    except (OSError, subprocess.SubprocessError) as exc:
        return None, f"build failed: {exc}"


def _pkg_config(packages: Sequence[str]) -> Tuple[Optional[List[str]], str]:
    if not packages:
        return [], ""
    exe = shutil.which("pkg-config")
    if exe is None:
        return None, f"pkg-config not found (needed for {' '.join(packages)})"
    out = subprocess.run([exe, "--cflags", "--libs", *packages], capture_output=True, text=True)
    if out.returncode != 0:
        hint = " (libfuse3-dev not installed?)" if "fuse3" in packages else ""
        return None, f"pkg-config {' '.join(packages)}: not found{hint}"
    return out.stdout.split(), ""


def build(ref: Reference, progress: Optional[Callable[[str], None]] = None) -> Tuple[Optional[str], str]:
    """Build one reference: ``(exe, "")``, or ``(None, why it is skipped here)``."""
    missing = [p for p in ref.needs if not os.path.exists(p)]
    if missing:
        return None, f"{', '.join(missing)} does not exist here"
    if compiler() is None:
        return None, "no C compiler (gcc or cc) on PATH"
    flags, why = _pkg_config(ref.pkg_config)
    if flags is None:
        return None, why
    with open(ref.source, encoding="utf-8") as f:
        text = f.read()
    include = list(dict.fromkeys([os.path.dirname(ref.source), HERE]))  # its own directory, then perfdev.h's
    return build_c(ref.name, text, [*flags, *ref.libs], include=include, progress=progress)
