"""spec-bench: figures derived from raw counts, sanity flags that fire, and the tool end to end."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from conftest import TINY_LLAMA, random_checkpoint_tensors
from libspec.format import checkpoint as ckpt
from libspec.algorithms.eagle3 import config as eagle3
from libspec.bench.decoding import DecodingVerifier
from libspec.bench.kernels import packed_gemm_available
from libspec.bench.measure import (
    acceptance_needed, answered_context, cost_passes_after, derive, expected_tokens_per_step, isolated_cost_figures, measure_isolated_costs,
)
from libspec.bench.prompts import encode_prompt
from libspec.errors import SpecError
from libspec.format.schemas import schema_problems
from tools.spec_bench import main, parse_k

BASELINE = {"histogram": [], "tokens": 1000, "prompts": 10, "seconds": {"decode": 9.9, "prefill": 0.5}, "calls": {"decode": 990}, "mismatched_prompts": []}


def run(histogram, draft=1.0, verify=6.0, accept=0.1, tokens=None, prompts=10, mismatched=()):
    rounds = sum(histogram)
    accepted = sum(n * c for n, c in enumerate(histogram))
    return {
        "histogram": histogram,
        "tokens": tokens if tokens is not None else accepted + rounds + prompts,
        "prompts": prompts,
        "seconds": {"draft": draft, "verify": verify, "accept": accept, "prefill": 0.6},
        "calls": {},
        "mismatched_prompts": list(mismatched),
    }


def test_tau_acceptance_and_costs_come_from_the_histogram():
    d = derive(3, run([100, 100, 100, 100]), BASELINE, greedy=True)
    assert d["rounds"] == 400
    assert d["tau"] == pytest.approx(1 + (0 + 100 + 200 + 300) / 400)  # 2.5
    assert d["per_position_acceptance"] == pytest.approx([0.75, 0.5, 0.25])
    assert d["alpha"] == pytest.approx(600 / (100 * 1 + 100 * 2 + 100 * 3 + 100 * 3))
    t1 = 9.9 / 990
    assert d["draft_cost_c"] == pytest.approx(1.0 / 400 / t1 / 3)
    assert d["verify_cost_v"] == pytest.approx(6.0 / 400 / t1)
    spec_per_token = 7.1 / (600 + 400)  # every accepted draft plus one verifier token per round
    assert d["speedup"] == pytest.approx(t1 / spec_per_token)
    assert d["predicted_speedup"] == pytest.approx(expected_tokens_per_step(d["alpha"], 3) / (7.1 / 400 / t1))
    assert d["lossless"] is True and d["flags"] == []


def test_leviathan_expectation():
    assert expected_tokens_per_step(0.0, 4) == 1.0
    assert expected_tokens_per_step(1.0, 4) == 5.0
    assert expected_tokens_per_step(0.5, 2) == pytest.approx(1.75)


FLAGS = {
    "speedup above tau": (run([400, 0, 0], draft=0.01, verify=0.01, accept=0.0), "impossible (verifying k+1 tokens"),
    "tau above k+1": (run([0, 0, 0, 50]), "τ 4.00 > k+1 = 3"),  # a histogram longer than k+1: miscounted
    "acceptance above 1": (run([0, 0, 0, 50]), "acceptance above 1"),
    "output differs": (run([100, 100, 100], mismatched=[3]), "greedy output differs from the verifier's own on prompts [3]"),
    "too few tokens": (run([5, 5, 5]), "too few for stable figures"),
    "no rounds": (run([0, 0, 0]), "figures undefined"),
}


@pytest.mark.parametrize("case", FLAGS)
def test_each_sanity_flag_fires_on_a_constructed_bad_case(case):
    raw, message = FLAGS[case]
    flags = derive(2, raw, BASELINE, greedy=True)["flags"]
    assert any(message in f for f in flags), flags


# Isolated costs: a 1-token step of 10 ms, a draft step of 1 ms, a (k+1)-token forward of 10 + 5·k ms.
ISOLATED = {
    "context_tokens": [300, 300, 300],
    "forward_s": {str(n): [0.010 + 0.005 * (n - 1) + noise for noise in (0.004, 0.0, -0.001)] for n in range(1, 9)},
    "draft_step_s": [0.003, 0.001, 0.0009],
}


def test_isolated_costs_predict_a_known_speedup():
    figures = isolated_cost_figures(ISOLATED)  # medians: the noise (one sample high, one low) drops out
    assert figures["step_1_s"] == pytest.approx(0.010)
    assert figures["draft_cost_c"] == pytest.approx(0.1)
    assert figures["verify_cost_v"] == pytest.approx({str(n): 1 + 0.5 * (n - 1) for n in range(2, 9)})
    # α = 0.5 exactly at k = 1 (100 rounds accept nothing, 100 accept the draft): E = 1.5 tokens per round,
    # for k·c + v = 0.1 + 1.5 = 1.6 steps: S = 1.5 / 1.6, independent of the in-run seconds.
    d = derive(1, run([100, 100], draft=9.0, verify=99.0), BASELINE, greedy=True, isolated_costs=ISOLATED)
    assert d["alpha"] == 0.5
    assert d["isolated"]["draft_cost_c"] == pytest.approx(0.1) and d["isolated"]["verify_cost_v"] == pytest.approx(1.5)
    assert d["isolated"]["predicted_speedup"] == pytest.approx(1.5 / 1.6)
    assert d["isolated"]["efficiency"] == pytest.approx(d["speedup"] / (1.5 / 1.6))
    assert "isolated" not in derive(1, run([100, 100]), BASELINE, greedy=True)  # an older report's rows: no such figures


def test_acceptance_needed_inverts_the_prediction_and_says_when_no_draft_can_reach_a_target():
    for alpha, k, c, v in ((0.5, 1, 0.1, 1.5), (0.8, 3, 0.08, 1.28), (0.3, 6, 0.05, 1.4)):
        speedup = expected_tokens_per_step(alpha, k) / (k * c + v)
        assert acceptance_needed(speedup, k, c, v) == pytest.approx(alpha, abs=1e-9)
    assert acceptance_needed(1.8, 1, 0.08, 1.12) is None  # E(1) = 2 tokens < 1.8 x 1.2 steps: out of reach at k = 1


def test_bench_real_summary_shows_the_needed_acceptance_beside_the_measured(capsys):
    from tools.bench_real_summary import main as summary

    rows = [{"k": k, **run([100, 100] + [0] * (k - 1)), "derived": derive(k, run([100, 100] + [0] * (k - 1)), BASELINE, True, ISOLATED)} for k in (1, 2)]
    report = {"format": "spec-tools/bench-report", "settings": {"temperature": 0.0, "max_new_tokens": 64}, "hardware": "cpu", "dtype": "float32",
              "prompt_sets": [{"name": "humaneval", "num_prompts": 10, "runs": rows, "best_k": 1,
                               "isolated_costs": {**ISOLATED, "derived": isolated_cost_figures(ISOLATED)}}]}  # fmt: skip
    path = Path(tempfile.mkdtemp()) / "report.json"
    path.write_text(json.dumps(report))
    assert summary([str(path), "--target", "humaneval=1.1"]) == 0
    out = capsys.readouterr().out
    # k = 1: S = E(α) / (0.1 + 1.5) = 1.1 needs E = 1.76, α = 0.76; k = 2: 1.1 x (0.2 + 2.0) = 2.42 = 1 + α + α² at α ≈ 0.79
    needed = [line.split("|")[6].strip() for line in out.splitlines() if line.startswith("| humaneval | 1.10×")]
    assert needed == [f"{acceptance_needed(1.1, 1, 0.1, 1.5):.2f}", f"{acceptance_needed(1.1, 2, 0.1, 2.0):.2f}"] == ["0.76", "0.79"]


def test_isolated_prediction_is_undefined_without_the_needed_forward():
    costs = {**ISOLATED, "forward_s": {"1": [0.01]}}
    d = derive(2, run([100, 100, 100]), BASELINE, greedy=True, isolated_costs=costs)
    assert d["isolated"] == {"draft_cost_c": pytest.approx(0.1), "verify_cost_v": None, "predicted_speedup": None, "efficiency": None}


def test_isolated_costs_time_the_engine_calls_at_the_context_length():
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(**{k: v for k, v in TINY_LLAMA.items() if k not in ("architectures", "model_type")}))
    verifier = DecodingVerifier(model, [1, 2, 3])
    proposer = RecordingProposer()
    context = answered_context(torch.arange(4, 10), [11] * 8)
    assert context.tolist() == [4, 5, 6, 7, 8, 9, 11, 11, 11, 11]  # the prompt and half its answer
    costs = measure_isolated_costs(verifier, proposer, context, largest_forward=5, repeats=3)
    assert costs["context_tokens"] == [10, 10, 10] and list(costs["forward_s"]) == ["1", "2", "3", "4", "5"]
    assert all(len(samples) == 3 and min(samples) > 0 for samples in [*costs["forward_s"].values(), costs["draft_step_s"]])
    # Each draft step: the proposer started on all but the last token (its aux one shorter), then that token committed.
    assert proposer.calls[-3:] == [("start", 9, 8), ("commit", 1, 1), ("propose", 1)]
    assert verifier.length == 0  # the verifier's cache is left empty, as the engine expects
    assert measure_isolated_costs(verifier, None, context, 2, 1)["draft_step_s"] is None


def test_isolated_passes_are_spread_evenly_between_the_prompts():
    assert [cost_passes_after(i, 4, 12) for i in range(4)] == [3, 3, 3, 3]
    assert [cost_passes_after(i, 80, 12) for i in range(80)].count(1) == 12  # one pass after every 6th or 7th prompt
    assert [cost_passes_after(i, 3, 4) for i in range(3)] == [1, 1, 2]
    assert sum(cost_passes_after(i, 7, 0) for i in range(7)) == 0


class RecordingProposer:
    """Counts what the isolated draft step asks of a proposer."""

    aux_layer_ids = [1, 2, 3]

    def __init__(self):
        self.calls = []

    def start(self, context, aux):
        self.calls.append(("start", len(context), len(aux)))

    def commit(self, accepted, aux):
        self.calls.append(("commit", len(accepted), len(aux)))

    def propose(self, k, temperature, generator):
        self.calls.append(("propose", k))
        return torch.zeros(k, dtype=torch.long), None


def test_parse_k():
    assert parse_k("3") == (3,)
    assert parse_k("1-4") == (1, 2, 3, 4)
    assert parse_k("1,2,6-7") == (1, 2, 6, 7)
    with pytest.raises(Exception, match="expected a number"):
        parse_k("x")


@pytest.fixture
def tiny_setup(tmp_path):
    """A saved tiny verifier with a word-level tokenizer and chat template, an EAGLE-3 draft, prompts."""
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(**{k: v for k, v in TINY_LLAMA.items() if k not in ("architectures", "model_type")}))
    model.save_pretrained(tmp_path / "verifier")
    tokenizer = Tokenizer(models.WordLevel({f"t{i}": i for i in range(64)}, unk_token="t0"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token="t63", pad_token="t0")
    fast.chat_template = "{% for m in messages %}t1 {{ m['content'] }} t2 {% endfor %}{% if add_generation_prompt %}t3{% endif %}"
    fast.save_pretrained(tmp_path / "verifier")
    verifier_config = json.loads((tmp_path / "verifier" / "config.json").read_text())
    config = eagle3.make_config(verifier_config, str(tmp_path / "verifier"), eagle3.Eagle3Options(aux_layer_ids=(1, 2, 3)))
    ckpt.write_checkpoint(tmp_path / "draft", config, random_checkpoint_tensors(config))
    lines = [{"prompt": "t4 t5 t6 t7"}, {"prompt": "t9 t8"}, {"messages": [{"role": "user", "content": "t5 t6 t7"}]}]
    (tmp_path / "prompts.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    return tmp_path


def test_spec_bench_end_to_end(tiny_setup, capsys):
    path = tiny_setup
    status = main([
        "--verifier", str(path / "verifier"), "--speculator", str(path / "draft"), "--prompts", str(path / "prompts.jsonl"),
        "--k", "1-2", "--max-new-tokens", "12", "-o", str(path / "report.json"), "--plot", str(path / "report.png"),
        "--write-best-k", "--json",
    ])  # fmt: skip
    assert status == 0
    report = json.loads(capsys.readouterr().out)
    assert report == json.loads((path / "report.json").read_text())
    assert schema_problems("bench-report", report) == []
    prompt_set = report["prompt_sets"][0]
    assert prompt_set["num_prompts"] == 3 and [r["k"] for r in prompt_set["runs"]] == [1, 2]
    assert all(r["derived"]["lossless"] for r in prompt_set["runs"])
    costs = prompt_set["isolated_costs"]  # the isolated costs ran: 12 passes (4 after each prompt), every forward size up to 8
    assert list(costs["forward_s"]) == [str(n) for n in range(1, 9)] and len(costs["draft_step_s"]) == 12
    assert all(len(samples) == 12 for samples in costs["forward_s"].values()) and len(costs["context_tokens"]) == 12
    assert len(set(costs["context_tokens"])) > 1  # at each prompt's own length
    assert costs["derived"] == isolated_cost_figures(costs) and report["settings"]["cost_repeats"] == 12
    for row in prompt_set["runs"]:  # the stored figures are what derive() gives from the stored raw counts
        assert row["derived"] == derive(row["k"], row, prompt_set["baseline"], greedy=True, isolated_costs=prompt_set["isolated_costs"])
        assert row["derived"]["isolated"]["predicted_speedup"] > 0 and row["derived"]["isolated"]["efficiency"] > 0
    assert (path / "report.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    written = ckpt.read_config(path / "draft")["speculators_config"]["proposal_methods"][0]["speculative_tokens"]
    assert written == prompt_set["best_k"]


def test_bad_prompt_file_names_the_line(tiny_setup, capsys):
    (tiny_setup / "bad.jsonl").write_text('{"prompt": "t4"}\n{"text": 1}\n')
    with pytest.raises(Exception, match=r"bad.jsonl:2: expected an object with a string 'prompt'"):
        main(["--verifier", str(tiny_setup / "verifier"), "--prompts", str(tiny_setup / "bad.jsonl")])


def test_categories_split_the_totals_and_follow_ups_measure_the_second_turn(tiny_setup, capsys, monkeypatch):
    path = tiny_setup
    lines = [
        {"prompt": "t4 t5 t6 t7", "category": "code"},
        {"messages": [{"role": "user", "content": "t5 t6"}], "category": "chat"},
        {"messages": [{"role": "user", "content": "t9 t8"}], "follow_up": "t7 t7", "category": "chat"},
        {"prompt": "t9 t8"},  # no category: in the set's totals only
    ]
    (path / "mixed.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    from libspec.bench import measure

    encoded = []
    monkeypatch.setattr(measure, "encode_prompt", lambda tokenizer, item: encoded.append(item) or encode_prompt(tokenizer, item))
    status = main([
        "--verifier", str(path / "verifier"), "--speculator", str(path / "draft"), "--prompts", str(path / "mixed.jsonl"),
        "--k", "1-2", "--max-new-tokens", "6", "-o", str(path / "report.json"),
    ])  # fmt: skip
    assert status == 0
    out = capsys.readouterr().out
    assert "mixed by category" in out and "efficiency" in out and "v for k+1 = 2..8: " in out
    report = json.loads((path / "report.json").read_text())
    assert schema_problems("bench-report", report) == []
    prompt_set = report["prompt_sets"][0]
    categories = {c["name"]: c for c in prompt_set["categories"]}
    assert list(categories) == ["code", "chat"]  # in the order first seen
    assert [categories["code"]["num_prompts"], categories["chat"]["num_prompts"], prompt_set["num_prompts"]] == [1, 2, 4]
    for k_index, row in enumerate(prompt_set["runs"]):
        assert sum(c["runs"][k_index]["tokens"] for c in categories.values()) < row["tokens"]  # the uncategorised prompt is only here
    for category in categories.values():
        for run in category["runs"]:  # categories are predicted from the set's isolated costs
            assert run["derived"] == derive(run["k"], run, category["baseline"], greedy=True, isolated_costs=prompt_set["isolated_costs"])
    del prompt_set["categories"][0]["runs"][0]["histogram"]
    assert schema_problems("bench-report", report)  # the categories' runs are held to the same schema
    # The two-turn item is measured on [question, the verifier's own answer, follow-up].
    conversation = [item["messages"] for item in encoded if len(item.get("messages", [])) == 3][0]
    assert [m["role"] for m in conversation] == ["user", "assistant", "user"]
    assert conversation[2]["content"] == "t7 t7" and conversation[1]["content"].startswith("t")



def test_floors_missed_exit_1_naming_each_and_the_report_is_still_written(tiny_setup, capsys):
    path = tiny_setup
    common = ["--verifier", str(path / "verifier"), "--speculator", str(path / "draft"), "--prompts", str(path / "prompts.jsonl"),
              "--k", "1-2", "--max-new-tokens", "8", "-o", str(path / "report.json")]  # fmt: skip
    assert main([*common, "--require", "prompts:tau>=1", "--require", "prompts:tau>=99", "--require", "humaneval:tau>=1"]) == 1
    err = capsys.readouterr().err
    assert "2 of 3 floor(s) missed" in err and "prompts:tau>=99" in err and "no report measured 'humaneval'" in err
    assert json.loads((path / "report.json").read_text())["prompt_sets"][0]["name"] == "prompts"
    assert main([*common, "--require", "prompts:tau>=1", "--cost-repeats", "0"]) == 0
    report = json.loads((path / "report.json").read_text())  # no isolated costs asked for: none stored, none derived
    assert "isolated_costs" not in report["prompt_sets"][0] and "isolated" not in report["prompt_sets"][0]["runs"][0]["derived"]
    assert schema_problems("bench-report", report) == []


def test_draft_for_another_verifier_is_refused_listing_the_differences(tiny_setup, capsys):
    """Issue 16 item 8: a draft trained for a 4-layer verifier ran against a 6-layer one without a word."""
    from libspec.errors import SpecError
    from libspec.verifier import fingerprint_verifier

    path = tiny_setup
    six = path / "verifier-6"
    torch.manual_seed(1)
    LlamaForCausalLM(LlamaConfig(**{k: v for k, v in {**TINY_LLAMA, "num_hidden_layers": 6}.items() if k not in ("architectures", "model_type")})).save_pretrained(six)
    for file in (path / "verifier").iterdir():  # the same tokenizer and chat template
        if not (six / file.name).exists():
            (six / file.name).write_bytes(file.read_bytes())
    verifier_config = json.loads((path / "verifier" / "config.json").read_text())
    spec_tools = {"verifier": fingerprint_verifier(str(path / "verifier")).to_dict()}
    config = eagle3.make_config(verifier_config, str(path / "verifier"), eagle3.Eagle3Options(aux_layer_ids=(1, 2, 3)), spec_tools=spec_tools)
    ckpt.write_checkpoint(path / "draft4", config, random_checkpoint_tensors(config))
    args = ["--verifier", str(six), "--speculator", str(path / "draft4"), "--prompts", str(path / "prompts.jsonl"), "--k", "1", "--max-new-tokens", "4"]

    with pytest.raises(SpecError, match=rf"^{path / 'draft4'}: trained for another verifier than {six} \(recorded vs this\): .*num_hidden_layers: 4 vs 6") as error:
        main(args)
    assert "\n" not in str(error.value) and "--force" in str(error.value)

    assert main([*args, "--force", "--json"]) == 0
    captured = capsys.readouterr()
    assert "--force" in captured.err and "num_hidden_layers: 4 vs 6" in captured.err
    assert json.loads(captured.out)["verifier"]["num_hidden_layers"] == 6


def test_draft_that_cannot_run_on_the_verifier_is_refused_even_with_force(tiny_setup):
    from libspec.errors import SpecError

    path = tiny_setup
    wide = path / "verifier-wide"
    wide.mkdir()
    for file in (path / "verifier").iterdir():
        (wide / file.name).write_bytes(file.read_bytes())
    config = json.loads((wide / "config.json").read_text())
    (wide / "config.json").write_text(json.dumps({**config, "hidden_size": 32, "num_hidden_layers": 2}))
    args = ["--verifier", str(wide), "--speculator", str(path / "draft"), "--prompts", str(path / "prompts.jsonl"), "--force"]
    with pytest.raises(SpecError, match=r"does not fit the verifier .*hidden_size is 16 but the verifier's is 32; eagle_aux_hidden_state_layer_ids \[1, 2, 3\] reach past the verifier's 2 layers"):
        main(args)


@pytest.mark.skipif(not packed_gemm_available(torch.device("cpu"), torch.float32), reason="no MKL packed GEMM in this torch build")
def test_packed_kernels_keep_the_output_and_are_recorded(tiny_setup, capsys):
    path = tiny_setup
    status = main(["--verifier", str(path / "verifier"), "--speculator", str(path / "draft"), "--prompts", str(path / "prompts.jsonl"),
                   "--k", "3", "--max-new-tokens", "12", "--cost-repeats", "2", "--kernels", "auto", "--json"])  # fmt: skip
    assert status == 0
    report = json.loads(capsys.readouterr().out)
    assert schema_problems("bench-report", report) == []
    kernels = report["kernels"]
    assert set(kernels["forward_ms"]) == {str(n) for n in range(1, 9)}  # every forward size the run and its isolated costs use was timed
    assert all(kernels["routes"][rows] >= int(rows) for rows in kernels["routes"])
    assert all(r["derived"]["lossless"] for r in report["prompt_sets"][0]["runs"])


def _totals(report: dict) -> list:
    """What a resumed run must reproduce exactly: per set and k, the histogram, tokens and mismatches (times differ)."""
    return [
        (s["name"], r["k"], r["histogram"], r["tokens"], r["mismatched_prompts"], s["baseline"]["tokens"])
        for s in report["prompt_sets"] for r in s["runs"]
    ]


@pytest.mark.parametrize("temperature", ["0", "0.7"])
def test_an_interrupted_run_resumes_from_its_journal_and_counts_what_an_uninterrupted_one_does(tiny_setup, monkeypatch, temperature):
    path = tiny_setup
    from libspec.bench import measure

    def command(output):
        return [
            "--verifier", str(path / "verifier"), "--speculator", str(path / "draft"), "--prompts", str(path / "prompts.jsonl"),
            "--k", "1-2", "--max-new-tokens", "10", "--temperature", temperature, "--cost-repeats", "3", "-o", str(output),
        ]  # fmt: skip

    assert main(command(path / "whole.json")) == 0
    assert not (path / "whole.json.partial.jsonl").exists()  # the report holds everything: no journal left behind
    measured, real_measure = [], measure._measure_prompt

    def killed_after_two(*args, **kwargs):
        if len(measured) == 2:
            raise KeyboardInterrupt
        measured.append(args[4])  # the prompt's index
        return real_measure(*args, **kwargs)

    monkeypatch.setattr(measure, "_measure_prompt", killed_after_two)
    with pytest.raises(KeyboardInterrupt):
        main(command(path / "resumed.json"))
    journal = path / "resumed.json.partial.jsonl"
    assert not (path / "resumed.json").exists() and len(journal.read_text().splitlines()) == 3  # header + 2 prompts
    with open(journal, "a") as handle:
        handle.write('{"set": "prompts", "index": 2, "baseline"')  # a line cut short by the kill: dropped, measured again
    measured.clear()
    monkeypatch.setattr(measure, "_measure_prompt", lambda *a, **kw: measured.append(a[4]) or real_measure(*a, **kw))
    assert main(command(path / "resumed.json")) == 0
    assert measured == [2]  # only the prompt the first attempt did not finish
    whole, resumed = (json.loads((path / name).read_text()) for name in ("whole.json", "resumed.json"))
    assert _totals(resumed) == _totals(whole)  # sampling is seeded per prompt: the same draws either way
    assert len(resumed["prompt_sets"][0]["isolated_costs"]["context_tokens"]) == 3
    assert not journal.exists()


def test_a_journal_of_another_measurement_is_refused_naming_the_difference(tiny_setup, monkeypatch):
    path = tiny_setup
    args = ["--verifier", str(path / "verifier"), "--speculator", str(path / "draft"), "--prompts", str(path / "prompts.jsonl"),
            "--max-new-tokens", "6", "-o", str(path / "report.json")]  # fmt: skip
    from libspec.bench import measure
    from libspec.bench.journal import journal_path

    def killed(*args, **kwargs):
        raise KeyboardInterrupt

    with monkeypatch.context() as patch:
        patch.setattr(measure, "_measure_prompt", killed)
        with pytest.raises(KeyboardInterrupt):
            main([*args, "--k", "1-3"])
    with pytest.raises(SpecError, match=r"report.json.partial.jsonl: a partial run of another measurement \(settings.k_values: \[1, 2, 3\] -> \[1, 2\]\)"):
        main([*args, "--k", "1-2"])
    for text, message in (("not json\n", r"partial.jsonl:1: not valid JSON; the journal is damaged"), ('{"a": 1}\n', "not a spec-bench journal")):
        journal_path(path / "report.json").write_text(text)
        with pytest.raises(SpecError, match=message):
            main([*args, "--k", "1-2"])


def test_output_dash_is_stdout_and_leaves_no_file(tiny_setup, capsys, monkeypatch):
    path = tiny_setup
    monkeypatch.chdir(path)
    status = main(["--verifier", str(path / "verifier"), "--speculator", str(path / "draft"), "--prompts", str(path / "prompts.jsonl"),
                   "--k", "1", "--max-new-tokens", "4", "--cost-repeats", "0", "-o", "-"])  # fmt: skip
    assert status == 0
    assert schema_problems("bench-report", json.loads(capsys.readouterr().out)) == []
    assert not list(path.glob("-*"))


def test_bench_real_summary_names_a_bad_report_in_one_line(tmp_path):
    from tools.bench_real_summary import main as summary

    for text, message in (("[1]", "expected a spec-bench report"), ('{"format": "other"}', "not a spec-bench report"),
                          ('{"format": "spec-tools/bench-report", "settings": {}}', "without the fields of SPEC.md")):  # fmt: skip
        (tmp_path / "r.json").write_text(text)
        with pytest.raises(SpecError, match=message):
            summary([str(tmp_path / "r.json")])


def test_a_journaled_prompt_missing_a_k_is_refused_in_one_line(tiny_setup, monkeypatch):
    path = tiny_setup
    args = ["--verifier", str(path / "verifier"), "--speculator", str(path / "draft"), "--prompts", str(path / "prompts.jsonl"),
            "--k", "1-2", "--max-new-tokens", "4", "--cost-repeats", "0", "-o", str(path / "report.json")]  # fmt: skip
    from libspec.bench import measure
    from libspec.bench.journal import journal_path

    real_measure = measure._measure_prompt

    def killed_after_one(*a, **kw):
        if a[4] == 1:
            raise KeyboardInterrupt
        return real_measure(*a, **kw)

    with monkeypatch.context() as patch:
        patch.setattr(measure, "_measure_prompt", killed_after_one)
        with pytest.raises(KeyboardInterrupt):
            main(args)
    journal = journal_path(path / "report.json")
    header, entry = journal.read_text().splitlines()
    entry = json.loads(entry)
    del entry["runs"]["2"]
    journal.write_text(header + "\n" + json.dumps(entry) + "\n")
    with pytest.raises(SpecError, match=r"prompts prompt 0 holds k = \[1\], the run measures k = \[1, 2\]; the journal is damaged"):
        main(args)
