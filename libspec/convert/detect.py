"""Recognising a source's layout from its config keys and tensor names."""

from __future__ import annotations

from types import ModuleType

from libspec.convert import ALIASES, FORMATS
from libspec.convert.source import Source
from libspec.errors import SpecError

# Layouts we recognise only to say why they cannot be converted.
UNSUPPORTED = (
    (
        lambda s: s.any_prefix("medusa_head") or "medusa_num_heads" in s.config,
        "Medusa heads: vLLM 0.33 removed the medusa method, so no served format exists to convert them to",
    ),
    (
        lambda s: s.config.get("speculators_model_type") == "mlp" or "MLPSpeculatorPreTrainedModel" in (s.config.get("architectures") or []),
        "an MLP speculator: vLLM 0.33 removed the mlp_speculator method",
    ),
    (
        lambda s: any(".mtp." in n or n.startswith("mtp.") for n in s.tensors) or s.config.get("speculators_model_type") == "mtp",
        "MTP weights: they are served inside the verifier (vLLM method mtp), not as a separate draft",
    ),
)


def known_formats() -> str:
    """One line naming every format and its signature, for error messages and --help."""
    return "; ".join(f"{name} ({module.SIGNATURE})" for name, module in FORMATS.items())


def resolve_format(name: str) -> tuple[str, ModuleType]:
    """The module for a --from name or alias; the name is kept (it can choose defaults, e.g. hass)."""
    canonical = ALIASES.get(name, name)
    if canonical not in FORMATS:
        names = ", ".join([*FORMATS, *ALIASES])
        raise SpecError(f"--from {name!r}: unknown format; known: {names}")
    return name, FORMATS[canonical]


def detect_format(source: Source) -> tuple[str, ModuleType]:
    """The first registered format whose signature the source matches."""
    for name, module in FORMATS.items():
        if module.matches(source):
            return name, module
    for test, why in UNSUPPORTED:
        if test(source):
            raise SpecError(f"{source.path}: {why}")
    raise SpecError(f"{source.path}: no known draft layout matches its config and tensor names; known formats (--from NAME): {known_formats()}")
