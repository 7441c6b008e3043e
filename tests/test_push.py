"""spec-push: the gate, the model card's numbers, the Hub-ready folder, and the upload through
huggingface_hub's real client against a recording Hub on 127.0.0.1."""

from __future__ import annotations

import base64
import hashlib
import json
import re
import shutil
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import safetensors.torch
import torch
import yaml
from huggingface_hub import ModelCard
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

import libspec
from conftest import TINY_LLAMA, random_checkpoint_tensors
from libspec.format import checkpoint as ckpt
from libspec.algorithms.eagle3 import config as eagle3
from libspec.bench.measure import derive
from libspec.errors import SpecError
from libspec.verifier import fingerprint_verifier
from libspec.publish.model_card import measured_table, number
from libspec.publish.push import PushOptions, plan_push, write_folder
from libspec.validate.artifacts import validate
from tools import spec_bench, spec_push

VERIFIER_ID = "org/tiny-verifier"
REPO = "org/tiny-spec"
TOKEN = "hf_loopbackSecretToken0123456789"
TRAINING = {"command": ["spec-train", "--data", "data/", "-o", "out/"], "steps": 120, "epochs": 2, "final": {"loss": 3.25}}


@pytest.fixture(autouse=True)
def no_interop_gates(monkeypatch, request):
    """Most tests here are about the card and the upload: run them as on a machine without the gates
    (each gate run costs ~20 s); test_interop_gates_run_when_installed runs the real ones."""
    if "real_gates" not in request.keywords:
        monkeypatch.setattr("libspec.validate.gates.where_gate_runs", lambda gate: None)


