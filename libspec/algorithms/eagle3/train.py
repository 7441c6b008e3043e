"""One EAGLE-3 training step: test-time training (TTT) over a packed batch, losses and metrics.

Step s of TTT replays what the draft does at its (s+1)-th drafted token. For draft query j (see
libspec.train.packing: hidden state of token i, next token i+1), step s feeds token i+1+s, the hidden
state the draft produced at step s-1, position i+s (vLLM's), and learns the verifier's
distribution after token i+1+s (the teacher, recomputed from the stored last hidden state).
Teacher logits and draft logits are computed only where some step trains (supervised targets):
the vocabulary projection is most of a step's cost. Attention at step s: query
j sees step 0's keys <= j of its own document and its own slot in steps 1..s, exactly the keys the
draft has cached when it drafts its (s+1)-th token at inference (the standard EAGLE-3 TTT mask).
Query j's step-s target lives at j+s, so a step is trained only where j+s is in the same document.

Counts come out raw (sums and totals); rates and the simulated acceptance length are derived from
them after summing over batches and ranks (`derive_metrics`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from libspec.algorithms.eagle3 import config as eagle3_config
from libspec.algorithms.eagle3.config import VLLM_ARCHITECTURES, Eagle3Options, make_config
from libspec.algorithms.eagle3.model import Eagle3Draft
from libspec.algorithms.hass import topk_distillation_loss
from libspec.algorithms.layers import DocumentSpans, DraftCache, decoder_fsdp_units
from libspec.errors import SpecError
from libspec.options import check_options, option
from libspec.train.draft_init import initialise_draft
from libspec.train.packing import PackedBatch
from libspec.train.teacher import Teacher, VerifierHead
from libspec.train.vocab_map import VocabMap

LOSSES = ("kl", "tv", "lk")
TTT_INPUTS = ("data", "draft")
TTT_WEIGHTINGS = ("uniform", "reach")


@dataclass(frozen=True)
class Eagle3TrainOptions:
    """What shapes an EAGLE-3 draft and how it is trained across its drafted positions.

    spec-train's options for this algorithm are these fields (defaults and choices live here only).
    """

    num_layers: int = option(1, "decoder layers", minimum=1, metavar="N")
    layer_style: str = option("llama", "decoder layer type vLLM builds", choices=tuple(VLLM_ARCHITECTURES))
    norm_before_residual: bool = option(True, "layer 0 takes its residual after hidden_norm")
    norm_before_fc: bool = option(False, "one RMSNorm over the concatenated aux states (gpt-oss style)")
    fc_norm: bool = option(False, "an RMSNorm per aux layer before fc (EAGLE 3.1)")
    norm_output: bool = option(False, "feed the post-norm state back across steps (EAGLE 3.1)")
    ttt_steps: int = option(3, "drafted positions trained per query; also the checkpoint's speculative_tokens", minimum=1, metavar="K")
    loss: str = option("kl", "kl: forward KL to the verifier; tv: total variation; lk: LK hybrid", choices=LOSSES)
    step_decay: float = option(1.0, "TTT step s weighs G**s", metavar="G")
    ttt_inputs: str = option("data", "tokens fed to later steps: the data's or the draft's own argmax", choices=TTT_INPUTS)
    ttt_weighting: str = option("uniform", "reach: weigh each later step by the chance the draft's chain gets there", choices=TTT_WEIGHTINGS)
    # HASS's harmonized context alignment is test-time training itself (--ttt-steps); its other half is this loss.
    hass_topk: int = option(0, "HASS harmonized objective distillation: add the cross-entropy over the verifier's top-K tokens to --loss (0: off; HASS uses 10)", minimum=0, metavar="K")
    hass_topk_weight: float = option(1.0, "weight of the --hass-topk loss (HASS's topk_w)", minimum=0.0, metavar="W")

    def check(self) -> None:
        """Refuse values that cannot work together (single values are checked against their fields)."""
        check_options(self)
        if self.norm_before_fc and self.fc_norm:
            raise SpecError("--norm-before-fc and --fc-norm are mutually exclusive")

    def draft_shape(self, aux_layer_ids: list[int], draft_vocab_size: int) -> Eagle3Options:
        """The draft's config.json choices: these options plus what the data decided (layers, vocabulary)."""
        return Eagle3Options(
            aux_layer_ids=tuple(aux_layer_ids), num_layers=self.num_layers, layer_style=self.layer_style,
            draft_vocab_size=draft_vocab_size, norm_before_residual=self.norm_before_residual,
            norm_before_fc=self.norm_before_fc, fc_norm=self.fc_norm, norm_output=self.norm_output,
            speculative_tokens=self.ttt_steps,
        )  # fmt: skip


