"""Draft algorithms. Each is one module with the same entry points; this dict is the registry.

Entry points every algorithm module provides (SPEC.md, "Speculator checkpoints"):
  config_problems(config) -> list[str]          what is wrong with a checkpoint config.json
  expected_tensors(config) -> {name: (shape, dtype)}   the weights the config implies
"""

from __future__ import annotations

from types import ModuleType

from libspec.algorithms import eagle3

ALGORITHMS: dict[str, ModuleType] = {
    "eagle3": eagle3,
}


def algorithm_for(model_type: str) -> ModuleType | None:
    """The module implementing `speculators_model_type`, or None if we do not know it."""
    return ALGORITHMS.get(model_type)