@pytest.fixture(scope="module")
def measured(tmp_path_factory):
    """A tiny verifier, an EAGLE-3 checkpoint recording it, and a real spec-bench report of the two."""
    root = tmp_path_factory.mktemp("push")
    torch.manual_seed(0)
    LlamaForCausalLM(LlamaConfig(**{k: v for k, v in TINY_LLAMA.items() if k not in ("architectures", "model_type")})).save_pretrained(root / "verifier")
    tokenizer = Tokenizer(models.WordLevel({f"t{i}": i for i in range(64)}, unk_token="t0"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token="t63", pad_token="t0").save_pretrained(root / "verifier")
    spec_tools = {
        "version": libspec.__version__,
        "format_version": 1,
        "verifier": fingerprint_verifier(str(root / "verifier")).to_dict(),
        "dataset": {"fingerprint": "ab" * 32, "layer_ids": [1, 2, 3, 4], "num_records": 10, "num_tokens": 1234},
        "training": TRAINING,
    }
    verifier_config = json.loads((root / "verifier" / "config.json").read_text())
    config = eagle3.make_config(verifier_config, VERIFIER_ID, eagle3.Eagle3Options(aux_layer_ids=(1, 2, 3)), spec_tools=spec_tools)
    ckpt.write_checkpoint(root / "ckpt", config, random_checkpoint_tensors(config))
    (root / "ckpt" / "optimizer.pt").write_bytes(b"not for the Hub")
    # 12 prompts x 64 tokens: enough tokens and rounds that spec-bench raises no "too few" flag.
    (root / "prompts.jsonl").write_text("".join(json.dumps({"prompt": f"t{4 + i} t{5 + i} t{6 + i}"}) + "\n" for i in range(12)))
    spec_bench.main([
        "--verifier", str(root / "verifier"), "--speculator", str(root / "ckpt"), "--prompts", str(root / "prompts.jsonl"),
        "--k", "1-2", "--max-new-tokens", "64", "-o", str(root / "report.json"),
    ])  # fmt: skip
    return root


def published_config(root: Path) -> dict:
    """The fixture checkpoint's config.json as spec-push publishes it: the fingerprint's local verifier path becomes the Hub id."""
    config = ckpt.read_config(root / "ckpt")
    config["spec_tools"]["verifier"]["name_or_path"] = VERIFIER_ID
    return config


def report_of(root: Path) -> dict:
    return json.loads((root / "report.json").read_text())


def table_rows(card: str, heading: str) -> list[list[str]]:
    """The cells of the measured table under `heading`, header row excluded."""
    section = card.split(heading, 1)[1].split("\n#", 1)[0]
    lines = [line for line in section.splitlines() if line.startswith("| ")]
    return [[cell.strip() for cell in line.strip("|").split("|")] for line in lines[1:]]


# ---- the card -------------------------------------------------------------------------------


def test_card_marks_an_in_run_prediction_of_a_report_without_isolated_costs(measured):
    report = report_of(measured)
    for prompt_set in report["prompt_sets"]:
        for run in prompt_set["runs"]:
            run["derived"].pop("isolated")
    rows = [line.strip("|").split("|") for line in measured_table(report).splitlines()[2:]]
    first = report["prompt_sets"][0]["runs"][0]["derived"]
    assert rows[0][6].strip() == f"{first['predicted_speedup']:.2f}×*" and rows[0][7].strip() == "—"


def test_card_numbers_are_the_reports(measured):
    report = report_of(measured)
    assert all(not run["derived"]["flags"] for s in report["prompt_sets"] for run in s["runs"])  # a clean report
    plan = plan_push(measured / "ckpt", [measured / "report.json"], PushOptions(REPO, license="apache-2.0"))
    assert plan.gate.ok, plan.gate.problems
    card = plan.card

    rows = table_rows(card, "### `bench/report.json`")
    expected = []
    for prompt_set in report["prompt_sets"]:
        for run in prompt_set["runs"]:
            d = run["derived"]
            k = f"**{run['k']}**" if run["k"] == prompt_set["best_k"] else str(run["k"])
            expected.append([
                prompt_set["name"], str(prompt_set["num_prompts"]), k, f"{d['tau']:.2f}",
                " ".join(f"{a:.2f}" for a in d["per_position_acceptance"]), f"{d['speedup']:.2f}×",
                f"{d['isolated']['predicted_speedup']:.2f}×", f"{d['isolated']['efficiency']:.2f}",
                f"{d['tokens_per_s']:.0f}", f"{d['baseline_tokens_per_s']:.0f}", "✓",
            ])  # fmt: skip
    assert rows == expected
    settings = report["settings"]
    # The command with this machine's paths taken out: the verifier's as its Hub id, others as base names.
    command = "spec-bench --verifier org/tiny-verifier --speculator ckpt --prompts prompts.jsonl --k 1-2 --max-new-tokens 64 -o report.json"
    for fact in (command, report["hardware"], report["created_at"], report["engine"], f"{settings['max_new_tokens']} new tokens", "greedy"):
        assert fact in card

    metadata = ModelCard(card).data
    assert metadata.base_model == VERIFIER_ID and metadata.license == "apache-2.0" and metadata.library_name == "speculators"
    assert {"speculative-decoding", "eagle3", "speculators"} <= set(metadata.tags)
    assert "vllm serve org/tiny-spec\n" in card
    assert """vllm serve org/tiny-verifier --speculative-config '{"method": "eagle3", "model": "org/tiny-spec", "num_speculative_tokens": 3}'""" in card
    assert "| verifier layers read (aux layer ids) | [1, 2, 3] |" in card and "| draft vocabulary | 64 (the verifier's full vocabulary) |" in card
    tensors = ckpt.load_tensors(measured / "ckpt")
    total = sum(t.numel() for t in tensors.values() if t.is_floating_point())
    assert f"| parameters | {total:,} ({total - tensors['embed_tokens.weight'].numel():,} without `embed_tokens`) |" in card
    assert "ab" * 32 in card and "10 records, 1,234 tokens" in card and "spec-train --data data/ -o out/" in card and "steps: 120" in card
    assert "vLLM gate: not installed here (./just gates), not run" in card  # says which gates did not run


def test_card_without_reports_says_nothing_was_measured(measured):
    card = plan_push(measured / "ckpt", [], PushOptions(REPO)).card
    assert "Nothing was measured" in card
    assert "| prompt set |" not in card and "τ" not in card


def local_verifier_checkpoint(measured: Path, target: Path) -> Path:
    """The measured checkpoint as trained against a local copy of the verifier: config.json names the folder."""
    shutil.copytree(measured / "ckpt", target)
    config = ckpt.read_config(target)
    config["speculators_config"]["verifier"]["name_or_path"] = str(measured / "verifier")
    (target / "config.json").write_text(json.dumps(config))
    return target


def machine_paths_in(folder: Path, *local: Path) -> list[str]:
    """Every mention of a local path in the published files: the given ones and the home directory
    anywhere, and any absolute path in the text files."""
    from libspec.publish.local_paths import local_paths_in

    found = []
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        text = path.read_bytes().decode("utf-8", errors="replace")
        found += [f"{path.name}: {needle}" for needle in map(str, (*local, Path.home())) if needle in text]
        if path.suffix != ".safetensors":
            found += [f"{path.name}: {hit}" for hit in local_paths_in(text)]
    return found


def test_local_verifier_without_verifier_id_is_published_as_its_base_name_with_a_loud_warning(measured, tmp_path, capsys):
    """Regression (issue 13 item 9): the card and config.json carried the machine's verifier path."""
    folder = local_verifier_checkpoint(measured, tmp_path / "ckpt")
    out = tmp_path / "hub-ready"
    assert spec_push.main([str(folder), REPO, "--bench", str(measured / "report.json"), "--to-dir", str(out)]) == 0
    assert "vllm serve REPO` will not find it" in capsys.readouterr().err  # said loudly, on stderr
    assert machine_paths_in(out, measured, tmp_path) == []
    assert ckpt.read_config(out)["speculators_config"]["verifier"]["name_or_path"] == "./verifier"
    card = (out / "README.md").read_text()
    assert ModelCard(card).data.base_model is None and "## ⚠ `vllm serve` cannot find the verifier by itself" in card
    assert "vllm serve org/tiny-spec\n" not in card and "vllm serve ./verifier --speculative-config" in card
    assert validate(str(out)).ok


def test_verifier_id_names_the_hub_verifier_and_no_published_file_has_a_local_path(measured, tmp_path, capsys):
    """Regression (issue 13 item 9): no base_model, and `vllm serve REPO` could not resolve a local verifier."""
    folder = local_verifier_checkpoint(measured, tmp_path / "ckpt")
    out = tmp_path / "hub-ready"
    args = [str(folder), REPO, "--bench", str(measured / "report.json"), "--to-dir", str(out), "--verifier-id", VERIFIER_ID]
    assert spec_push.main(args) == 0
    assert "NOT checked against the verifier this speculator was trained for" in capsys.readouterr().out  # not in the HF cache here
    assert machine_paths_in(out, measured, tmp_path) == []
    config = ckpt.read_config(out)
    assert config["speculators_config"]["verifier"]["name_or_path"] == VERIFIER_ID
    assert config["spec_tools"]["weights"] == ckpt.read_config(folder)["spec_tools"]["weights"]
    card = (out / "README.md").read_text()
    assert ModelCard(card).data.base_model == VERIFIER_ID and "vllm serve org/tiny-spec\n" in card
    assert "NOT checked against the verifier this speculator was trained for" in card
    # the card's file table lists the published bytes, not the local config.json's
    published_sha = hashlib.sha256((out / "config.json").read_bytes()).hexdigest()
    assert f"| `config.json` | {(out / 'config.json').stat().st_size:,} | `{published_sha}` |" in card
    assert hashlib.sha256((folder / "config.json").read_bytes()).hexdigest() not in card
    assert validate(str(out)).ok and validate(str(out)).facts["weight_digests"].startswith("verified")


def hf_cache_copy(monkeypatch, root: Path, verifier: Path, repo_id: str) -> Path:
    """A Hugging Face cache (HF_HUB_CACHE) on `root` holding `verifier`'s files as `repo_id`'s main revision."""
    import huggingface_hub.constants

    repo = root / f"models--{repo_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / ("c0ffee" * 6 + "c0ff")
    shutil.copytree(verifier, snapshot)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(snapshot.name)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(root))
    return snapshot


