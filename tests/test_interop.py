"""Interop gates: vLLM's own code and upstream speculators accept every checkpoint kind we write, and
every broken variant is caught by our checks (and, where the gates are installed, we record what
vLLM and upstream themselves do with it: often nothing, which is why our checks exist)."""

from __future__ import annotations

import importlib.util
import json
import shlex
import subprocess
from pathlib import Path

import pytest
import torch

from conftest import TINY_LLAMA, random_checkpoint_tensors
from gates import assert_servable, gate_reports, require_gates, session
from libspec.format import checkpoint as ckpt
from libspec.algorithms.eagle3 import config as eagle3
from libspec.convert.pipeline import ConvertRequest, convert
from libspec import serving
from libspec.errors import SpecError
from libspec.validate.gates import STAMP, gate_python, run_gates
from libspec.validate.artifacts import validate
from tools._cli import run
from tools.spec_validate import main

HUB_VERIFIER = "meta-llama/Llama-3.1-8B-Instruct"


def make_config(verifier=HUB_VERIFIER, aux=(1, 2, 3), **options) -> dict:
    return eagle3.make_config(TINY_LLAMA, verifier, eagle3.Eagle3Options(aux_layer_ids=aux, **options))


def write(directory, config, tensors=None):
    return ckpt.write_checkpoint(directory, config, random_checkpoint_tensors(config) if tensors is None else tensors)


# ---- the serve command, the verifier reference and the gate environment (no gate needed) -----


def test_gate_requirements_pin_every_spec_tools_dependency():
    """The gate venv runs libspec from the checkout, so it needs spec-tools' own dependencies too."""
    import tomllib

    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    root = Path(__file__).resolve().parents[1]
    project = tomllib.loads((root / "pyproject.toml").read_text())["project"]["dependencies"]
    lines = (root / "requirements" / "gates.txt").read_text().splitlines()
    pinned = {canonicalize_name(line.split("==")[0]) for line in lines if "==" in line and not line.startswith("#")}
    needed = {canonicalize_name(Requirement(r).name) for r in project} - {"torch"}  # torch: installed first, CPU build
    assert needed <= pinned, f"add to requirements/gates.txt: {sorted(needed - pinned)}"
    assert all("==" in line for line in lines if line.strip() and not line.startswith("#")), "pin every package"


def test_hub_verifier_is_served_by_the_short_form():
    assert serving.serve_command("out/ckpt", make_config()) == "vllm serve out/ckpt"


def test_local_verifier_needs_the_long_form_with_method(tmp_path):
    command = serving.serve_command(tmp_path / "ckpt", make_config(verifier=str(tmp_path / "verifier")))
    words = shlex.split(command)
    assert words[:4] == ["vllm", "serve", str(tmp_path / "verifier"), "--speculative-config"]
    assert json.loads(words[4]) == {"method": "eagle3", "model": str(tmp_path / "ckpt"), "num_speculative_tokens": 3}


def test_a_verifier_reference_vllm_cannot_resolve_is_caught(tmp_path):
    config = make_config(verifier="my verifier")
    report = validate(str(write(tmp_path / "ckpt", config)))
    assert any("'my verifier' is neither a Hub repo id (org/name) nor a path" in p for p in report.problems)


# ---- every checkpoint kind we write passes both gates ----------------------------------------

KINDS = {
    "llama-1-full": {},
    "llama-1-reduced": {"draft_vocab_size": 32},
    "llama-2-full": {"num_layers": 2},
    "llama-2-reduced": {"num_layers": 2, "draft_vocab_size": 32},
    "qwen3-1-full": {"layer_style": "qwen3"},
    "qwen3-1-reduced": {"layer_style": "qwen3", "draft_vocab_size": 48},
    "qwen3-2-reduced": {"layer_style": "qwen3", "num_layers": 2, "draft_vocab_size": 48},
    "llama-norm-before-fc": {"norm_before_fc": True, "norm_output": True},
    "llama-fc-norm": {"fc_norm": True, "norm_before_residual": False},
    "llama-4-aux": {"aux": (1, 2, 3, 4)},
}


@pytest.fixture(scope="module")
def our_checkpoints(tmp_path_factory):
    """Every kind, written once; the gates run on all of them in one call."""
    root = tmp_path_factory.mktemp("ours")
    return {name: write(root / name, make_config(**options)) for name, options in KINDS.items()}


