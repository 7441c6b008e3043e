"""The numerical check of a conversion: the converted checkpoint, run by spec-tools' model of the
algorithm (what vLLM computes), against the source's own math over its original tensors
(libspec/convert/reference.py), on the same random inputs.

Both sides run in float32 from the stored weights. Weights the draft borrows from the verifier
(embedding, lm_head) are the verifier's when its weights are local, else shared random stand-ins.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from libspec.format import checkpoint as ckpt
from libspec.algorithms.dflash.model import DFlashDraft
from libspec.algorithms.eagle3.model import Eagle3Draft
from libspec.algorithms.layers import DraftCache
from libspec.algorithms.eagle.model import EagleDraft
from libspec.convert.common import Conversion
from libspec.verifier import VerifierConfig, verifier_tensor

# Relative to the largest |logit|: float32 with different operation orders agrees to ~1e-6.
TOLERANCE = 1e-4
CONTEXT = 7  # positions per step (EAGLE) or of verifier context (DFlash)


@dataclass(frozen=True)
class NumericCheck:
    """How closely the converted draft reproduces the source's logits."""

    reference: str
    compared: str
    shared_weights: str
    max_abs_diff: float
    max_abs_logit: float
    tolerance: float

    @property
    def passed(self) -> bool:
        return self.max_abs_diff <= self.tolerance * max(1.0, self.max_abs_logit)

    def to_dict(self) -> dict:
        return {**asdict(self), "passed": self.passed}


def numeric_check(conversion: Conversion, directory: Path, verifier: VerifierConfig, seed: int = 0) -> NumericCheck | None:
    """Compare the written checkpoint with the source's forward; None when the source is our format."""
    if conversion.reference is None:
        return None
    config = ckpt.read_config(directory)
    tensors = {name: t.float() if t.is_floating_point() else t for name, t in ckpt.load_tensors(directory).items()}
    generator = torch.Generator().manual_seed(seed)
    hidden, vocab = _sizes(conversion.algorithm, config)
    shared, shared_from = borrowed_weights(verifier, hidden, vocab, generator)
    reference = conversion.reference(shared)
    run = {"eagle3": _compare_eagle3, "eagle": _compare_eagle, "dflash": _compare_dflash}[conversion.algorithm]
    with torch.no_grad():
        pairs, compared = run(config, tensors, shared, reference, generator)
    diff = max(float((ours - theirs).abs().max()) for ours, theirs in pairs)
    scale = max(float(theirs.abs().max()) for _, theirs in pairs)
    return NumericCheck(conversion.reference_name, compared, shared_from, diff, scale, tolerance(conversion))


def tolerance(conversion: Conversion) -> float:
    """TOLERANCE, or the stored dtype's machine epsilon where the converter had to round tensors it
    derived (a folded bias in float16 is off by up to half an ulp; the source's own 16-bit math is
    no closer). A real mistake, such as a dropped bias, is orders of magnitude larger."""
    rounded = conversion.derived_rounded_to
    return TOLERANCE if rounded is None else max(TOLERANCE, torch.finfo(rounded).eps)


def _sizes(algorithm: str, config: dict) -> tuple[int, int]:
    layer = config if algorithm == "eagle" else config["transformer_layer_config"]
    return layer["hidden_size"], layer["vocab_size"]


def borrowed_weights(verifier: VerifierConfig, hidden: int, vocab: int, generator: torch.Generator) -> tuple[dict[str, torch.Tensor], str]:
    """embed_tokens and lm_head of the verifier (local weights), or random stand-ins of that shape."""
    found = {name: verifier_tensor(verifier, name) for name in ("embed_tokens.weight", "lm_head.weight")}
    if found["lm_head.weight"] is None:
        found["lm_head.weight"] = found["embed_tokens.weight"]  # tied embeddings
    if all(t is not None and tuple(t.shape) == (vocab, hidden) for t in found.values()):
        return {name: t.float() for name, t in found.items()}, "the verifier's embed_tokens and lm_head"
    stand_ins = {
        "embed_tokens.weight": torch.randn(vocab, hidden, generator=generator),
        "lm_head.weight": torch.randn(vocab, hidden, generator=generator) / hidden**0.5,
    }
    return stand_ins, "random stand-ins for the verifier's embed_tokens and lm_head (its weights are not local)"