def test_verifier_id_is_checked_against_its_copy_in_the_hf_cache(measured, tmp_path, monkeypatch):
    folder = local_verifier_checkpoint(measured, tmp_path / "ckpt")
    snapshot = hf_cache_copy(monkeypatch, tmp_path / "hub", measured / "verifier", VERIFIER_ID)
    plan = plan_push(folder, [], PushOptions(REPO, verifier_id=VERIFIER_ID))
    assert plan.gate.ok and any("the same verifier it was trained for" in line for line in plan.gate.checks)
    assert "the same verifier it was trained for" in plan.card and plan.verifier_warning is None

    config = json.loads((snapshot / "config.json").read_text())
    (snapshot / "config.json").write_text(json.dumps({**config, "rms_norm_eps": 0.5}))  # another model under that id
    plan = plan_push(folder, [], PushOptions(REPO, verifier_id=VERIFIER_ID))
    assert any(p.startswith(f"--verifier-id {VERIFIER_ID}: its copy in the local Hugging Face cache is not the verifier") and "config_sha256" in p for p in plan.gate.problems)


def test_verifier_id_must_be_a_hub_id(measured, tmp_path):
    with pytest.raises(SpecError, match="--verifier-id .*: not a Hub repo id"):
        plan_push(measured / "ckpt", [], PushOptions(REPO, verifier_id=str(measured / "verifier")))


def test_local_paths_leave_hub_ids_urls_and_relative_names_alone():
    from libspec.publish.local_paths import LocalPaths

    paths = LocalPaths.for_names({"/data/models/Llama": "meta-llama/Llama"})
    text = "spec-bench --verifier /data/models/Llama --speculator /scratch/me/out/best -o bench/report.json https://huggingface.co/org/x ~/notes.txt 3/4 tokens/s"
    assert paths.text(text) == "spec-bench --verifier meta-llama/Llama --speculator best -o bench/report.json https://huggingface.co/org/x notes.txt 3/4 tokens/s"


def test_number_formatting():
    assert number(None) == "—" and number(1.23456) == "1.23" and number(2.0, "×") == "2.00×" and number(250.4, digits=0) == "250"


# ---- the command line: dry run, refusals, --force, --to-dir ----------------------------------


def test_dry_run_prints_exactly_the_files_and_the_card(measured, capsys):
    args = [str(measured / "ckpt"), REPO, "--bench", str(measured / "report.json"), "--dry-run"]
    assert spec_push.main([*args, "--json"]) == 0
    document = json.loads(capsys.readouterr().out)
    files = {f["path"]: f for f in document["files"]}
    assert set(files) == {"README.md", "config.json", "model.safetensors", "bench/report.json"}
    source = measured / "ckpt" / "model.safetensors"  # copied byte for byte
    assert files["model.safetensors"]["bytes"] == source.stat().st_size and files["model.safetensors"]["sha256"] == hashlib.sha256(source.read_bytes()).hexdigest()
    # config.json and the report name this machine's verifier folder (the fixture's fingerprint): published rewritten
    assert files["config.json"]["source"] is None and files["bench/report.json"]["source"] is None
    card = document["card"]
    assert files["README.md"]["sha256"] == hashlib.sha256(card.encode()).hexdigest()
    assert document["left_out"] == ["optimizer.pt"] and document["ok"] is True

    assert spec_push.main(args) == 0
    out = capsys.readouterr().out
    assert card.strip() in out  # the card is printed as it will be uploaded
    tau = report_of(measured)["prompt_sets"][0]["runs"][0]["derived"]["tau"]
    assert f"| {tau:.2f} |" in out and "optimizer.pt" in out and f"{(measured / 'ckpt' / 'model.safetensors').stat().st_size:,}" in out