@pytest.fixture(scope="module")
def our_gate_reports(our_checkpoints):
    require_gates()
    return gate_reports(our_checkpoints.values())


@pytest.mark.parametrize("kind", KINDS)
def test_our_checkpoints_pass_both_gates(kind, our_checkpoints, our_gate_reports):
    path = str(our_checkpoints[kind])
    assert validate(path).ok
    vllm, upstream = our_gate_reports[(path, "vllm")], our_gate_reports[(path, "upstream")]
    assert vllm.ok, vllm.problems
    assert upstream.ok, upstream.problems
    style = KINDS[kind].get("layer_style", "llama")
    assert vllm.facts["architecture"] == eagle3.VLLM_ARCHITECTURES[style]
    assert vllm.facts["vllm_version"] == "0.33.0" and vllm.facts["method"] == "eagle3"
    assert vllm.facts["serve"] == f"vllm serve {path}" and vllm.facts["short_form"].endswith(HUB_VERIFIER)
    assert "stand-in" in vllm.facts["verifier_used"] and "stand-in" in upstream.facts["verifier_used"]
    assert "vllm_assumes" not in vllm.facts, "we write every key vLLM would otherwise default"
    assert upstream.facts["upstream_class"] == "Eagle3DraftModel"


def test_the_shipped_example_checkpoint_is_servable():
    require_gates()
    example = Path(__file__).resolve().parents[1] / "formats" / "examples" / "checkpoint-eagle3"
    assert assert_servable(example) == ["vllm", "upstream"]


def test_a_local_verifier_is_used_for_real_and_served_by_the_long_form(tmp_path):
    require_gates()
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(**{k: v for k, v in TINY_LLAMA.items() if k not in ("architectures", "model_type")})
    LlamaForCausalLM(config).save_pretrained(tmp_path / "verifier")
    path = write(tmp_path / "ckpt", make_config(verifier=str(tmp_path / "verifier"), draft_vocab_size=32))
    reports = gate_reports([path])
    vllm, upstream = reports[(str(path), "vllm")], reports[(str(path), "upstream")]
    assert vllm.ok and upstream.ok, vllm.problems + upstream.problems
    assert vllm.facts["verifier_used"] == upstream.facts["verifier_used"] == str(tmp_path / "verifier")
    assert "refused for a local verifier" in vllm.facts["short_form"]
    assert "--speculative-config" in vllm.facts["serve"] and '"method": "eagle3"' in vllm.facts["serve"]
    assert "verifier_weights" not in upstream.facts, "upstream loaded its teacher copies from the real verifier"


# ---- checkpoints written by upstream's own classes are ours too ------------------------------


@pytest.fixture(scope="module")
def upstream_written(tmp_path_factory):
    """Every checkpoint tests/upstream_writer.py writes with upstream's own code, by name."""
    require_gates()
    root = tmp_path_factory.mktemp("upstream")
    written = subprocess.run(
        [str(gate_python()), str(Path(__file__).with_name("upstream_writer.py")), str(root)],
        capture_output=True, text=True, check=False, timeout=600,
    )
    assert written.returncode == 0, written.stderr[-2000:]
    return {name: root / name for name in written.stdout.split()}


@pytest.fixture(scope="module")
def upstream_checkpoints(upstream_written):
    """The EAGLE-3 checkpoints upstream's trainer writes."""
    return [path for name, path in upstream_written.items() if name.startswith(("up-llama", "up-qwen3"))]


@pytest.fixture(scope="module")
def upstream_gate_reports(upstream_written):
    """Both gates on everything upstream wrote, in one call."""
    return gate_reports(upstream_written.values())


def test_upstream_written_checkpoints_pass_our_checks_loader_and_both_gates(upstream_checkpoints, upstream_gate_reports):
    assert len(upstream_checkpoints) == 6
    for path in upstream_checkpoints:
        config = ckpt.read_config(path)
        options = eagle3.options_from_config(config)
        tensors = ckpt.load_tensors(path)
        assert set(tensors) == set(eagle3.expected_tensors(config)), path.name
        assert options.aux_layer_ids == (1, 2, 3) and options.speculative_tokens == 3
        assert validate(str(path)).ok
        for gate in ("vllm", "upstream"):
            assert upstream_gate_reports[(str(path), gate)].ok, (gate, upstream_gate_reports[(str(path), gate)].problems)


