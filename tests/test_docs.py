"""Every code block of the documentation runs, finishes and leaves nothing behind.

Pages: README.md, docs/*.md, examples/README.md.  The convention (written up for
authors in docs/contributing.md, "Docs that run"):

- a fence's info string says what the block is: ```python and ```sh blocks are RUN;
  ```console (a shell session with its output) and ```text are shown, never run;
  ```python signature is an API signature (docs/api.md), never run.  Any other info
  string, or none, fails this test: an example nobody runs is how one ends up
  looping forever.
- a ```python block runs as a script with the project's interpreter, a ```sh block
  with ``bash -e -o pipefail``; the blocks of one page run in order in one work
  directory, each in its own pid and mount namespace with a private /tmp, as root
  with /dev/fuse.  A block must exit 0 within 30 s and leave no process and no
  FUSE mount behind.
- directives, as comment lines at the top of a block:
  ``# file: NAME``       write the block to NAME in the work directory instead of running
                         it (the page's later blocks use it: a module, then its shell session);
  ``# doc: needs X``     run only where X (an absolute path, or a program on PATH) exists,
                         else skip (say so in the text: "needs /dev/cuse");
  ``# doc: timeout=N``   allow N seconds instead of 30.
"""

from __future__ import annotations

import glob
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from typing import List, Optional

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PAGES = ["README.md", *sorted(os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, "docs", "*.md"))),
         "examples/README.md"]
RUN = ("python", "sh")
SHOWN = ("console", "text", "python signature")
DEFAULT_TIMEOUT = 30
SANDBOX = os.path.join(os.path.dirname(os.path.abspath(__file__)), "doc_sandbox.py")
_FENCE = re.compile(r"^( {0,12})(```+)(.*)$")
_DIRECTIVE = re.compile(r"^#\s*doc:\s*(.*)$")
_FILE = re.compile(r"^#\s*file:\s*(\S+)\s*$")


class DocError(Exception):
    """A block that breaks the convention: page, line and what is wrong."""


@dataclass
class Block:
    page: str
    line: int
    info: str
    code: str
    file: Optional[str] = None
    needs: List[str] = field(default_factory=list)
    timeout: float = DEFAULT_TIMEOUT

    @property
    def where(self) -> str:
        return f"{self.page}:{self.line}"

    def missing(self) -> Optional[str]:
        for need in self.needs:
            if not (os.path.exists(need) if need.startswith("/") else shutil.which(need)):
                return need
        return None


def parse(text: str, page: str) -> List[Block]:
    """The fenced blocks of a Markdown page, with their directives; DocError if one breaks the convention."""
    lines = text.split("\n")
    out: List[Block] = []
    i = 0
    while i < len(lines):
        m = _FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        indent, fence, info = m.group(1), m.group(2), m.group(3).strip()
        start = i + 1
        body: List[str] = []
        i += 1
        while i < len(lines) and not (lines[i].strip().startswith(fence) and lines[i].strip().strip("`") == ""):
            body.append(lines[i][len(indent):] if lines[i].startswith(indent) else lines[i].lstrip())
            i += 1
        if i >= len(lines):
            raise DocError(f"{page}:{start}: code block never closed")
        i += 1
        if info not in RUN and info not in SHOWN:
            raise DocError(f"{page}:{start}: code block marked {info or '(nothing)'!r}: mark it python or sh (run "
                           f"by tests/test_docs.py), or console/text (shown only); see docs/contributing.md")
        block = Block(page, start, info, "\n".join(body) + "\n")
        if info in RUN:
            _directives(block)
        out.append(block)
    return out


def _directives(block: Block) -> None:
    for line in block.code.split("\n"):
        stripped = line.strip()
        f = _FILE.match(stripped)
        d = _DIRECTIVE.match(stripped)
        if f:
            block.file = f.group(1)
        elif d:
            words = d.group(1).split()
            if len(words) == 2 and words[0] == "needs":
                block.needs.append(words[1])
            elif len(words) == 1 and words[0].startswith("timeout="):
                block.timeout = float(words[0].split("=", 1)[1])
            else:
                raise DocError(f"{block.where}: unknown directive {stripped!r} (# doc: needs X, "
                               "# doc: timeout=N, # file: NAME)")
        elif stripped.startswith("#!") or not stripped:
            continue
        else:
            return


def run_block(block: Block, workdir: str, python: str = sys.executable) -> dict:
    """Run ``block`` in a fresh sandbox (see doc_sandbox.py) with ``python``'s environment; its report."""
    assert not os.path.realpath(workdir).startswith("/tmp/"), "the sandbox hides /tmp: use a work directory elsewhere"
    fd, script = tempfile.mkstemp(prefix="block-", suffix=".py" if block.info == "python" else ".sh", dir=workdir)
    with os.fdopen(fd, "w") as f:
        f.write(block.code)
    result = script + ".json"
    cmd = ["unshare", "--mount", "--propagation", "private", "--pid", "--fork", "--mount-proc", "--kill-child",
           python, SANDBOX, workdir, str(block.timeout), result, block.info, script]
    try:
        subprocess.run(cmd, stdin=subprocess.DEVNULL, timeout=block.timeout + 60, check=True,
                       capture_output=True)
        with open(result) as f:
            return json.load(f)
    finally:
        for path in (script, script + ".out", result):
            if os.path.exists(path):
                os.unlink(path)


