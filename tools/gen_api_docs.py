#!/usr/bin/env python3
"""Generate ``docs/api.md``, the API reference, from the docstrings of the public API.

    python tools/gen_api_docs.py            # rewrite docs/api.md
    python tools/gen_api_docs.py --check    # exit 1 if docs/api.md is stale

What is public (``tests/test_api_docs.py`` checks the same list is documented):

- the ``__all__`` of the packages ``fusd_wire``, ``fusd_runtime`` and ``fusd_wire.trace``;
- the classes and functions defined in the modules users touch (``MODULES``); enum
  classes (``fusd_wire.constants``) are listed without their members.

Classes and functions are documented by their docstrings; data (``POLLIN``, ``FAST``,
``OPS``...) by a ``#:`` comment above the assignment or a string right after it (the
Sphinx conventions), read from the source.  Each object is written out once, in the
section of the module that defines it; a package's section links to it.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import enum
import importlib
import importlib.util
import inspect
import os
import re
import sys
import textwrap
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Tuple

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUTPUT = os.path.join(ROOT, "docs", "api.md")

#: Packages documented by their ``__all__``.
PACKAGES = ("fusd_runtime", "fusd_wire", "fusd_wire.trace", "fusd_runtime.ioctl", "fusd_runtime.loopback",
            "fusd_runtime.testing", "fusd_runtime.replay", "fusd_runtime.emulate")
#: Modules whose public classes and functions are documented (all of them, not only ``__all__``).
MODULES = (
    "fusd_runtime.device", "fusd_runtime.server", "fusd_runtime.cuse", "fusd_runtime.ioctl.numbers",
    "fusd_runtime.ioctl.schema", "fusd_runtime.ioctl.clayout",
    "fusd_runtime.ioctl.record", "fusd_runtime.ioctl.codec", "fusd_runtime.ioctl.declare",
    "fusd_runtime.ioctl.restricted", "fusd_runtime.ioctl.retry", "fusd_runtime.ioctl.walk",
    "fusd_runtime.fusd", "fusd_runtime.mount", "fusd_runtime.checks",
    "fusd_wire.codec", "fusd_wire.constants", "fusd_wire.fastpath", "fusd_wire.errors",
)

#: the fence of a signature block: shown as Python, never run (tests/test_docs.py runs ```python blocks)
SIGNATURE = "```python signature"

_METHOD_DUNDERS = ("__call__", "__iter__", "__len__", "__getitem__")


@dataclass
class Entry:
    """One documented name: where it is reached, what it is, and its documentation."""

    module: str  # the section it is listed in
    name: str
    obj: Any
    kind: str  # "class", "function" or "data"
    doc: str  # "" when undocumented
    home: str  # the module whose section documents it in full

    @property
    def qualname(self) -> str:
        return f"{self.module}.{self.name}"


# --- reading documentation -------------------------------------------------------------------

def own_doc(obj: Any) -> str:
    """The object's own docstring (not one inherited from a base class), cleaned; "" if none."""
    doc = obj.__dict__.get("__doc__") if inspect.isclass(obj) else getattr(obj, "__doc__", None)
    if not isinstance(doc, str) or not doc.strip():
        return ""
    if dataclasses.is_dataclass(obj) and doc.startswith(obj.__name__ + "("):
        return ""  # the signature @dataclass writes into an undocumented class
    return inspect.cleandoc(doc)


def member_doc(obj: Any) -> str:
    """A method's or property's docstring; an override without one inherits its base's."""
    doc = inspect.getdoc(obj)
    return doc.strip() if doc else ""


def _source_tree(module: Any) -> Tuple[ast.Module, List[str]]:
    source = inspect.getsource(module)
    return ast.parse(source), source.splitlines()


def _assigned_names(node: ast.stmt) -> List[str]:
    targets: List[ast.expr] = []
    if isinstance(node, ast.Assign):
        targets = list(node.targets)
    elif isinstance(node, ast.AnnAssign):
        targets = [node.target]
    names: List[str] = []
    for t in targets:
        elts = t.elts if isinstance(t, (ast.Tuple, ast.List)) else [t]
        names += [e.id for e in elts if isinstance(e, ast.Name)]
    return names


