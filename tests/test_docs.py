"""Every code example in README.md and docs/ runs, and the docs name only
files the repository holds.

A page's ```python blocks run in order, in one fresh namespace, in a
subprocess of their own (so one page's imports and settings cannot reach
another's) without ``JAX_ENABLE_X64``, which the test configuration sets for
the rest of the suite: a reader's shell does not have it.  A block that
needs a library that is not installed is left out, with the reason.
```bash blocks are not run.
"""
from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
FENCE = re.compile(r"^```(\w*)[^\n]*\n(.*?)^```[ \t]*$", re.S | re.M)
NEEDS = {  # library -> what in a block needs it
    "torch": re.compile(r"^\s*(import torch|from torch\b)|\btorch\.|einlocal\.torch", re.M),
    "jax": re.compile(r"^\s*(import jax|from jax\b)|\bjax\.|einlocal\.(jax|shard)|import .*\b(jax|shard)\b", re.M),
}
CHECK_FAILED = "FAILED: rerun with seed="   # the last line of a failing el.check report

RUNNER = r"""
import json, sys
page, blocks = sys.argv[1], json.load(open(sys.argv[2]))
namespace = {"__name__": "__main__"}
for line, code in blocks:
    print(f"[block at line {line}]", flush=True)
    # padded so that a traceback gives the line in the page
    exec(compile("\n" * line + code, page, "exec"), namespace)
print("[all blocks ran]", flush=True)
"""


def code_blocks(text: str) -> list[tuple[str, int, str]]:
    """(language, line of the block's first code line - 1, code) of each fenced block."""
    out = []
    for m in FENCE.finditer(text):
        out.append((m.group(1), text.count("\n", 0, m.start(2)), m.group(2)))
    return out


def missing_libraries(code: str) -> list[str]:
    return [lib for lib, pattern in NEEDS.items() if pattern.search(code) and importlib.util.find_spec(lib) is None]


def _id(page: Path) -> str:
    return str(page.relative_to(ROOT))


def test_pages_are_found():
    names = {_id(p) for p in PAGES}
    assert {"README.md", "docs/index.md", "docs/ops.md", "docs/sharding.md"} <= names
    readme = [c for lang, _, c in code_blocks((ROOT / "README.md").read_text()) if lang == "python"]
    assert len(readme) >= 5 and any("el.choose" in c for c in readme) and any("ragged.apply" in c for c in readme)


def test_code_blocks_parse():
    fence = "`" * 3
    text = f"a\n{fence}python\nx = 1\n{fence}\nb\n{fence}bash\nls\n{fence}\n"
    assert code_blocks(text) == [("python", 2, "x = 1\n"), ("bash", 6, "ls\n")]
    assert NEEDS["jax"].search("import jax, einlocal.shard as shard")
    assert NEEDS["torch"].search("from einlocal.torch import LocallyConnected2d")
    assert not NEEDS["torch"].search("import numpy as np, einlocal as el")


@pytest.mark.parametrize("page", PAGES, ids=_id)
def test_fences_are_tagged(page):
    """Every fenced block says its language, so no python example escapes the run
    as an untagged block (the command list in README is ``text``)."""
    untagged = [line + 1 for lang, line, _ in code_blocks(page.read_text())
                if lang not in ("python", "bash", "text", "toml")]
    assert not untagged, f"{_id(page)}: fenced blocks at lines {untagged} need a language: python, bash, toml or text"


@pytest.mark.parametrize("page", [p for p in PAGES if "```toml" in p.read_text()], ids=_id)
def test_every_toml_example_is_a_workload_file_that_loads(page):
    """A ```toml block is a workload file: it parses, and each workload binds."""
    from einlocal.workload_file import _tomllib, parse
    for lang, line, code in code_blocks(page.read_text()):
        if lang == "toml":
            assert parse(_tomllib().loads(code), f"{_id(page)}:{line + 1}"), code


@pytest.mark.parametrize("page", [p for p in PAGES if "```python" in p.read_text()], ids=_id)
def test_examples_run(page, tmp_path):
    blocks, left_out = [], []
    for lang, line, code in code_blocks(page.read_text()):
        if lang != "python":
            continue
        missing = missing_libraries(code)
        if missing:
            left_out.append(f"line {line + 1} needs {', '.join(missing)}")
        else:
            blocks.append((line, code))
    if not blocks:
        pytest.skip(f"{_id(page)}: every example needs a missing library ({'; '.join(left_out)})")
    (tmp_path / "blocks.json").write_text(json.dumps(blocks))
    env = {k: v for k, v in os.environ.items() if k != "JAX_ENABLE_X64"}
    proc = subprocess.run([sys.executable, "-c", RUNNER, _id(page), str(tmp_path / "blocks.json")],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"{_id(page)}: an example failed\n{output[-6000:]}"
    assert "[all blocks ran]" in proc.stdout
    assert CHECK_FAILED not in proc.stdout, f"{_id(page)}: an el.check example reports a failure\n{output[-6000:]}"
    if left_out:
        pytest.skip(f"{_id(page)}: ran {len(blocks)} examples; left out {'; '.join(left_out)}")


DOC_FILES = [ROOT / "README.md", ROOT / "mkdocs.yml", *sorted((ROOT / "docs").rglob("*.md"))]
MD_NAME = re.compile(r"[\w./-]*\w\.md\b")


@pytest.mark.parametrize("path", DOC_FILES, ids=_id)
def test_names_only_documents_the_repository_holds(path):
    """A ``*.md`` named in the docs is a file of the repository (relative to the
    naming file, to docs/ or to the root), never a document kept elsewhere."""
    missing = []
    for name in set(MD_NAME.findall(path.read_text())):
        bases = (path.parent, ROOT / "docs", ROOT, ROOT / "results")  # results/: what compare writes
        if not any((base / name).resolve().is_file() for base in bases):
            missing.append(name)
    assert not missing, f"{_id(path)} names {sorted(missing)}, which the repository does not hold"
