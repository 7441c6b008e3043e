"""`./just bench-algorithms`: several draft algorithms trained on one data set with one step budget,
then measured by spec-bench on the same prompt sets; this module is the part without processes:
the variants, the layers one capture must hold for all of them, and the table and plot made from
the spec-bench reports and training records.

A variant is NAME=SPEC-TRAIN-OPTIONS, e.g. `eagle-hass=--algorithm eagle --hass-topk 10`.
"""

from __future__ import annotations

import dataclasses
import shlex
from pathlib import Path

from libspec.errors import SpecError
from libspec.format.atomic import atomic_path
from libspec.options import option

# What the issue asks to compare. DFlash is cut down for a CPU budget: 2 draft layers (not 5) and
# blocks of 8 (not 16); its aux layers follow z-lab's rule for 2 layers (algorithms/dflash).
DEFAULT_VARIANTS = (
    "eagle3=--algorithm eagle3",
    "dflash=--algorithm dflash --num-layers 2 --block-size 8",
    "eagle=--algorithm eagle",
    "eagle-hass-topk=--algorithm eagle --hass-topk 10",
    "eagle3-hass-topk=--algorithm eagle3 --hass-topk 10",
)


@dataclasses.dataclass(frozen=True)
class ComparisonOptions:
    """The budget and the measurement, the same for every variant."""

    output: str = option("out/bench-algorithms", "run folder: prompts, data set, one train-NAME/ and bench-NAME.json per variant (reused on a rerun)", flag="--output")
    prompts: int = option(160, "training prompts (tools.instruction_prompts), answered by the verifier", minimum=1)
    capture_new_tokens: int = option(96, "longest regenerated training reply", minimum=1)
    steps: int = option(50, "optimizer steps every variant trains (the shared budget)", minimum=1)
    tokens_per_batch: int = option(512, "draft queries per batch (spec-train --tokens-per-batch)", minimum=1)
    draft_vocab_size: int = option(8192, "reduced draft vocabulary (EAGLE-3, DFlash): the lm_head is most of a draft's CPU cost", minimum=1)
    k: str = option("1-4", "spec-bench --k: drafted tokens per step")
    max_new_tokens: int = option(48, "tokens generated per benchmark prompt", minimum=1)
    cost_repeats: int = option(3, "spec-bench --cost-repeats (isolated-cost passes per set)", minimum=0)
    upstream_dflash: bool = option(False, "also train upstream speculators 0.9.0's DFlash ($SPEC_UPSTREAM_PYTHON, else the gates venv) on the first dflash variant's batches, and bench it")
    threads: int = option(2, "torch threads for capture and training (spec-bench runs on 1, its steadiest)", minimum=1)
    # Lists of words: the tool offers them with nargs="+" (option() fields take one word each).
    sets: tuple[str, ...] = ("mt-bench:8", "humaneval:8")  # spec-bench prompt sets (NAME:N)
    variants: tuple[str, ...] = DEFAULT_VARIANTS  # NAME=SPEC-TRAIN-OPTIONS each


@dataclasses.dataclass(frozen=True)
class Variant:
    """One draft to train: a name for the table and the spec-train options that make it."""

    name: str
    train_args: tuple[str, ...]

    @property
    def algorithm(self) -> str:
        return _option_value(self.train_args, "--algorithm") or "eagle3"


def parse_variant(text: str) -> Variant:
    """NAME=OPTIONS -> Variant; a one-line error when the name is missing or not a plain word."""
    name, separator, options = text.partition("=")
    if not separator or not name or not name.replace("-", "").replace("_", "").isalnum():
        raise SpecError(f"--variants {text!r}: expected NAME=SPEC-TRAIN-OPTIONS with NAME letters, digits, - or _")
    return Variant(name, tuple(shlex.split(options)))


def parse_variants(texts) -> list[Variant]:
    """All variants, refusing a name given twice (their folders would clash)."""
    variants = [parse_variant(text) for text in texts]
    names = [v.name for v in variants]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise SpecError(f"--variants: name(s) {', '.join(repeated)} given more than once")
    return variants


def _option_value(args: tuple[str, ...], flag: str) -> str | None:
    for index, arg in enumerate(args):
        if arg == flag and index + 1 < len(args):
            return args[index + 1]
        if arg.startswith(flag + "="):
            return arg.split("=", 1)[1]
    return None


def aux_layers(variant: Variant, depth: int) -> list[int]:
    """The verifier layers this variant's draft reads: its --aux-layer-ids, else its algorithm's default."""
    from libspec.algorithms import training_for

    given = _option_value(variant.train_args, "--aux-layer-ids")
    if given:
        return [int(part) for part in given.split(",")]
    training = training_for(variant.algorithm)
    defaults = {f.name: f.default for f in dataclasses.fields(training.Options) if f.default is not dataclasses.MISSING}
    num_layers = _option_value(variant.train_args, "--num-layers")
    if num_layers is not None and "num_layers" in defaults:
        defaults["num_layers"] = int(num_layers)
    return list(training.default_aux_layer_ids(depth, training.Options(**defaults)))


