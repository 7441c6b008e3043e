"""One conversion end to end: read, detect, convert, write to a staging folder, validate it
against SPEC.md and the verifier, compare its logits with the source's own math, and only then
move it into place. A failed check leaves the output path as it was."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from libspec.allocator import map_large_allocations
from libspec.format import checkpoint as ckpt
from libspec.format.atomic import atomic_directory
from libspec.algorithms import algorithm_for
from libspec.convert.check import numeric_check
from libspec.convert.common import ConvertOptions
from libspec.convert.detect import detect_format, resolve_format
from libspec.convert.source import load_source
from libspec.errors import SpecError
from libspec.serving import serve_command
from libspec.validate.artifacts import validate
from libspec.verifier import read_verifier_config


@dataclass(frozen=True)
class ConvertRequest:
    """Everything spec-convert was asked to do (recorded in its JSON output)."""

    input: str
    verifier: str
    output: str
    source_format: str | None = None  # None: detect
    config_path: str | None = None  # for a lone weights file whose config.json is elsewhere
    options: ConvertOptions = field(default_factory=ConvertOptions)
    check_acceptance: bool = False
    seed: int = 0
    overwrite: bool = False  # OUTPUT may hold a checkpoint: replace its checkpoint files, keep its other files


@dataclass
class ConvertResult:
    """What was written and the evidence that it is right."""

    input: str
    output: str
    format: str
    algorithm: str
    decisions: list[dict]
    notes: list[str]
    validation: dict
    numeric_check: dict | None
    acceptance: dict | None
    serve: str

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def convert(request: ConvertRequest, progress: Callable[[str], None] = lambda message: None) -> ConvertResult:
    """Convert INPUT into a checked spec-tools checkpoint at OUTPUT (see the module docstring)."""
    output = Path(request.output).expanduser()
    _refuse_unsafe_output(output, request.input, request.overwrite)
    map_large_allocations()  # the check's per-module copies must leave memory when freed (libspec/allocator.py)
    progress("reading the source")
    source = load_source(request.input, request.config_path)
    name, module = resolve_format(request.source_format) if request.source_format else detect_format(source)
    verifier = read_verifier_config(request.verifier)
    progress(f"converting ({name})")
    conversion = module.convert(source, verifier, request.options, name)
    algorithm = algorithm_for(conversion.algorithm)
    problems = algorithm.verifier_problems(conversion.config, verifier.config)
    if problems:
        raise SpecError(f"{request.input}: does not fit the verifier {request.verifier}: {'; '.join(problems)}")

    # Written and checked in a staging folder that replaces OUTPUT only when every check passed;
    # with overwrite, the old folder's other files are carried into it just before the swap.
    stale = ckpt.file_names(output) if request.overwrite else set()
    with atomic_directory(output, keep_old=request.overwrite, drop=stale) as staging:
        progress("writing")
        ckpt.write_checkpoint(staging, conversion.config, conversion.tensors)
        progress("validating")
        report = validate(str(staging))
        if not report.ok:
            raise SpecError(f"the converted checkpoint is not valid: {'; '.join(report.problems)}")
        conversion.notes.extend(f"warning: {warning}" for warning in report.warnings)
        progress("comparing logits with the source's own forward")
        check = numeric_check(conversion, staging, verifier, request.seed)
        if check is not None and not check.passed:
            raise SpecError(
                f"the converted draft does not reproduce the source: max |logit difference| {check.max_abs_diff:.3g} "
                f"against the {check.reference} reference (largest |logit| {check.max_abs_logit:.3g}); nothing was written"
            )

    k = ckpt.speculative_tokens(conversion.config)
    acceptance = None
    if request.check_acceptance:
        from libspec.convert.acceptance import quick_acceptance

        progress("measuring acceptance")
        acceptance = quick_acceptance(output, verifier, k)
    facts = {key: value for key, value in report.facts.items()}
    return ConvertResult(
        input=request.input,
        output=str(output),
        format=name,
        algorithm=conversion.algorithm,
        decisions=conversion.decisions_as_dicts(),
        notes=conversion.notes,
        validation={"ok": True, "facts": facts},
        numeric_check=None if check is None else check.to_dict(),
        acceptance=acceptance,
        serve=serve_command(str(output), conversion.config, verifier=request.verifier, quote=False, owner_name_only=True),
    )


def _refuse_unsafe_output(output: Path, source: str, overwrite: bool) -> None:
    """Never replace the source, a folder that is not a checkpoint, or (unless `overwrite`) a checkpoint."""
    source_path = Path(source).expanduser()
    if source_path.exists():
        resolved = output.resolve()
        if resolved == source_path.resolve() or resolved in source_path.resolve().parents:
            raise SpecError(f"{output}: the output would replace the source {source}; choose another -o")
    ckpt.refuse_to_replace(output, overwrite)