def test_upstream_converter_output_with_null_layer_ids_is_valid_servable_and_importable(upstream_written, upstream_gate_reports, tmp_path):
    """Issue 13.1: upstream's Eagle3Converter writes `eagle_aux_hidden_state_layer_ids: null` and no
    num_aux_hidden_states; vLLM and upstream both load it (fc for 3, the verifier's [2, n//2, n-3])."""
    path = upstream_written["up-converted-eagle3"]
    config = ckpt.read_config(path)
    assert config["eagle_aux_hidden_state_layer_ids"] is None and "num_aux_hidden_states" not in config["transformer_layer_config"]
    report = validate(str(path))
    assert report.ok, report.problems  # was: "would size fc for 3 aux layers, not 0", and no tensor checked
    assert report.facts["aux_layer_ids"] == [2, 4, 5] and "n = 8" in report.facts["aux_layer_ids_from"]
    for gate in ("vllm", "upstream"):
        assert upstream_gate_reports[(str(path), gate)].ok, (gate, upstream_gate_reports[(str(path), gate)].problems)
    verifier = ckpt.read_config(path)["speculators_config"]["verifier"]["name_or_path"]
    result = convert(ConvertRequest(str(path), verifier, str(tmp_path / "imported")))
    imported = ckpt.read_config(result.output)
    assert imported["eagle_aux_hidden_state_layer_ids"] == [2, 4, 5] and imported["transformer_layer_config"]["num_aux_hidden_states"] == 3
    assert {d["setting"]: d["origin"] for d in result.decisions}["aux_layer_ids"] == "default"
    assert ckpt.load_tensors(result.output).keys() == ckpt.load_tensors(path).keys()


def test_vllm_and_upstream_run_a_dflash_block_differently_when_sliding_window_non_causal_is_false(upstream_written, upstream_gate_reports):
    """Issue 13.4: what upstream's trainer writes for full-attention layers; vLLM makes every layer causal."""
    full, sliding = str(upstream_written["up-dflash-full"]), str(upstream_written["up-dflash-sliding"])
    vllm, upstream = upstream_gate_reports[(full, "vllm")], upstream_gate_reports[(full, "upstream")]
    assert vllm.ok and upstream.ok, vllm.problems + upstream.problems  # issue 13.2: no more "model.mask_embedding not loaded"
    assert [layer["causal"] for layer in vllm.facts["draft_layer_attention"]] == [True, True]
    assert [layer["causal"] for layer in upstream.facts["draft_layer_attention"]] == [False, False]
    assert any("sliding_window_non_causal is false" in w and "[0, 1]" in w for w in validate(full).warnings)
    # Every layer sliding (upstream's trainer default): both causal, no warning about the flag.
    assert upstream_gate_reports[(sliding, "vllm")].facts["draft_layer_attention"] == upstream_gate_reports[(sliding, "upstream")].facts["draft_layer_attention"]
    assert not any("sliding_window_non_causal" in w for w in validate(sliding).warnings)


def make_null_aux_config(verifier, **changes):
    """What upstream's EAGLE-3 converter writes: null aux ids, no num_aux_hidden_states."""
    config = make_config(verifier=str(verifier), **changes)
    config["eagle_aux_hidden_state_layer_ids"] = None
    del config["transformer_layer_config"]["num_aux_hidden_states"]
    return config


def test_null_aux_layer_ids_mean_the_verifiers_default_layers(tmp_path):
    """Issue 13.1 without the gates: fc is checked for 3 hidden states; the layers need the verifier's depth."""
    from conftest import write_fake_verifier

    deep = write_fake_verifier(tmp_path / "deep", {**TINY_LLAMA, "num_hidden_layers": 8})
    report = validate(str(write(tmp_path / "ok", make_null_aux_config(deep))))
    assert report.ok and not report.warnings, report.problems + report.warnings
    assert report.facts["aux_layer_ids"] == [2, 4, 5]
    wrong_fc = make_null_aux_config(deep)
    tensors = random_checkpoint_tensors({**wrong_fc, "eagle_aux_hidden_state_layer_ids": [1, 2, 3, 4]})
    report = validate(str(write(tmp_path / "wide-fc", wrong_fc, tensors)))
    assert any("tensor fc.weight has shape [16, 64], the config implies [16, 48]" in p for p in report.problems), report.problems
    shallow = write_fake_verifier(tmp_path / "shallow", TINY_LLAMA)  # 4 layers: [2, 2, 1]
    report = validate(str(write(tmp_path / "shallow-ckpt", make_null_aux_config(shallow))))
    assert any("[2, n//2, n-3] = [2, 2, 1]" in p and "upstream refuses" in p for p in report.problems), report.problems
    declared = make_null_aux_config(deep)
    declared["transformer_layer_config"]["num_aux_hidden_states"] = 4
    report = validate(str(write(tmp_path / "declared", declared)))
    assert any("num_aux_hidden_states is 4 but eagle_aux_hidden_state_layer_ids is null" in p for p in report.problems)
    unknown = validate(str(write(tmp_path / "hub", make_null_aux_config(HUB_VERIFIER))))
    assert unknown.ok and any("n is not known here" in w for w in unknown.warnings), unknown.warnings


