"""Training conversations from the Python standard library: real input for spec-gen-hidden on any machine.

The built-in verifier (`libspec.demo.tiny_verifier`) learned ChatML conversations in which the user gives
the head of a block of code after "Continue this Python code:" and the assistant the rest. This
module cuts the verifier's *training* files the same way (blocks of 8-32 lines, a random cut),
and writes JSONL in the formats spec-gen-hidden reads:

- one-turn `messages` conversations, half of them with the system prompt;
- two-turn conversations (the next block continues the chat), to exercise multi-turn masks;
- plain `text` records (a whole block), a tenth of the blocks.

Deterministic for a seed: the same files give the same records.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

from libspec.format.atomic import atomic_writer


@dataclass(frozen=True)
class CorpusOptions:
    """How blocks of code become records."""

    instruction: str = "Continue this Python code:\n"
    system_prompt: str = "You are a helpful Python coding assistant."
    min_lines: int = 8
    max_lines: int = 32
    text_fraction: float = 0.1
    two_turn_fraction: float = 0.3
    seed: int = 0


def _blocks(text: str, rng: random.Random, options: CorpusOptions) -> Iterator[tuple[int, list[str]]]:
    """(first line number, lines) of consecutive blocks that hold code."""
    lines = text.splitlines(keepends=True)
    start = 0
    while start < len(lines):
        block = lines[start : start + rng.randint(options.min_lines, options.max_lines)]
        if len(block) >= 4 and "".join(block).strip():
            yield start + 1, block
        start += len(block)


def _turn(block: list[str], rng: random.Random, options: CorpusOptions) -> list[dict]:
    cut = rng.randint(1, len(block) - 2)
    return [
        {"role": "user", "content": options.instruction + "".join(block[:cut])},
        {"role": "assistant", "content": "".join(block[cut:])},
    ]


def _texts(files: Iterable[Path], root: Path | None) -> Iterator[tuple[str, str]]:
    """(name relative to root, text) of each file that reads as UTF-8; others are skipped."""
    for path in files:
        try:
            text = Path(path).read_text("utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        yield (str(Path(path).relative_to(root)) if root else str(path)), text


def corpus_records(files: Iterable[Path], root: Path | None = None, options: CorpusOptions = CorpusOptions()) -> Iterator[dict]:
    """Records (chat or text) cut from the given source files, in file order."""
    rng = random.Random(options.seed)
    for name, text in _texts(files, root):
        pending = list(_blocks(text, rng, options))
        while pending:
            line, block = pending.pop(0)
            source = f"{name}:{line}"
            if rng.random() < options.text_fraction:
                yield {"text": "".join(block), "source": source}
                continue
            messages = [{"role": "system", "content": options.system_prompt}] if rng.random() < 0.5 else []
            messages += _turn(block, rng, options)
            if pending and rng.random() < options.two_turn_fraction:
                messages += _turn(pending.pop(0)[1], rng, options)
            yield {"messages": messages, "source": source}


PROMPT_KINDS = ("code", "chat")


def corpus_prompts(files: Iterable[Path], kind: str, root: Path | None = None, options: CorpusOptions = CorpusOptions()) -> Iterator[dict]:
    """Benchmark prompts cut like the training records, without the answer.

    `code`: the head of a block as raw text, for plain completion; `chat`: the same head in a
    one-turn conversation ("Continue this Python code:"), rendered with the chat template.
    One block per file, chosen at random, so a short set still spans many files.
    """
    if kind not in PROMPT_KINDS:
        raise ValueError(f"unknown prompt kind {kind!r}; expected one of {PROMPT_KINDS}")
    rng = random.Random(options.seed)
    for name, text in _texts(files, root):
        blocks = list(_blocks(text, rng, options))
        if blocks:
            line, block = rng.choice(blocks)
            head = "".join(block[: rng.randint(2, len(block) - 2)])
            if kind == "code":
                yield {"prompt": head, "source": f"{name}:{line}"}
            else:
                messages = [{"role": "system", "content": options.system_prompt}] if rng.random() < 0.5 else []
                yield {"messages": messages + [{"role": "user", "content": options.instruction + head}], "source": f"{name}:{line}"}


def write_jsonl(output: str | Path, records: Iterable[dict], limit: int | None = None) -> int:
    """Write up to `limit` records as JSONL (atomically); returns how many were written."""
    count = 0
    with atomic_writer(output) as handle:
        for record in records:
            if limit is not None and count >= limit:
                break
            handle.write((json.dumps(record, ensure_ascii=False) + "\n").encode("utf-8"))
            count += 1
    return count


def write_corpus_conversations(output: str | Path, files: Iterable[Path], root: Path | None = None, limit: int | None = None, options: CorpusOptions = CorpusOptions()) -> int:
    """Write up to `limit` corpus records as JSONL (atomically); returns how many were written."""
    return write_jsonl(output, corpus_records(files, root, options), limit)


def verifier_training_files(preset: str = "full", split: str = "train") -> tuple[Path, list[Path]]:
    """The stdlib root and the files the built-in verifier trains on (or holds out, split="validation")."""
    from libspec.demo.tiny_verifier import corpus_split

    files = corpus_split(preset)
    return files.root, list(files.train if split == "train" else files.validation)