def capture_layers(variants: list[Variant], depth: int) -> list[int]:
    """One capture for all variants: the union of their aux layers plus the last layer (the teacher)."""
    return sorted({depth, *(layer for v in variants for layer in aux_layers(v, depth))})


# ---- the commands each stage runs (argv after `python -m`), so a rerun can tell what is reusable --

def capture_command(options: ComparisonOptions, verifier: str, layers: list[int]) -> list[str]:
    """spec-gen-hidden: the verifier answers the prompts; one data set with every variant's layers."""
    out = Path(options.output)
    return ["tools.spec_gen_hidden", "--verifier", verifier, "--data", str(out / "prompts.jsonl"), "--regenerate",
            "--max-new-tokens", str(options.capture_new_tokens), "--layers", ",".join(map(str, layers)),
            "--threads", str(options.threads), "-o", str(out / "data")]  # fmt: skip


def train_command(options: ComparisonOptions, verifier: str, variant: Variant) -> list[str]:
    """spec-train for one variant: exactly `steps` optimizer steps (the epoch count only has to be
    large enough never to stop first; the cosine schedule spans the steps)."""
    from libspec.algorithms import training_for

    out = Path(options.output)
    command = ["tools.spec_train", "--data", str(out / "data"), "--verifier", verifier, "-o", str(out / f"train-{variant.name}"),
               "--tokens-per-batch", str(options.tokens_per_batch), "--epochs", "1000000", "--max-steps", str(options.steps)]  # fmt: skip
    if not training_for(variant.algorithm).FULL_VOCABULARY:  # EAGLE-1 drafts through the verifier's own head
        command += ["--draft-vocab-size", str(options.draft_vocab_size)]
    return command + list(variant.train_args)


def bench_command(options: ComparisonOptions, verifier: str, name: str, checkpoint: Path) -> list[str]:
    """spec-bench for one variant's checkpoint, on the shared prompt sets."""
    out = Path(options.output)
    return ["tools.spec_bench", "--verifier", verifier, "--speculator", str(checkpoint),
            "--prompts", *options.sets, "--k", options.k, "--max-new-tokens", str(options.max_new_tokens),
            "--cost-repeats", str(options.cost_repeats), "-o", str(out / f"bench-{name}.json")]  # fmt: skip


def upstream_dflash_command(options: ComparisonOptions, verifier: str, mirror: Variant, checkpoint: Path) -> list[str]:
    """Upstream speculators' DFlash trainer (tools.bench_train_upstream_dflash) on the batches spec-train
    builds for `mirror`: the same draft size, aux layers, vocabulary, batch size and steps. The
    mirror's other options (loss weighting, anchors) are not carried over: upstream runs its defaults."""
    from libspec.algorithms import training_for

    defaults = training_for("dflash").Options()
    num_layers = _option_value(mirror.train_args, "--num-layers") or str(defaults.num_layers)
    block_size = _option_value(mirror.train_args, "--block-size") or str(defaults.block_size)
    command = ["tools.bench_train_upstream_dflash", "--data", str(Path(options.output) / "data"), "--verifier", verifier,
               "-o", str(checkpoint), "--steps", str(options.steps), "--tokens-per-batch", str(options.tokens_per_batch),
               "--num-layers", num_layers, "--block-size", block_size, "--draft-vocab-size", str(options.draft_vocab_size),
               "--threads", str(options.threads)]  # fmt: skip
    aux = _option_value(mirror.train_args, "--aux-layer-ids")
    return command + (["--aux-layer-ids", aux] if aux else [])


# ---- the table and the plot, from spec-bench reports and training records ------------------------

TABLE_COLUMNS = ("variant", "set", "best k", "τ", "per-position acceptance", "c", "speedup", "lossless", "train s", "train tok/s", "train MiB")


def training_summary(metrics_lines: list[dict], wall_s: float | None) -> dict:
    """Steps, wall-clock and throughput of one training run, from its metrics.jsonl lines.

    Throughput is the algorithm's own supervised positions per second of optimizer steps (validation
    and checkpoint writes excluded); wall-clock is the whole spec-train process."""
    steps = [m for m in metrics_lines if m.get("kind") == "train"]
    queries = sum(m["queries"] for m in steps)
    step_s = sum(m["queries"] / m["tokens_per_s"] for m in steps if m.get("tokens_per_s"))
    return {"steps": max((m["step"] for m in steps), default=0), "wall_s": wall_s, "queries": queries,
            "tokens_per_s": queries / step_s if step_s else None}  # fmt: skip


def _row_at(scope: dict, k: int | None) -> dict | None:
    return next((r for r in scope.get("runs", []) if r.get("k") == k), None)


