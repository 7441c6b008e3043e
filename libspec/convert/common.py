"""What every source-format converter shares: the request's options, the decisions, the result.

A converter turns a `Source` (libspec/convert/source.py) into a `Conversion`: the config and
tensors of a spec-tools checkpoint plus every `Decision` it took, so the tool can say which
values came from the source, which from an option, and which are defaults (and why).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Callable

import torch

import libspec
from libspec.errors import SpecError
from libspec.verifier import VerifierConfig, fingerprint_verifier

RECORDED, OPTION, DEFAULT, DERIVED = "recorded", "option", "default", "derived"


@dataclass(frozen=True)
class ConvertOptions:
    """Values the source may not record; None means: use what the source records, else its code's default."""

    aux_layer_ids: tuple[int, ...] | None = None
    norm_before_residual: bool | None = None
    speculative_tokens: int | None = None


@dataclass(frozen=True)
class Decision:
    """One value of the output and where it came from: recorded, option, default or derived."""

    setting: str
    value: object
    origin: str
    reason: str = ""


@dataclass
class Conversion:
    """A converter's result, before it is written and checked."""

    algorithm: str  # the output's algorithm: eagle3, eagle or dflash
    config: dict
    tensors: dict[str, torch.Tensor]
    decisions: list[Decision] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    # Builds the source's own forward (libspec/convert/reference.py) given what the check lends both
    # sides (reference.Borrowed: the verifier's embed_tokens/lm_head rows); None for our own format.
    reference: Callable[[object], object] | None = None
    reference_name: str = ""
    # Set when the converter computed new tensors exactly and stored them rounded to this 16-bit
    # dtype (e.g. EAGLE-1's folded fc.bias): the numerical check then allows that rounding.
    derived_rounded_to: torch.dtype | None = None

    def decisions_as_dicts(self) -> list[dict]:
        return [asdict(d) for d in self.decisions]


def choose(decisions: list[Decision], setting: str, option, recorded, default, reason: str):
    """Pick option > recorded > default for one setting and record where the value came from."""
    if option is not None:
        value, origin, why = option, OPTION, "given on the command line"
    elif recorded is not None:
        value, origin, why = recorded, RECORDED, "recorded in the source"
    else:
        value, origin, why = default, DEFAULT, reason
    decisions.append(Decision(setting, list(value) if isinstance(value, tuple) else value, origin, why))
    return value


def spec_tools_record(format_name: str, source_path: str, verifier: VerifierConfig) -> dict:
    """The `spec_tools` block of a converted checkpoint: who made it, from what, for which verifier."""
    return {
        "version": libspec.__version__,
        "format_version": libspec.FORMAT_VERSION,
        "verifier": fingerprint_verifier(verifier.name_or_path).to_dict(),
        "converted_from": {"format": format_name, "path": source_path},
    }


def float_dtype(tensors: dict[str, torch.Tensor], prefer: str) -> torch.dtype:
    """The float dtype of the output: the one of the `prefer` tensor (the trained weights)."""
    if prefer in tensors and tensors[prefer].is_floating_point():
        return tensors[prefer].dtype
    return next(t.dtype for t in tensors.values() if t.is_floating_point())


def unify_float_dtype(conversion: Conversion, dtype: torch.dtype) -> None:
    """Cast every float tensor to one dtype (SPEC.md §11.2), noting the tensors that changed."""
    cast = [name for name, t in conversion.tensors.items() if t.is_floating_point() and t.dtype != dtype]
    for name in cast:
        conversion.tensors[name] = conversion.tensors[name].to(dtype)
    if cast:
        conversion.notes.append(f"cast {len(cast)} tensor(s) to {str(dtype).removeprefix('torch.')} so all float weights share one dtype: {', '.join(sorted(cast)[:4])}{' ...' if len(cast) > 4 else ''}")


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def t2d_from_d2t(d2t: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """The bool mask of verifier ids in the draft vocabulary, from the offset table d2t."""
    targets = torch.arange(len(d2t)) + d2t.long()
    if bool((targets < 0).any()) or bool((targets >= vocab_size).any()):
        raise SpecError(f"d2t maps draft ids outside the verifier vocabulary [0, {vocab_size})")
    t2d = torch.zeros(vocab_size, dtype=torch.bool)
    t2d[targets] = True
    return t2d


def pretty(value) -> str:
    return json.dumps(value) if isinstance(value, (list, dict, bool)) or value is None else str(value)
