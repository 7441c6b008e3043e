"""One EAGLE-1 training step over a packed batch: predict the verifier's next feature and token.

EAGLE-1 (SafeAILab EAGLE, HASS) drafts in feature space. For draft query j (libspec.train.packing:
the verifier's state at token i, the next token x_{i+1}) the draft reads f_i = norm(h_n(i)), the
verifier's last hidden state after its final norm (what vLLM hands an `eagle` draft), and x_{i+1},
and predicts f_{i+1} = norm(h_n(i+1)); the verifier's own lm_head turns a feature into logits. Loss
per trained query, averaged over them (EAGLE-1's weights by default):

    feature_weight * smoothL1(f', f_{i+1}) (mean over the hidden size)
  + token_weight   * -sum_v p_v log q_v    (p = the verifier's distribution after x_{i+1}, q = softmax(lm_head(f')))
  + hass_topk_weight * the same sum over the verifier's top-K tokens only   (HASS, --hass-topk K; libspec/algorithms/hass.py)

HASS's harmonized context alignment (--hass-align-steps S): step s >= 1 replays the draft's
(s+1)-th drafted token. Query j feeds x_{j+1+s}, position j+s, and the feature the draft itself
predicted at step s-1 (detached, as HASS does), and learns the targets at j+s; it attends step 0's
keys <= j of its document and its own slot of steps 1..s: the EAGLE-3 TTT layout and mask. Step
losses add up. Validation replays every drafted step (--speculative-tokens) the same way, so its
tau_sim compares across S. Counts come out raw, per step, as EAGLE-3's (`derive_metrics`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from libspec.algorithms.eagle import config as eagle_config
from libspec.algorithms.eagle.model import EagleDraft
from libspec.algorithms.eagle3.config import draft_layer_config
from libspec.algorithms.eagle3.train import derive_metrics, same_document_ahead, shift_queries, step_counts
from libspec.algorithms.hass import topk_distillation_loss
from libspec.algorithms.layers import DocumentSpans, DraftCache, decoder_fsdp_units
from libspec.errors import SpecError
from libspec.options import check_options, option
from libspec.train.draft_init import initialise_draft
from libspec.train.packing import PackedBatch
from libspec.train.teacher import Teacher, VerifierHead
from libspec.train.vocab_map import VocabMap
from libspec.verifier import text_config

COUNT_KEYS = ("loss_sum", "trained", "correct", "chain_total", "chain_correct")
PART_KEYS = ("feature_loss_sum", "token_loss_sum", "topk_loss_sum")  # summed over steps and queries


@dataclass(frozen=True)
class EagleTrainOptions:
    """What shapes an EAGLE-1 draft and what its loss is made of.

    spec-train's options for this algorithm are these fields (defaults and choices live here only).
    """

    num_layers: int = option(1, "Llama decoder layers (EAGLE-1 and HASS use 1)", minimum=1, metavar="N")
    speculative_tokens: int = option(3, "drafted tokens per step the checkpoint is served with (vLLM's num_speculative_tokens)", minimum=1, metavar="K")
    feature_weight: float = option(1.0, "weight of the smooth-L1 loss on the predicted feature (EAGLE-1's v_w)", minimum=0.0, metavar="W")
    token_weight: float = option(0.1, "weight of the cross-entropy to the verifier's distribution (EAGLE-1's p_w)", minimum=0.0, metavar="W")
    hass_topk: int = option(0, "HASS harmonized objective distillation: add the cross-entropy over the verifier's top-K tokens (0: off; HASS uses 10)", minimum=0, metavar="K")
    hass_topk_weight: float = option(1.0, "weight of the --hass-topk loss (HASS's topk_w)", minimum=0.0, metavar="W")
    hass_align_steps: int = option(
        1, "HASS harmonized context alignment: train S drafting steps, later ones reading the draft's own features (1: plain EAGLE-1; HASS uses 3)", minimum=1, metavar="S"
    )

    def check(self) -> None:
        """Refuse values that cannot work (single values are checked against their fields)."""
        check_options(self)
        if self.feature_weight == 0 and self.token_weight == 0 and (self.hass_topk == 0 or self.hass_topk_weight == 0):
            raise SpecError("--feature-weight, --token-weight and the --hass-topk loss are all 0: nothing would be trained")


@dataclass(frozen=True)
class FeatureTargets:
    """What the draft learns per target row: the verifier's next feature, distribution and greedy token."""

    features: torch.Tensor  # [N, H] float32: norm(h_n), the feature the verifier hands its draft
    probs: torch.Tensor  # [N, V] float32
    argmax: torch.Tensor  # [N] int64

    @classmethod
    @torch.no_grad()
    def from_last_hidden(cls, teacher: Teacher, last_hidden: torch.Tensor) -> "FeatureTargets":
        logits = teacher(last_hidden)
        return cls(teacher.final_norm(last_hidden.float()), F.softmax(logits, dim=-1), logits.max(-1).indices)

    def select(self, rows: torch.Tensor) -> "FeatureTargets":
        return FeatureTargets(self.features[rows], self.probs[rows], self.argmax[rows])


