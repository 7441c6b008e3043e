"""The upstream gate: load a checkpoint with the `speculators` library (PyPI) and compare every parameter.

`SpeculatorModel.from_pretrained` picks the class from `speculators_model_type`, builds it from the
config and loads the safetensors through transformers. The gate then compares upstream's state dict
with our tensors: names, shapes and values, both ways.

Upstream also reads the verifier: its config (to resolve the aux layer ids) and its embedding,
lm_head and final norm (frozen teacher copies, never saved). When the verifier is not on this
machine the gate gives upstream a config-only stand-in and skips just the teacher copies, and says
so; every checkpoint parameter is still compared.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import tempfile
import warnings as python_warnings
from pathlib import Path
from typing import Iterator
from unittest import mock

import torch

from libspec.algorithms import algorithm_name
from libspec.algorithms.eagle import config as eagle
from libspec.format import checkpoint as ckpt
from libspec.errors import SpecError
from libspec.validate.gate_verifier import gate_verifier
from libspec.validate.artifacts import Report

KIND = "upstream-gate"
TESTED_VERSION = "0.9.0"
# Upstream parameters a checkpoint need not carry: the frozen teacher copies come from the
# verifier, and embed_tokens / lm_head are filled from it when absent (upstream marks unloaded
# ones with NaN and fills exactly those).
FROM_VERIFIER = {
    "verifier_lm_head.weight": "upstream's frozen copy of the verifier's lm_head (never saved)",
    "verifier_norm.weight": "upstream's frozen copy of the verifier's final norm (never saved)",
    "embed_tokens.weight": "filled from the verifier's embedding",
    "lm_head.weight": "filled from the verifier's lm_head",
}


def check(path: str | Path) -> Report:
    """Load a checkpoint folder with upstream speculators and report every difference from our tensors."""
    report = Report(str(path), KIND)
    try:
        ours = ckpt.load_tensors(path)
        config = ckpt.read_config(path)
    except SpecError as error:
        report.problems.append(str(error))
        return report
    if algorithm_name(config) == eagle.ALGORITHM:
        report.facts["not_applicable"] = (
            "an EAGLE-1/HASS folder (SPEC.md §11.6): upstream speculators 0.9.0 has no such type any more, "
            "so there is nothing of upstream's to load it with; vLLM serves it (method eagle)"
        )
        return report
    with _quiet_upstream():
        report.facts["speculators_version"] = importlib.metadata.version("speculators")
        if report.facts["speculators_version"] != TESTED_VERSION:
            report.facts["note"] = f"this gate was written against speculators {TESTED_VERSION}"
        with tempfile.TemporaryDirectory(prefix="spec-upstream-gate-") as workdir:
            model = _load(Path(path), config, report, Path(workdir))
    if model is None:
        return report
    report.facts["upstream_class"] = type(model).__name__
    report.facts["draft_layer_attention"] = _layer_attention(model)
    _compare(model.state_dict(), ours, report)
    return report


def _load(path: Path, config: dict, report: Report, workdir: Path):
    """Upstream's model for the folder, loaded against the gate verifier; None (with a problem) if it fails."""
    from speculators import SpeculatorModel, SpeculatorModelConfig

    verifier = gate_verifier(config, workdir)
    report.facts["verifier_used"] = verifier.note
    try:
        upstream_config = SpeculatorModelConfig.from_pretrained(str(path))
        # Upstream reads the verifier's config while loading (to resolve the aux layer ids): point it
        # at the folder chosen above, so that it never reaches for the network.
        upstream_config.speculators_config.verifier.name_or_path = str(verifier.folder)
        with contextlib.ExitStack() as stack:
            if not verifier.has_weights:
                model_class = SpeculatorModel.registered_model_class_from_config(upstream_config)
                stack.enter_context(mock.patch.object(model_class, "load_verifier_weights", lambda self: None))
                report.facts["verifier_weights"] = "skipped: upstream's frozen teacher copies were not loaded (no verifier weights here)"
            try:
                return SpeculatorModel.from_pretrained(str(path), config=upstream_config)
            except RuntimeError as error:
                if "ignore_mismatched_sizes" not in str(error):
                    raise
                # transformers refuses and logs the details; load again allowing it, so that
                # _compare can name each tensor whose shape differs.
                report.problems.append("upstream speculators refuses the checkpoint: tensor shapes differ from what its config implies")
                return SpeculatorModel.from_pretrained(str(path), config=upstream_config, ignore_mismatched_sizes=True)
    except Exception as error:  # upstream raises many types (pydantic, ValueError, OSError, ...)
        message = str(error).strip().splitlines()[0] if str(error).strip() else ""
        report.problems.append(f"upstream speculators could not load the checkpoint: {type(error).__name__}: {message}"[:600])
        return None


def _layer_attention(model) -> list[dict]:
    """Each draft layer's attention as upstream's model holds it: its sliding window (None: full)
    and, for DFlash, whether the block is causal (dflash/attention.py: full-attention layers never
    are; sliding layers are unless sliding_window_non_causal)."""
    sliding = set(getattr(model, "sliding_window_indices", []) or [])
    window = getattr(model, "sliding_window", None)
    non_causal = getattr(model, "sliding_window_non_causal", None)
    layers = []
    for index in range(len(model.layers)):
        layer = {"sliding_window": window if index in sliding else None}
        if non_causal is not None:
            layer["causal"] = index in sliding and window is not None and not non_causal
        layers.append(layer)
    return layers


def _compare(upstream: dict[str, torch.Tensor], ours: dict[str, torch.Tensor], report: Report) -> None:
    """Every tensor of ours must be an upstream parameter with our shape and values, and vice versa."""
    for name, tensor in sorted(ours.items()):
        theirs = upstream.get(name)
        if theirs is None:
            report.problems.append(f"upstream has no parameter {name}: it would drop this tensor")
        elif tuple(theirs.shape) != tuple(tensor.shape):
            report.problems.append(f"upstream parameter {name} has shape {list(theirs.shape)}, the checkpoint {list(tensor.shape)}")
        elif not torch.equal(theirs.to(tensor.dtype), tensor):
            report.problems.append(f"upstream parameter {name} does not hold the checkpoint's values after loading")
    not_saved = {}
    for name in sorted(set(upstream) - set(ours)):
        if name in FROM_VERIFIER:
            not_saved[name] = FROM_VERIFIER[name]
        else:
            report.problems.append(f"upstream parameter {name} is not in the checkpoint: upstream would initialise it randomly")
    report.facts["upstream_parameters"] = len(upstream)
    report.facts["checkpoint_tensors"] = len(ours)
    report.facts["not_from_checkpoint"] = not_saved


@contextlib.contextmanager
def _quiet_upstream() -> Iterator[None]:
    """Upstream logs each file it opens (loguru) and transformers warns about unused keys: not our output."""
    with python_warnings.catch_warnings():
        python_warnings.simplefilter("ignore")
        loguru = None
        try:
            from loguru import logger as loguru

            loguru.disable("speculators")
        except ImportError:
            pass
        from transformers.utils import logging as transformers_logging

        level = transformers_logging.get_verbosity()
        transformers_logging.set_verbosity_error()
        transformers_logging.disable_progress_bar()
        try:
            yield
        finally:
            transformers_logging.set_verbosity(level)
            transformers_logging.enable_progress_bar()
            if loguru is not None:
                loguru.enable("speculators")