def broken_checkpoint(measured: Path, target: Path) -> Path:
    """The measured checkpoint with a config vLLM would misread and a tensor its loader would reject."""
    shutil.copytree(measured / "ckpt", target)
    config = ckpt.read_config(target)
    del config["norm_before_residual"]
    config["eagle_aux_hidden_state_layer_ids"] = [3, 1, 2]
    (target / "config.json").write_text(json.dumps(config))
    return target


def test_invalid_folder_is_refused_listing_every_problem(measured, tmp_path, capsys):
    folder = broken_checkpoint(measured, tmp_path / "ckpt")
    problems = validate(str(folder)).problems
    assert len(problems) >= 2
    assert spec_push.main([str(folder), REPO, "--to-dir", str(tmp_path / "out")]) == 1
    out = capsys.readouterr().out
    assert "refusing to publish" in out and all(p in out for p in problems)
    assert not (tmp_path / "out").exists()
    with pytest.raises(SpecError, match="refusing to publish"):  # the library refuses too, not only the front door
        write_folder(plan_push(folder, [], PushOptions(REPO)), tmp_path / "out")


def test_force_publishes_but_says_so_loudly_and_in_the_card(measured, tmp_path, capsys):
    folder = broken_checkpoint(measured, tmp_path / "ckpt")
    assert spec_push.main([str(folder), REPO, "--dry-run", "--force"]) == 0
    captured = capsys.readouterr()
    assert "--force: publishing despite" in captured.err
    card = captured.out.split("--- README.md ---", 1)[1]
    assert "Published with `--force`" in card and all(p in card for p in validate(str(folder)).problems)


def recomputed(report: dict) -> dict:
    """Re-derive every figure so that only the raw counts were edited."""
    greedy = report["settings"]["temperature"] == 0
    for prompt_set in report["prompt_sets"]:
        for run in prompt_set["runs"]:
            run["derived"] = derive(run["k"], run, prompt_set["baseline"], greedy, prompt_set.get("isolated_costs"))
    return report


def edit_tau(r):
    r["prompt_sets"][0]["runs"][0]["derived"]["tau"] += 0.5


def flag_output_differs(r):
    r["prompt_sets"][0]["runs"][1]["mismatched_prompts"] = [0]
    recomputed(r)


def too_many_tokens(r):
    r["prompt_sets"][0]["runs"][0]["tokens"] += 1000
    recomputed(r)


def other_weights(r):
    r["speculator"]["weight_files"]["model.safetensors"] = "0" * 64


def other_aux_layers(r):
    r["speculator"]["aux_layer_ids"] = [1, 2, 4]


def other_verifier(r):
    r["verifier"]["tokenizer_sha256"] = "0" * 64


def no_settings(r):
    del r["settings"]


def baseline_only(r):
    r["speculator"] = None


def edit_efficiency(r):
    r["prompt_sets"][0]["runs"][0]["derived"]["isolated"]["efficiency"] *= 1.5


def faster_isolated_step(r):
    r["prompt_sets"][0]["isolated_costs"]["forward_s"]["1"] = [s / 2 for s in r["prompt_sets"][0]["isolated_costs"]["forward_s"]["1"]]


def isolated_costs_dropped_but_not_their_figures(r):
    del r["prompt_sets"][0]["isolated_costs"]


def isolated_passes_that_do_not_add_up(r):
    r["prompt_sets"][0]["isolated_costs"]["forward_s"]["2"].pop()


def no_forward_for_k_plus_1(r):
    del r["prompt_sets"][0]["isolated_costs"]["forward_s"]["3"]
    recomputed(r)


BAD_REPORTS = {
    "figure edited by hand": (edit_tau, "derived.tau is"),
    "sanity flag": (flag_output_differs, "sanity flag: greedy output differs from the verifier's own on prompts [0]"),
    "raw counts that cannot add up": (too_many_tokens, "but its rounds can yield at most"),
    "measured other weights": (other_weights, "measured other weights"),
    "measured another draft": (other_aux_layers, "aux_layer_ids [1, 2, 4], this checkpoint has [1, 2, 3]"),
    "measured another verifier": (other_verifier, "measured another verifier than the one this checkpoint was trained for: tokenizer_sha256"),
    "schema": (no_settings, "schema: at (top level): 'settings' is a required property"),
    "baseline only": (baseline_only, "baseline-only report"),
    "efficiency edited by hand": (edit_efficiency, "derived.isolated.efficiency is"),
    "isolated timings edited": (faster_isolated_step, "isolated_costs.derived.step_1_s is"),
    "isolated figures without their timings": (isolated_costs_dropped_but_not_their_figures, "derived.isolated is not a figure derive() computes"),
    "isolated timings without a size a row needs": (no_forward_for_k_plus_1, "no timings of [3]-token forwards"),
    "isolated passes that do not add up": (isolated_passes_that_do_not_add_up, "but forward_s['2'] another number of timings"),
}


