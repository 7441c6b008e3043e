"""The model card (README.md) of a published speculator: Hub metadata, what it is, how to serve it,
what was measured and where it came from.

Every number is copied by code from config.json, the checkpoint's facts and the spec-bench reports;
the card never states a figure that no report measured. Each section is one small function that
returns Markdown, so the card reads top to bottom in `render_card`.
"""

from __future__ import annotations

import json
import shlex
from dataclasses import dataclass, field

from huggingface_hub import ModelCardData

from libspec import serving

ALGORITHM_NAMES = {"eagle3": "EAGLE-3"}
LIBRARY_NAME = "speculators"  # the upstream library that loads the folder; stops the Hub offering a transformers snippet


@dataclass(frozen=True)
class PublishedFile:
    """One file of the upload besides the card: its path in the repository, size and checksum."""

    path_in_repo: str
    num_bytes: int
    sha256: str


@dataclass(frozen=True)
class MeasuredReport:
    """A bench report as published: its path in the repository and the problems --force let through."""

    path_in_repo: str
    report: dict
    problems: tuple[str, ...] = ()


@dataclass(frozen=True)
class CardInputs:
    """Everything the card states, gathered by libspec.publish.push."""

    repo_id: str
    config: dict
    facts: dict  # float_parameters, embedding_parameters (counted from the safetensors headers)
    files: tuple[PublishedFile, ...]
    reports: tuple[MeasuredReport, ...]
    checks: tuple[str, ...]  # which gates ran and what they found, one line each
    tool_version: str
    date: str  # UTC, YYYY-MM-DD
    license: str | None = None
    forced: tuple[str, ...] = field(default_factory=tuple)  # gate problems pushed anyway with --force
    verifier_warning: str | None = None  # why `vllm serve REPO` will not find the verifier (a local one, no --verifier-id)


def render_card(inputs: CardInputs) -> str:
    """The whole README.md: YAML front matter, then the sections in reading order."""
    sections = [
        front_matter(inputs),
        title(inputs),
        forced_warning(inputs.forced),
        unresolved_verifier(inputs.verifier_warning),
        what_it_is(inputs.config, inputs.facts),
        how_to_serve(inputs.config, inputs.repo_id),
        measured(inputs.reports),
        provenance(inputs.config),
        files_table(inputs.files),
        checks(inputs),
    ]
    return "\n\n".join(s for s in sections if s).rstrip() + "\n"


# ---- facts read from the config -------------------------------------------------------------


def dig(config: dict, dotted: str, default=None):
    """config["a"]["b"][0]... for "a.b.0", or `default` when any step is missing (a forced push may carry a broken config)."""
    value = config
    for key in dotted.split("."):
        try:
            value = value[int(key)] if isinstance(value, list) else value[key]
        except (KeyError, IndexError, ValueError, TypeError):
            return default
    return value


def verifier_name(config: dict) -> str | None:
    return dig(config, "speculators_config.verifier.name_or_path")


def vllm_method(config: dict) -> str:
    """The vLLM `method` of a speculators checkpoint (vLLM maps speculators_model_type to it one to one)."""
    return str(config.get("speculators_model_type", "eagle3"))


def vllm_serve_commands(config: dict, model_ref: str) -> list[tuple[str, str]]:
    """(when to use it, command): the short form when the verifier is a Hub id, always the explicit form.

    The explicit form passes "method" (the speculators_model_type as is): without it vLLM loads the
    folder as a plain draft model.
    """
    verifier = verifier_name(config) or "VERIFIER"
    speculative = serving.speculative_config(model_ref, config, method={"method": vllm_method(config)}, default_tokens=3)
    k = speculative["num_speculative_tokens"]
    explicit = serving.vllm_serve_command(verifier, speculative)
    commands = []
    if serving.is_hub_repo_id(verifier):
        commands.append((f"vLLM takes the verifier (`{verifier}`) and k = {k} from config.json", serving.vllm_serve_command(model_ref)))
        commands.append(("the same, with the verifier named explicitly (change num_speculative_tokens here)", explicit))
    else:
        commands.append((f"the verifier was a local folder when this speculator was made: put your copy of it in place of `{verifier}`", explicit))
    return commands


