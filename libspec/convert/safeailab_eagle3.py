"""SafeAILab EAGLE-3 checkpoints (github.com/SafeAILab/EAGLE, `eagle/model/cnets.py`).

Layout: a flat HF Llama config with `draft_vocab_size` (and sometimes `target_hidden_size`);
weights `midlayer.*` (the one decoder layer, reading [embedding, hidden]), `fc` over three
verifier layers, `norm`, `lm_head` over the draft vocabulary, `d2t`/`t2d`, sometimes
`embed_tokens`. The code captures the inputs of layers 2, n//2 and n-3, keeps the raw hidden
state as layer 0's residual, and feeds the pre-norm output back to the next step.
"""

from __future__ import annotations

from libspec.convert.common import Conversion, ConvertOptions
from libspec.verifier import VerifierConfig
from libspec.convert.eagle3_build import Eagle3Facts, build_eagle3, default_aux, layer_facts, rename_midlayer
from libspec.convert.reference import Eagle3Layout
from libspec.convert.source import Source
from libspec.convert.specforge_eagle3 import has_specforge_marks

NAME = "safeailab-eagle3"
SIGNATURE = "midlayer.* and fc.weight over 3 hidden states, flat Llama config with draft_vocab_size (SafeAILab EAGLE-3)"
# EaModel.from_pretrained drafts depth=7, and eagle/traineagle3 unrolls 7 steps.
DEFAULT_TOKENS = 7


def matches(source: Source) -> bool:
    """midlayer.* weights and no marks of SpecForge (eagle_config, fc_norm, norm_output)."""
    return source.any_prefix("midlayer.") and source.has("fc.weight") and "speculators_config" not in source.config and not has_specforge_marks(source)


def convert(source: Source, verifier: VerifierConfig, options: ConvertOptions, name: str = NAME) -> Conversion:
    """SafeAILab names -> ours; the source records no layer ids, norm flags or drafting depth."""
    n = verifier.lm["num_hidden_layers"]
    facts = Eagle3Facts(
        aux_recorded=None,
        aux_default=default_aux(n),
        aux_reason="SafeAILab's modeling_*_kv.py captures the inputs of layers 2, n//2 and n-3",
        norm_before_residual_recorded=None,
        norm_before_residual_default=False,
        norm_before_residual_reason="cnets.py keeps the raw hidden state as layer 0's residual (hidden_norm feeds attention only)",
        tokens_recorded=None,
        tokens_default=DEFAULT_TOKENS,
        tokens_reason="SafeAILab's EaModel drafts depth=7 by default (training unrolls 7 steps)",
        norm_output=False,
        layer=layer_facts(source.config),
    )
    tensors = {rename_midlayer(key): value for key, value in source.tensors.items()}
    layout = Eagle3Layout(first_layer="midlayer.")
    return build_eagle3(source, tensors, verifier, options, name, facts, layout, "SafeAILab EAGLE cnets.py (EAGLE-3 midlayer)")
