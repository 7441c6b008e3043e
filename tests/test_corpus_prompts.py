"""Benchmark prompts cut from source files: one per file, no answers, both kinds readable by spec-bench."""

from __future__ import annotations

import json

import pytest

from libspec.demo.corpus import CorpusOptions, corpus_prompts, write_jsonl
from libspec.bench.prompts import load_prompt_set


@pytest.fixture
def sources(tmp_path):
    paths = []
    for i in range(4):
        path = tmp_path / f"mod{i}.py"
        path.write_text("".join(f"def f{i}_{j}(x):\n    return x + {j}\n\n" for j in range(30)))
        paths.append(path)
    return tmp_path, paths


@pytest.mark.parametrize("kind", ["code", "chat"])
def test_one_prompt_per_file_without_the_answer(sources, tmp_path, kind):
    root, paths = sources
    prompts = list(corpus_prompts(paths, kind, root, CorpusOptions(seed=3)))
    assert [p["source"].split(":")[0] for p in prompts] == [f"mod{i}.py" for i in range(4)]
    for prompt in prompts:
        if kind == "code":
            assert prompt["prompt"].strip()
        else:
            assert prompt["messages"][-1]["role"] == "user" and prompt["messages"][-1]["content"].startswith("Continue this Python code:\n")
    assert write_jsonl(tmp_path / f"{kind}.jsonl", prompts, limit=3) == 3
    assert len(load_prompt_set(tmp_path / f"{kind}.jsonl").items) == 3
    again = list(corpus_prompts(paths, kind, root, CorpusOptions(seed=3)))
    assert json.dumps(again) == json.dumps(prompts), "deterministic for a seed"


def test_unknown_kind(sources):
    with pytest.raises(ValueError, match="unknown prompt kind"):
        list(corpus_prompts(sources[1], "poetry"))
