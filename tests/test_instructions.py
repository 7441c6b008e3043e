"""Issue 12 item 3: training prompts for the real verifier, disjoint from both benchmark sets."""

from __future__ import annotations

import gzip
import json
from collections import Counter

import pytest

from libspec.bench.benchmarks import humaneval_function_names, read_benchmark
from libspec.demo.instructions import benchmark_overlap, instruction_prompts
from libspec.demo.tiny_verifier import stdlib_sources
from tools.instruction_prompts import main


@pytest.fixture(scope="module")
def prompts() -> list[dict]:
    root, files = stdlib_sources()
    return instruction_prompts(root, files, excluded_names=humaneval_function_names())  # as tools/instruction_prompts.py does


@pytest.fixture(scope="module")
def benchmark_texts() -> list[str]:
    texts = []
    _, mt_bench = read_benchmark("mt-bench-2turn")
    texts += [item["messages"][-1]["content"] for item in mt_bench] + [item["follow_up"] for item in mt_bench]
    _, humaneval = read_benchmark("humaneval")
    texts += [item["prompt"] for item in humaneval]
    return texts


def user_texts(prompts: list[dict]) -> list[str]:
    return [p["messages"][0]["content"] for p in prompts]


def test_prompts_come_from_every_source_mixed_and_deterministic(prompts):
    kinds = Counter(p["source"].split(":")[0] for p in prompts)
    assert kinds["stdlib-function"] > 300 and kinds["stdlib-module"] > 200 and kinds["stdlib-topic"] > 50 and kinds["sharegpt"] > 20
    assert len({p["source"].split(":")[0] for p in prompts[:8]}) >= 3  # any prefix mixes the sources
    assert all(p["messages"][0]["role"] == "user" and len(p["messages"]) == 1 for p in prompts)  # prompt-only: the verifier answers
    root, files = stdlib_sources()
    assert instruction_prompts(root, files, excluded_names=humaneval_function_names()) == prompts


def test_no_benchmark_prompt_appears_in_the_training_prompts(prompts, benchmark_texts):
    assert len(benchmark_texts) == 80 * 2 + 164
    texts = user_texts(prompts)
    assert benchmark_overlap(texts, benchmark_texts) == []  # no shared run of 8 words
    joined = "\n".join(texts).lower()
    assert not [t for t in benchmark_texts if t.strip().lower()[:60] in joined]
    path, _ = read_benchmark("humaneval")
    entry_points = {json.loads(line)["entry_point"] for line in gzip.open(path, "rt")}
    assert humaneval_function_names() == entry_points
    asked = {p["source"].rsplit(":", 1)[1] for p in prompts if p["source"].startswith("stdlib-function")}
    assert len(entry_points) > 150 and not asked & entry_points, asked & entry_points  # no HumanEval function is asked for by name


def test_the_overlap_check_catches_a_leaked_question(prompts, benchmark_texts):
    leaked = "Please answer: " + benchmark_texts[3]
    found = benchmark_overlap([*user_texts(prompts[:50]), leaked], benchmark_texts)
    assert [prompt for prompt, _ in found] == [leaked]


def test_the_tool_writes_a_prefix(tmp_path, capsys):
    out = tmp_path / "p.jsonl"
    assert main(["-o", str(out), "--limit", "40", "--json"]) == 0
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(lines) == 40 and json.loads(capsys.readouterr().out)["prompts"] == 40