# ---- sections -------------------------------------------------------------------------------


def front_matter(inputs: CardInputs) -> str:
    """Hub metadata: base model (the verifier), library, pipeline, tags, license."""
    name = verifier_name(inputs.config)
    algorithm = vllm_method(inputs.config)
    data = ModelCardData(
        base_model=name if serving.is_hub_repo_id(name) else None,
        library_name=LIBRARY_NAME,
        pipeline_tag="text-generation",
        license=inputs.license,
        tags=["speculative-decoding", algorithm, "speculators", "spec-tools", "vllm"],
    )
    return f"---\n{data.to_yaml()}\n---"


def title(inputs: CardInputs) -> str:
    algorithm = ALGORITHM_NAMES.get(vllm_method(inputs.config), vllm_method(inputs.config))
    verifier = verifier_name(inputs.config) or "(verifier not recorded)"
    return (
        f"# {inputs.repo_id.split('/')[-1]}\n\n"
        f"An {algorithm} speculator (draft model) for `{verifier}`: it proposes several tokens, the verifier checks them "
        "in one forward pass and keeps exactly what it would have generated alone, so output is unchanged and latency drops."
    )


def forced_warning(problems: tuple[str, ...]) -> str:
    if not problems:
        return ""
    lines = "\n".join(f"- {p}" for p in problems)
    return f"## ⚠ Published with `--force`\n\nThis upload did not pass spec-push's checks; these problems were skipped:\n\n{lines}"


def unresolved_verifier(warning: str | None) -> str:
    if not warning:
        return ""
    return (
        "## ⚠ `vllm serve` cannot find the verifier by itself\n\n"
        f"When this speculator was published, {warning}. Serve it with the explicit form below, naming your copy of the verifier."
    )


def what_it_is(config: dict, facts: dict) -> str:
    """Algorithm, draft shape and serving defaults, from config.json and the checkpoint facts."""
    algorithm = vllm_method(config)
    vocab = dig(config, "transformer_layer_config.vocab_size")
    draft_vocab = config.get("draft_vocab_size")
    vocab_note = " (the verifier's full vocabulary)" if draft_vocab == vocab else f" of the verifier's {vocab} (mapped by `d2t`/`t2d`)"
    parameters, embedding = facts.get("float_parameters"), facts.get("embedding_parameters") or 0
    parameter_text = "unknown" if not isinstance(parameters, int) else f"{parameters:,}" + (f" ({parameters - embedding:,} without `embed_tokens`)" if embedding else "")
    rows = [
        ("algorithm", f"{ALGORITHM_NAMES.get(algorithm, algorithm)} (`speculators_model_type: {algorithm}`)"),
        ("verifier", f"`{verifier_name(config)}`"),
        ("draft decoder layers", f"{dig(config, 'transformer_layer_config.num_hidden_layers')} ({dig(config, 'transformer_layer_config.model_type')} style)"),
        ("hidden size", dig(config, "transformer_layer_config.hidden_size")),
        ("draft vocabulary", f"{draft_vocab}{vocab_note}"),
        ("verifier layers read (aux layer ids)", config.get("eagle_aux_hidden_state_layer_ids")),
        ("speculative tokens (k served by default)", dig(config, "speculators_config.proposal_methods.0.speculative_tokens")),
        ("dtype", config.get("dtype") or config.get("torch_dtype")),
        ("parameters", parameter_text),
    ]
    table = "\n".join(f"| {key} | {value} |" for key, value in rows)
    return f"## What it is\n\n| | |\n|---|---|\n{table}"


def how_to_serve(config: dict, repo_id: str) -> str:
    blocks = [f"- {why}:\n\n  ```sh\n  {command}\n  ```" for why, command in vllm_serve_commands(config, repo_id)]
    return (
        "## How to serve it\n\nWith vLLM (0.30 or newer reads this format; from 0.33 the short form needs the verifier "
        "to be a Hub id):\n\n" + "\n\n".join(blocks) + "\n\nUpstream `speculators` loads it with "
        f"`SpeculatorModel.from_pretrained(\"{repo_id}\")` (it also reads the verifier named in config.json)."
    )


