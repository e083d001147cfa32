"""Typing: header names of fusd_wire.constants are visible to mypy, values are written once, py.typed ships.

The mypy run over both packages is in .ci/run (``mypy fusd_wire fusd_runtime``); here
mypy checks small client programs of the public API.
"""

from __future__ import annotations

import ast
import enum
import os
import shutil
import subprocess
import sys
import textwrap

import pytest

from fusd_wire import constants as C

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_header_names_are_the_enum_members():
    from fusd_wire.constants import FOPEN_DIRECT_IO, FUSE_IOCTL_RETRY, FUSE_READ
    assert FUSE_READ is C.fuse_opcode.FUSE_READ and FUSE_READ == 15
    assert FOPEN_DIRECT_IO is C.FopenFlags.FOPEN_DIRECT_IO
    assert FUSE_IOCTL_RETRY is C.IoctlFlags.FUSE_IOCTL_RETRY
    assert C.CUSE_INIT == 4096 and C.FUSE_NOTIFY_POLL == 1 and C.FUSE_SECURITY_CTX == 1 << 32
    # every member of every class, under its own name
    for cls in C.CONSTANT_CLASSES.values():
        for name, member in cls.__members__.items():
            assert getattr(C, name) is member
    assert {"FUSE_LOOKUP", "FOPEN_STREAM", "fuse_opcode", "opcode_name"} <= set(dir(C))


def test_header_names_do_not_collide_across_classes():
    names = [name for cls in C.CONSTANT_CLASSES.values() for name in cls.__members__]
    assert len(names) == len(set(names)) == len(C.HEADER_NAMES)
    classes = [v for v in vars(C).values() if isinstance(v, type) and issubclass(v, enum.Enum)
               and v.__module__ == C.__name__]
    assert sorted(c.__name__ for c in classes) == sorted(C.CONSTANT_CLASSES)


def test_unknown_name_is_an_attribute_error():
    with pytest.raises(AttributeError, match="FUSE_RAED"):
        C.FUSE_RAED  # noqa: B018
    assert not hasattr(C, "FUSE_RAED")
    with pytest.raises(ImportError):
        exec("from fusd_wire.constants import FUSE_NOPE", {})


def test_each_constant_value_is_written_once():
    """No module-level assignment repeats a class member: the classes hold the only copy."""
    with open(C.__file__, encoding="utf-8") as f:
        source = f.read()
    tree = ast.parse(source)
    module_level = {t.id for node in tree.body if isinstance(node, (ast.Assign, ast.AnnAssign))
                    for t in (node.targets if isinstance(node, ast.Assign) else [node.target])
                    if isinstance(t, ast.Name)}
    assert not module_level & set(C.HEADER_NAMES), "header names assigned at module level as well"
    assert "globals().update" not in source  # names mypy cannot see


def test_py_typed_markers_exist():
    for pkg in ("fusd_wire", "fusd_runtime"):
        assert os.path.isfile(os.path.join(ROOT, pkg, "py.typed")), pkg


def _mypy() -> list:
    try:
        import mypy  # noqa: F401
    except ImportError:
        if shutil.which("mypy") is None:
            pytest.skip("mypy is not installed (pip install -e '.[test]')")
        return ["mypy"]
    return [sys.executable, "-m", "mypy"]


def test_mypy_sees_header_names_and_checks_the_classes(tmp_path):
    """A client using the header names type-checks; a misspelt class member or a wrong type does not."""
    good = tmp_path / "good.py"
    good.write_text(textwrap.dedent("""
        from fusd_wire import constants as C
        from fusd_wire.constants import FOPEN_DIRECT_IO, fuse_opcode
        from fusd_runtime import Device, Server, POLLIN
        flags: int = FOPEN_DIRECT_IO | C.FOPEN_NONSEEKABLE
        op: int = C.FUSE_READ
        member: fuse_opcode = fuse_opcode.FUSE_WRITE

        class Hello(Device):
            def read(self, ctx, size: int, offset: int) -> bytes:
                ctx.bytes_read = size          # any per-open attribute
                return b"hello"[offset:offset + size]

            def poll(self, ctx, events: int) -> int:
                return POLLIN

        def serve(path: str) -> None:
            with Server(path) as server:
                server.add(Hello(), "hello", mode=0o444)
        """))
    bad = tmp_path / "bad.py"
    bad.write_text(textwrap.dedent("""
        from fusd_wire import constants as C
        from fusd_runtime import Server
        name: str = C.FUSE_READ
        op = C.fuse_opcode.FUSE_RAED
        Server(readers="two")
        """))
    cmd = _mypy() + ["--no-incremental", "--cache-dir", os.devnull, "--python-version", "3.11"]
    ok = subprocess.run(cmd + [str(good)], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    res = subprocess.run(cmd + [str(bad)], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert res.returncode == 1, res.stdout + res.stderr
    errors = [line for line in res.stdout.splitlines() if ": error:" in line]
    assert len(errors) == 3, res.stdout
    assert 'has type "int", variable has type "str"' in errors[0]
    assert "FUSE_RAED" in errors[1]
    assert "readers" in errors[2]
