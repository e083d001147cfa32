"""The API reference: every public name is documented and annotated, and docs/api.md is current.

"Public" is what ``tools/gen_api_docs.py`` walks: the ``__all__`` of ``fusd_wire``,
``fusd_runtime`` and ``fusd_wire.trace``, and the classes/functions of the modules users
touch (``fusd_runtime.device``/``server``/``cuse``/``ioctl``/``fusd``, ``fusd_wire.codec``/
``constants``/``fastpath``/``errors``).
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import inspect
import os
import re
import sys
import types

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _load_generator() -> types.ModuleType:
    spec = importlib.util.spec_from_file_location("gen_api_docs", os.path.join(ROOT, "tools", "gen_api_docs.py"))
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["gen_api_docs"] = module
    spec.loader.exec_module(module)
    return module


gen = _load_generator()


@pytest.fixture(scope="module")
def entries():
    return gen.public_entries()


def _own_entries(entries):
    """Entries documented in full in their section (re-exports are links to them)."""
    return [e for e in entries if e.home == e.module]


def test_walk_covers_every_all_and_every_module(entries):
    listed = {(e.module, e.name) for e in entries}
    for pkg in gen.PACKAGES:
        for name in importlib.import_module(pkg).__all__:
            assert (pkg, name) in listed, f"{pkg}.{name} is in __all__ but not in the reference"
    for mod_name in gen.MODULES:
        mod = importlib.import_module(mod_name)
        public = [n for n, o in vars(mod).items()
                  if not n.startswith("_") and getattr(o, "__module__", None) == mod_name
                  and (inspect.isclass(o) or inspect.isfunction(o))]
        assert public, mod_name
        for name in public:
            assert (mod_name, name) in listed, f"{mod_name}.{name} is public but not in the reference"
    # the anchors of the API most people use
    for qual in ("fusd_runtime.device.Device", "fusd_runtime.server.Server", "fusd_wire.codec.Codec",
                 "fusd_runtime.fusd.register", "fusd_wire.constants.fuse_opcode", "fusd_wire.errors.WireError"):
        mod, _, name = qual.rpartition(".")
        assert (mod, name) in listed, qual


def test_every_public_name_has_a_docstring(entries):
    missing = [f"{e.qualname} ({e.kind})" for e in entries if not e.doc.strip()]
    assert not missing, "undocumented public names:\n" + "\n".join(missing)


def test_every_public_method_and_property_has_a_docstring(entries):
    missing = []
    for e in _own_entries(entries):
        if e.kind == "class":
            missing += [f"{e.qualname}.{name}" for name, member, _ in gen.class_members(e.obj)
                        if not gen.member_doc(member)]
    assert not missing, "undocumented public methods/properties:\n" + "\n".join(missing)


def _unannotated(func, skip_first: bool):
    sig = inspect.signature(func)
    params = list(sig.parameters.values())
    if skip_first and params and params[0].name in ("self", "cls"):
        params = params[1:]
    gaps = [p.name for p in params if p.annotation is p.empty]
    if sig.return_annotation is sig.empty and func.__name__ != "__init__":
        gaps.append("return")
    return gaps


def test_public_api_is_annotated(entries):
    gaps = []
    for e in _own_entries(entries):
        if e.kind == "function" and inspect.isfunction(e.obj):
            gaps += [f"{e.qualname}: {g}" for g in _unannotated(e.obj, False)]
        elif e.kind == "class":
            init = e.obj.__dict__.get("__init__")
            if inspect.isfunction(init):
                gaps += [f"{e.qualname}.__init__: {g}" for g in _unannotated(init, True)]
            for name, member, kind in gen.class_members(e.obj):
                func = member.fget if kind == "property" else member
                gaps += [f"{e.qualname}.{name}: {g}" for g in _unannotated(func, kind != "staticmethod")]
    assert not gaps, "public callables without annotations:\n" + "\n".join(gaps)


def test_api_md_is_up_to_date():
    with open(os.path.join(ROOT, "docs", "api.md"), encoding="utf-8") as f:
        current = f.read()
    assert current == gen.render(), "docs/api.md is stale: run python tools/gen_api_docs.py"


def test_api_md_links_resolve_and_names_appear(entries):
    with open(os.path.join(ROOT, "docs", "api.md"), encoding="utf-8") as f:
        text = f.read()
    anchors = set(re.findall(r'<a id="([^"]+)"></a>', text))
    links = re.findall(r"\]\(#([^)]+)\)", text)
    assert links and anchors
    assert not [x for x in links if x not in anchors], "links to missing anchors"
    for e in entries:  # documented in full in its home section, linked from a package's table
        assert gen.anchor(f"{e.home}.{e.obj.__name__ if e.home != e.module else e.name}") in anchors, e.qualname
    # the text is the docstrings: a sample of them is there, reST markup turned into Markdown
    from fusd_runtime import Device
    assert Device.read.__doc__.splitlines()[0].replace("``", "`") in text
    prose = re.sub(r"```python[^\n]*\n.*?```\n", "", text, flags=re.S)
    assert "``" not in prose and ":class:`" not in prose
    # enum classes are listed without their members
    assert "FUSE_COPY_FILE_RANGE_64 =" not in text and "class fuse_opcode(IntEnum)" in text


def test_generator_check_mode_detects_a_stale_file(tmp_path):
    out = tmp_path / "api.md"
    assert gen.main(["--output", str(out)]) == 0
    assert gen.main(["--check", "--output", str(out)]) == 0
    out.write_text(out.read_text() + "edited by hand\n")
    assert gen.main(["--check", "--output", str(out)]) == 1


def test_data_docs_come_from_doc_comments_and_strings():
    import ast
    source = (
        "#: first line\n#: second line\nA = 1\n"
        "B, C = 2, 3\n\"\"\"B and C, documented after.\"\"\"\n"
        "D = 4  # a plain comment documents nothing\n"
        "class K:\n    #: an attribute\n    x: int = 0\n"
    )
    tree = ast.parse(source)
    lines = source.splitlines()
    docs = gen.data_docs(tree.body, lines)
    assert docs == {"A": "first line second line", "B": "B and C, documented after.",
                    "C": "B and C, documented after."}
    assert gen.data_docs(tree.body[-1].body, lines) == {"x": "an attribute"}


def test_own_doc_does_not_inherit():
    class Base:
        """Documented."""

    class Child(Base):
        pass

    def bare():
        pass

    @dataclasses.dataclass
    class Plain:  # @dataclass gives it a __doc__ of its own: its signature
        x: int

    assert gen.own_doc(Base) == "Documented." and gen.own_doc(Child) == "" and gen.own_doc(bare) == ""
    assert Plain.__doc__ and gen.own_doc(Plain) == ""


def test_markdown_conversion():
    doc = "Use ``x`` and :class:`Server`.\n\nArgs:\n    a: first\n        continued\n    b, c: pair\n\nAfter."
    assert gen.markdown(doc) == ("Use `x` and `Server`.\n\n**Args:**\n\n- `a`: first\n  continued\n"
                                 "- `b, c`: pair\n\nAfter.")


def test_signatures_have_no_addresses():
    sentinel = object()

    def f(a: int, b: object = sentinel, *, c: str = "x") -> None:
        """f."""

    assert gen.signature(f) == "(a: int, b: object = ..., *, c: str = 'x') -> None"


def test_readme_points_to_the_reference_and_the_gallery():
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
        readme = f.read()
    links = re.findall(r"\]\(([^)#:]+)\)", readme)  # relative links (no URLs, no anchors)
    assert "docs/api.md" in links and "examples/README.md" in links
    missing = [link for link in links if not os.path.exists(os.path.join(ROOT, link))]
    assert not missing, f"README links to missing files: {missing}"