# ---- broken checkpoints: caught by our checks; what vLLM and upstream do with them -----------


def _pop(key):
    return lambda config, tensors: config.pop(key)


BROKEN = {
    # name: (mutation, our message, what the vLLM gate says (None: vLLM accepts it), upstream likewise)
    "missing tensor": (
        lambda c, t: t.pop("layers.0.hidden_norm.weight"),
        "tensor layers.0.hidden_norm.weight is missing",
        "vLLM parameter model.layers.0.hidden_norm.weight [16]: 16 of 16 values were not loaded",
        "upstream parameter layers.0.hidden_norm.weight is not in the checkpoint",
    ),
    "missing k_proj (one part of vLLM's fused qkv)": (
        lambda c, t: t.pop("layers.0.self_attn.k_proj.weight"),
        "tensor layers.0.self_attn.k_proj.weight is missing",
        "vLLM parameter model.layers.0.self_attn.qkv_proj.weight [32, 32]: 256 of 1024 values were not loaded",
        "upstream parameter layers.0.self_attn.k_proj.weight is not in the checkpoint",
    ),
    "extra tensor": (
        lambda c, t: t.update({"model.norm.weight": torch.ones(16)}),
        "unexpected tensor model.norm.weight",
        "There is no module or parameter named 'model'",
        "upstream has no parameter model.norm.weight",
    ),
    "extra bias (vLLM ignores unexpected .bias names)": (
        lambda c, t: t.update({"layers.0.self_attn.q_proj.bias": torch.ones(16)}),
        "unexpected tensor layers.0.self_attn.q_proj.bias",
        "vLLM silently dropped checkpoint tensor layers.0.self_attn.q_proj.bias",
        "upstream has no parameter layers.0.self_attn.q_proj.bias",
    ),
    "input_norm without norm_before_fc": (
        lambda c, t: t.update({"input_norm.weight": torch.ones(48)}),
        "unexpected tensor input_norm.weight",
        "vLLM silently dropped checkpoint tensor input_norm.weight",
        "upstream has no parameter input_norm.weight",
    ),
    "wrong fc width": (
        lambda c, t: t.update({"fc.weight": torch.zeros(16, 32)}),
        "tensor fc.weight has shape [16, 32], the config implies [16, 48]",
        "Tried to load weights of size torch.Size([16, 32])to a parameter of size torch.Size([16, 48])",
        "upstream parameter fc.weight has shape [16, 48], the checkpoint [16, 32]",
    ),
    "four aux layers, no num_aux_hidden_states (Llama head)": (
        lambda c, t: (c["transformer_layer_config"].pop("num_aux_hidden_states"), c.update(eagle_aux_hidden_state_layer_ids=[1, 2, 3, 4]), t.update({"fc.weight": torch.zeros(16, 64)})),
        "vLLM's Llama head would size fc for 3 aux layers, not 4",
        "Tried to load weights of size torch.Size([16, 64])to a parameter of size torch.Size([16, 48])",
        None,
    ),
    "missing norm flag": (_pop("norm_before_residual"), "norm_before_residual is missing", None, None),
    "wrong model_type": (
        lambda c, t: c["transformer_layer_config"].update(model_type="mistral"),
        "vLLM accepts only llama, qwen3",
        "Unsupported model_type mistral for Eagle3 speculator",
        "upstream speculators could not load the checkpoint: KeyError: 'mistral'",
    ),
    "no verifier named": (
        lambda c, t: c["speculators_config"].pop("verifier"),
        "'verifier' is a required property",
        "vLLM speculators parser failed: ValueError: Invalid speculators config structure",
        "upstream speculators could not load the checkpoint",
    ),
    "d2t out of range": (lambda c, t: t["d2t"].__setitem__(-1, 1000), "d2t maps 1 draft ids outside the vocabulary", None, None),
}


