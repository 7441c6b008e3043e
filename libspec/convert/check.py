"""The numerical check of a conversion: the converted checkpoint, run by spec-tools' model of the
algorithm (what vLLM computes), against the source's own math over its original tensors
(libspec/convert/reference.py), on the same random inputs.

Both sides run in float32 from the stored weights, read when used (never a float32 copy of the
whole draft: see streamed_draft.py and reference.ReferenceWeights), and only the vocabulary rows
the check reads (CheckVocabulary). Weights the draft borrows from the verifier (embedding,
lm_head) are the verifier's when its weights are local, else shared random stand-ins.
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
from libspec.convert.reference import Borrowed
from libspec.convert.streamed_draft import parameters_on_meta, streamed_parameters
from libspec.errors import SpecError
from libspec.verifier import VerifierConfig, verifier_weight_file

# Relative to the largest |logit|: float32 with different operation orders agrees to ~1e-6.
TOLERANCE = 1e-4
CONTEXT = 7  # positions per step (EAGLE) or of verifier context (DFlash)
# An lm_head with more rows is compared on this many random rows, the same on both sides: its
# float32 copy stays at 16384 x hidden (256 MB at hidden 4096), and a wrong hidden state, or a row
# moved or dropped by the conversion, still shows in thousands of random rows.
HEAD_ROWS = 16384


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
    readers = ckpt.tensor_readers(directory)
    generator = torch.Generator().manual_seed(seed)
    run = {"eagle3": _compare_eagle3, "eagle": _compare_eagle, "dflash": _compare_dflash}[conversion.algorithm]
    with torch.no_grad():
        pairs, compared, shared_from = run(config, readers, conversion, verifier, generator)
    diff = max(float((ours - theirs).abs().max()) for ours, theirs in pairs)
    scale = max(float(theirs.abs().max()) for _, theirs in pairs)
    return NumericCheck(conversion.reference_name, compared, shared_from, diff, scale, tolerance(conversion))


def tolerance(conversion: Conversion) -> float:
    """TOLERANCE, or the stored dtype's machine epsilon where the converter had to round tensors it
    derived (a folded bias in float16 is off by up to half an ulp; the source's own 16-bit math is
    no closer). A real mistake, such as a dropped bias, is orders of magnitude larger."""
    rounded = conversion.derived_rounded_to
    return TOLERANCE if rounded is None else max(TOLERANCE, torch.finfo(rounded).eps)


@dataclass(frozen=True)
class CheckVocabulary:
    """The rows of the vocabulary tables the check reads, the same on both sides: the embedding rows
    of the ids it feeds (sorted; the models see each id as its index here) and, for an lm_head of
    more than HEAD_ROWS rows, a fixed random slice of them (None: every row)."""

    ids: torch.Tensor
    head_rows: torch.Tensor | None

    @classmethod
    def of(cls, fed_ids: torch.Tensor, head_size: int, generator: torch.Generator) -> "CheckVocabulary":
        rows = None if head_size <= HEAD_ROWS else torch.randperm(head_size, generator=generator)[:HEAD_ROWS].sort().values
        return cls(torch.unique(fed_ids), rows)

    def local(self, ids: torch.Tensor) -> torch.Tensor:
        return torch.searchsorted(self.ids, ids)

    def rows(self) -> dict[str, torch.Tensor | None]:
        return {"embed_tokens.weight": self.ids, "lm_head.weight": self.head_rows}

    def describe(self) -> str:
        return "" if self.head_rows is None else f" (over {len(self.head_rows)} random rows of lm_head)"


def borrowed_weights(verifier: VerifierConfig, hidden: int, vocab: int, rows: CheckVocabulary, generator: torch.Generator) -> tuple[Borrowed, dict[str, str]]:
    """The verifier's embed_tokens / lm_head, each read on first use and only the check's rows: its
    own when its weights are local, else a random stand-in. Also returns name -> where it came from."""
    wanted, origins = rows.rows(), {}

    def fetch(name: str) -> torch.Tensor:
        found = verifier_weight_file(verifier, name)
        if found is None and name == "lm_head.weight":
            found = verifier_weight_file(verifier, "embed_tokens.weight")  # tied embeddings
        if found is not None and tuple(found[0].shape(found[1])) == (vocab, hidden):
            origins[name] = "the verifier's"
            return found[0].read(found[1], rows=wanted[name], dtype=torch.float32)
        origins[name] = "a random stand-in (the verifier's weights are not local) for the verifier's"
        count = len(rows.ids) if name == "embed_tokens.weight" else vocab if rows.head_rows is None else len(rows.head_rows)
        return torch.randn(count, hidden, generator=generator) * (1.0 if name == "embed_tokens.weight" else hidden**-0.5)

    return Borrowed(fetch, wanted), origins


def _shared_from(origins: dict[str, str]) -> str:
    if not origins:
        return "none (the draft has its own embed_tokens and lm_head)"
    grouped: dict[str, list[str]] = {}
    for name, origin in sorted(origins.items()):
        grouped.setdefault(origin, []).append(name.removesuffix(".weight"))
    return "; ".join(f"{origin} {' and '.join(names)}" for origin, names in grouped.items())


def _positions(start: int, length: int) -> torch.Tensor:
    return torch.arange(start, start + length)[None]


def _draft(model_class, config: dict, readers: dict, borrowed: Borrowed):
    """spec-tools' model over the written tensors, read module by module (streamed_draft.py)."""
    with parameters_on_meta():
        model = model_class(config).eval()
    expected = set(model.checkpoint_tensors())
    missing = expected - set(readers) - model.optional_checkpoint_tensors()
    if missing or set(readers) - expected:
        raise SpecError(f"the converted checkpoint's tensors differ from the model: missing {sorted(missing)}, unexpected {sorted(set(readers) - expected)}")
    wanted = borrowed.rows

    def load(name: str) -> torch.Tensor:
        if name in readers:
            return readers[name].read(name, rows=wanted.get(name), dtype=torch.float32)
        return borrowed[name]

    return streamed_parameters(model, load)


