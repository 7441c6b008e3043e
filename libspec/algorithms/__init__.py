"""Draft algorithms: one package each, found through `ALGORITHMS` (the registry). Adding an algorithm
means adding its package and its name to `NAMES`.

What every algorithm package provides (SPEC.md, "Speculator checkpoints"):
  ALGORITHM                                      its `speculators_model_type` (or "eagle")
  config_problems(config, verifier_layers=None) -> list[str]   what is wrong with a checkpoint config.json
  config_warnings(config, verifier_layers=None) -> list[str]   what a valid config leaves unchecked, or
                                                 vLLM and upstream read differently
  expected_tensors(config) -> {name: TensorSpec} the weights the config implies
  verifier_problems(config, verifier_config)     where it does not fit a verifier
  checkpoint_facts(config, verifier_layers=None) -> dict       what spec-validate reports about it
  (verifier_layers: the verifier's layer count when spec-validate knows it, else None)
  load_proposer(checkpoint_dir, verifier_model, dtype)   a drafter for the decoding engine
  training                                       its training module, or None if spec-train cannot train it:
      Options (an options dataclass, see libspec/options.py), default_aux_layer_ids(depth, options), draft_config, build_draft,
      build_objective (a module whose forward(batch) is one step's loss and counts),
      step_metrics, complete_counts, fsdp_units, FULL_VOCABULARY (True: the draft's logits come from the
      verifier's own lm_head, so spec-train builds no reduced draft vocabulary)
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import TYPE_CHECKING

from libspec.errors import SpecError

if TYPE_CHECKING:
    from libspec.verifier import VerifierFingerprint

# The registry: the package names under libspec/algorithms/. "eagle" is EAGLE-1/2/HASS, a plain HF
# folder for vLLM's method "eagle" (SPEC.md §11.6).
NAMES = ("eagle3", "dflash", "eagle")
ALGORITHMS: dict[str, ModuleType] = {name: importlib.import_module(f"libspec.algorithms.{name}") for name in NAMES}


def algorithm_for(model_type: str) -> ModuleType | None:
    """The package implementing `speculators_model_type`, or None if we do not know it (or it is not a string)."""
    return ALGORITHMS.get(model_type) if isinstance(model_type, str) else None


def algorithm_name(config: dict) -> str | None:
    """Which algorithm a checkpoint config.json is for: its speculators type, or "eagle" for an
    EAGLE-1 folder (which has no speculators_config; spec_tools.algorithm names it)."""
    eagle = ALGORITHMS["eagle"]
    if eagle.config.is_eagle_config(config):
        return eagle.ALGORITHM
    return config.get("speculators_model_type")


def trainable_algorithms() -> tuple[str, ...]:
    """The algorithms spec-train can train."""
    return tuple(name for name, package in ALGORITHMS.items() if package.training is not None)


def training_for(name: str) -> ModuleType:
    """The training module of algorithm `name`, or a one-line error naming those that have one."""
    package = ALGORITHMS.get(name)
    if package is None or package.training is None:
        raise SpecError(f"--algorithm {name!r}: expected one of {', '.join(trainable_algorithms())}")
    return package.training


def load_proposer(checkpoint_dir, verifier_model, dtype=None):
    """A decoding proposer (libspec.bench.decoding.Proposer) for any checkpoint we can run."""
    from libspec.format import checkpoint as ckpt

    model_type = algorithm_name(ckpt.read_config(checkpoint_dir))
    package = ALGORITHMS.get(model_type)
    if package is None:
        raise SpecError(f"{checkpoint_dir}: spec-tools cannot run {model_type!r} drafts yet (known: {', '.join(ALGORITHMS)})")
    return package.load_proposer(checkpoint_dir, verifier_model, dtype)


def verifier_mismatches(checkpoint_dir, verifier_name_or_path: str, fingerprint: VerifierFingerprint | None = None) -> tuple[list[str], list[str]]:
    """Where a checkpoint does not fit the verifier it is about to run with, as (problems, differences):
    problems its algorithm cannot run with at all (sizes, aux layers out of range); differences between
    the verifier fingerprint recorded in spec_tools.verifier and this verifier's (SPEC.md §3)."""
    from libspec.format import checkpoint as ckpt
    from libspec.verifier import VerifierFingerprint, fingerprint_differences, fingerprint_verifier, read_model_config, resolve_model_dir, weights_not_checked

    config = ckpt.read_config(checkpoint_dir)
    package = ALGORITHMS.get(algorithm_name(config))
    verifier_config = read_model_config(resolve_model_dir(verifier_name_or_path))
    problems = package.verifier_problems(config, verifier_config) if package is not None else []
    recorded = (config.get("spec_tools") or {}).get("verifier")
    if not isinstance(recorded, dict):
        return problems, []  # not trained by spec-tools: nothing recorded to compare
    try:
        expected = VerifierFingerprint.from_dict(recorded)
        if fingerprint is None or (expected.weights is not None and weights_not_checked(expected, fingerprint)):  # digest the weights the way the record did
            fingerprint = fingerprint_verifier(verifier_name_or_path, like=expected)
        differences = fingerprint_differences(expected, fingerprint)
    except (KeyError, TypeError):  # a partial record (an EAGLE-1 folder keeps name and architectures): compare what it has
        fingerprint = fingerprint or fingerprint_verifier(verifier_name_or_path)
        keys = ("architectures", "model_type", "num_hidden_layers", "hidden_size", "vocab_size")
        differences = [f"{k}: {recorded[k]!r} vs {getattr(fingerprint, k)!r}" for k in keys if k in recorded and recorded[k] != getattr(fingerprint, k)]
    return problems, differences