def _table_row(variant: str, set_name: str, row: dict | None, k: int | None, training: dict) -> dict:
    derived = (row or {}).get("derived", {})
    return {"variant": variant, "set": set_name, "best_k": k, "tau": derived.get("tau"),
            "per_position_acceptance": derived.get("per_position_acceptance"), "draft_cost_c": derived.get("draft_cost_c"),
            "speedup": derived.get("speedup"), "lossless": derived.get("lossless"),
            "train_wall_s": training.get("wall_s"), "train_tokens_per_s": training.get("tokens_per_s"),
            "train_peak_mib": None if training.get("peak_rss_bytes") is None else training["peak_rss_bytes"] / 2**20}  # fmt: skip


def comparison_rows(variant: str, report: dict, training: dict) -> list[dict]:
    """One row per prompt set at its best k, then one per category at the set's best k (so a
    category's τ is read at the k the whole set would be served with)."""
    rows = []
    for prompt_set in report.get("prompt_sets", []):
        k = prompt_set.get("best_k")
        rows.append(_table_row(variant, prompt_set["name"], _row_at(prompt_set, k), k, training))
        for category in prompt_set.get("categories") or []:
            rows.append(_table_row(variant, f"{prompt_set['name']}/{category['name']}", _row_at(category, k), k, training))
    return rows


def tau_ratios(rows: list[dict], reference: str) -> dict[str, dict[str, float]]:
    """Each variant's τ (at its best k) over `reference`'s, per prompt set, and its code/chat gap
    (HumanEval τ over MT-Bench τ): the issue's targets read off the measured rows."""
    tau = {(r["variant"], r["set"]): r["tau"] for r in rows if r["tau"] is not None}
    ratios: dict[str, dict[str, float]] = {}
    for (variant, set_name), value in tau.items():
        base = tau.get((reference, set_name))
        if base and "/" not in set_name:
            ratios.setdefault(variant, {})[f"{set_name} vs {reference}"] = value / base
    for variant in {v for v, _ in tau}:
        code, chat = tau.get((variant, "humaneval")), tau.get((variant, "mt-bench"))
        if code and chat:
            ratios.setdefault(variant, {})["humaneval / mt-bench"] = code / chat
    return ratios


def tau_curves(report: dict) -> dict[str, list[tuple[int, float]]]:
    """τ against k for each prompt set of a report (the plot's lines)."""
    return {s["name"]: [(r["k"], r["derived"]["tau"]) for r in s.get("runs", []) if r["derived"].get("tau") is not None]
            for s in report.get("prompt_sets", [])}  # fmt: skip


def format_cell(column: str, row: dict) -> str:
    """A table cell: fixed decimals, '-' for what was not measured."""
    key = {"best k": "best_k", "τ": "tau", "per-position acceptance": "per_position_acceptance", "c": "draft_cost_c",
           "train s": "train_wall_s", "train tok/s": "train_tokens_per_s", "train MiB": "train_peak_mib"}.get(column, column)  # fmt: skip
    value = row.get(key)
    if value is None:
        return "-"
    if key == "per_position_acceptance":
        return " ".join("-" if p is None else f"{p:.2f}" for p in value)
    if key == "lossless":
        return "yes" if value else "NO"
    if key in ("train_wall_s", "train_tokens_per_s", "train_peak_mib"):
        return f"{value:,.0f}"
    if isinstance(value, float):
        return f"{value:.2f}" if key != "draft_cost_c" else f"{value:.3f}"
    return str(value)


def plot_tau_curves(curves: dict[str, dict[str, list[tuple[int, float]]]], path: str | Path, title: str) -> Path:
    """One panel per prompt set, one line per variant: τ against k. `curves`: variant -> set -> points."""
    try:
        import matplotlib

        matplotlib.use("Agg")  # files only, no display
        import matplotlib.pyplot as plt
    except ImportError:
        raise SpecError("bench-algorithms: the plot needs matplotlib: pip install 'spec-tools[plot]'") from None
    sets = sorted({name for per_set in curves.values() for name in per_set})
    figure, axes = plt.subplots(1, max(1, len(sets)), figsize=(5.5 * max(1, len(sets)), 4), squeeze=False)
    for axis, set_name in zip(axes[0], sets):
        for variant, per_set in curves.items():
            points = per_set.get(set_name) or []
            axis.plot([k for k, _ in points], [t for _, t in points], "o-", label=variant)
        axis.axhline(1.0, color="grey", linewidth=0.8)
        axis.set_xlabel("k (drafted tokens per step)")
        axis.set_ylabel("τ (tokens / verifier step)")
        axis.set_title(set_name)
        axis.legend(fontsize=8)
    figure.suptitle(title, fontsize=9)
    figure.tight_layout()
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png", dpi=110)
    plt.close(figure)
    return Path(path)
