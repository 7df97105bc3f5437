"""The package's shape, checked as the code grows.

- every module sits in one layer of :data:`LAYERS`, and imports (``TYPE_CHECKING`` ones included)
  go only to its own layer or the layers before it, with no cycle;
- ``asr/training/`` is imported only by the entry points that train (``asr.train``,
  ``asr.average``); entry points import no other entry point;
- no module over 400 lines, no function over 60, no line over 100 columns (``make lint`` too).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "asr"
MODULES = sorted(PACKAGE.rglob("*.py"))
ENTRY_POINTS = {"asr.train", "asr.evaluate", "asr.transcribe", "asr.export", "asr.prepare",
                "asr.prepare_noise", "asr.average", "asr.shard", "asr.lm.__main__",
                "asr.lm.wordlist", "asr.report.__main__", "asr.serve.__main__",
                "asr.import_data"}
# (layer, its modules; a name ending in "." stands for a package's modules), in import order
LAYERS = (
    ("leaves", {"asr.text", "asr.audio", "asr.features", "asr.lstm", "asr.model", "asr.metrics",
                "asr.decoding", "asr.timing", "asr.quantize", "asr.transcript_formats", "asr.cli",
                "asr.distortions"}),
    ("recognizer", {"asr", "asr.recognizer", "asr.model_files"}),
    ("data", {"asr.data", "asr.data."}),
    ("training", {"asr.training", "asr.training."}),
    ("inference / report", {"asr.inference", "asr.report", "asr.report.", "asr.lm", "asr.lm."}),
    ("serving", {"asr.serve", "asr.serve."}),
    ("entry points", ENTRY_POINTS),
)
TRAINING_USERS = {"asr.train", "asr.average"}
MAX_MODULE_LINES, MAX_FUNCTION_LINES, MAX_COLUMNS = 400, 60, 100


def _name(path: Path) -> str:
    return ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")


NAMES = {_name(p) for p in MODULES}


def _layer(name: str) -> int:
    """Index in :data:`LAYERS` (entry points first: ``asr.lm.wordlist`` is one, in ``asr.lm``)."""
    if name in ENTRY_POINTS:
        return len(LAYERS) - 1
    found = [i for i, (_, mods) in enumerate(LAYERS)
             if name in mods or any(m.endswith(".") and name.startswith(m) for m in mods)]
    assert len(found) == 1, f"{name} is in {len(found)} layers of tests/test_layout.py: place it"
    return found[0]


def _imports(path: Path) -> tuple[set[str], int]:
    """Our modules ``path`` imports (``from asr.x import y`` counts ``asr.x.y`` when that is a
    module), and how many of those imports sit under ``if TYPE_CHECKING``."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    typing_only = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If)
                   and "TYPE_CHECKING" in ast.unparse(node.test) for n in ast.walk(node)}
    found, hidden = set(), 0
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        else:
            continue
        ours = {n for n in names if n in NAMES}
        found |= ours
        hidden += bool(ours) and id(node) in typing_only
    return found - {_name(path)}, hidden


GRAPH = {_name(p): _imports(p)[0] for p in MODULES}


def test_the_package_is_what_the_checks_below_read():
    assert {"asr.train", "asr.model", "asr.recognizer", "asr.data.manifest",
            "asr.training.module"} <= NAMES
    assert ENTRY_POINTS <= NAMES
    for name in NAMES:
        _layer(name)  # every module has its place


@pytest.mark.parametrize("path", MODULES, ids=_name)
def test_module_function_and_line_sizes(path):
    lines = path.read_text(encoding="utf-8").splitlines()
    assert len(lines) <= MAX_MODULE_LINES, f"{_name(path)} has {len(lines)} lines: split it by idea"
    wide = [i for i, line in enumerate(lines, 1) if len(line) > MAX_COLUMNS]
    assert not wide, f"{_name(path)}: lines {wide[:10]} run past {MAX_COLUMNS} columns"
    for node in ast.walk(ast.parse("\n".join(lines))):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            size = node.end_lineno - node.lineno + 1
            assert size <= MAX_FUNCTION_LINES, (f"{_name(path)}:{node.lineno} {node.name}() has "
                                                f"{size} lines")


@pytest.mark.parametrize("path", MODULES, ids=_name)
def test_imports_follow_the_layers(path):
    name = _name(path)
    imported, hidden = _imports(path)
    upward = sorted(m for m in imported if _layer(m) > _layer(name))
    assert not upward, (f"{name} ({LAYERS[_layer(name)][0]}) imports {upward}, a later layer: move "
                        "what it needs down")
    assert hidden == 0, f"{name} hides {hidden} import(s) of ours under TYPE_CHECKING"
    if not (name.startswith("asr.training") or name in TRAINING_USERS):
        training = sorted(m for m in imported if m.startswith("asr.training"))
        assert not training, f"{name} imports {training}: only {sorted(TRAINING_USERS)} may"
    entry = sorted(m for m in imported if m in ENTRY_POINTS)
    assert not entry, (f"{name} imports the entry point(s) {entry}: move what it needs into "
                       "the library")


def test_no_import_cycles():
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(name: str, path: list[str]) -> None:
        state[name] = 1
        for nxt in sorted(GRAPH.get(name, ())):
            assert state.get(nxt) != 1, f"import cycle: {' -> '.join([*path, name, nxt])}"
            if nxt not in state:
                visit(nxt, [*path, name])
        state[name] = 2

    for name in sorted(GRAPH):
        if name not in state:
            visit(name, [])