@pytest.mark.parametrize("case", BAD_REPORTS)
def test_bad_report_is_refused_naming_the_file_and_the_problem(measured, tmp_path, case):
    edit, message = BAD_REPORTS[case]
    report = report_of(measured)
    edit(report)
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(report))
    plan = plan_push(measured / "ckpt", [measured / "report.json", path], PushOptions(REPO))
    assert not plan.allowed and plan.gate.checkpoint_problems == []
    assert any(p.startswith(f"{path}: ") and message in p for p in plan.gate.report_problems), plan.gate.report_problems
    assert not any(str(measured / "report.json") in p for p in plan.gate.report_problems)  # the good one passes


def test_report_from_before_isolated_costs_still_passes(measured, tmp_path):
    """Reports written before the isolated costs existed have none of their fields, and are still checked and published."""
    report = report_of(measured)
    for prompt_set in report["prompt_sets"]:
        del prompt_set["isolated_costs"]
        for run in prompt_set["runs"]:
            del run["derived"]["isolated"]
    del report["settings"]["cost_repeats"]
    path = tmp_path / "old.json"
    path.write_text(json.dumps(report))
    plan = plan_push(measured / "ckpt", [path], PushOptions(REPO))
    assert plan.allowed and plan.gate.report_problems == []


def test_unreadable_report_is_refused_with_one_line(measured, tmp_path, capsys):
    (tmp_path / "bad.json").write_text("{")
    assert spec_push.main([str(measured / "ckpt"), REPO, "--bench", str(tmp_path / "bad.json"), "--dry-run"]) == 1
    assert f"{tmp_path / 'bad.json'}: not valid JSON" in capsys.readouterr().out


def test_report_from_stdin(measured, capsys, monkeypatch):
    import io
    import sys

    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO((measured / "report.json").read_bytes())))
    assert spec_push.main([str(measured / "ckpt"), REPO, "--bench", "-", "--dry-run", "--json"]) == 0
    assert "bench/stdin.json" in [f["path"] for f in json.loads(capsys.readouterr().out)["files"]]


def test_to_dir_writes_a_folder_that_validates_and_loads_back(measured, tmp_path, capsys):
    out = tmp_path / "hub-ready"
    args = [str(measured / "ckpt"), REPO, "--bench", str(measured / "report.json"), "--to-dir", str(out)]
    assert spec_push.main(args) == 0
    assert validate(str(out)).ok
    assert validate(str(out)).facts["weight_digests"].startswith("verified: model.safetensors")  # copied bytes, recorded digests still true
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file()) == ["README.md", "bench/report.json", "config.json", "model.safetensors"]
    original, copy = ckpt.load_tensors(measured / "ckpt"), ckpt.load_tensors(out)
    assert original.keys() == copy.keys() and all(torch.equal(original[n], copy[n]) for n in original)
    assert ckpt.read_config(out) == published_config(measured)
    published_report = json.loads((out / "bench" / "report.json").read_text())
    counts = lambda report: [(s["baseline"], s["runs"]) for s in report["prompt_sets"]]  # noqa: E731
    assert counts(published_report) == counts(report_of(measured))  # the counts as measured; only paths taken out
    assert str(measured) not in (out / "bench" / "report.json").read_text()
    assert "| prompt set |" in (out / "README.md").read_text()

    assert spec_push.main([*args, "--overwrite"]) == 0  # publishing again replaces the folder as a whole
    assert validate(str(out)).ok and not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_to_dir_never_replaces_a_folder_that_is_not_a_checkpoint(measured, tmp_path):
    (tmp_path / "home").mkdir()
    (tmp_path / "home" / "notes.txt").write_text("mine")
    with pytest.raises(SpecError, match="exists and is not a checkpoint folder"):
        write_folder(plan_push(measured / "ckpt", [], PushOptions(REPO)), tmp_path / "home")
    assert (tmp_path / "home" / "notes.txt").read_text() == "mine"


def old_sharded_checkpoint(folder: Path, verifier: str) -> Path:
    """A checkpoint for another verifier, sharded (index + two shards), beside files that are not the checkpoint's."""
    config = eagle3.make_config(TINY_LLAMA, verifier, eagle3.Eagle3Options(aux_layer_ids=(1, 2)))
    tensors = random_checkpoint_tensors(config, seed=5)
    ckpt.write_checkpoint(folder, config, {})
    (folder / ckpt.WEIGHTS).unlink()
    names = sorted(tensors)
    halves = {"model-00001-of-00002.safetensors": names[::2], "model-00002-of-00002.safetensors": names[1::2]}
    for file, part in halves.items():
        safetensors.torch.save_file({n: tensors[n] for n in part}, str(folder / file))
    (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {n: f for f, part in halves.items() for n in part}}))
    (folder / "config.json").write_text(json.dumps(ckpt.with_weight_digests(ckpt.read_config(folder), folder)))  # the shards' digests
    (folder / "NOTES.md").write_text("why this run exists")
    (folder / "optimizer.pt").write_bytes(b"optimizer state")
    (folder / "logs").mkdir()
    (folder / "logs" / "train.log").write_text("step 1")
    assert validate(str(folder)).ok
    return folder


