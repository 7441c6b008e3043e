"""bench-algorithms without training: the variants, the one capture's layers, the commands, and the
table and plot made from spec-bench reports (rows derived by spec-bench's own `derive`)."""

from __future__ import annotations

import pytest

from libspec.bench import algorithm_comparison as comparison
from libspec.bench.measure import derive
from libspec.errors import SpecError

BASELINE = {"seconds": {"decode": 1.0}, "calls": {"decode": 100}}  # t1 = 10 ms


def _run(k: int, histogram: list[int], mismatched=()) -> dict:
    rounds = sum(histogram)
    tokens = sum((n + 1) * count for n, count in enumerate(histogram)) + 2
    raw = {"histogram": histogram, "seconds": {"draft": 0.001 * k * rounds, "verify": 0.012 * rounds, "accept": 0.0},
           "tokens": tokens, "prompts": 2, "mismatched_prompts": list(mismatched)}  # fmt: skip
    return {"k": k, **raw, "derived": derive(k, raw, BASELINE, greedy=True)}


def _report() -> dict:
    chat = [_run(1, [6, 4]), _run(2, [5, 3, 2])]
    coding = [_run(1, [2, 8]), _run(2, [1, 2, 7])]
    return {"hardware": "test CPU", "prompt_sets": [
        {"name": "mt-bench", "best_k": 2, "runs": chat, "categories": [{"name": "coding", "best_k": 1, "runs": coding}]},
        {"name": "humaneval", "best_k": 1, "runs": coding, "categories": []},
    ]}  # fmt: skip


def test_variants_parse_and_refuse_bad_names():
    variant = comparison.parse_variant("eagle-hass=--algorithm eagle --hass-topk 10")
    assert variant.name == "eagle-hass" and variant.algorithm == "eagle" and variant.train_args[-1] == "10"
    assert comparison.parse_variant("plain=").algorithm == "eagle3"
    with pytest.raises(SpecError, match="expected NAME=SPEC-TRAIN-OPTIONS"):
        comparison.parse_variant("--algorithm eagle")
    with pytest.raises(SpecError, match="a given more than once"):
        comparison.parse_variants(["a=", "a=--algorithm dflash"])


def test_one_capture_holds_every_variants_layers_and_the_last():
    variants = comparison.parse_variants(comparison.DEFAULT_VARIANTS)
    assert comparison.aux_layers(variants[0], 30) == [2, 15, 27]  # EAGLE-3: 2, n/2, n-3
    assert comparison.aux_layers(variants[2], 30) == [30]  # EAGLE-1 reads the last layer
    dflash = comparison.parse_variant("d=--algorithm dflash --num-layers 2")
    assert comparison.aux_layers(dflash, 30) == [2, 28]  # z-lab's spread for 2 draft layers
    explicit = comparison.parse_variant("d=--algorithm dflash --aux-layer-ids 3,9")
    assert comparison.capture_layers([variants[0], explicit], 30) == [2, 3, 9, 15, 27, 30]


def test_every_variant_trains_the_same_steps_and_eagle1_keeps_the_full_vocabulary():
    options = comparison.ComparisonOptions(steps=7)
    eagle3, eagle = (comparison.parse_variant(t) for t in ("a=--algorithm eagle3", "b=--algorithm eagle"))
    for variant in (eagle3, eagle):
        command = comparison.train_command(options, "V", variant)
        assert command[command.index("--max-steps") + 1] == "7"
    assert "--draft-vocab-size" in comparison.train_command(options, "V", eagle3)
    assert "--draft-vocab-size" not in comparison.train_command(options, "V", eagle)  # spec-train refuses it there
    bench = comparison.bench_command(options, "V", "b", "out/train-b/best")
    assert bench[bench.index("--prompts") + 1 : bench.index("--k")] == list(options.sets)
    mirror = comparison.parse_variant("d=--algorithm dflash --num-layers 2 --block-size 8")
    upstream = comparison.upstream_dflash_command(options, "V", mirror, "out/train-d-upstream")
    assert [upstream[upstream.index(f) + 1] for f in ("--steps", "--num-layers", "--block-size")] == ["7", "2", "8"]


