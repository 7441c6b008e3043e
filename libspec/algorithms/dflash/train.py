"""One DFlash training step: anchored blocks over a packed batch, position-weighted CE and block metrics.

What a block is (vLLM's `dflash` method, upstream speculators' trainer): pick an *anchor*, a
supervised token a of a document; the draft sees the verifier's aux hidden states of tokens 0..a-1
(its context, as at inference, where the anchor is the token the verifier just produced) and a
block of `block_size` slots [x_a, mask, mask, ...] at positions a, a+1, ...; slot k >= 1 learns the
verifier's greedy token after x_{a+k-1}. Attention inside the block is bidirectional (vLLM's
default, `sliding_window_non_causal: true`), so every slot is drafted in one pass.

In a packed batch (libspec.train.packing) query j holds aux(token j), tokens[j] = x_{j+1} and
last_hidden[j] = h_n(token j+1). An anchor is named by the query q whose token is the anchor
(a = q+1): its context is queries <= q of its document, slot k's true token is tokens[q+k], its
teacher is lm_head(norm(last_hidden[q+k-1])), and it is trained where loss_mask[q+k] is set and
q+k is in the same document (upstream lets a block run past a document end; we do not).

Many blocks go through the draft as one row of slots with one mask (each block: its context
prefix and itself), the same forward the decoding engine runs for one block.

Loss: cross-entropy to the teacher's argmax per slot (upstream's `ce`), weighted per position by
D-PACE (default) or exp(-(k-1)/gamma), summed and divided by the number of trained slots.
Counts come out raw; `step_metrics` derives per-position accuracy, the chain (conditional)
accuracy, tau_sim = 1 + sum_k prod_{j<=k} cond_acc_j (as for EAGLE-3) and eal, upstream's mean
accepted run per block + 1.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from libspec.algorithms.dflash.config import DFlashOptions, make_config
from libspec.algorithms.dflash.model import DFlashDraft
from libspec.algorithms.layers import decoder_fsdp_units
from libspec.algorithms.eagle3.config import draft_layer_config
from libspec.algorithms.eagle3.train import derive_metrics
from libspec.errors import SpecError
from libspec.options import check_options, option
from libspec.train.draft_init import initialise_draft
from libspec.train.packing import PackedBatch
from libspec.train.teacher import Teacher, VerifierHead
from libspec.train.vocab_map import VocabMap
from libspec.verifier import load_tokenizer, text_config

POSITION_WEIGHTINGS = ("dpace", "decay")
COUNT_KEYS = ("loss_sum", "trained", "correct", "chain_total", "chain_correct")


@dataclass(frozen=True)
class DFlashTrainOptions:
    """What shapes a DFlash draft and how its blocks are trained.

    spec-train's options for this algorithm are these fields (defaults and choices live here only).
    """

    num_layers: int = option(5, "Qwen3 decoder layers", minimum=1, metavar="N")
    block_size: int = option(16, "slots per block: the anchor, then block_size-1 drafted tokens (the checkpoint's speculative_tokens)", minimum=2, metavar="B")
    mask_token_id: int | None = option(
        None, "token in the masked slots (default: the tokenizer's mask token, else the first embedding row it leaves unused, else pad/eos/unk)", metavar="ID"
    )
    max_anchors: int = option(512, "blocks per batch, anchored at random supervised tokens", minimum=1, metavar="N")
    position_weighting: str = option("dpace", "dpace: D-PACE (slot k weighs the draft's chance to reach it and beyond); decay: exp(-(k-1)/gamma)", choices=POSITION_WEIGHTINGS)
    decay_gamma: float = option(4.0, "gamma of --position-weighting decay", metavar="G")
    dpace_alpha: float = option(0.5, "D-PACE confidence smoothing: (1-alpha)*q + alpha", metavar="A")

    def check(self) -> None:
        """Refuse values that cannot work (single values are checked against their fields)."""
        check_options(self)
        if not self.decay_gamma > 0:
            raise SpecError(f"--decay-gamma {self.decay_gamma}: expected a value above 0")
        if not 0 <= self.dpace_alpha <= 1:
            raise SpecError(f"--dpace-alpha {self.dpace_alpha}: expected a value in [0, 1]")


@dataclass(frozen=True)
class AnchoredBlocks:
    """The blocks of one packed batch: A anchors, each with block_size slots (index k = slot)."""

    anchors: torch.Tensor  # int64 [A]: query index q of each anchor (the anchor token is tokens[q])
    slots: torch.Tensor  # int64 [A, B]: q + k, clamped into the batch (read only where `trained`)
    trained: torch.Tensor  # bool [A, B]: slot k >= 1 whose target exists in the document and is supervised
    positions: torch.Tensor  # int64 [A, B]: position of slot k, positions[q] + 1 + k

    @property
    def count(self) -> int:
        return len(self.anchors)

    @classmethod
    def select(cls, batch: PackedBatch, block_size: int, max_anchors: int, generator: torch.Generator | None) -> "AnchoredBlocks":
        """Anchors at supervised tokens whose next token is trained; a random `max_anchors` of them if more."""
        documents, supervised = batch.document_ids[0], batch.loss_mask[0]
        length = len(documents)
        offsets = torch.arange(block_size, device=documents.device)
        ahead = torch.arange(length, device=documents.device)[:, None] + offsets  # [T, B]
        inside = (ahead < length) & (documents[ahead.clamp(max=length - 1)] == documents[:, None])
        trained = inside & supervised[ahead.clamp(max=length - 1)] & (offsets > 0)
        candidates = (supervised & trained[:, 1]).nonzero().squeeze(1)
        if len(candidates) > max_anchors:
            chosen = torch.randperm(len(candidates), generator=generator)[:max_anchors].to(candidates.device)
            candidates = candidates[chosen.sort().values]
        return cls(candidates, ahead[candidates].clamp(max=length - 1), trained[candidates], batch.positions[0, candidates, None] + 1 + offsets)

    def attention_mask(self, batch: PackedBatch, causal: bool) -> torch.Tensor:
        """bool [A*B, T + A*B]: each block's slots see its document's context up to the anchor, and their own block."""
        documents = batch.document_ids[0]
        length, blocks, size = len(documents), self.count, self.slots.shape[1]
        keys = torch.arange(length, device=documents.device)
        context = (documents[None, :] == documents[self.anchors, None]) & (keys[None, :] <= self.anchors[:, None])  # [A, T]
        slot = torch.arange(blocks * size, device=documents.device)
        own_block = (slot[:, None] // size) == (slot[None, :] // size)
        if causal:
            own_block &= slot[None, :] <= slot[:, None]
        return torch.cat([context.repeat_interleave(size, dim=0), own_block], dim=1)


class DFlashObjective(nn.Module):
    """The draft plus its frozen teacher; `forward(batch)` is one training step's loss and counts."""

    def __init__(self, draft: DFlashDraft, teacher: Teacher, draft_to_verifier: torch.Tensor | None, options: DFlashTrainOptions):
        super().__init__()
        self.draft = draft
        self.teacher = teacher
        self.options = options
        self.mask_token_id = draft.config["mask_token_id"]
        # Verifier ids of the draft vocabulary (None: the full vocabulary, no gather needed).
        self.register_buffer("draft_to_verifier", draft_to_verifier, persistent=False)

    def forward(self, batch: PackedBatch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        options, draft = self.options, self.draft
        # Training draws anchors from the global RNG (saved with the training state, so a resumed
        # run draws the same); validation draws the same anchors every time.
        generator = None if self.training else torch.Generator().manual_seed(0)
        blocks = AnchoredBlocks.select(batch, options.block_size, options.max_anchors, generator)
        if blocks.count == 0:  # nothing supervised with a next token: a zero loss that still reaches the weights
            return draft.fc.weight.sum() * 0.0, complete_counts({"queries": float(batch.num_queries)}, options)
        trained = blocks.trained.flatten().nonzero().squeeze(1)  # [N] slots with a loss
        block_ids = torch.full_like(blocks.slots, self.mask_token_id)
        block_ids[:, 0] = batch.tokens[0, blocks.anchors]
        mask = blocks.attention_mask(batch, draft.causal)
        logits = draft(block_ids.view(1, -1), batch.aux_hidden, batch.positions, blocks.positions.view(1, -1), mask, logits_at=trained)

        teacher_logits = self.teacher(batch.last_hidden[0, (blocks.slots - 1).flatten()[trained]])  # [N, V], no grad
        verifier_argmax = teacher_logits.max(-1).indices
        if self.draft_to_verifier is not None:
            teacher_logits = teacher_logits[:, self.draft_to_verifier]
        ce = F.cross_entropy(logits.float(), teacher_logits.max(-1).indices, reduction="none")  # [N]

        weight = position_weights(_scatter(ce.detach(), blocks.trained), blocks.trained, options)  # [A, B]
        loss = (weight.flatten()[trained] * ce).sum() / max(len(trained), 1)
        correct = _scatter(draft.to_verifier_ids(logits.detach().max(-1).indices) == verifier_argmax, blocks.trained)
        counts = block_counts(_scatter(ce.detach(), blocks.trained), blocks.trained, correct)
        counts["weighted_loss_sum"] = loss.detach() * len(trained)
        counts["queries"] = torch.tensor(float(batch.num_queries), device=loss.device)
        return loss, counts


def _scatter(values: torch.Tensor, where: torch.Tensor) -> torch.Tensor:
    """values [N] (one per True of `where`, in order) laid out as where's shape, zeros elsewhere."""
    out = torch.zeros(where.shape, dtype=values.dtype, device=values.device)
    out[where] = values
    return out


def position_weights(ce: torch.Tensor, trained: torch.Tensor, options: DFlashTrainOptions) -> torch.Tensor:
    """Loss weight per slot [A, B] (zero where not trained).

    decay: exp(-(k-1)/gamma) for slot k >= 1. D-PACE (upstream's `dpace_loss_decay`): with the
    smoothed confidence s_k = (1-alpha)*exp(-ce_k) + alpha, slot k weighs sum_{m>=k} prod_{j<=m} s_j,
    the expected number of accepted slots that getting slot k right makes reachable.
    """
    mask = trained.to(ce.dtype)
    if options.position_weighting == "decay":
        slot = torch.arange(trained.shape[1], device=ce.device, dtype=ce.dtype)
        return torch.exp(-(slot - 1).clamp(min=0) / options.decay_gamma) * mask
    with torch.no_grad():
        smooth = torch.where(trained, (1 - options.dpace_alpha) * torch.exp(-ce) + options.dpace_alpha, torch.ones_like(ce))
        reach = torch.cumprod(smooth, dim=1) * mask
        return reach.flip(1).cumsum(1).flip(1) * mask


def block_counts(ce: torch.Tensor, trained: torch.Tensor, correct: torch.Tensor) -> dict[str, torch.Tensor]:
    """Raw counts per drafted position i (slot i+1) and per block, for `step_metrics`."""
    counts: dict[str, torch.Tensor] = {}
    alive = trained[:, 1].clone()  # a chain starts at every block (each has slot 1 trained)
    for slot in range(1, trained.shape[1]):
        step = slot - 1
        alive = alive & trained[:, slot]
        counts[f"loss_sum_{step}"] = ce[:, slot].sum()
        counts[f"trained_{step}"] = trained[:, slot].sum().float()
        counts[f"correct_{step}"] = (correct[:, slot] & trained[:, slot]).sum().float()
        counts[f"chain_total_{step}"] = alive.sum().float()
        counts[f"chain_correct_{step}"] = (alive & correct[:, slot]).sum().float()
        alive = alive & correct[:, slot]
    accepted_run = (correct & trained)[:, 1:].float().cumprod(dim=1).sum(dim=1)  # leading correct slots
    counts["blocks"] = torch.tensor(float(trained.shape[0]), device=ce.device)
    counts["accepted_sum"] = (accepted_run + 1).sum()
    return counts


def resolve_mask_token_id(requested: int | None, verifier_name: str, vocab_size: int) -> int:
    """The mask token: as requested, else the tokenizer's mask token, else the id `<|MASK|>` would get
    when added (the first row the tokenizer leaves unused), else pad/eos/unk (upstream's order).
    vLLM embeds it with the verifier's embedding row, so it must be below vocab_size."""
    if requested is not None:
        if not 0 <= requested < vocab_size:
            raise SpecError(f"--mask-token-id {requested}: expected an id below the verifier's vocab_size {vocab_size}")
        return requested
    try:
        tokenizer = load_tokenizer(verifier_name)
    except SpecError as error:
        raise SpecError(f"{error}; pass --mask-token-id to choose DFlash's mask token") from None
    if tokenizer.mask_token_id is not None and tokenizer.mask_token_id < vocab_size:
        return int(tokenizer.mask_token_id)
    if len(tokenizer) < vocab_size:
        return len(tokenizer)
    for name in ("pad_token_id", "eos_token_id", "unk_token_id"):
        if isinstance(getattr(tokenizer, name, None), int):
            return int(getattr(tokenizer, name))
    raise SpecError(f"{verifier_name}: its tokenizer has no mask, pad, eos or unk token and no unused embedding row; pass --mask-token-id")


# ---- the entry points spec-train calls (libspec/train/loop.py, through libspec.algorithms) ----

Options = DFlashTrainOptions
FULL_VOCABULARY = False  # the draft has its own lm_head, over a reduced vocabulary by default above 32k tokens
__all__ = ["Options", "FULL_VOCABULARY", "default_aux_layer_ids", "draft_config", "build_draft", "build_objective", "step_metrics", "complete_counts", "fsdp_units"]


def default_aux_layer_ids(num_hidden_layers: int, options: DFlashTrainOptions) -> list[int]:
    """z-lab's rule: one target layer per draft layer, evenly spaced over layer outputs 1..n-3 (0-based),
    as layer ids (+1); distinct and within [1, n] for tiny verifiers."""
    n, taps = num_hidden_layers, options.num_layers
    if taps == 1:
        return [n // 2 + 1]
    start, end = 1, max(1, n - 3)
    return sorted({min(int(round(start + i * (end - start) / (taps - 1))) + 1, n) for i in range(taps)})


def draft_config(options: DFlashTrainOptions, verifier_config: dict, verifier_name: str, aux_layer_ids: list[int],
                 draft_vocab_size: int, save_dtype: str, spec_tools: dict) -> dict:  # fmt: skip
    """The checkpoint config.json of the draft these options describe (mask token resolved here)."""
    if min(aux_layer_ids) < 1:
        raise SpecError(f"--aux-layer-ids {aux_layer_ids}: DFlash ids start at 1 (vLLM passes id - 1 to the draft as a layer output)")
    lm = text_config(verifier_config)
    shape = DFlashOptions(
        aux_layer_ids=tuple(aux_layer_ids), block_size=options.block_size, speculative_tokens=options.block_size - 1,
        mask_token_id=resolve_mask_token_id(options.mask_token_id, verifier_name, lm["vocab_size"]),
        draft_vocab_size=draft_vocab_size, sliding_window_non_causal=True,
    )  # fmt: skip
    layer = draft_layer_config(verifier_config, options.num_layers, "qwen3", len(aux_layer_ids))
    return make_config(verifier_config, verifier_name, layer, shape, save_dtype, spec_tools)


def build_draft(config: dict, head: VerifierHead, vocab: VocabMap, seed: int) -> DFlashDraft:
    """A freshly initialised draft: seeded init, embedding and lm_head rows from the verifier, both frozen."""
    torch.manual_seed(seed)
    draft = DFlashDraft(config)
    initialise_draft(draft, head, vocab, std=config["transformer_layer_config"].get("initializer_range", 0.02))
    return draft


def build_objective(draft: DFlashDraft, head: VerifierHead, vocab: VocabMap, options: DFlashTrainOptions) -> DFlashObjective:
    """The module whose forward is one training step (what DDP/FSDP wrap)."""
    return DFlashObjective(draft, head.teacher, None if vocab.is_full else vocab.draft_to_verifier, options)


def step_metrics(counts: dict[str, float], options: DFlashTrainOptions) -> dict[str, float]:
    """Per-position loss/acc/cond_acc and tau_sim (EAGLE-3's formula), the weighted loss, and eal."""
    metrics = derive_metrics(counts, options.block_size - 1)
    trained = sum(counts.get(f"trained_{step}", 0.0) for step in range(options.block_size - 1))
    metrics["loss"] = counts.get("weighted_loss_sum", 0.0) / max(trained, 1.0)  # what the optimizer sees
    metrics["eal"] = counts.get("accepted_sum", 0.0) / max(counts.get("blocks", 0.0), 1.0)
    return metrics


def complete_counts(counts: dict, options: DFlashTrainOptions) -> dict:
    """Every count key present (a rank with no validation batch still joins the all-reduce with zeros)."""
    for step in range(options.block_size - 1):
        for key in COUNT_KEYS:
            counts.setdefault(f"{key}_{step}", 0.0)
    for key in ("weighted_loss_sum", "blocks", "accepted_sum"):
        counts.setdefault(key, 0.0)
    return counts


def fsdp_units(draft: DFlashDraft) -> list[nn.Module]:
    """The draft's big blocks, one FSDP unit each (see `decoder_fsdp_units`)."""
    return decoder_fsdp_units(draft.layers)