def _sides(conversion, verifier, generator, fed_ids, head_size, hidden, vocab):
    """The check's vocabulary, what it borrows from the verifier (on first use), and the source's forward."""
    rows = CheckVocabulary.of(fed_ids, head_size, generator)
    borrowed, origins = borrowed_weights(verifier, hidden, vocab, rows, generator)
    return rows, borrowed, conversion.reference(borrowed), origins


def _compare_eagle3(config, readers, conversion, verifier, generator):
    layer = config["transformer_layer_config"]
    vocab, hidden = layer["vocab_size"], layer["hidden_size"]
    ids = torch.randint(0, vocab, (1, CONTEXT), generator=generator)
    following = torch.randint(0, vocab, (1, 1), generator=generator)
    start = int(torch.randint(0, 64, (1,), generator=generator))
    head = readers["lm_head.weight"].shape("lm_head.weight")[0]
    rows, borrowed, reference, origins = _sides(conversion, verifier, generator, torch.cat([ids, following], 1), head, hidden, vocab)
    ids, following = rows.local(ids), rows.local(following)
    with _draft(Eagle3Draft, config, readers, borrowed) as draft:
        aux = torch.randn(1, CONTEXT, draft.num_aux * hidden, generator=generator)
        cache = DraftCache.empty(len(draft.layers))
        ours, fed = draft(ids, draft.project(aux), _positions(start, CONTEXT), cache=cache)
        ours_next, _ = draft(following, fed[:, -1:], _positions(start + CONTEXT, 1), cache=cache)
    theirs, their_fed = reference.step(ids, reference.project(aux), _positions(start, CONTEXT))
    theirs_next, _ = reference.step(following, their_fed[:, -1:], _positions(start + CONTEXT, 1))
    compared = f"logits of 2 drafting steps ({CONTEXT} positions, then 1 fed back){rows.describe()}"
    return [(ours, theirs), (ours_next, theirs_next)], compared, _shared_from(origins)


def _compare_eagle(config, readers, conversion, verifier, generator):
    vocab, hidden = config["vocab_size"], config["hidden_size"]
    ids = torch.randint(0, vocab, (1, CONTEXT), generator=generator)
    following = torch.randint(0, vocab, (1, 1), generator=generator)
    start = int(torch.randint(0, 64, (1,), generator=generator))
    features = torch.randn(1, CONTEXT, hidden, generator=generator)
    rows, borrowed, reference, origins = _sides(conversion, verifier, generator, torch.cat([ids, following], 1), vocab, hidden, vocab)
    ids, following = rows.local(ids), rows.local(following)
    head = borrowed["lm_head.weight"]
    with _draft(EagleDraft, config, readers, borrowed) as draft:
        cache = DraftCache.empty(len(draft.layers))
        fed = draft(ids, features, _positions(start, CONTEXT), cache=cache)
        fed_next = draft(following, fed[:, -1:], _positions(start + CONTEXT, 1), cache=cache)
    theirs, their_fed = reference.step(ids, features, _positions(start, CONTEXT))
    theirs_next, _ = reference.step(following, their_fed[:, -1:], _positions(start + CONTEXT, 1))
    compared = f"logits (through the verifier's lm_head) of 2 drafting steps ({CONTEXT} positions, then 1 fed back){rows.describe()}"
    return [(F.linear(fed, head), theirs), (F.linear(fed_next, head), theirs_next)], compared, _shared_from(origins)


def _compare_dflash(config, readers, conversion, verifier, generator):
    layer = config["transformer_layer_config"]
    vocab, hidden = layer["vocab_size"], layer["hidden_size"]
    block_size, mask = config["block_size"], config["mask_token_id"]
    aux = torch.randn(1, CONTEXT, len(config["aux_hidden_state_layer_ids"]) * hidden, generator=generator)
    block = torch.full((1, block_size), mask)
    block[0, 0] = int(torch.randint(0, vocab, (1,), generator=generator))
    start = int(torch.randint(0, 64, (1,), generator=generator))
    head = readers["lm_head.weight"].shape("lm_head.weight")[0] if "lm_head.weight" in readers else config.get("draft_vocab_size") or vocab
    rows, borrowed, reference, origins = _sides(conversion, verifier, generator, block, head, hidden, vocab)
    block = rows.local(block)
    context_positions, block_positions = _positions(start, CONTEXT), _positions(start + CONTEXT, block_size)
    with _draft(DFlashDraft, config, readers, borrowed) as draft:
        ours = draft(block, aux, context_positions, block_positions)
    theirs = reference.block(block, aux, context_positions, block_positions)
    return [(ours, theirs)], f"logits of one block of {block_size} slots over {CONTEXT} context positions{rows.describe()}", _shared_from(origins)