@pytest.fixture(scope="module")
def broken_checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("broken")
    paths = {}
    for index, (name, (mutate, *_)) in enumerate(BROKEN.items()):
        config = make_config(draft_vocab_size=32)
        tensors = random_checkpoint_tensors(config)
        mutate(config, tensors)
        paths[name] = write(root / f"broken-{index}", config, tensors)
    return paths


@pytest.fixture(scope="module")
def broken_gate_reports(broken_checkpoints):
    require_gates()
    return gate_reports(broken_checkpoints.values())


@pytest.mark.parametrize("name", BROKEN)
def test_broken_checkpoint_is_caught_by_our_checks(name, broken_checkpoints):
    report = validate(str(broken_checkpoints[name]))
    assert not report.ok
    assert any(BROKEN[name][1] in p for p in report.problems), report.problems


@pytest.mark.parametrize("name", BROKEN)
def test_what_vllm_and_upstream_do_with_a_broken_checkpoint(name, broken_checkpoints, broken_gate_reports):
    path = str(broken_checkpoints[name])
    for gate, expected in (("vllm", BROKEN[name][2]), ("upstream", BROKEN[name][3])):
        report = broken_gate_reports[(path, gate)]
        if expected is None:
            assert report.ok, f"{gate} now rejects it ({report.problems}): update the table"
        else:
            assert any(expected in p for p in report.problems), (gate, report.problems)


def test_vllm_silently_assumes_norm_before_residual(broken_checkpoints, broken_gate_reports):
    report = broken_gate_reports[(str(broken_checkpoints["missing norm flag"]), "vllm")]
    assert report.facts["vllm_assumes"] == {"norm_before_residual": True}


# ---- the command line ------------------------------------------------------------------------


def test_spec_validate_vllm_upstream_flags(our_checkpoints, broken_checkpoints, capsys):
    require_gates()
    good, bad = our_checkpoints["llama-1-reduced"], broken_checkpoints["missing tensor"]
    assert main(["--json", "--vllm", "--upstream", str(good), str(bad)]) == 1
    reports = json.loads(capsys.readouterr().out)
    assert [(r["kind"], r["ok"]) for r in reports] == [
        ("checkpoint", True), ("vllm-gate", True), ("upstream-gate", True),
        ("checkpoint", False), ("vllm-gate", False), ("upstream-gate", False),
    ]  # fmt: skip
    assert reports[1]["facts"]["serve"] == f"vllm serve {good}"


def test_missing_gate_environment_is_a_one_line_error(tmp_path, monkeypatch, capsys):
    if importlib.util.find_spec("vllm") is not None:
        pytest.skip("vLLM imports in this very environment, so no gate venv is needed")
    monkeypatch.setenv("SPEC_GATES_VENV", str(tmp_path / "nowhere"))
    path = write(tmp_path / "ckpt", make_config())
    with pytest.raises(SystemExit) as exit_info:
        run(main, ["--vllm", str(path)])
    assert exit_info.value.code == 1
    assert "the vllm gate is not installed: run ./just gates" in capsys.readouterr().err


def test_a_broken_gate_environment_is_a_one_line_error(tmp_path, monkeypatch):
    venv = tmp_path / "gates"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "python").write_text("#!/bin/sh\necho 'ImportError: no vllm here' >&2\nexit 3\n")
    (venv / "bin" / "python").chmod(0o755)
    (venv / STAMP).write_text("torch==2.13.0\n")
    monkeypatch.setenv("SPEC_GATES_VENV", str(venv))
    if importlib.util.find_spec("vllm") is not None:
        pytest.skip("vLLM imports in this very environment, so no gate venv is used")
    with pytest.raises(SpecError, match=r"gate environment .*gates failed \(exit 3\): ImportError: no vllm here"):
        run_gates([write(tmp_path / "ckpt", make_config())], ["vllm"])


def test_one_gate_child_serves_the_whole_test_session(our_checkpoints):
    require_gates()
    runner = session()
    first = runner.check([our_checkpoints["llama-1-full"]], ["vllm"])
    child = runner._child
    second = runner.check([our_checkpoints["qwen3-1-full"]], ["vllm"])
    assert child is not None and runner._child is child and first[0].ok and second[0].ok