def row_losses(predicted: torch.Tensor, logits: torch.Tensor, target: FeatureTargets, options: EagleTrainOptions) -> dict[str, torch.Tensor]:
    """Per-row losses [R] (the module docstring's formula): each part and their weighted `total`."""
    feature = F.smooth_l1_loss(predicted.float(), target.features, reduction="none").mean(-1)
    token = -(target.probs * F.log_softmax(logits.float(), dim=-1)).sum(-1)
    total = options.feature_weight * feature + options.token_weight * token
    topk = torch.zeros_like(token)
    if options.hass_topk > 0:
        topk = topk_distillation_loss(logits, target.probs, options.hass_topk)
        total = total + options.hass_topk_weight * topk
    return {"total": total, "feature": feature, "token": token, "topk": topk}


class EagleObjective(nn.Module):
    """The draft plus its frozen teacher (whose lm_head also reads the draft's features);
    `forward(batch)` is one training step's loss and counts."""

    def __init__(self, draft: EagleDraft, teacher: Teacher, options: EagleTrainOptions):
        super().__init__()
        self.draft = draft
        self.teacher = teacher
        self.options = options

    def forward(self, batch: PackedBatch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        options, draft = self.options, self.draft
        steps = options.hass_align_steps if self.training else evaluated_steps(options)
        length = batch.num_queries
        # Which queries each step trains: target j+s supervised and in j's document.
        trained = [shift_queries(batch.loss_mask, step)[0] & same_document_ahead(batch.document_ids, step)[0] for step in range(steps)]
        targets = batch.loss_mask[0].nonzero().squeeze(1)
        target = FeatureTargets.from_last_hidden(self.teacher, batch.last_hidden[0, targets])
        target_row = torch.full((length,), -1, dtype=torch.int64, device=targets.device)
        target_row[targets] = torch.arange(len(targets), device=targets.device)
        with torch.no_grad():  # the data holds layer n before the final norm; vLLM hands the draft norm(h_n)
            features = self.teacher.final_norm(batch.aux_hidden.float())
        mask = DocumentSpans.from_document_ids(batch.document_ids[0])
        cache = DraftCache.empty(len(draft.layers))
        tokens, chain_alive = batch.tokens, batch.loss_mask[0].clone()  # drafts start only at supervised tokens
        loss = torch.zeros((), device=features.device)
        counts = {key: torch.zeros((), device=features.device) for key in PART_KEYS}
        for step in range(steps):
            predicted = draft(tokens, features, batch.positions + step, cache=cache, mask=mask)  # [1, T, H]
            rows = trained[step].nonzero().squeeze(1)
            row_predicted = predicted[0, rows]
            logits = self.teacher.lm_head(row_predicted)  # frozen weights; the gradient reaches the draft
            parts = row_losses(row_predicted, logits, target.select(target_row[rows + step]), options)
            step_loss = parts["total"].sum() / max(len(rows), 1)
            if step < options.hass_align_steps:  # later steps (validation only) are measured, not trained
                loss = loss + step_loss
                for key, part in zip(PART_KEYS, ("feature", "token", "topk")):
                    counts[key] = counts[key] + parts[part].detach().sum()
            correct = torch.zeros(length, dtype=torch.bool, device=rows.device)
            correct[rows] = logits.detach().max(-1).indices == target.argmax[target_row[rows + step]]
            chain_alive = chain_alive & trained[step]
            counts.update(step_counts(step, step_loss, trained[step], correct, chain_alive))
            chain_alive = chain_alive & correct
            features, tokens = predicted.detach(), shift_queries(batch.tokens, step + 1)  # HASS feeds its own features back, detached
        counts["queries"] = torch.tensor(float(length), device=loss.device)
        return loss, counts


# ---- the entry points spec-train calls (libspec/train/loop.py, through libspec.algorithms) ----

Options = EagleTrainOptions
FULL_VOCABULARY = True  # the draft's logits are the verifier's lm_head over its features: no reduced vocabulary
__all__ = ["Options", "FULL_VOCABULARY", "default_aux_layer_ids", "draft_config", "build_draft", "build_objective", "step_metrics", "complete_counts", "fsdp_units"]


def default_aux_layer_ids(num_hidden_layers: int, options: EagleTrainOptions) -> list[int]:
    """The verifier's last layer n (stored before its final norm; the objective applies the norm)."""
    return [num_hidden_layers]


def draft_config(options: EagleTrainOptions, verifier_config: dict, verifier_name: str, aux_layer_ids: list[int],
                 draft_vocab_size: int, save_dtype: str, spec_tools: dict) -> dict:  # fmt: skip
    """The config.json of the EAGLE-1 folder these options describe (SPEC.md §11.6)."""
    depth = text_config(verifier_config)["num_hidden_layers"]
    if list(aux_layer_ids) != [depth]:
        raise SpecError(
            f"--aux-layer-ids {','.join(map(str, aux_layer_ids))}: EAGLE-1 reads only the verifier's last layer ({depth}, "
            "normalised as vLLM hands it over); leave --aux-layer-ids out"
        )
    layer = draft_layer_config(verifier_config, options.num_layers, "llama", 1)
    return eagle_config.make_config(verifier_config, verifier_name, layer, options.speculative_tokens, save_dtype, spec_tools)


def build_draft(config: dict, head: VerifierHead, vocab: VocabMap, seed: int) -> EagleDraft:
    """A freshly initialised draft: seeded init, the verifier's embedding (frozen)."""
    torch.manual_seed(seed)
    draft = EagleDraft(config)
    initialise_draft(draft, head)  # no lm_head of its own: EAGLE-1 drafts through the verifier's
    return draft


def build_objective(draft: EagleDraft, head: VerifierHead, vocab: VocabMap, options: EagleTrainOptions) -> EagleObjective:
    """The module whose forward is one training step (what DDP/FSDP wrap)."""
    return EagleObjective(draft, head.teacher, options)


def evaluated_steps(options: EagleTrainOptions) -> int:
    """Drafting steps validation replays: every one the checkpoint drafts, so that tau_sim compares
    across --hass-align-steps (training runs only the aligned steps)."""
    return max(options.hass_align_steps, options.speculative_tokens)


def step_metrics(counts: dict[str, float], options: EagleTrainOptions) -> dict[str, float]:
    """EAGLE-3's per-step loss/acc/cond_acc and tau_sim over the steps the counts hold (validation's
    hold every drafted step), `loss` over the trained steps, and each loss part per trained query."""
    steps = max(options.hass_align_steps, sum(1 for key in counts if key.startswith("chain_total_")))
    metrics = derive_metrics(counts, steps)
    metrics["loss"] = sum(metrics[f"loss_{step}"] for step in range(options.hass_align_steps))  # what the optimizer sees
    trained = max(sum(counts.get(f"trained_{step}", 0.0) for step in range(options.hass_align_steps)), 1.0)
    for key in PART_KEYS:
        metrics[key.removesuffix("_sum")] = counts.get(key, 0.0) / trained
    return metrics


def complete_counts(counts: dict, options: EagleTrainOptions) -> dict:
    """Every count key of a validation (a rank with no validation batch still joins the all-reduce with zeros)."""
    for step in range(evaluated_steps(options)):
        for key in COUNT_KEYS:
            counts.setdefault(f"{key}_{step}", 0.0)
    for key in PART_KEYS:
        counts.setdefault(key, 0.0)
    return counts


def fsdp_units(draft: EagleDraft) -> list[nn.Module]:
    """The draft's big blocks, one FSDP unit each (see `decoder_fsdp_units`)."""
    return decoder_fsdp_units(draft.layers)