def data_docs(body: List[ast.stmt], lines: List[str]) -> Dict[str, str]:
    """``#:`` comments above an assignment, or a string statement right after it, by name."""
    docs: Dict[str, str] = {}
    for i, node in enumerate(body):
        names = _assigned_names(node)
        if not names:
            continue
        comment: List[str] = []
        row = node.lineno - 2  # the line above, 0-based
        while row >= 0 and lines[row].strip().startswith("#:"):
            comment.insert(0, lines[row].strip()[2:].strip())
            row -= 1
        text = " ".join(comment)
        following = body[i + 1] if i + 1 < len(body) else None
        if (not text and isinstance(following, ast.Expr) and isinstance(following.value, ast.Constant)
                and isinstance(following.value.value, str)):
            text = inspect.cleandoc(following.value.value)
        if text:
            for name in names:
                docs[name] = text
    return docs


def module_data_docs(module: Any) -> Dict[str, str]:
    """Documented module-level data of ``module``, by name."""
    tree, lines = _source_tree(module)
    return data_docs(tree.body, lines)


def class_data_docs(cls: type) -> Dict[str, str]:
    """Documented class attributes (``#:`` comments in the class body), by name."""
    try:
        tree, lines = _source_tree(sys.modules[cls.__module__])
    except (OSError, TypeError, KeyError):
        return {}
    for node in ast.walk(tree):
        if isinstance(node, ast.ClassDef) and node.name == cls.__name__:
            return data_docs(node.body, lines)
    return {}


def _reexport_sources(package: Any) -> Dict[str, str]:
    """For a package ``__init__``: the module each name was imported from (``from .x import y``)."""
    tree, _ = _source_tree(package)
    found: Dict[str, str] = {}
    for node in tree.body:
        if isinstance(node, ast.ImportFrom) and node.module:
            base = importlib.util.resolve_name("." * node.level + node.module, package.__name__) \
                if node.level else node.module
            for alias in node.names:
                found[alias.asname or alias.name] = base
    return found


# --- what is public ------------------------------------------------------------------------

def _kind(obj: Any) -> str:
    if inspect.isclass(obj):
        return "class"
    if callable(obj):
        return "function"
    return "data"


def _home(obj: Any, fallback: str) -> str:
    """The module that documents ``obj`` in full: its defining one, if that is in ``MODULES``."""
    module = getattr(obj, "__module__", None) if _kind(obj) != "data" else None
    return module if module in MODULES else fallback


def public_entries() -> List[Entry]:
    """Every public name, in document order: the packages' ``__all__``, then the modules."""
    entries: List[Entry] = []
    for pkg_name in PACKAGES:
        pkg = importlib.import_module(pkg_name)
        sources = _reexport_sources(pkg)
        data_by_module: Dict[str, Dict[str, str]] = {}
        for name in pkg.__all__:
            obj = getattr(pkg, name)
            kind = _kind(obj)
            if kind == "data":
                src = sources.get(name, pkg_name)
                if src not in data_by_module:
                    data_by_module[src] = module_data_docs(importlib.import_module(src))
                doc = data_by_module[src].get(name, "")
            else:
                doc = own_doc(obj)
            entries.append(Entry(pkg_name, name, obj, kind, doc, _home(obj, pkg_name)))
    for mod_name in MODULES:
        mod = importlib.import_module(mod_name)
        for name, obj in vars(mod).items():
            if name.startswith("_") or getattr(obj, "__module__", None) != mod_name:
                continue
            kind = _kind(obj)
            if kind == "data":
                continue
            entries.append(Entry(mod_name, name, obj, kind, own_doc(obj), mod_name))
    return entries


def class_members(cls: type) -> List[Tuple[str, Any, str]]:
    """Public methods/properties defined by ``cls`` itself: (name, object, kind)."""
    if issubclass(cls, enum.Enum):
        return []
    members = []
    for name, raw in cls.__dict__.items():
        if name.startswith("_") and name not in _METHOD_DUNDERS:
            continue
        if isinstance(raw, property):
            members.append((name, raw, "property"))
        elif isinstance(raw, (classmethod, staticmethod)):
            members.append((name, raw.__func__, type(raw).__name__))
        elif inspect.isfunction(raw):
            members.append((name, raw, "method"))
    return members


# --- rendering -----------------------------------------------------------------------------

_ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+")


def _default(value: Any) -> str:
    if isinstance(value, enum.Enum):
        return f"{type(value).__name__}.{value.name}"
    if value is None or isinstance(value, (bool, int, float, str, bytes)):
        return repr(value)
    if isinstance(value, (tuple, list, frozenset)) and all(isinstance(v, (int, str)) for v in value):
        return repr(value)
    text = repr(value)
    return "..." if _ADDRESS.search(text) else text


def _annotation(ann: Any) -> str:
    return ann if isinstance(ann, str) else inspect.formatannotation(ann)


