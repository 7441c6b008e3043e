"""Publishing a speculator: gate the checkpoint and its bench reports, assemble the Hub-ready files
with their model card, then write them to a folder or upload them to the Hub in one commit.

Only the files a checkpoint consists of are published (config.json, the weights, their index),
plus the generated README.md and the bench reports under bench/; anything else in the folder
(optimizer states, logs, an old README) stays home. The plan is computed once, so a dry run shows
exactly the bytes an upload would send.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import libspec
from libspec.format import checkpoint as ckpt
from libspec.format.atomic import atomic_directory
from libspec.bench.report_check import check_report, identity_evidence
from libspec.format.digest import digest_bytes, digest_file
from libspec.bench.floors import Floor, check_floors
from libspec.errors import SpecError
from libspec.publish.local_paths import LocalPaths
from libspec.publish.model_card import CardInputs, MeasuredReport, PublishedFile, dig, render_card, verifier_name
from libspec.serving import is_hub_repo_id, verifier_kind
from libspec.validate.artifacts import validate

CARD = "README.md"
BENCH_DIR = "bench"


@dataclass(frozen=True)
class PushOptions:
    """What the user asked for; recorded in the card and the commit."""

    repo_id: str
    revision: str | None = None
    private: bool = False
    commit_message: str | None = None
    license: str | None = None
    force: bool = False
    floors: tuple[Floor, ...] = ()  # per-domain minimums the bench reports must show (libspec/bench/floors.py)
    verifier_id: str | None = None  # the Hub id the published config.json names for the verifier (--verifier-id)


@dataclass
class Gate:
    """What the checks found. Problems refuse the push (unless forced); notes only inform."""

    checkpoint_problems: list[str] = field(default_factory=list)
    report_problems: list[str] = field(default_factory=list)
    checks: list[str] = field(default_factory=list)  # one line per check that ran, for the card
    notes: list[str] = field(default_factory=list)

    @property
    def problems(self) -> list[str]:
        return self.checkpoint_problems + self.report_problems

    @property
    def ok(self) -> bool:
        return not self.problems


@dataclass(frozen=True)
class UploadItem:
    """One file of the upload: copied from `source`, or generated `content` (the card)."""

    path_in_repo: str
    num_bytes: int
    sha256: str
    source: Path | None = None
    content: bytes | None = None


@dataclass
class PushPlan:
    """Everything a push will do, computed before anything is written or sent."""

    checkpoint: Path
    options: PushOptions
    gate: Gate
    items: list[UploadItem]
    card: str
    left_out: list[str]  # files of the checkpoint folder that are not published
    verifier_warning: str | None = None  # said loudly when `vllm serve REPO` cannot find the verifier

    @property
    def allowed(self) -> bool:
        return self.gate.ok or self.options.force


def plan_push(checkpoint_dir: str | Path, bench_paths: Sequence[str | Path], options: PushOptions) -> PushPlan:
    """Run the gate, list the files and render the card; nothing is written.

    No published file names a path of this machine: the local verifier becomes --verifier-id (or
    `./BASENAME`), any other absolute path its base name (libspec.publish.local_paths).
    """
    checkpoint_dir = Path(checkpoint_dir)
    gate = Gate()
    config = _gate_checkpoint(checkpoint_dir, gate)
    naming = name_verifier(config, options.verifier_id, gate)
    paths = LocalPaths.for_names(naming.local_names)
    published_config = _published_config(config, naming.published, paths)
    sources = ckpt.checkpoint_files(checkpoint_dir)
    checkpoint_items = [_file_item(path.relative_to(checkpoint_dir).as_posix(), path) for path in sources]
    weights = {item.path_in_repo: item.sha256 for item in checkpoint_items if item.path_in_repo.endswith(".safetensors")}
    if published_config != config:  # the same weights; only config.json is rewritten (its digests still hold: SPEC.md §11.1)
        checkpoint_items[0] = _content_item(ckpt.CONFIG, json.dumps(published_config, indent=2) + "\n")
    measured, report_items = _gate_reports(bench_paths, checkpoint_dir, config, weights, gate)
    measured, report_items = _published_reports(measured, report_items, paths)
    _gate_floors(options.floors, measured, gate)
    items = checkpoint_items + report_items
    card = render_card(
        CardInputs(
            repo_id=options.repo_id,
            config=published_config,
            facts=parameter_counts(checkpoint_dir),
            files=tuple(PublishedFile(i.path_in_repo, i.num_bytes, i.sha256) for i in items),
            reports=tuple(measured),
            checks=tuple(gate.checks),
            tool_version=libspec.__version__,
            date=_dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d"),
            license=options.license,
            forced=tuple(gate.problems) if options.force else (),
            verifier_warning=naming.unresolved,
        )
    )
    card = paths.text(card)
    card_item = _content_item(CARD, card)
    published = {path.resolve() for path in sources}
    left_out = sorted(str(p.relative_to(checkpoint_dir)) for p in checkpoint_dir.rglob("*") if p.is_file() and p.resolve() not in published)
    return PushPlan(checkpoint_dir, options, gate, [card_item, *items], card, left_out, naming.unresolved)


# ---- naming the verifier for the Hub ---------------------------------------------------------


@dataclass(frozen=True)
class VerifierNaming:
    """What the published config.json names as the verifier, and which local paths it replaces."""

    published: str | None
    local_names: dict[str, str]  # local path as recorded -> what published files say instead
    unresolved: str | None  # why `vllm serve REPO` will not find the verifier, or None


def name_verifier(config: dict, verifier_id: str | None, gate: Gate) -> VerifierNaming:
    """The verifier's published name: `verifier_id` (checked against the trained-for fingerprint when
    the Hub copy is in the local cache), else a Hub id already recorded, else `./BASENAME` of the local folder."""
    current = verifier_name(config)
    recorded = dig(config, "spec_tools.verifier.name_or_path")
    local = [name for name in dict.fromkeys((current, recorded)) if isinstance(name, str) and name and verifier_kind(name) == "local"]
    unresolved = None
    if verifier_id is not None:
        if not is_hub_repo_id(verifier_id):
            raise SpecError(f"--verifier-id {verifier_id!r}: not a Hub repo id (ORG/NAME, and no local path)")
        _check_verifier_id(config, verifier_id, local, gate)
        published = verifier_id
    elif isinstance(current, str) and verifier_kind(current) == "local":
        published = "./" + (Path(current.rstrip("/")).expanduser().name or "verifier")
        unresolved = (
            f"the verifier is the local folder {published!r} (its absolute path is not published): `vllm serve REPO` "
            "will not find it and the card names no base_model; pass --verifier-id ORG/NAME to name its Hub id"
        )
        gate.notes.append(unresolved)
    else:
        published = current
        if not is_hub_repo_id(current):
            gate.notes.append(f"the verifier {current!r} is not a Hub id: the card names no base_model")
    return VerifierNaming(published, {name: published for name in local if published}, unresolved)


def _check_verifier_id(config: dict, verifier_id: str, local: list[str], gate: Gate) -> None:
    """Compare the Hub copy of `verifier_id` in the local HF cache (never downloaded) with the verifier
    the speculator was trained for; say so when either side is not on this machine."""
    from libspec.validate.gate_verifier import local_verifier_dir
    from libspec.verifier import VerifierFingerprint, fingerprint_differences, fingerprint_verifier

    expected = None
    try:
        expected = VerifierFingerprint.from_dict(dig(config, "spec_tools.verifier"))
    except (KeyError, TypeError):
        folder = next((Path(name).expanduser() for name in local if Path(name).expanduser().is_dir()), None)
        expected = fingerprint_verifier(str(folder)) if folder is not None else None
    cached = local_verifier_dir(verifier_id)
    if expected is None or cached is None or not (cached / "config.json").is_file():
        why = "config.json records no verifier fingerprint" if expected is None else "it is not in the local Hugging Face cache (spec-push never downloads)"
        line = f"--verifier-id `{verifier_id}`: NOT checked against the verifier this speculator was trained for: {why}; make sure it is the same model"
        gate.checks.append(line)
        gate.notes.append(line)
        return
    differences = fingerprint_differences(expected, fingerprint_verifier(str(cached), like=expected))
    if differences:
        gate.checkpoint_problems.append(
            f"--verifier-id {verifier_id}: its copy in the local Hugging Face cache is not the verifier this speculator was trained for ({'; '.join(differences)})"
        )
    else:
        compared = "config.json, tokenizer and weights digests" if expected.weights is not None else "config.json and tokenizer sha256; no weights digest recorded"
        gate.checks.append(f"--verifier-id `{verifier_id}`: the same verifier it was trained for (fingerprint of the copy in the local Hugging Face cache: {compared})")


def _published_config(config: dict, verifier: str | None, paths: LocalPaths) -> dict:
    """config.json as published: the verifier named `verifier`, and no path of this machine."""
    published = paths.json(config)
    if verifier is not None and isinstance(dig(published, "speculators_config.verifier"), dict):
        published["speculators_config"]["verifier"]["name_or_path"] = verifier
    return published


def _published_reports(measured: list, items: list, paths: LocalPaths) -> tuple[list, list]:
    """Bench reports as published: byte for byte unless they name a path of this machine, then with it replaced."""
    out_measured, out_items = [], []
    for report, item in zip(measured, items):
        clean = paths.json(report.report)
        if clean != report.report:
            report = MeasuredReport(report.path_in_repo, clean, report.problems)
            item = _content_item(item.path_in_repo, json.dumps(clean, indent=2) + "\n")
        out_measured.append(report)
        out_items.append(item)
    return out_measured, out_items


def _gate_checkpoint(checkpoint_dir: Path, gate: Gate) -> dict:
    """spec-validate's checks and the interop gates; returns the config (a folder without one cannot be pushed at all)."""
    validation = validate(str(checkpoint_dir))
    if validation.kind != "checkpoint":
        raise SpecError(f"{checkpoint_dir}: not a speculator checkpoint folder ({'; '.join(validation.problems) or validation.kind})")
    gate.checkpoint_problems += [f"{checkpoint_dir}: {p}" for p in validation.problems]
    verdict = "valid" if validation.ok else f"{len(validation.problems)} problem(s)"
    gate.checks.append(f"spec-validate: {verdict} (config schema and EAGLE-3 rules, every tensor's name, shape and dtype, no NaN/inf, vocabulary map)")
    interop_problems, interop_checks = interop_gate(checkpoint_dir)
    gate.checkpoint_problems += interop_problems
    gate.checks += interop_checks
    return ckpt.read_config(checkpoint_dir)


