"""Draft algorithms. Each is one module with the same entry points; this dict is the registry.

Entry points every algorithm module provides (SPEC.md, "Speculator checkpoints"):
  config_problems(config) -> list[str]          what is wrong with a checkpoint config.json
  expected_tensors(config) -> {name: (shape, dtype)}   the weights the config implies
  verifier_problems(config, verifier_config) -> list[str]   where it does not fit a verifier
  checkpoint_facts(config) -> dict              what spec-validate reports about it
"""

from __future__ import annotations

from types import ModuleType

from libspec.algorithms.dflash import config as dflash
from libspec.algorithms.eagle import config as eagle
from libspec.algorithms.eagle3 import config as eagle3

ALGORITHMS: dict[str, ModuleType] = {
    "eagle3": eagle3,
    "dflash": dflash,
    "eagle": eagle,  # EAGLE-1/2/HASS: a plain HF folder for vLLM's method "eagle" (SPEC.md §11.5)
}


def algorithm_for(model_type: str) -> ModuleType | None:
    """The module implementing `speculators_model_type`, or None if we do not know it."""
    return ALGORITHMS.get(model_type)


def algorithm_name(config: dict) -> str | None:
    """Which algorithm a checkpoint config.json is for: its speculators type, or "eagle" for an
    EAGLE-1 folder (which has no speculators_config; spec_tools.algorithm names it)."""
    if eagle.is_eagle_config(config):
        return eagle.ALGORITHM
    return config.get("speculators_model_type")


def load_proposer(checkpoint_dir, verifier_model, dtype=None):
    """A decoding proposer (libspec.bench.decoding.Proposer) for any checkpoint we can run."""
    from libspec.format import checkpoint as ckpt
    from libspec.errors import SpecError

    model_type = algorithm_name(ckpt.read_config(checkpoint_dir))
    if model_type == "eagle3":
        from libspec.algorithms.eagle3.model import load_proposer as load_eagle3

        return load_eagle3(checkpoint_dir, verifier_model, dtype)
    if model_type == "eagle":
        from libspec.algorithms.eagle.model import load_proposer as load_eagle

        return load_eagle(checkpoint_dir, verifier_model, dtype)
    if model_type == "dflash":
        from libspec.algorithms.dflash.model import load_proposer as load_dflash

        return load_dflash(checkpoint_dir, verifier_model, dtype)
    raise SpecError(f"{checkpoint_dir}: spec-tools cannot run {model_type!r} drafts yet (known: eagle3, eagle, dflash)")
