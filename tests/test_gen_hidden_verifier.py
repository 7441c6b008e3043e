"""spec-gen-hidden on the project's own small verifier and its corpus, end to end."""

from __future__ import annotations

import json

import pytest
import torch
from tiny_chat import loaded_verifier

from libspec.capture.hooks import HiddenStateCapture
from libspec.demo.corpus import verifier_training_files, write_corpus_conversations
from libspec.format.dataset import Dataset
from libspec.validate.artifacts import validate
from tools.spec_gen_hidden import main

tiny_verifier = pytest.importorskip("libspec.demo.tiny_verifier")


def test_corpus_conversations_through_the_built_in_verifier(capsys, tmp_path):
    folder = tiny_verifier.build_verifier("tiny")  # cached under ~/.cache/spec-tools after the first build
    root, files = verifier_training_files("tiny", "train")
    inputs = tmp_path / "conversations.jsonl"
    assert write_corpus_conversations(inputs, files[:12], root, limit=24) == 24
    assert main(["--quiet", "--json", "--verifier", str(folder), "--data", str(inputs), "-o", str(tmp_path / "data"), "--dtype", "float32", "--storage-dtype", "float32", "--max-len", "2048"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["records_written"] >= 24 and not summary["dropped"] and validate(str(tmp_path / "data")).ok
    dataset = Dataset(tmp_path / "data")
    n = dataset.verifier.num_hidden_layers
    assert dataset.layer_ids == sorted({*tiny_verifier_aux(n), n})

    verifier = loaded_verifier(folder)
    direct = HiddenStateCapture(verifier.model, dataset.layer_ids, n)
    lines = inputs.read_text().splitlines()
    chats = 0
    for sample in dataset:
        record = sample.record
        (expected,) = direct.capture([record["input_ids"]])
        torch.testing.assert_close(sample.hidden_states(), expected, rtol=1e-5, atol=1e-5)
        source = json.loads(lines[record["metadata"]["line"] - 1])
        if "messages" not in source or record["metadata"]["turns"] != [i for i, m in enumerate(source["messages"]) if m["role"] == "assistant"]:
            continue
        # The verifier's template marks replies with {% generation %}: transformers' mask must agree.
        rendered = verifier.tokenizer.apply_chat_template(source["messages"], tokenize=True, return_dict=True, return_assistant_tokens_mask=True)
        length = len(record["input_ids"])
        assert list(rendered["input_ids"])[:length] == record["input_ids"]
        assert list(rendered["assistant_masks"])[:length] == record["loss_mask"]
        chats += 1
    assert chats >= 10


def tiny_verifier_aux(n: int) -> list[int]:
    from libspec.algorithms.eagle3.config import default_aux_layer_ids

    return default_aux_layer_ids(n)