def parameter_counts(checkpoint_dir: Path) -> dict:
    """Float parameters of the draft, and how many of them are the token embedding (from the headers only)."""
    try:
        headers = ckpt.tensor_headers(checkpoint_dir)
    except SpecError:
        return {}  # a broken folder pushed with --force: the card says "unknown"
    counts = {name: math.prod(shape) for name, (dtype, shape) in headers.items() if dtype.is_floating_point}
    return {"float_parameters": sum(counts.values()), "embedding_parameters": counts.get("embed_tokens.weight", 0)}


def _gate_reports(bench_paths, checkpoint_dir: Path, config: dict, weights: dict, gate: Gate):
    """Check every bench report; return what the card shows and the report files to publish."""
    measured, items, taken = [], [], set()
    for path in map(Path, bench_paths):
        report, problems = check_report(path, checkpoint_dir, config, weights)
        gate.report_problems += problems
        path_in_repo = _unique(f"{BENCH_DIR}/{path.name}", taken)
        status = "passed" if not problems else f"{len(problems)} problem(s)"
        evidence = f"; {identity_evidence(report, config)}" if report is not None else ""
        gate.checks.append(
            f"`{path_in_repo}`: {status} (schema; every figure recomputed from the raw counts; no sanity flag; "
            f"raw counts that add up{evidence})"
        )
        if report is not None:
            measured.append(MeasuredReport(path_in_repo, report, tuple(problems)))
            items.append(_file_item(path_in_repo, path))
    return measured, items