def test_to_dir_refuses_an_existing_checkpoint_unless_overwrite_then_keeps_other_files(measured, tmp_path):
    """Issue 16 item 3: --to-dir replaced a folder wholesale (its weights, NOTES.md, optimizer.pt gone), even one for another verifier."""
    out = old_sharded_checkpoint(tmp_path / "hub-ready", "other/verifier")
    before = {p.relative_to(out).as_posix(): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    args = [str(measured / "ckpt"), REPO, "--to-dir", str(out)]
    with pytest.raises(SpecError, match=rf"^{out}: already holds a checkpoint \(for verifier other/verifier\); refusing to replace it \(pass --overwrite"):
        spec_push.main(args)
    with pytest.raises(SpecError, match="already holds a checkpoint"):  # the library refuses too
        write_folder(plan_push(measured / "ckpt", [], PushOptions(REPO)), out)
    assert {p.relative_to(out).as_posix(): p.read_bytes() for p in out.rglob("*") if p.is_file()} == before

    assert spec_push.main([*args, "--overwrite"]) == 0
    assert validate(str(out)).ok and ckpt.read_config(out) == published_config(measured)
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()) == [
        "NOTES.md", "README.md", "config.json", "logs/train.log", "model.safetensors", "optimizer.pt",
    ]  # the old index and shards are gone with the old checkpoint; the other files stay, unchanged
    assert all((out / name).read_bytes() == before[name] for name in ("NOTES.md", "optimizer.pt", "logs/train.log"))
    assert (out / "model.safetensors").read_bytes() == (measured / "ckpt" / "model.safetensors").read_bytes()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_a_flipped_weight_byte_refuses_the_push(measured, tmp_path, capsys):
    """Regression (issue 13 item 8): the weights' recorded sha256 is checked before anything is published."""
    shutil.copytree(measured / "ckpt", tmp_path / "ckpt")
    data = bytearray((tmp_path / "ckpt" / "model.safetensors").read_bytes())
    data[-3] ^= 0x55
    (tmp_path / "ckpt" / "model.safetensors").write_bytes(bytes(data))
    plan = plan_push(tmp_path / "ckpt", [], PushOptions(REPO))
    assert not plan.gate.ok and any("model.safetensors: sha256 " in p and "config.json records" in p for p in plan.gate.problems)


def test_overwrite_needs_to_dir(measured):
    with pytest.raises(SystemExit) as exit_:
        spec_push.main([str(measured / "ckpt"), REPO, "--dry-run", "--overwrite"])
    assert exit_.value.code == 2


def test_atomic_directory_keeps_the_old_folder_when_anything_fails(tmp_path, monkeypatch):
    import os

    from libspec.format.atomic import atomic_directory

    target = tmp_path / "out"
    target.mkdir()
    (target / "old.txt").write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_directory(target) as staging:
            (staging / "new.txt").write_text("new")
            raise RuntimeError("writer failed")
    real_replace, calls = os.replace, []

    def replace_failing_the_swap(src, dst):  # moving the old folder aside works, putting the new one in place fails
        calls.append(dst)
        if len(calls) == 2:
            raise OSError("disk full")
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace_failing_the_swap)
    with pytest.raises(OSError, match="disk full"):
        with atomic_directory(target) as staging:
            (staging / "new.txt").write_text("new")
    assert [p.name for p in target.iterdir()] == ["old.txt"] and [p.name for p in tmp_path.iterdir()] == ["out"]


# ---- the upload, through huggingface_hub's real client -----------------------------------------