def measured(reports: tuple[MeasuredReport, ...]) -> str:
    """The measured numbers, one block per report; or a plain statement that nothing was measured."""
    if not reports:
        return (
            "## Measured\n\nNothing was measured: no spec-bench report was published with this speculator, so this "
            "card gives no acceptance or speedup figure."
        )
    definitions = (
        "τ: tokens per verifier step, bonus token included. Accepted at position j: share of verification rounds "
        "whose j-th drafted token was accepted. Speedup: decoding time per token of the verifier alone over that "
        "with the speculator, measured in the same run (prefill excluded on both sides); predicted: "
        "E(α)/(k·c + v) (Leviathan et al.) from the measured acceptance α and the draft step c and (k+1)-token "
        "verifier forward v timed in isolation, relative to a 1-token forward — costs measured apart from the "
        "decoding loop they predict (older reports without isolated timings: E(α)/(k·c + v + o) from the loop's "
        "own costs, marked *); efficiency: speedup ÷ predicted, what the engine keeps of what the costs allow. "
        "Lossless: greedy "
        "output identical to the verifier's own. The best k per prompt set is in bold. Figures are rounded here; "
        "the report files hold the raw counts they are computed from. Categories (e.g. mt-bench/writing) are shown at "
        "their set's best k; few prompts each, so their figures are rougher."
    )
    return "## Measured\n\n" + definitions + "\n\n" + "\n\n".join(report_block(r) for r in reports)


def report_block(published: MeasuredReport) -> str:
    report = published.report
    settings = report.get("settings", {})
    temperature = settings.get("temperature")
    mode = "greedy" if temperature == 0 else f"sampling at temperature {temperature}"
    header = (
        f"### `{published.path_in_repo}`: {mode}, {settings.get('max_new_tokens')} new tokens per prompt\n\n"
        f"Measured on {report.get('created_at')} by {report.get('created_by', {}).get('tool')} "
        f"{report.get('created_by', {}).get('version')} with the {report.get('engine')} on {report.get('hardware')} "
        f"({report.get('device')}), {report.get('dtype')}, torch {report.get('torch_version')}, seed {settings.get('seed')}. "
        f"Command:\n\n```sh\n{report.get('command')}\n```"
    )
    warning = ""
    if published.problems:
        warning = "\n\n⚠ This report failed spec-push's checks and was published with `--force`:\n\n" + "\n".join(f"- {p}" for p in published.problems)
    try:
        table = measured_table(report)
    except (KeyError, TypeError, ValueError):  # only a report pushed with --force can be this broken
        table = "(the report's figures could not be read; see the problems above)"
    return header + warning + "\n\n" + table


MEASURED_COLUMNS = ("prompt set", "prompts", "k", "τ", "accepted at position 1..k", "speedup", "predicted", "efficiency", "tokens/s", "verifier alone tokens/s", "lossless")


def measured_table(report: dict) -> str:
    """One row per prompt set and k, then one per category of the set at its best k (per-domain τ is what
    users ask for), every cell formatted from the report's derived figures."""
    lines = ["| " + " | ".join(MEASURED_COLUMNS) + " |", "|" + "---|" * len(MEASURED_COLUMNS)]
    for prompt_set in report.get("prompt_sets", []):
        best = prompt_set.get("best_k")
        for run in prompt_set.get("runs", []):
            lines.append(_measured_row(prompt_set["name"], prompt_set["num_prompts"], run, run["k"] == best))
        for category in prompt_set.get("categories", []):
            for run in category.get("runs", []):
                if run["k"] == best:
                    lines.append(_measured_row(f"{prompt_set['name']}/{category['name']}", category["num_prompts"], run, True))
    return "\n".join(lines)