def problems(block: Block, report: dict) -> List[str]:
    """What is wrong with a block's run, one line each (empty: it passed)."""
    out = []
    if report["timed_out"]:
        out.append(f"{block.where}: did not finish within {block.timeout:g} s (killed)")
    elif report["status"] != 0:
        out.append(f"{block.where}: exited with status {report['status']}")
    if report["leftover_processes"]:
        out.append(f"{block.where}: left processes behind: {'; '.join(report['leftover_processes'])}")
    if report["leftover_mounts"]:
        out.append(f"{block.where}: left FUSE mounts behind: {', '.join(report['leftover_mounts'])}")
    return out


sandbox_ok = pytest.mark.skipif(
    not (os.geteuid() == 0 and os.path.exists("/dev/fuse") and shutil.which("unshare")),
    reason="the documentation runs as root with /dev/fuse, each block in its own namespaces (unshare)")


@pytest.fixture
def workdir():
    # Not under /tmp: every block gets a private /tmp of its own.
    path = tempfile.mkdtemp(prefix="fusd-docs-", dir="/var/tmp")
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def test_every_block_follows_the_convention() -> None:
    found = 0
    for page in PAGES:
        with open(os.path.join(ROOT, page)) as f:
            found += sum(b.info in RUN for b in parse(f.read(), page))
    assert found > 10


@sandbox_ok
@pytest.mark.parametrize("page", PAGES)
def test_page_runs(page: str, workdir: str) -> None:
    with open(os.path.join(ROOT, page)) as f:
        blocks = [b for b in parse(f.read(), page) if b.info in RUN]
    failures: List[str] = []
    skipped: List[str] = []
    for block in blocks:
        if block.file:
            with open(os.path.join(workdir, block.file), "w") as f:
                f.write(block.code)
            continue
        missing = block.missing()
        if missing:
            skipped.append(f"{block.where} (needs {missing})")
            continue
        report = run_block(block, workdir)
        found = problems(block, report)
        if found:
            failures += found + ["    output: " + report["output"].strip().replace("\n", "\n    ")]
    assert not failures, "\n".join(failures)
    if skipped and len(skipped) == len([b for b in blocks if not b.file]):
        pytest.skip("every block needs what is missing here: " + ", ".join(skipped))


# ---------------------------------------------------------------------- the harness can fail
def test_convention_errors_are_caught() -> None:
    with pytest.raises(DocError, match=r"page.md:2: code block marked 'bash'"):
        parse("text\n```bash\nls\n```\n", "page.md")
    with pytest.raises(DocError, match=r"page.md:1: code block marked '\(nothing\)'"):
        parse("```\nls\n```\n", "page.md")
    with pytest.raises(DocError, match=r"never closed"):
        parse("```sh\nls\n", "page.md")
    with pytest.raises(DocError, match=r"unknown directive '# doc: skip this'"):
        parse("```sh\n# doc: skip this\nls\n```\n", "page.md")
    block, = parse("- item\n\n   ```python\n   # doc: needs /no/such/thing\n   # doc: timeout=5\n   x = 1\n   ```\n",
                   "page.md")
    assert (block.info, block.needs, block.timeout, block.code) == ("python", ["/no/such/thing"], 5.0,
                                                                     "# doc: needs /no/such/thing\n# doc: timeout=5\n"
                                                                     "x = 1\n")
    assert block.missing() == "/no/such/thing"


@sandbox_ok
@pytest.mark.parametrize("code, info, expected", [
    ("while True:\n    pass\n", "python", "did not finish within 2 s"),
    ("raise SystemExit(3)\n", "python", "exited with status 3"),
    ("false\necho never\n", "sh", "exited with status 1"),
    ("sleep 300 &\n", "sh", "left processes behind: "),
    ("mkdir /tmp/m\npython -c 'from fusd_runtime.mount import Mount; Mount(\"/tmp/m\", watchdog=False).fd'\n", "sh",
     "left FUSE mounts behind: /tmp/m (fuse.fusd)"),
])
def test_a_bad_block_fails(code: str, info: str, expected: str, workdir: str) -> None:
    block = Block("page.md", 1, info, code, timeout=2)
    assert any(expected in p for p in problems(block, run_block(block, workdir))), expected


def test_readme_shows_the_system_packages() -> None:
    with open(os.path.join(ROOT, "system-packages.txt")) as f:
        listed = [line.split("#")[0].strip() for line in f if line.split("#")[0].strip()]
    with open(os.path.join(ROOT, "README.md")) as f:
        blocks = [b for b in parse(f.read(), "README.md") if b.info == "text"]
    shown = [b.code.split() for b in blocks if "fuse3" in b.code.split()]
    assert shown == [listed], "README's package list differs from system-packages.txt"