class Eagle3Objective(nn.Module):
    """The draft plus its frozen teacher; `forward(batch)` is one training step's loss and counts.

    A module so that DDP/FSDP can wrap the whole TTT unroll as one forward.
    """

    def __init__(self, draft: Eagle3Draft, teacher: Teacher, draft_to_verifier: torch.Tensor | None, options: Eagle3TrainOptions):
        super().__init__()
        self.draft = draft
        self.teacher = teacher
        self.options = options
        # Verifier ids of the draft vocabulary (None: the full vocabulary, no gather needed).
        self.register_buffer("draft_to_verifier", draft_to_verifier, persistent=False)

    def forward(self, batch: PackedBatch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        options, draft = self.options, self.draft
        length = batch.num_queries
        # Which queries each step trains: target j+s supervised and in j's document.
        trained = [shift_queries(batch.loss_mask, step)[0] & same_document_ahead(batch.document_ids, step)[0] for step in range(options.ttt_steps)]
        # The teacher at supervised positions only (targets of trained queries are supervised by definition).
        targets = batch.loss_mask[0].nonzero().squeeze(1)
        teacher_logits = self.teacher(batch.last_hidden[0, targets])  # [N, V] float32, no grad
        teacher_argmax = teacher_logits.max(-1).indices  # the verifier's greedy token, over its full vocabulary
        if self.draft_to_verifier is not None:
            teacher_logits = teacher_logits[:, self.draft_to_verifier]
        teacher = TeacherTargets.from_logits(teacher_logits)
        target_row = torch.full((length,), -1, dtype=torch.int64, device=targets.device)
        target_row[targets] = torch.arange(len(targets), device=targets.device)
        mask = DocumentSpans.from_document_ids(batch.document_ids[0])  # the TTT mask, document by document

        hidden = draft.project(batch.aux_hidden)
        tokens = batch.tokens
        cache = DraftCache.empty(len(draft.layers))
        chain_alive = batch.loss_mask[0].clone()  # drafts start only at supervised tokens, as at inference
        reach = torch.ones(length, device=hidden.device)  # chance the draft's chain from query j gets to this step
        loss = torch.zeros((), device=hidden.device)
        counts: dict[str, torch.Tensor] = {}
        for step in range(options.ttt_steps):
            # Logits are needed where this step trains, and for self-fed steps wherever a later step trains.
            later = torch.stack(trained[step:]).any(0) if options.ttt_inputs == "draft" else trained[step]
            rows = later.nonzero().squeeze(1)
            logits, hidden = draft(tokens, hidden, batch.positions + step, mask, cache, logits_at=rows)  # logits [R, D]

            scored = trained[step][rows]  # which of the computed rows this step trains (all, unless self-fed)
            teacher_rows = target_row[rows[scored] + step]
            step_logits = logits if options.ttt_inputs == "data" else logits[scored]
            step_teacher = teacher.select(teacher_rows)
            weight = reach[rows[scored]] if options.ttt_weighting == "reach" else 1.0
            step_loss = (row_loss(step_logits, step_teacher, options) * weight).sum() / max(len(teacher_rows), 1)
            loss = loss + options.step_decay**step * step_loss
            if options.ttt_weighting == "reach":
                accept = torch.minimum(step_teacher.probs, F.softmax(step_logits.detach().float(), dim=-1)).sum(-1)
                reach = torch.zeros_like(reach).index_put_((rows[scored],), reach[rows[scored]] * accept)

            drafted = draft.to_verifier_ids(logits.max(-1).indices)  # [R] verifier ids
            correct = torch.zeros(length, dtype=torch.bool, device=rows.device)
            correct[rows[scored]] = drafted[scored] == teacher_argmax[teacher_rows]
            chain_alive = chain_alive & trained[step]
            counts.update(step_counts(step, step_loss, trained[step], correct, chain_alive))
            chain_alive = chain_alive & correct

            if options.ttt_inputs == "draft":
                tokens = torch.zeros_like(batch.tokens)
                tokens[0, rows] = drafted
            else:
                tokens = shift_queries(batch.tokens, step + 1)
        counts["queries"] = torch.tensor(float(length), device=loss.device)
        return loss, counts


@dataclass(frozen=True)
class TeacherTargets:
    """The teacher's distribution per target row: probabilities and sum(p log p), computed once per batch."""

    probs: torch.Tensor  # [N, D]
    neg_entropy: torch.Tensor  # [N]

    @classmethod
    def from_logits(cls, logits: torch.Tensor) -> "TeacherTargets":
        log_probs = F.log_softmax(logits.float(), dim=-1)
        probs = log_probs.exp()
        return cls(probs, (probs * log_probs).sum(-1))

    def select(self, rows: torch.Tensor) -> "TeacherTargets":
        return TeacherTargets(self.probs[rows], self.neg_entropy[rows])


def token_loss(draft_logits: torch.Tensor, teacher: TeacherTargets, kind: str) -> torch.Tensor:
    """Per-row loss [N] between the draft's distribution q and the teacher's p over the draft vocabulary."""
    log_q = F.log_softmax(draft_logits.float(), dim=-1)
    kl = teacher.neg_entropy - (teacher.probs * log_q).sum(-1)  # sum p (log p - log q)
    if kind == "kl":
        return kl
    accept = torch.minimum(teacher.probs, log_q.exp()).sum(-1)  # sum_v min(p, q): the acceptance rate of sampling
    if kind == "tv":
        return 1.0 - accept
    if kind == "lk":  # Samarin et al. 2026: lean on KL while acceptance is low, on TV once it is high
        weight = torch.exp(-3.0 * accept.detach())
        return weight * kl + (1.0 - weight) * (1.0 - accept)
    raise ValueError(f"unknown loss {kind!r}; expected one of {LOSSES}")


def row_loss(draft_logits: torch.Tensor, teacher: TeacherTargets, options: Eagle3TrainOptions) -> torch.Tensor:
    """Per-row loss [N] the options ask for: --loss, plus HASS's top-K term (libspec/algorithms/hass.py) with --hass-topk."""
    loss = token_loss(draft_logits, teacher, options.loss)
    if options.hass_topk > 0:
        loss = loss + options.hass_topk_weight * topk_distillation_loss(draft_logits, teacher.probs, options.hass_topk)
    return loss


def shift_queries(values: torch.Tensor, step: int) -> torch.Tensor:
    """values[:, j + step] at j (zero past the end): the target side of query j at TTT step `step`."""
    if step == 0:
        return values
    pad = torch.zeros_like(values[:, :step])
    return torch.cat([values[:, step:], pad], dim=1)


def same_document_ahead(document_ids: torch.Tensor, step: int) -> torch.Tensor:
    """bool [1, T]: query j + step exists and belongs to query j's document."""
    ahead = shift_queries(document_ids + 1, step)  # +1 so that the zero padding never matches
    return ahead == document_ids + 1


def step_counts(step, step_loss, trained, correct, chain_alive) -> dict[str, torch.Tensor]:
    """Raw counts of TTT step `step` (also EAGLE-1's alignment steps): loss sum, trained, correct, chain totals."""
    trained_count = trained.sum().float()
    return {
        f"loss_sum_{step}": step_loss.detach() * trained_count,
        f"trained_{step}": trained_count,
        f"correct_{step}": correct.sum().float(),
        f"chain_total_{step}": chain_alive.sum().float(),
        f"chain_correct_{step}": (chain_alive & correct).sum().float(),
    }


def derive_metrics(counts: dict[str, float], steps: int, step_decay: float = 1.0) -> dict[str, float]:
    """Per-step loss, accuracy, conditional accuracy and the simulated acceptance length from raw counts.

    tau_sim = 1 + sum_k prod_{j<=k} cond_acc_j (greedy chain; SpecForge's and NeMo's training proxy).
    """
    metrics: dict[str, float] = {}
    survive, tau = 1.0, 1.0
    total_loss = 0.0
    for step in range(steps):
        trained = counts.get(f"trained_{step}", 0.0)
        chain_total = counts.get(f"chain_total_{step}", 0.0)
        metrics[f"loss_{step}"] = counts.get(f"loss_sum_{step}", 0.0) / max(trained, 1.0)
        metrics[f"acc_{step}"] = counts.get(f"correct_{step}", 0.0) / max(trained, 1.0)
        metrics[f"cond_acc_{step}"] = counts.get(f"chain_correct_{step}", 0.0) / max(chain_total, 1.0)
        survive *= metrics[f"cond_acc_{step}"]
        tau += survive
        total_loss += step_decay**step * metrics[f"loss_{step}"]
    metrics["loss"] = total_loss  # what the optimizer sees: the decay-weighted sum over steps
    metrics["tau_sim"] = tau
    return metrics


# ---- the entry points spec-train calls (libspec/train/loop.py, through libspec.algorithms) ----

Options = Eagle3TrainOptions
FULL_VOCABULARY = False  # the draft has its own lm_head, over a reduced vocabulary by default above 32k tokens
__all__ = ["Options", "FULL_VOCABULARY", "default_aux_layer_ids", "draft_config", "build_draft", "build_objective", "step_metrics", "complete_counts", "fsdp_units"]


def default_aux_layer_ids(num_hidden_layers: int, options: Eagle3TrainOptions) -> list[int]:
    """EAGLE-3's default aux layers [2, n//2, n-3] (eagle3.config), whatever the options."""
    return eagle3_config.default_aux_layer_ids(num_hidden_layers)


def draft_config(options: Eagle3TrainOptions, verifier_config: dict, verifier_name: str, aux_layer_ids: list[int],
                 draft_vocab_size: int, save_dtype: str, spec_tools: dict) -> dict:  # fmt: skip
    """The checkpoint config.json of the draft these options describe."""
    return make_config(verifier_config, verifier_name, options.draft_shape(aux_layer_ids, draft_vocab_size), save_dtype, spec_tools)


def build_draft(config: dict, head: VerifierHead, vocab: VocabMap, seed: int) -> Eagle3Draft:
    """A freshly initialised draft: seeded init, embedding and lm_head rows from the verifier, both frozen."""
    torch.manual_seed(seed)
    draft = Eagle3Draft(config)
    initialise_draft(draft, head, vocab, std=config["transformer_layer_config"].get("initializer_range", 0.02))
    return draft


def build_objective(draft: Eagle3Draft, head: VerifierHead, vocab: VocabMap, options: Eagle3TrainOptions) -> Eagle3Objective:
    """The module whose forward is one training step (what DDP/FSDP wrap)."""
    return Eagle3Objective(draft, head.teacher, None if vocab.is_full else vocab.draft_to_verifier, options)


def step_metrics(counts: dict[str, float], options: Eagle3TrainOptions) -> dict[str, float]:
    """The metrics of summed counts (see `derive_metrics`)."""
    return derive_metrics(counts, options.ttt_steps, options.step_decay)


def complete_counts(counts: dict, options: Eagle3TrainOptions) -> dict:
    """Every count key present (a rank with no validation batch still joins the all-reduce with zeros)."""
    for step in range(options.ttt_steps):
        for key in ("loss_sum", "trained", "correct", "chain_total", "chain_correct"):
            counts.setdefault(f"{key}_{step}", 0.0)
    return counts


def fsdp_units(draft: Eagle3Draft) -> list[nn.Module]:
    """The draft's big blocks, one FSDP unit each (see `decoder_fsdp_units`)."""
    return decoder_fsdp_units(draft.layers)
