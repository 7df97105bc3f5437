"""The package's shape, checked: the rules of the layout hold as the code grows.

- no module over 400 lines, no function over 60;
- the leaves (text, features, model, lstm) import nothing of ours; the library imports no entry point; entry points
  import no other entry point.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "asr"
MODULES = sorted(PACKAGE.rglob("*.py"))
ENTRY_POINTS = {"asr.train", "asr.evaluate", "asr.transcribe", "asr.export", "asr.prepare", "asr.average",
                "asr.lm.__main__", "asr.report.__main__"}
LEAVES = {"asr.text", "asr.features", "asr.model", "asr.lstm"}
MAX_MODULE_LINES, MAX_FUNCTION_LINES = 400, 60


def _name(path: Path) -> str:
    return ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
    return {m for m in found if m == "asr" or m.startswith("asr.")}


def test_the_package_is_what_the_checks_below_read():
    names = {_name(p) for p in MODULES}
    assert {"asr.train", "asr.model", "asr.data.manifest", "asr.training.module"} <= names
    assert ENTRY_POINTS <= names and LEAVES <= names


@pytest.mark.parametrize("path", MODULES, ids=_name)
def test_module_and_function_sizes(path):
    lines = path.read_text(encoding="utf-8").splitlines()
    assert len(lines) <= MAX_MODULE_LINES, f"{_name(path)} has {len(lines)} lines: split it by idea"
    for node in ast.walk(ast.parse("\n".join(lines))):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            size = node.end_lineno - node.lineno + 1
            assert size <= MAX_FUNCTION_LINES, f"{_name(path)}:{node.lineno} {node.name}() has {size} lines"


@pytest.mark.parametrize("path", MODULES, ids=_name)
def test_imports_flow_one_way(path):
    name, imported = _name(path), _imports(path)
    if name in LEAVES:
        assert imported <= LEAVES, f"{name} is a leaf but imports {sorted(imported - LEAVES)}"
    entry = {m for m in imported if m in ENTRY_POINTS}
    assert not entry, f"{name} imports the entry point(s) {sorted(entry)}: move what it needs into the library"
