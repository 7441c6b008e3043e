"""Prompt sets for benchmarks: JSONL files whose lines have `prompt` (raw text) or `messages` (chat)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from libspec.errors import SpecError


@dataclass(frozen=True)
class PromptSet:
    """A named list of prompts; each is {"prompt": str} or {"messages": [...]} plus optional fields."""

    name: str
    path: str
    items: list[dict]


def load_prompt_set(path: str | Path, limit: int | None = None) -> PromptSet:
    """Read a JSONL prompt file; the set is named after the file (its stem)."""
    path = Path(path)
    try:
        lines = path.read_text("utf-8").splitlines()
    except FileNotFoundError:
        raise SpecError(f"{path}: prompt file not found") from None
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
        items.append(item)
        if limit is not None and len(items) >= limit:
            break
    if not items:
        raise SpecError(f"{path}: no prompts")
    return PromptSet(path.stem, str(path), items)


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
