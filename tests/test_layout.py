"""The shape of the code: algorithms are plug-ins found through one registry, libspec has no
module-level import circle and no function over 60 lines."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

import libspec.algorithms as algorithms
from libspec.errors import SpecError
from libspec.format import checkpoint as ckpt

LIBSPEC = Path(algorithms.__file__).resolve().parents[1]
REPO = LIBSPEC.parent
ENTRY_POINTS = ("ALGORITHM", "config_problems", "config_warnings", "expected_tensors", "verifier_problems", "checkpoint_facts", "load_proposer", "training")
TRAINING_ENTRY_POINTS = ("Options", "FULL_VOCABULARY", "default_aux_layer_ids", "draft_config", "build_draft", "build_objective", "step_metrics", "complete_counts", "fsdp_units")


@pytest.mark.parametrize("name", sorted(algorithms.ALGORITHMS))
def test_every_algorithm_provides_the_plug_in_entry_points(name):
    package = algorithms.ALGORITHMS[name]
    missing = [entry for entry in ENTRY_POINTS if not hasattr(package, entry)]
    assert not missing, f"{name} lacks {missing}"
    assert package.ALGORITHM == name
    if package.training is not None:
        assert not [entry for entry in TRAINING_ENTRY_POINTS if not hasattr(package.training, entry)]


def test_trainable_algorithms_come_from_the_registry():
    assert algorithms.trainable_algorithms() == tuple(n for n, p in algorithms.ALGORITHMS.items() if p.training is not None)
    assert set(algorithms.trainable_algorithms()) == {"eagle3", "dflash", "eagle"}  # every algorithm we have can be trained
    with pytest.raises(SpecError, match="--algorithm 'medusa': expected one of eagle3, dflash, eagle"):
        algorithms.training_for("medusa")


def test_load_proposer_dispatches_through_the_registry(tmp_path, monkeypatch):
    """A new algorithm is one registry entry: the decoding engine finds its proposer there."""
    sentinel = object()
    plug_in = SimpleNamespace(ALGORITHM="toy", training=None, load_proposer=lambda checkpoint, model, dtype: (sentinel, checkpoint, dtype))
    monkeypatch.setitem(algorithms.ALGORITHMS, "toy", plug_in)
    (tmp_path / ckpt.CONFIG).write_text('{"speculators_model_type": "toy", "speculators_config": {}}')
    assert algorithms.load_proposer(tmp_path, None, "fp") == (sentinel, tmp_path, "fp")
    monkeypatch.delitem(algorithms.ALGORITHMS, "toy")
    with pytest.raises(SpecError, match="cannot run 'toy' drafts"):
        algorithms.load_proposer(tmp_path, None)


def test_spec_train_offers_only_trainable_algorithms():
    result = subprocess.run([sys.executable, "-m", "tools.spec_train", "--data", "d", "--verifier", "v", "-o", "o", "--algorithm", "medusa"],
                            cwd=REPO, capture_output=True, text=True)  # fmt: skip
    assert result.returncode == 2
    assert "invalid choice: 'medusa'" in result.stderr


def _modules() -> dict[str, Path]:
    modules = {}
    for path in LIBSPEC.rglob("*.py"):
        parts = path.relative_to(REPO).with_suffix("").parts
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return modules


def _module_level_imports(path: Path, modules: dict[str, Path]) -> set[str]:
    """libspec modules imported at module level (what runs when the module is imported)."""
    found = set()
    for node in ast.parse(path.read_text("utf-8")).body:
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("libspec"):
            for alias in node.names:
                found.add(f"{node.module}.{alias.name}" if f"{node.module}.{alias.name}" in modules else node.module)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name.startswith("libspec"))
    return {name for name in found if name in modules}


def test_no_module_level_import_circle():
    modules = _modules()
    graph = {name: _module_level_imports(path, modules) - {name} for name, path in modules.items()}
    circles = []
    for start in graph:  # depth-first search for a path back to `start`
        stack, seen = [(start, [start])], set()
        while stack:
            node, trail = stack.pop()
            for nxt in graph[node]:
                if nxt == start:
                    circles.append(trail)
                elif nxt not in seen:
                    seen.add(nxt)
                    stack.append((nxt, trail + [nxt]))
    assert not circles, f"import circles: {circles[:3]}"


def test_no_function_over_60_lines():
    long = []
    for path in LIBSPEC.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text("utf-8"))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno + 1 > 60:
                long.append(f"{path.relative_to(REPO)}:{node.lineno} {node.name} ({node.end_lineno - node.lineno + 1} lines)")
    assert not long, long
