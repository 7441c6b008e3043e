"""Prompt sets for benchmarks: JSONL files, or the field's sets by name (libspec.bench.benchmarks).

A line is {"prompt": raw text} or {"messages": [...]} (chat), plus optional fields: `category`
(the report is then also split by it) and, with `messages`, `follow_up` (a second question, asked
after the verifier's own answer to the first; spec-bench measures that second turn).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from libspec.bench.benchmarks import BENCHMARKS, read_benchmark
from libspec.errors import SpecError


@dataclass(frozen=True)
class PromptSet:
    """A named list of prompts; each is {"prompt": str} or {"messages": [...]} plus optional fields."""

    name: str
    path: str
    items: list[dict]


def load_prompt_set(source: str | Path, limit: int | None = None) -> PromptSet:
    """A JSONL file (named after its stem), or a benchmark set by name: `humaneval`, or `humaneval:8` for
    8 of its prompts (see `spread_over_categories`: for MT-Bench, one from each category in turn)."""
    path = Path(source)
    name, colon, count = str(source).partition(":")
    if not path.exists() and name in BENCHMARKS:
        if colon:
            if not count.isdigit() or int(count) < 1:
                raise SpecError(f"{source}: expected {name} or {name}:N with N a positive number of prompts")
            limit = min(int(count), limit or int(count))
        path, items = read_benchmark(name)
        return PromptSet(name, str(path), spread_over_categories(items, limit))
    try:
        lines = path.read_text("utf-8").splitlines()
    except FileNotFoundError:
        raise SpecError(f"{path}: prompt file not found (or a benchmark set: {', '.join(BENCHMARKS)}, optionally NAME:N)") from None
    except UnicodeDecodeError as error:
        raise SpecError(f"{path}: not a JSONL prompt file: not UTF-8 text ({error.reason} at byte {error.start})") from None
    except OSError as error:
        raise SpecError(f"{path}: prompt file unreadable: {error.strerror or error}") from None
    items = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except json.JSONDecodeError as error:
            raise SpecError(f"{path}:{number}: not valid JSON: {error.msg}") from None
        except RecursionError:
            raise SpecError(f"{path}:{number}: not valid JSON: nested too deeply") from None
        if not isinstance(item, dict) or not (isinstance(item.get("prompt"), str) or isinstance(item.get("messages"), list)):
            raise SpecError(f"{path}:{number}: expected an object with a string 'prompt' or a list 'messages'")
        if not isinstance(item.get("category", ""), str):
            raise SpecError(f"{path}:{number}: 'category' must be a string")
        if "follow_up" in item and not (isinstance(item["follow_up"], str) and "messages" in item):
            raise SpecError(f"{path}:{number}: 'follow_up' must be a string, on a line with 'messages'")
        items.append(item)
        if limit is not None and len(items) >= limit:
            break
    if not items:
        raise SpecError(f"{path}: no prompts")
    return PromptSet(path.stem, str(path), items)


def spread_over_categories(items: list[dict], limit: int | None) -> list[dict]:
    """The first `limit` items taken one category at a time (the first of each category in order of
    first appearance, then the second of each, …), so that `mt-bench:16` measures all 8 categories
    and not only the first one (its file lists writing ×10, then roleplay ×10, …). Sets without
    categories keep their order: `humaneval:8` is HumanEval/0–7."""
    if limit is None or limit >= len(items):
        return items
    by_category: dict[str, list[dict]] = {}
    for item in items:
        by_category.setdefault(item.get("category", ""), []).append(item)
    rounds = max(len(group) for group in by_category.values())
    spread = [group[turn] for turn in range(rounds) for group in by_category.values() if turn < len(group)]
    return spread[:limit]


def encode_prompt(tokenizer, item: dict) -> torch.Tensor:
    """Token ids of a prompt: raw text as is, messages through the chat template with a generation prompt."""
    if "messages" in item:
        ids = tokenizer.apply_chat_template(item["messages"], add_generation_prompt=True, tokenize=True, return_dict=False)
    else:
        ids = tokenizer(item["prompt"], add_special_tokens=True)["input_ids"]
    if hasattr(ids, "input_ids"):
        ids = ids["input_ids"]
    ids = torch.as_tensor(ids, dtype=torch.long).flatten()
    if ids.numel() == 0:
        raise SpecError("a prompt encodes to zero tokens")
    return ids