def _gate_floors(floors, measured: list, gate: Gate) -> None:
    """Each floor met is a check line in the card; each floor missed refuses the push (unless forced)."""
    for result in check_floors(list(floors), [(m.path_in_repo, m.report) for m in measured]):
        if result.met:
            gate.checks.append(result.describe())
        else:
            gate.report_problems.append(result.describe())


def interop_gate(checkpoint_dir: Path) -> tuple[list[str], list[str]]:
    """Problems and check lines from the vLLM and upstream speculators gates (spec-validate --vllm
    --upstream), for every gate installed here; a missing gate is said, not failed, because the
    gates are an optional 2.5 GB environment (./just gates)."""
    from libspec.validate.gates import GATES, run_gates, where_gate_runs

    installed = [gate for gate in GATES if where_gate_runs(gate) is not None]
    names = {"vllm": "vLLM gate", "upstream": "upstream speculators gate"}
    checks = [f"{names[g]}: not installed here (./just gates), not run" for g in GATES if g not in installed]
    problems: list[str] = []
    for report in run_gates([checkpoint_dir], installed) if installed else []:
        gate = report.kind.removesuffix("-gate")
        version = report.facts.get("vllm_version") or report.facts.get("speculators_version")
        label = f"{names.get(gate, report.kind)}{f' ({version})' if version else ''}"
        if report.ok:
            checks.append(f"{label}: loads it (config parsing, every parameter loaded, shapes equal)")
        else:
            checks.append(f"{label}: {len(report.problems)} problem(s)")
            problems += [f"{checkpoint_dir}: {report.kind}: {p}" for p in report.problems]
    return problems, checks


def _unique(name: str, taken: set[str]) -> str:
    stem, dot, suffix = name.rpartition(".")
    candidate, n = name, 2
    while candidate in taken:
        candidate, n = f"{stem}-{n}{dot}{suffix}", n + 1
    taken.add(candidate)
    return candidate