class FakeHub:
    """The Hub endpoints huggingface_hub 2.x calls for create_repo, model_info, create_branch and
    create_commit (validate-yaml, preupload, LFS batch + PUT, commit), on 127.0.0.1; records every request."""

    ROUTES = [
        ("POST", r"/api/repos/create", "create_repo"),
        ("POST", r"/api/validate-yaml", "validate_yaml"),
        ("GET", r"/api/models/(?P<repo>[^/]+/[^/]+)", "model_info"),
        ("POST", r"/api/models/(?P<repo>[^/]+/[^/]+)/branch/(?P<rev>[^/]+)", "create_branch"),
        ("POST", r"/api/models/(?P<repo>[^/]+/[^/]+)/preupload/(?P<rev>[^/]+)", "preupload"),
        ("POST", r"/(?P<repo>[^/]+/[^/]+)\.git/info/lfs/objects/batch", "lfs_batch"),
        ("PUT", r"/lfs/(?P<oid>[0-9a-f]{64})", "lfs_put"),
        ("POST", r"/api/models/(?P<repo>[^/]+/[^/]+)/commit/(?P<rev>[^/]+)", "commit"),
    ]

    def __init__(self, repos: dict[str, bool] | None = None):
        self.repos = dict(repos or {})  # repo id -> private
        self.requests: list[tuple[str, str, dict, bytes]] = []
        self.lfs: dict[str, bytes] = {}
        self.commits: list[tuple[str, str, list[dict]]] = []
        self.fail_commit = False
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                hub.handle(self)

            do_POST = do_PUT = do_GET

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()

    def handle(self, request):
        body = read_body(request)
        path = request.path.split("?", 1)[0]
        self.requests.append((request.command, path, dict(request.headers), body))
        for method, pattern, name in self.ROUTES:
            match = re.fullmatch(pattern, path)
            if method == request.command and match:
                status, answer = getattr(self, name)(body, **match.groupdict())
                break
        else:
            status, answer = 404, {"error": f"no route {request.command} {path}"}
        data = json.dumps(answer).encode()
        request.send_response(status)
        request.send_header("Content-Type", "application/json")
        request.send_header("Content-Length", str(len(data)))
        request.end_headers()
        request.wfile.write(data)

    def create_repo(self, body):
        payload = json.loads(body)
        repo = f"{payload['organization']}/{payload['name']}"
        if repo in self.repos:
            return 409, {"error": "You already created this model repo", "url": f"{self.url}/{repo}"}
        self.repos[repo] = payload.get("visibility") == "private"
        return 200, {"url": f"{self.url}/{repo}", "name": repo}

    def validate_yaml(self, body):
        content = json.loads(body)["content"]
        yaml.safe_load(content.split("---\n")[1])  # the front matter must parse
        return 200, {"errors": [], "warnings": []}

    def model_info(self, body, repo):
        if repo not in self.repos:
            return 404, {"error": "Repository not found"}
        return 200, {"id": repo, "private": self.repos[repo], "sha": "c" * 40, "siblings": []}

    def create_branch(self, body, repo, rev):
        return 200, {}

    def preupload(self, body, repo, rev):
        files = json.loads(body)["files"]
        modes = [{"path": f["path"], "uploadMode": "lfs" if f["path"].endswith(".safetensors") else "regular", "shouldIgnore": False} for f in files]
        return 200, {"files": modes}

    def lfs_batch(self, body, repo):
        objects = json.loads(body)["objects"]
        actions = [{**o, "authenticated": True, "actions": {"upload": {"href": f"{self.url}/lfs/{o['oid']}"}}} for o in objects]
        return 200, {"transfer": "basic", "objects": actions}

    def lfs_put(self, body, oid):
        if hashlib.sha256(body).hexdigest() != oid:
            return 400, {"error": "content does not match its oid"}
        self.lfs[oid] = body
        return 200, {}

    def commit(self, body, repo, rev):
        if self.fail_commit:
            return 403, {"error": "You don't have the rights to create a commit in this repo"}
        lines = [json.loads(line) for line in body.decode().splitlines() if line]
        missing = [x["value"]["oid"] for x in lines if x["key"] == "lfsFile" and x["value"]["oid"] not in self.lfs]
        if missing:
            return 422, {"error": f"LFS objects not uploaded: {missing}"}
        self.commits.append((repo, rev, lines))
        return 200, {"commitUrl": f"{self.url}/{repo}/commit/{'d' * 40}", "commitOid": "d" * 40, "pullRequestUrl": None}

    def committed_files(self) -> dict[str, bytes]:
        """Path -> bytes of the one commit, LFS files resolved to what was PUT."""
        (_, _, lines), = self.commits
        files = {}
        for line in lines[1:]:
            value = line["value"]
            files[value["path"]] = base64.b64decode(value["content"]) if line["key"] == "file" else self.lfs[value["oid"]]
            if line["key"] == "lfsFile":
                assert value["size"] == len(files[value["path"]])
        return files


def read_body(request) -> bytes:
    if request.headers.get("Transfer-Encoding", "").lower() == "chunked":
        chunks = []
        while size := int(request.rfile.readline().split(b";")[0], 16):
            chunks.append(request.rfile.read(size))
            request.rfile.readline()
        request.rfile.readline()
        return b"".join(chunks)
    return request.rfile.read(int(request.headers.get("Content-Length") or 0))


@pytest.fixture
def hub(monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)  # conftest sets offline mode for everything else
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_DISABLE_XET", True)  # Xet's storage protocol cannot be emulated here; LFS can
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    server = FakeHub()
    yield server
    server.close()