def _positions(start: int, length: int) -> torch.Tensor:
    return torch.arange(start, start + length)[None]


def _load(model, tensors: dict, shared: dict, optional: tuple[str, ...]):
    """Checkpoint tensors into a model; borrowed weights fill what the checkpoint leaves to the verifier."""
    state = dict(tensors)
    for name in optional:
        if name not in state and name in model.checkpoint_tensors():
            state[name] = shared[name]
    model.load_checkpoint_tensors(state)
    return model.float().eval()


def _compare_eagle3(config, tensors, shared, reference, generator):
    draft = _load(Eagle3Draft(config), tensors, shared, ("embed_tokens.weight",))
    vocab, hidden = draft.embed_tokens.weight.shape
    ids = torch.randint(0, vocab, (1, CONTEXT), generator=generator)
    aux = torch.randn(1, CONTEXT, draft.num_aux * hidden, generator=generator)
    start = int(torch.randint(0, 64, (1,), generator=generator))
    following = torch.randint(0, vocab, (1, 1), generator=generator)
    cache = DraftCache.empty(len(draft.layers))
    ours, fed = draft(ids, draft.project(aux), _positions(start, CONTEXT), cache=cache)
    theirs, their_fed = reference.step(ids, reference.project(aux), _positions(start, CONTEXT))
    ours_next, _ = draft(following, fed[:, -1:], _positions(start + CONTEXT, 1), cache=cache)
    theirs_next, _ = reference.step(following, their_fed[:, -1:], _positions(start + CONTEXT, 1))
    return [(ours, theirs), (ours_next, theirs_next)], f"logits of 2 drafting steps ({CONTEXT} positions, then 1 fed back)"


def _compare_eagle(config, tensors, shared, reference, generator):
    draft = _load(EagleDraft(config), tensors, shared, ("embed_tokens.weight",))
    head = shared["lm_head.weight"]
    vocab, hidden = draft.embed_tokens.weight.shape
    ids = torch.randint(0, vocab, (1, CONTEXT), generator=generator)
    features = torch.randn(1, CONTEXT, hidden, generator=generator)
    start = int(torch.randint(0, 64, (1,), generator=generator))
    following = torch.randint(0, vocab, (1, 1), generator=generator)
    cache = DraftCache.empty(len(draft.layers))
    fed = draft(ids, features, _positions(start, CONTEXT), cache=cache)
    theirs, their_fed = reference.step(ids, features, _positions(start, CONTEXT))
    fed_next = draft(following, fed[:, -1:], _positions(start + CONTEXT, 1), cache=cache)
    theirs_next, _ = reference.step(following, their_fed[:, -1:], _positions(start + CONTEXT, 1))
    return [(F.linear(fed, head), theirs), (F.linear(fed_next, head), theirs_next)], f"logits (through the verifier's lm_head) of 2 drafting steps ({CONTEXT} positions, then 1 fed back)"


def _compare_dflash(config, tensors, shared, reference, generator):
    draft = _load(DFlashDraft(config), tensors, shared, ("embed_tokens.weight", "lm_head.weight"))
    vocab, hidden = draft.embed_tokens.weight.shape
    block_size, mask = config["block_size"], config["mask_token_id"]
    aux = torch.randn(1, CONTEXT, len(config["aux_hidden_state_layer_ids"]) * hidden, generator=generator)
    block = torch.full((1, block_size), mask)
    block[0, 0] = int(torch.randint(0, vocab, (1,), generator=generator))
    start = int(torch.randint(0, 64, (1,), generator=generator))
    context_positions, block_positions = _positions(start, CONTEXT), _positions(start + CONTEXT, block_size)
    ours = draft(block, aux, context_positions, block_positions)
    theirs = reference.block(block, aux, context_positions, block_positions)
    return [(ours, theirs)], f"logits of one block of {block_size} slots over {CONTEXT} context positions"