def _file_item(path_in_repo: str, source: Path) -> UploadItem:
    digest = digest_file(source)
    return UploadItem(path_in_repo, digest.num_bytes, digest.sha256, source=source)


def _content_item(path_in_repo: str, text: str) -> UploadItem:
    """A generated file (the card, a rewritten config.json or report): its bytes are what the plan lists."""
    content = text.encode("utf-8")
    digest = digest_bytes(content)
    return UploadItem(path_in_repo, digest.num_bytes, digest.sha256, content=content)


def _refuse_unless_allowed(plan: PushPlan) -> None:
    if not plan.allowed:
        raise SpecError(f"{plan.checkpoint}: refusing to publish: {len(plan.gate.problems)} problem(s), first: {plan.gate.problems[0]}")


# ---- writing the Hub-ready folder -----------------------------------------------------------


def write_folder(plan: PushPlan, directory: str | Path, overwrite: bool = False) -> Path:
    """Write the planned files to `directory` as one atomic folder replacement; it must validate.

    A non-empty `directory` is refused unless it holds a checkpoint and `overwrite` is given; then its
    checkpoint files and the planned files are replaced and every other file stays.
    """
    _refuse_unless_allowed(plan)
    directory = Path(directory)
    if directory.resolve() == plan.checkpoint.resolve():
        raise SpecError(f"{directory}: --to-dir must differ from the checkpoint folder")
    ckpt.refuse_to_replace(directory, overwrite)
    stale = ckpt.file_names(directory) if overwrite else set()
    with atomic_directory(directory, keep_old=overwrite, drop=stale) as staging:
        for item in plan.items:
            _write_item(item, staging / item.path_in_repo)
        written = validate(str(staging))
        if not written.ok and not plan.options.force:
            raise SpecError(f"{directory}: the written folder does not validate: {written.problems[0]}")
    return directory


def _write_item(item: UploadItem, target: Path) -> None:
    """Copy or write one file, fsync it, and check it holds exactly the planned bytes."""
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target, "wb") as out:
        if item.content is not None:
            out.write(item.content)
        else:
            with open(item.source, "rb") as source:
                while chunk := source.read(1 << 22):
                    out.write(chunk)
        out.flush()
        os.fsync(out.fileno())
    found = digest_file(target)
    if (found.num_bytes, found.sha256) != (item.num_bytes, item.sha256):
        raise SpecError(f"{item.source or item.path_in_repo}: changed while being published (sha256 differs from the plan)")


# ---- uploading ------------------------------------------------------------------------------


def upload(plan: PushPlan, endpoint: str | None = None, token: str | None = None) -> str:
    """Create the repository if needed and commit every planned file at once; returns the commit URL.

    The token comes from `token`, else huggingface_hub's own lookup (HF_TOKEN, then the saved login).
    It is sent only in the Authorization header and removed from any error message.
    """
    _refuse_unless_allowed(plan)
    from huggingface_hub import CommitOperationAdd, HfApi, constants, get_token

    if constants.HF_HUB_OFFLINE:
        raise SpecError("HF_HUB_OFFLINE is set: cannot upload (unset it, or use --dry-run / --to-dir)")
    token = token or get_token()
    if not token:
        raise SpecError("no Hugging Face token: set HF_TOKEN or log in with `hf auth login`")
    options = plan.options
    api = HfApi(endpoint=endpoint, token=token)
    operations = [CommitOperationAdd(i.path_in_repo, str(i.source) if i.source else i.content) for i in plan.items]
    try:
        api.create_repo(options.repo_id, private=True if options.private else None, exist_ok=True)
        if options.private and not api.model_info(options.repo_id).private:
            raise SpecError(f"{options.repo_id}: exists and is public; --private cannot change that, so nothing was uploaded")
        if options.revision and options.revision != "main":
            api.create_branch(options.repo_id, branch=options.revision, exist_ok=True)
        commit = api.create_commit(
            options.repo_id,
            operations,
            commit_message=options.commit_message or f"Upload speculator with spec-push {libspec.__version__}",
            commit_description="\n".join(plan.gate.checks),
            revision=options.revision,
        )
    except SpecError:
        raise
    except Exception as error:  # the Hub client raises many types (HTTP, OS, value errors); all mean "not uploaded"
        raise SpecError(f"upload to {api.endpoint}/{options.repo_id} failed: {_one_line(error, token)}") from None
    return commit.commit_url


def _one_line(error: Exception, token: str, limit: int = 400) -> str:
    """The client's (often multi-line) error as one line, with the token masked should it ever appear."""
    text = " ".join(line.strip() for line in str(error).replace(token, "***").splitlines() if line.strip())
    text = text or type(error).__name__
    return text if len(text) <= limit else text[: limit - 1] + "…"