def signature(obj: Callable[..., Any], *, drop_self: bool = False) -> str:
    """``(a: int, b: str = 'x') -> bool``, with version-independent default values."""
    try:
        sig = inspect.signature(obj)
    except (TypeError, ValueError):
        return "(...)"
    params = list(sig.parameters.values())
    if drop_self and params and params[0].name in ("self", "cls"):
        params = params[1:]
    parts: List[str] = []
    star_done = False
    for i, p in enumerate(params):
        if p.kind is p.KEYWORD_ONLY and not star_done:
            parts.append("*")
            star_done = True
        if p.kind is p.VAR_POSITIONAL:
            star_done = True
        prefix = {p.VAR_POSITIONAL: "*", p.VAR_KEYWORD: "**"}.get(p.kind, "")
        text = prefix + p.name
        if p.annotation is not p.empty:
            text += f": {_annotation(p.annotation)}"
        if p.default is not p.empty:
            text += f" = {_default(p.default)}" if p.annotation is not p.empty else f"={_default(p.default)}"
        parts.append(text)
        if p.kind is p.POSITIONAL_ONLY and (i + 1 == len(params) or params[i + 1].kind is not p.POSITIONAL_ONLY):
            parts.append("/")
    result = f"({', '.join(parts)})"
    if sig.return_annotation is not sig.empty:
        result += f" -> {_annotation(sig.return_annotation)}"
    return result


_ROLE = re.compile(r":(?:class|meth|func|attr|mod|data|exc|obj):`~?([^`]+)`")


_SECTION = re.compile(r"^(Args|Arguments|Attributes|Returns|Raises|Yields):$")
_ITEM = re.compile(r"^    (\S[^:]*):\s*(.*)$")


def markdown(doc: str) -> str:
    """reST/Google-flavoured docstring text to Markdown.

    ``code`` and :role:`x` become `code`; ``Args:``/``Attributes:`` sections (items indented
    four spaces, continuations eight) become bullet lists; an indented block after a blank
    line (a ``::`` example) becomes a fenced ```python block, which ``tests/test_docs.py`` runs.
    """
    doc = _ROLE.sub(r"`\1`", doc).replace("``", "`").replace("::\n", ":\n")
    out: List[str] = []
    in_section = False
    lines = doc.split("\n")
    i = 0
    while i < len(lines):
        line = lines[i]
        i += 1
        if _SECTION.match(line):
            in_section = True
            out += [f"**{line[:-1]}:**", ""]
            continue
        if in_section:
            item = _ITEM.match(line)
            if item:
                out.append(f"- `{item.group(1)}`: {item.group(2)}")
                continue
            if line.startswith("        "):
                out.append("  " + line.strip())
                continue
            in_section = False
            if line.strip():
                out.append("")
        if line.startswith("    ") and (not out or not out[-1].strip()):
            block = [line]
            while i < len(lines) and (lines[i].startswith("    ") or not lines[i].strip()):
                block.append(lines[i])
                i += 1
            while block and not block[-1].strip():
                block.pop()
            out += ["```python", *textwrap.dedent("\n".join(block)).split("\n"), "```", ""]
            continue
        out.append(line)
    return "\n".join(out)


def anchor(qualname: str) -> str:
    return qualname.replace(".", "-").lower()


def _class_lines(e: Entry) -> List[str]:
    cls = e.obj
    bases = [b.__name__ for b in cls.__bases__ if b is not object]
    out = [f'<a id="{anchor(e.qualname)}"></a>', "", f"### class `{e.name}`", "", SIGNATURE,
           f"class {e.name}" + (f"({', '.join(bases)})" if bases else "")]
    init = getattr(cls, "__init__", None)
    if not issubclass(cls, enum.Enum) and inspect.isfunction(init):  # a constructor written in Python
        out[-1] += ":"
        out.append(f"    def __init__{signature(init).split(' -> ')[0]}: ...")
    out += ["```", ""]
    out += [markdown(e.doc), ""]
    if issubclass(cls, enum.Enum):
        names = list(cls.__members__)
        out += [f"{len(names)} members, `{names[0]}` … `{names[-1]}`; each also importable from "
                f"`{cls.__module__}` under its header name.", ""]
    if "__enter__" in cls.__dict__:
        out += ["A context manager (`with ...:`).", ""]
    attrs = class_data_docs(cls)
    if attrs:
        out += ["**Class attributes:**", ""]
        out += [f"- `{name}`: {markdown(text)}" for name, text in attrs.items()]
        out.append("")
    for name, member, kind in class_members(cls):
        if kind == "property":
            head = f"#### `{e.name}.{name}` (property)"
            fget = member.fget
            ret = inspect.signature(fget).return_annotation if fget is not None else inspect.Signature.empty
            code = f"{name}: {_annotation(ret)}" if ret is not inspect.Signature.empty else name
        else:
            head = f"#### `{e.name}.{name}`" + (f" ({kind})" if kind != "method" else "")
            code = f"def {name}{signature(member, drop_self=kind != 'staticmethod')}"
        out += [head, "", SIGNATURE, code, "```", ""]
        doc = member_doc(member)
        if doc:
            out += [markdown(doc), ""]
    return out