def _measured_row(name: str, prompts: int, run: dict, best: bool) -> str:
    d = run["derived"]
    cells = [
        name, str(prompts), f"**{run['k']}**" if best else str(run["k"]), number(d["tau"]),
        " ".join(number(r) for r in d["per_position_acceptance"]), number(d["speedup"], "×"),
        *prediction_cells(d), number(d["tokens_per_s"], digits=0),
        number(d["baseline_tokens_per_s"], digits=0), {True: "✓", False: "✗", None: "n/a (sampling)"}[d["lossless"]],
    ]  # fmt: skip
    return "| " + " | ".join(cells) + " |"


def prediction_cells(derived: dict) -> tuple[str, str]:
    """(predicted, efficiency): from the isolated costs when the report has them (SPEC.md, spec-bench
    report); older reports only have the in-run prediction, marked * and without an efficiency."""
    isolated = derived.get("isolated")
    if isolated is None:
        return number(derived["predicted_speedup"], "×*"), "—"
    return number(isolated["predicted_speedup"], "×"), number(isolated["efficiency"])


def number(value: float | None, unit: str = "", digits: int = 2) -> str:
    """How the card prints a figure: fixed digits, — when undefined."""
    return "—" if value is None else f"{value:.{digits}f}{unit}"


def provenance(config: dict) -> str:
    """Verifier fingerprint, data set and training record from the checkpoint's spec_tools key."""
    record = config.get("spec_tools")
    if not isinstance(record, dict):
        return "## Provenance\n\nconfig.json carries no `spec_tools` record (not trained by spec-tools): verifier, data and training are not recorded."
    lines = [f"- Written by spec-tools {record.get('version')} (format version {record.get('format_version')})."]
    verifier = record.get("verifier")
    if isinstance(verifier, dict):
        lines.append(
            f"- Verifier it was trained for (fingerprint): `{verifier.get('name_or_path')}`, {verifier.get('model_type')}, "
            f"{verifier.get('num_hidden_layers')} layers, hidden size {verifier.get('hidden_size')}, vocabulary "
            f"{verifier.get('vocab_size')}; config.json sha256 `{verifier.get('config_sha256')}`, tokenizer sha256 "
            f"`{verifier.get('tokenizer_sha256')}`, chat template sha256 {_code_or_none(verifier.get('chat_template_sha256'))}."
        )
    dataset = record.get("dataset")
    if isinstance(dataset, dict):
        parts = [f"data set fingerprint `{dataset.get('fingerprint')}`"]
        parts += [f"{dataset[key]:,} {word}" for key, word in (("num_records", "records"), ("num_tokens", "tokens")) if isinstance(dataset.get(key), int)]
        if dataset.get("layer_ids") is not None:
            parts.append(f"hidden states of verifier layers {dataset['layer_ids']}")
        lines.append("- Training data: " + ", ".join(parts) + ".")
    training = record.get("training")
    if isinstance(training, dict):
        lines.append("- Training: " + training_summary(training))
    return "## Provenance\n\n" + "\n".join(lines)


def _code_or_none(value) -> str:
    return "none recorded" if value is None else f"`{value}`"


def training_summary(training: dict) -> str:
    """The training record as written by spec-train: its command in a code block, every other key as recorded."""
    command = training.get("command")
    others = [f"{key}: {value if isinstance(value, (str, int, float)) else json.dumps(value)}" for key, value in training.items() if key != "command"]
    text = "; ".join(others) or "no details recorded"
    if command:
        command_text = shlex.join(command) if isinstance(command, list) else str(command)
        text += f". Command:\n\n  ```sh\n  {command_text}\n  ```"
    return text


def files_table(files: tuple[PublishedFile, ...]) -> str:
    rows = "\n".join(f"| `{f.path_in_repo}` | {f.num_bytes:,} | `{f.sha256}` |" for f in files)
    return f"## Files\n\n| file | bytes | sha256 |\n|---|---|---|\n{rows}"


def checks(inputs: CardInputs) -> str:
    lines = "\n".join(f"- {line}" for line in inputs.checks)
    return f"## Checks before upload\n\n{lines}\n\nCard generated by spec-push {inputs.tool_version} on {inputs.date}."