def test_upload_commits_exactly_the_planned_files_once(measured, hub, capsys):
    args = [str(measured / "ckpt"), REPO, "--bench", str(measured / "report.json"), "--endpoint", hub.url, "--revision", "dev", "--private"]
    assert spec_push.main(args) == 0
    captured = capsys.readouterr()
    assert TOKEN not in captured.out + captured.err
    assert f"{hub.url}/{REPO}/commit/" in captured.out

    assert hub.repos == {REPO: True}
    assert len(hub.commits) == 1 and hub.commits[0][:2] == (REPO, "dev")
    files = hub.committed_files()
    planned = {item.path_in_repo: item.sha256 for item in plan_push(measured / "ckpt", [measured / "report.json"], PushOptions(REPO)).items}
    assert set(files) == set(planned)
    for path in ("config.json", "model.safetensors", "bench/report.json"):  # the card differs only by its date
        assert hashlib.sha256(files[path]).hexdigest() == planned[path], path
    assert files["model.safetensors"] == (measured / "ckpt" / "model.safetensors").read_bytes()
    assert list(hub.lfs) == [hashlib.sha256((measured / "ckpt" / "model.safetensors").read_bytes()).hexdigest()]  # weights went by LFS
    card = files["README.md"].decode()
    assert ModelCard(card).data.base_model == VERIFIER_ID and "vllm serve org/tiny-spec\n" in card
    tau = report_of(measured)["prompt_sets"][0]["runs"][0]["derived"]["tau"]
    assert f"| {tau:.2f} |" in card
    header = hub.commits[0][2][0]["value"]
    assert header["summary"] == f"Upload speculator with spec-push {libspec.__version__}" and "spec-validate" in header["description"]

    calls = [(method, path) for method, path, _, _ in hub.requests]
    assert calls[0] == ("POST", "/api/repos/create") and calls[-1] == ("POST", f"/api/models/{REPO}/commit/dev")
    assert ("POST", f"/api/models/{REPO}/branch/dev") in calls
    assert all(headers.get("authorization") == f"Bearer {TOKEN}" for method, path, headers, _ in hub.requests if not path.startswith("/lfs/"))
    assert not any(TOKEN.encode() in body for _, _, _, body in hub.requests)  # only ever in the header


def test_private_push_to_an_existing_public_repo_is_refused(measured, hub, capsys):
    hub.repos[REPO] = False
    assert_fails(spec_push.main, [str(measured / "ckpt"), REPO, "--endpoint", hub.url, "--private"], "exists and is public")
    assert hub.commits == []
    assert TOKEN not in "".join(capsys.readouterr())


def test_hub_errors_become_one_line_without_the_token(measured, hub, capsys):
    hub.fail_commit = True
    assert_fails(spec_push.main, [str(measured / "ckpt"), REPO, "--endpoint", hub.url], f"upload to {hub.url}/{REPO} failed")
    assert TOKEN not in "".join(capsys.readouterr())
    create = next(json.loads(body) for method, path, _, body in hub.requests if path == "/api/repos/create")
    assert "visibility" not in create  # without --private the namespace's default applies


def test_no_token_is_a_clear_error(measured, hub, monkeypatch):
    monkeypatch.delenv("HF_TOKEN")
    monkeypatch.setattr("huggingface_hub.get_token", lambda: None)
    assert_fails(spec_push.main, [str(measured / "ckpt"), REPO, "--endpoint", hub.url], "no Hugging Face token")
    assert hub.requests == []


def assert_fails(main, args, message):
    with pytest.raises(SpecError, match=re.escape(message)) as error:
        main(args)
    assert "\n" not in str(error.value)


@pytest.mark.real_gates
def test_interop_gates_run_when_installed(measured, tmp_path):
    """With the gates installed, spec-push runs vLLM's and upstream's loaders and the card says so."""
    from gates import require_gates

    require_gates()
    plan = plan_push(measured / "ckpt", [measured / "report.json"], PushOptions(REPO))
    assert "vLLM gate (0." in plan.card and "upstream speculators gate (0." in plan.card
    assert plan.card.count(": loads it (config parsing, every parameter loaded, shapes equal)") == 2


def test_floors_missed_refuse_the_push_and_floors_met_are_in_the_card(measured, capsys):
    args = [str(measured / "ckpt"), REPO, "--bench", str(measured / "report.json"), "--dry-run"]
    assert spec_push.main([*args, "--require", "prompts:tau>=99"]) == 1
    captured = capsys.readouterr()
    assert "floor prompts:tau>=99 NOT met" in captured.out + captured.err
    assert spec_push.main([*args, "--require", "prompts:tau>=1", "--json"]) == 0
    card = json.loads(capsys.readouterr().out)["card"]
    assert "floor prompts:tau>=1 met: tau" in card


def test_issue_16_a_malformed_require_is_a_usage_error_exit_2(tmp_path, capsys):
    args = [str(tmp_path / "ckpt"), REPO, "--bench", str(tmp_path / "report.json"), "--dry-run"]  # refused before either is read
    for floor in ("prompts:tau>2", "prompts:tau>=1.2.3", "prompts:beauty>=1"):
        with pytest.raises(SystemExit) as exited:
            spec_push.main([*args, "--require", floor])
        assert exited.value.code == 2, floor
        error = capsys.readouterr().err
        assert f"--require {floor!r}" in error and "Traceback" not in error


def test_card_shows_each_category_at_its_sets_best_k(measured):
    report = report_of(measured)
    prompt_set = report["prompt_sets"][0]
    best = prompt_set["best_k"]
    math = {"name": "math", "num_prompts": 1, "runs": [{**run, "derived": {**run["derived"], "tau": 1.5 + run["k"]}} for run in prompt_set["runs"]]}
    prompt_set["categories"] = [math]
    rows = [[cell.strip() for cell in line.strip("|").split("|")] for line in measured_table(report).splitlines()[2:]]
    category_rows = [row for row in rows if row[0] == f"{prompt_set['name']}/math"]
    assert category_rows == [[f"{prompt_set['name']}/math", "1", f"**{best}**", f"{1.5 + best:.2f}", *category_rows[0][4:]]]
