"""Checks a bench report must pass before its numbers are published (SPEC.md, "Bench reports").

A report stores raw counts and seconds; its figures must be what `libspec.bench.measure.derive` computes
from them, carry no sanity flag, come from raw counts that can add up, and describe the checkpoint
being published: the same weights (or, for older reports, the same draft shape at the same path)
and the same verifier.
"""

from __future__ import annotations

import math
from pathlib import Path

from libspec.format import checkpoint as ckpt
from libspec.bench.measure import best_k, derive, isolated_cost_figures
from libspec.errors import SpecError
from libspec.verifier import VerifierFingerprint, fingerprint_differences
from libspec.format.json_files import read_json_object
from libspec.format.schemas import schema_problems


def load_report(path: str | Path) -> dict:
    """Parse a bench report (one-line error if it is missing or not a JSON object)."""
    return read_json_object(path, missing="no such bench report", expected="a spec-bench report (a JSON object)")


def report_problems(report: dict) -> list[str]:
    """Why a report's numbers cannot be published as they are: schema, recomputation, flags, counts."""
    problems = [f"schema: {p}" for p in schema_problems("bench-report", report)]
    if problems:
        return problems  # the checks below read fields the schema guarantees
    if report["speculator"] is None:
        return ["a baseline-only report (no speculator was measured)"]
    greedy = report["settings"]["temperature"] == 0
    for prompt_set in report["prompt_sets"]:
        costs = prompt_set.get("isolated_costs")  # older reports have none: their rows have no `isolated` either
        if costs is not None:
            problems += _isolated_cost_problems(costs, prompt_set)
        recomputed_rows = []
        for run in prompt_set["runs"]:
            where = f"prompt set {prompt_set['name']!r}, k={run['k']}"
            recomputed = derive(run["k"], run, prompt_set["baseline"], greedy, costs)
            recomputed_rows.append({**run, "derived": recomputed})
            problems += [f"{where}: {d}" for d in _differences(run["derived"], recomputed, "derived")]
            problems += [f"{where}: {p}" for p in _count_problems(run, prompt_set, report["settings"], greedy)]
            problems += [f"{where}: sanity flag: {flag}" for flag in recomputed["flags"]]
        recomputed_best = best_k(recomputed_rows)
        if prompt_set["best_k"] != recomputed_best:
            problems.append(f"prompt set {prompt_set['name']!r}: best_k is {prompt_set['best_k']}, the measurements say {recomputed_best}")
    return problems


def _count_problems(run: dict, prompt_set: dict, settings: dict, greedy: bool) -> list[str]:
    """Raw counts that cannot all be true at once (peers' "physical limits": they expose broken bookkeeping)."""
    k, histogram, baseline = run["k"], run["histogram"], prompt_set["baseline"]
    problems = []
    if k not in settings["k_values"]:
        problems.append(f"k={k} is not among settings.k_values {settings['k_values']}")
    if len(histogram) != k + 1:
        problems.append(f"histogram has {len(histogram)} entries, expected k+1 = {k + 1}")
    if not run["prompts"] == baseline["prompts"] == prompt_set["num_prompts"]:
        problems.append(f"prompt counts differ: run {run['prompts']}, baseline {baseline['prompts']}, set {prompt_set['num_prompts']}")
    # Each round yields its accepted drafts plus one verifier token; the first token comes from the prefill.
    most_tokens = sum((n + 1) * count for n, count in enumerate(histogram)) + run["prompts"]
    if run["tokens"] > most_tokens:
        problems.append(f"{run['tokens']} generated tokens, but its rounds can yield at most {most_tokens}")
    if greedy and not run["mismatched_prompts"] and run["tokens"] != baseline["tokens"]:
        problems.append(f"greedy output equal to the baseline's, yet {run['tokens']} tokens against the baseline's {baseline['tokens']}")
    return problems


def _isolated_cost_problems(costs: dict, prompt_set: dict) -> list[str]:
    """Isolated costs whose figures are not their timings' medians, or that lack a forward size a row needs."""
    where = f"prompt set {prompt_set['name']!r}"
    problems = [f"{where}: {d}" for d in _differences(costs["derived"], isolated_cost_figures(costs), "isolated_costs.derived")]
    passes = len(costs["context_tokens"])
    uneven = [f"forward_s[{n!r}]" for n, samples in costs["forward_s"].items() if len(samples) != passes]
    uneven += ["draft_step_s"] if costs["draft_step_s"] is not None and len(costs["draft_step_s"]) != passes else []
    if uneven:
        problems.append(f"{where}: isolated_costs has {passes} passes (context_tokens), but {', '.join(uneven)} another number of timings")
    needed = sorted({run["k"] + 1 for run in prompt_set["runs"]} - {int(n) for n, samples in costs["forward_s"].items() if samples})
    if needed:
        problems.append(f"{where}: isolated_costs.forward_s has no timings of {needed}-token forwards (k+1 of its rows)")
    if prompt_set["runs"] and not costs["draft_step_s"]:
        problems.append(f"{where}: isolated_costs.draft_step_s has no timings, yet the set has speculative rows")
    return problems


