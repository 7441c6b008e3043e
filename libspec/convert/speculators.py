"""Checkpoints already in the spec-tools format (SPEC.md §11: speculators 0.9.0 layout for
`eagle3` and `dflash`, and our EAGLE-1 folder): converting them is a no-op.

The tensors are copied byte for byte and the config is kept as is; only a different
`--verifier` is written into it, and an upstream EAGLE-3 config gets the
`num_aux_hidden_states` vLLM's Llama head needs and, where upstream's converter wrote
`eagle_aux_hidden_state_layer_ids: null`, the verifier's default layers vLLM and upstream then
capture, written out (or --layers); each said so.
"""

from __future__ import annotations

import copy

from libspec.algorithms.eagle import config as eagle
from libspec.algorithms.eagle3 import config as eagle3
from libspec.convert.common import DERIVED, OPTION, Conversion, ConvertOptions, Decision, choose
from libspec.verifier import VerifierConfig
from libspec.convert.source import Source
from libspec.errors import SpecError

NAME = "speculators"
SIGNATURE = "speculators_config with speculators_model_type eagle3/dflash in the 0.9.0 layout, or a spec-tools EAGLE-1 folder (no-op)"


def matches(source: Source) -> bool:
    from libspec.convert import speculators_legacy

    config = source.config
    if eagle.is_eagle_config(config):
        return True
    return "speculators_config" in config and config.get("speculators_model_type") in ("eagle3", "dflash") and not speculators_legacy.legacy_marks(config)


def convert(source: Source, verifier: VerifierConfig, options: ConvertOptions, name: str = NAME) -> Conversion:
    """The same checkpoint; the options cannot change what the source records."""
    config = copy.deepcopy(source.config)
    algorithm = eagle.ALGORITHM if eagle.is_eagle_config(config) else config["speculators_model_type"]
    null_aux = algorithm == "eagle3" and config.get("eagle_aux_hidden_state_layer_ids") is None
    if options != ConvertOptions(aux_layer_ids=options.aux_layer_ids if null_aux else None):
        raise SpecError(
            f"{source.path}: already a spec-tools checkpoint; --layers (unless its layer ids are null), --norm-before-residual "
            "and --speculative-tokens cannot rewrite it (they would change what it was trained with)"
        )
    record = config["spec_tools"]["verifier"] if algorithm == eagle.ALGORITHM else config["speculators_config"]["verifier"]
    decisions = []
    tl = config.get("transformer_layer_config") or {}
    if null_aux:
        config["eagle_aux_hidden_state_layer_ids"] = _resolve_null_aux(source, verifier, options, decisions)
    if algorithm == "eagle3" and "num_aux_hidden_states" not in tl:
        # Upstream does not write it; vLLM's Llama head then sizes fc for 3 aux layers whatever the ids say.
        tl["num_aux_hidden_states"] = len(config.get("eagle_aux_hidden_state_layer_ids") or [])
        decisions.append(Decision("transformer_layer_config.num_aux_hidden_states", tl["num_aux_hidden_states"], DERIVED, "vLLM's Llama EAGLE-3 head reads it (default 3) to size fc"))
    if record.get("name_or_path") != verifier.name_or_path:
        decisions.append(Decision("verifier", verifier.name_or_path, OPTION, f"the source names {record.get('name_or_path')!r}"))
        record["name_or_path"] = verifier.name_or_path
        record["architectures"] = list(verifier.config.get("architectures") or [])
    return Conversion(algorithm, config, dict(source.tensors), decisions, ["already in the spec-tools format: tensors copied byte for byte"])


def _resolve_null_aux(source: Source, verifier: VerifierConfig, options: ConvertOptions, decisions: list) -> list[int]:
    """Null ids mean the verifier's [2, n//2, n-3] to vLLM and upstream alike (SPEC.md §11.1): write them out."""
    n = verifier.lm["num_hidden_layers"]
    reason = f"the source records null, so vLLM and upstream capture the verifier's default [2, n//2, n-3] for its n = {n} layers"
    ids = list(choose(decisions, "aux_layer_ids", options.aux_layer_ids, None, tuple(eagle3.verifier_default_aux_layer_ids(n)), reason))
    if len(ids) != eagle3.NUM_DEFAULT_AUX or ids != sorted(set(ids)) or min(ids) < 0 or max(ids) > n:
        raise SpecError(
            f"{source.path}: eagle_aux_hidden_state_layer_ids is null and {ids} are not {eagle3.NUM_DEFAULT_AUX} ascending distinct "
            f"layers of the verifier's {n} (fc reads {eagle3.NUM_DEFAULT_AUX}); pass --layers with the ids it was trained on"
        )
    return ids