def _value(obj: Any) -> str:
    if isinstance(obj, (bool, int, str, bytes)) and not isinstance(obj, enum.Enum):
        return f" = {obj!r}"
    return f": {type(obj).__name__}"


def _entry_lines(group: List[Entry]) -> List[str]:
    """One entry, or several data entries that share a doc comment (``POLLIN, POLLPRI, ...``)."""
    e = group[0]
    anchors = [f'<a id="{anchor(x.qualname)}"></a>' for x in group]
    if e.kind == "class":
        return _class_lines(e)
    if e.kind == "function":
        return anchors + ["", f"### `{e.name}`", "", SIGNATURE,
                          f"def {e.name}{signature(e.obj)}", "```", "", markdown(e.doc), ""]
    names = ", ".join(f"`{x.name}`" for x in group)
    return anchors + ["", f"### {names} (data)", "", SIGNATURE] + [f"{x.name}{_value(x.obj)}" for x in group] \
        + ["```", "", markdown(e.doc), ""]


def _groups(entries: List[Entry]) -> List[List[Entry]]:
    groups: List[List[Entry]] = []
    for e in entries:
        if groups and e.kind == "data" and groups[-1][0].kind == "data" and groups[-1][0].doc == e.doc:
            groups[-1].append(e)
        else:
            groups.append([e])
    return groups


def _first_line(doc: str) -> str:
    return markdown(doc.split("\n\n")[0].replace("\n", " ")) if doc else ""


def render(entries: Optional[List[Entry]] = None) -> str:
    """The whole of ``docs/api.md``."""
    entries = public_entries() if entries is None else entries
    sections = list(PACKAGES) + [m for m in MODULES]
    out = [
        "# API reference",
        "",
        "<!-- Generated by tools/gen_api_docs.py from the docstrings; do not edit by hand. -->",
        "Generated from the docstrings by `python tools/gen_api_docs.py`; `tests/test_api_docs.py`",
        "fails when this file is out of date or a public name has no documentation.",
        "",
        "Public API: the `__all__` of `fusd_runtime`, `fusd_wire` and `fusd_wire.trace`, and the",
        "classes and functions of the modules below.  Everything else is internal.",
        "",
        "## Contents",
        "",
    ]
    out += [f"- [`{s}`](#{anchor(s)})" for s in sections]
    out.append("")
    for section in sections:
        mod = importlib.import_module(section)
        out += [f'<a id="{anchor(section)}"></a>', "", f"## `{section}`", ""]
        mod_doc = own_doc(mod)
        if mod_doc:
            out += [markdown(mod_doc), ""]
        mine = [e for e in entries if e.module == section]
        linked = [e for e in mine if e.home != section]
        if linked:
            out += ["| name | kind | summary |", "|---|---|---|"]
            for e in linked:
                target = f"{e.home}.{e.obj.__name__}"
                summary = _first_line(e.doc).replace("|", "\\|")
                out.append(f"| [`{e.name}`](#{anchor(target)}) | {e.kind} | {summary} |")
            out.append("")
        order = {"class": 0, "function": 1, "data": 2}
        own = sorted((e for e in mine if e.home == section),
                     key=lambda e: (order[e.kind], e.doc if e.kind == "data" else "", e.name.lower()))
        for group in _groups(own):
            out += _entry_lines(group)
    while out and out[-1] == "":
        out.pop()
    return "\n".join(out) + "\n"


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=textwrap.dedent(__doc__ or "").splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only check that docs/api.md is current")
    parser.add_argument("--output", default=OUTPUT, help="where to write (default docs/api.md)")
    args = parser.parse_args(argv)
    if ROOT not in sys.path:
        sys.path.insert(0, ROOT)
    text = render()
    if args.check:
        try:
            with open(args.output, encoding="utf-8") as f:
                current = f.read()
        except FileNotFoundError:
            current = ""
        if current != text:
            print(f"{args.output} is out of date: run python tools/gen_api_docs.py", file=sys.stderr)
            return 1
        return 0
    with open(args.output, "w", encoding="utf-8") as f:
        f.write(text)
    print(f"wrote {args.output} ({len(text.splitlines())} lines)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