def _differences(stored, recomputed, name: str) -> list[str]:
    """Where a stored figure differs from its recomputation (floats to 1e-9 relative: JSON round-trips)."""
    if isinstance(recomputed, dict):
        if not isinstance(stored, dict):
            return [f"{name} is {stored!r}, expected an object"]
        found = []
        for key in sorted(set(stored) | set(recomputed)):
            if key not in stored or key not in recomputed:
                found.append(f"{name}.{key} is {'missing' if key not in stored else 'not a figure derive() computes'}")
            else:
                found += _differences(stored[key], recomputed[key], f"{name}.{key}")
        return found
    if isinstance(recomputed, list):
        if not isinstance(stored, list) or len(stored) != len(recomputed):
            return [f"{name} is {stored!r}, recomputed from the raw counts {recomputed!r}"]
        return [d for i, (s, r) in enumerate(zip(stored, recomputed)) for d in _differences(s, r, f"{name}[{i}]")]
    same = stored == recomputed
    if isinstance(recomputed, float) and isinstance(stored, (int, float)) and not isinstance(stored, bool):
        same = math.isclose(stored, recomputed, rel_tol=1e-9, abs_tol=1e-12)
    return [] if same else [f"{name} is {stored!r}, recomputed from the raw counts {recomputed!r}"]


def mismatch_problems(report: dict, checkpoint_dir: str | Path, config: dict, weight_checksums: dict | None = None) -> list[str]:
    """Why a (schema-valid) report was not measured on this checkpoint and its verifier.

    `weight_checksums` (file name -> sha256) saves hashing the weights again when the caller has them.
    """
    speculator = report.get("speculator")
    if not isinstance(speculator, dict):
        return []
    weights = weight_checksums if weight_checksums is not None else ckpt.weight_checksums(checkpoint_dir)
    return _speculator_mismatches(speculator, Path(checkpoint_dir), config, weights) + _verifier_mismatches(report["verifier"], config)


def _speculator_mismatches(speculator: dict, checkpoint_dir: Path, config: dict, weights: dict) -> list[str]:
    tl = config.get("transformer_layer_config", {})
    ours = {
        "algorithm": config.get("speculators_model_type"),
        "aux_layer_ids": config.get("eagle_aux_hidden_state_layer_ids"),
        "draft_layers": tl.get("num_hidden_layers"),
        "draft_vocab_size": config.get("draft_vocab_size"),
    }  # speculative_tokens may differ: spec-bench --write-best-k changes it after measuring
    problems = [
        f"measured a speculator with {key} {speculator[key]!r}, this checkpoint has {value!r}"
        for key, value in ours.items()
        if key in speculator and speculator[key] != value
    ]
    measured = speculator.get("weight_files")
    if measured is not None:
        if measured != weights:
            problems.append(f"measured other weights: sha256 {_short_map(measured)}, this checkpoint's are {_short_map(weights)}")
    elif not _same_folder(speculator["path"], checkpoint_dir):
        problems.append(
            f"records no weight checksums and measured {speculator['path']!r}, not {str(checkpoint_dir)!r}: "
            "cannot tell it was measured on this checkpoint (re-run spec-bench)"
        )
    return problems


def _verifier_mismatches(measured: dict, config: dict) -> list[str]:
    """The report's verifier fingerprint against the checkpoint's record of its verifier."""
    recorded = (config.get("spec_tools") or {}).get("verifier")
    if recorded:
        try:
            differences = fingerprint_differences(VerifierFingerprint.from_dict(measured), VerifierFingerprint.from_dict(recorded))
        except (KeyError, TypeError):
            return ["this checkpoint's spec_tools.verifier is not a complete verifier fingerprint (SPEC.md §3)"]
        return [f"measured another verifier than the one this checkpoint was trained for: {d}" for d in differences]
    # No fingerprint recorded (a converted checkpoint): compare what the config does say.
    tl = config.get("transformer_layer_config", {})
    expected = {"vocab_size": tl.get("vocab_size"), "hidden_size": config.get("target_hidden_size", tl.get("hidden_size"))}
    problems = [
        f"measured a verifier with {key} {measured[key]}, this checkpoint's verifier has {value}"
        for key, value in expected.items()
        if value is not None and measured.get(key) != value
    ]
    architectures = config.get("speculators_config", {}).get("verifier", {}).get("architectures")
    if architectures and measured.get("architectures") and architectures != measured["architectures"]:
        problems.append(f"measured a {measured['architectures']} verifier, this checkpoint names {architectures}")
    aux = config.get("eagle_aux_hidden_state_layer_ids") or []
    if aux and max(aux) > measured.get("num_hidden_layers", 0):
        problems.append(f"measured a verifier with {measured.get('num_hidden_layers')} layers, this checkpoint reads layer {max(aux)}")
    return problems


def identity_evidence(report: dict, config: dict) -> str:
    """In words, how a report was tied to this checkpoint and verifier (for the card's record of the checks)."""
    speculator = report.get("speculator") or {}
    weights = "weight sha256" if speculator.get("weight_files") is not None else "draft shape and folder path (the report has no weight checksums)"
    verifier = (
        "verifier fingerprint"
        if (config.get("spec_tools") or {}).get("verifier")
        else "the verifier's vocabulary, hidden size and architecture (config.json records no fingerprint)"
    )
    return f"identity checked by {weights} and {verifier}"


def _same_folder(recorded: str, checkpoint_dir: Path) -> bool:
    try:
        return Path(recorded).resolve() == checkpoint_dir.resolve()
    except OSError:
        return False


def _short_map(checksums: dict) -> str:
    return ", ".join(f"{name} {sha[:12]}…" for name, sha in sorted(checksums.items()))


def check_report(
    path: str | Path, checkpoint_dir: str | Path, config: dict, weight_checksums: dict | None = None
) -> tuple[dict | None, list[str]]:
    """Load and check one report against a checkpoint; every problem names the file."""
    try:
        report = load_report(path)
    except SpecError as error:
        return None, [str(error)]
    problems = report_problems(report)
    if not any(p.startswith("schema:") for p in problems):
        problems += mismatch_problems(report, checkpoint_dir, config, weight_checksums)
    return report, [f"{path}: {p}" for p in problems]
