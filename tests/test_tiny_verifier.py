"""The built-in small verifier: builds, loads offline with the Auto classes, caches, is deterministic."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import time

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

from libspec.demo import tiny_verifier
from libspec.errors import SpecError

os.environ["HF_HUB_OFFLINE"] = "1"  # everything must load from the folder alone

CODE = 'def greet(name: str) -> str:\n    """Say hello."""\n\treturn f"héllo, {name}!"  # ünïcode ✓\n\n\n'


@pytest.fixture(scope="module")
def verifier(tmp_path_factory):
    cache = tmp_path_factory.mktemp("cache")
    reports = []
    started = time.perf_counter()
    folder = tiny_verifier.build_verifier("tiny", cache_dir=cache, on_progress=reports.append)
    return {"folder": folder, "cache": cache, "reports": reports, "build_s": time.perf_counter() - started}


def test_folder_has_the_hf_files_and_recipe(verifier):
    folder = verifier["folder"]
    for name in ("config.json", "model.safetensors", "generation_config.json", "tokenizer.json",
                 "tokenizer_config.json", "chat_template.jinja", "recipe.json"):
        assert (folder / name).is_file(), name
    recipe = json.loads((folder / "recipe.json").read_text())
    assert recipe["preset"]["name"] == "tiny"
    assert folder.name == f"tiny-{recipe['recipe_hash'][:16]}"
    assert recipe["params"] > 0 and recipe["tokens_trained"] > 0
    assert 0.1 < recipe["chat_char_fraction"] < 0.4
    assert recipe["validation_loss"] < 6.0  # uniform over 512 tokens would be ln 512 = 6.24


def test_progress_reports_every_training_step(verifier):
    steps = [r.done for r in verifier["reports"] if r.stage == "train"]
    assert steps == list(range(1, tiny_verifier.PRESETS["tiny"].steps + 1))


def test_loads_offline_with_auto_classes_and_generates(verifier):
    model = AutoModelForCausalLM.from_pretrained(verifier["folder"])
    tokenizer = AutoTokenizer.from_pretrained(verifier["folder"])
    inputs = tokenizer("import os\n\n\ndef main(", return_tensors="pt")
    output = model.generate(**inputs, max_new_tokens=12, min_new_tokens=12, do_sample=False)
    assert output.shape == (1, inputs["input_ids"].shape[1] + 12)
    again = model.generate(**inputs, max_new_tokens=12, min_new_tokens=12, do_sample=False)
    assert torch.equal(output, again)  # greedy is reproducible
    assert isinstance(tokenizer.decode(output[0]), str)


def test_eos_agrees_between_tokenizer_config_and_generation_config(verifier):
    folder = verifier["folder"]
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder)
    generation = GenerationConfig.from_pretrained(folder)
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert tokenizer.eos_token == "<|endoftext|>" and tokenizer.pad_token == "<|pad|>"
    assert model.config.eos_token_id == tokenizer.eos_token_id
    assert generation.eos_token_id == [tokenizer.eos_token_id, im_end]
    assert generation.pad_token_id == tokenizer.pad_token_id == model.config.pad_token_id
    assert model.config.vocab_size == len(tokenizer) == tiny_verifier.PRESETS["tiny"].vocab_size
    assert not model.config.tie_word_embeddings


def test_chat_template_renders_chatml_and_round_trips(verifier):
    tokenizer = AutoTokenizer.from_pretrained(verifier["folder"])
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Continue this Python code:\nimport os"},
    ]
    prompt = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert prompt == (
        "<|im_start|>system\nBe brief.<|im_end|>\n"
        "<|im_start|>user\nContinue this Python code:\nimport os<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    assert ids[0] == tokenizer.convert_tokens_to_ids("<|im_start|>")
    assert tokenizer.decode(ids) == prompt
    full = messages + [{"role": "assistant", "content": "import sys\n"}]
    rendered = tokenizer.apply_chat_template(full, tokenize=True, return_dict=True, return_assistant_tokens_mask=True)
    reply = [i for i, keep in zip(rendered["input_ids"], rendered["assistant_masks"]) if keep]
    assert tokenizer.decode(reply) == "import sys\n<|im_end|>"


def test_decode_encode_round_trips_code(verifier):
    tokenizer = AutoTokenizer.from_pretrained(verifier["folder"])
    stdlib_text = tiny_verifier.corpus_split("tiny").validation[0].read_text(encoding="utf-8")[:3000]
    for text in (CODE, stdlib_text, "  \n\t\r\n<think>x</think>"):
        assert tokenizer.decode(tokenizer(text, add_special_tokens=False)["input_ids"]) == text
    assert tokenizer.convert_ids_to_tokens(len(tokenizer) - 1) == "</think>"


def test_second_call_is_a_cache_hit(verifier):
    started = time.perf_counter()
    again = tiny_verifier.build_verifier("tiny", cache_dir=verifier["cache"], on_progress=pytest.fail)
    assert again == verifier["folder"]
    assert time.perf_counter() - started < 5.0


def test_build_is_deterministic_and_leaves_no_temp_folders(verifier, tmp_path):
    other = tiny_verifier.build_verifier("tiny", cache_dir=tmp_path)
    assert other.name == verifier["folder"].name
    for name in ("model.safetensors", "tokenizer.json"):
        first = hashlib.sha256((verifier["folder"] / name).read_bytes()).hexdigest()
        assert hashlib.sha256((other / name).read_bytes()).hexdigest() == first, name
    assert [p.name for p in other.parent.iterdir()] == [other.name]


def test_corpus_split_holds_out_every_nth_file():
    split = tiny_verifier.corpus_split("tiny")
    preset = tiny_verifier.PRESETS["tiny"]
    assert len(split.train) + len(split.validation) == preset.max_files
    assert not set(split.train) & set(split.validation)
    assert list(split.train) == sorted(split.train)
    assert len(split.validation) == preset.max_files // preset.validation_every


def test_recipe_hash_changes_with_the_preset():
    tiny = tiny_verifier.PRESETS["tiny"]
    changed = dataclasses.replace(tiny, seed=1)
    assert tiny_verifier.recipe_hash(tiny) != tiny_verifier.recipe_hash(changed)


def test_unknown_preset_is_a_spec_error():
    with pytest.raises(SpecError, match="unknown verifier preset 'huge'"):
        tiny_verifier.build_verifier("huge")


def test_default_cache_dir_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("SPEC_TOOLS_CACHE", str(tmp_path / "a"))
    assert tiny_verifier.default_cache_dir() == tmp_path / "a"
    monkeypatch.delenv("SPEC_TOOLS_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert tiny_verifier.default_cache_dir() == tmp_path / "xdg" / "spec-tools"