def test_rows_read_each_set_and_category_at_the_sets_best_k():
    training = {"wall_s": 12.0, "tokens_per_s": 345.6, "peak_rss_bytes": 3 * 2**20}
    rows = comparison.comparison_rows("v", _report(), training)
    assert [(r["set"], r["best_k"]) for r in rows] == [("mt-bench", 2), ("mt-bench/coding", 2), ("humaneval", 1)]
    assert rows[0]["tau"] == pytest.approx(1 + (3 + 2 * 2) / 10)  # from the histogram [5, 3, 2]
    assert rows[0]["per_position_acceptance"] == pytest.approx([0.5, 0.2])
    assert rows[1]["tau"] == pytest.approx(1 + (2 + 14) / 10)  # the category at k=2, not its own best k=1
    assert rows[2]["train_wall_s"] == 12.0 and rows[0]["lossless"] is True
    assert comparison.format_cell("train MiB", rows[0]) == "3"


def test_a_lossy_run_and_unmeasured_cells_show_in_the_table():
    report = {"prompt_sets": [{"name": "s", "best_k": 1, "runs": [_run(1, [3, 1], mismatched=[0])]}]}
    row = comparison.comparison_rows("v", report, {"wall_s": None, "tokens_per_s": None})[0]
    assert comparison.format_cell("lossless", row) == "NO"
    assert comparison.format_cell("train s", row) == "-"
    assert comparison.format_cell("per-position acceptance", row) == "0.25"
    missing = comparison.comparison_rows("v", {"prompt_sets": [{"name": "s", "best_k": None, "runs": []}]}, {})[0]
    assert [comparison.format_cell(c, missing) for c in ("τ", "c", "speedup")] == ["-", "-", "-"]


def test_training_summary_counts_only_optimizer_steps():
    lines = [{"kind": "train", "step": 1, "queries": 100, "tokens_per_s": 50.0},
             {"kind": "val", "step": 1, "tau_sim": 1.2},
             {"kind": "train", "step": 2, "queries": 300, "tokens_per_s": 100.0}]  # fmt: skip
    summary = comparison.training_summary(lines, wall_s=9.0)
    assert summary == {"steps": 2, "wall_s": 9.0, "queries": 400, "tokens_per_s": pytest.approx(400 / 5.0)}


def test_plot_draws_tau_against_k(tmp_path):
    pytest.importorskip("matplotlib")
    curves = {"a": comparison.tau_curves(_report()), "b": {"mt-bench": [(1, 1.1)]}}
    assert curves["a"]["humaneval"][0][0] == 1
    path = comparison.plot_tau_curves(curves, tmp_path / "p.png", "t")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_tau_ratios_against_a_reference_and_the_code_chat_gap():
    rows = [{"variant": "e3", "set": "mt-bench", "tau": 1.5}, {"variant": "e3", "set": "humaneval", "tau": 2.0},
            {"variant": "df", "set": "mt-bench", "tau": 1.2}, {"variant": "df", "set": "humaneval", "tau": 3.0},
            {"variant": "df", "set": "mt-bench/coding", "tau": 9.0}, {"variant": "x", "set": "humaneval", "tau": None}]  # fmt: skip
    ratios = comparison.tau_ratios(rows, "e3")
    assert ratios["df"] == pytest.approx({"mt-bench vs e3": 0.8, "humaneval vs e3": 1.5, "humaneval / mt-bench": 2.5})
    assert ratios["e3"]["humaneval / mt-bench"] == pytest.approx(4 / 3) and "x" not in ratios


def test_a_stage_is_reused_only_for_the_same_command(tmp_path):
    from tools.bench_algorithms import _stage

    record = tmp_path / "train-x.json"
    record.write_text('{"command": ["tools.spec_train", "--max-steps", "5"], "wall_s": 3.0}')
    assert _stage(record, ["tools.spec_train", "--max-steps", "5"])["wall_s"] == 3.0  # nothing runs
    with pytest.raises(SpecError, match="train-x.json: made by another command"):
        _stage(record, ["tools.spec_train", "--max-steps", "6"])
