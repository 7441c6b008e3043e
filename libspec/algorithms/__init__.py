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


def load_proposer(checkpoint_dir, verifier_model, dtype=None):
    """A decoding proposer (libspec.decoding.Proposer) for any checkpoint we can run."""
    from libspec import checkpoint as ckpt
    from libspec.errors import SpecError

    model_type = ckpt.read_config(checkpoint_dir).get("speculators_model_type")
    if model_type == "eagle3":
        from libspec.algorithms.eagle3_model import load_proposer as load_eagle3

        return load_eagle3(checkpoint_dir, verifier_model, dtype)
    raise SpecError(f"{checkpoint_dir}: spec-tools cannot run {model_type!r} drafts yet (known: eagle3)")
