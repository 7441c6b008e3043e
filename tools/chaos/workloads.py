"""The two tools under test, each on an input small enough that one run takes about a second.

A workload knows its command, how to compare a finished output with the reference run's (byte for
byte for spec-gen-hidden; the weights of every kept checkpoint and the `best` choice for
spec-train), and what "nothing committed was damaged" means for an output a failed run left.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from libspec.errors import SpecError

OK, DIFFERENT, LOST = "ok", "different", "lost"
_CREATED_AT = re.compile(rb'"created_at": "[^"]*"')  # when the run began: the one field two runs may not share


@dataclass(frozen=True)
class Verdict:
    """How an output compares with the reference: ok, different or lost, and why."""

    result: str
    detail: str = ""


@dataclass(frozen=True)
class Inputs:
    """What both workloads read: the built-in tiny verifier, its conversations, and data to train on."""

    verifier: Path
    conversations: Path
    training_data: Path  # the reference spec-gen-hidden output


def prepare_inputs(work: Path) -> tuple[Path, Path]:
    """The tiny verifier (built once, then cached, seconds) and 60 conversations cut from its training files."""
    from libspec.demo.corpus import verifier_training_files, write_corpus_conversations
    from libspec.demo.tiny_verifier import build_verifier

    verifier = build_verifier("tiny")
    conversations = work / "inputs" / "conversations.jsonl"
    if not conversations.is_file():
        root, files = verifier_training_files("tiny", "train")
        write_corpus_conversations(conversations, files, root, limit=60)
    return verifier, conversations


class GenHidden:
    """spec-gen-hidden into a data set of ~10 small shards (0.05 MB each), so kills land between and inside shard writes."""

    name, tool = "spec-gen-hidden", "spec_gen_hidden"

    def __init__(self, inputs: Inputs):
        self.inputs = inputs

    def argv(self, output: Path) -> list[str]:
        return ["--verifier", str(self.inputs.verifier), "--data", str(self.inputs.conversations), "-o", str(output),
                "--shard-mb", "0.05", "--threads", "1", "--quiet"]  # fmt: skip

    def compare(self, reference: Path, output: Path) -> Verdict:
        if not (output / "manifest.json").is_file():
            return Verdict(LOST, f"{output}: no manifest.json")
        names, expected = _listing(output), _listing(reference)
        if names != expected:
            return Verdict(DIFFERENT, f"files differ: extra {sorted(names - expected)}, missing {sorted(expected - names)}")
        for name in sorted(names):
            if _normalised(output / name) != _normalised(reference / name):
                return Verdict(DIFFERENT, f"{output / name} differs from the reference's bytes")
        return Verdict(OK)

    def committed_problems(self, reference: Path, partial: Path) -> list[str]:
        """Shards a failed run left must be the reference's bytes; no temp file may stay behind."""
        problems = [f"{partial / n}: a temp file left behind" for n in _listing(partial) if n.startswith(".")]
        for name in sorted(_listing(partial)):
            if name.endswith((".safetensors", ".msgpack.zst")) and (partial / name).read_bytes() != (reference / name).read_bytes():
                problems.append(f"{partial / name}: differs from the reference's shard of that name")
        return problems


class Train:
    """spec-train for 2 epochs of ~19 steps, a checkpoint every 3 steps: kills land in steps, saves and pruning."""

    name, tool = "spec-train", "spec_train"

    def __init__(self, inputs: Inputs):
        self.inputs = inputs

    def argv(self, output: Path) -> list[str]:
        return ["--data", str(self.inputs.training_data), "--verifier", str(self.inputs.verifier), "-o", str(output),
                "--tokens-per-batch", "128", "--epochs", "2", "--save-every", "3", "--save-dtype", "float32"]  # fmt: skip

    def compare(self, reference: Path, output: Path) -> Verdict:
        try:
            best = json.loads((output / "best.json").read_text("utf-8"))
        except (OSError, ValueError) as error:
            return Verdict(LOST, f"{output / 'best.json'}: unreadable ({error})")
        if best != json.loads((reference / "best.json").read_text("utf-8")):
            return Verdict(DIFFERENT, f"best.json names {best.get('checkpoint')} ({best.get('value')}), not the reference's")
        if (output / "best").resolve().name != best["checkpoint"]:
            return Verdict(DIFFERENT, f"{output / 'best'} does not point at {best['checkpoint']}")
        kept, expected = _checkpoints(output), _checkpoints(reference)
        if kept != expected:
            return Verdict(DIFFERENT, f"checkpoints kept {sorted(kept)}, the reference kept {sorted(expected)}")
        for name in sorted(kept):
            problem = _weights_problem(reference / name, output / name)
            if problem:
                return Verdict(LOST if "unreadable" in problem else DIFFERENT, problem)
        return Verdict(OK)

    def committed_problems(self, reference: Path, partial: Path) -> list[str]:
        """Every checkpoint a failed run left must load, and equal the reference's of that name when it kept one."""
        problems = []
        for name in sorted(_checkpoints(partial)):
            problem = _weights_problem(reference / name if (reference / name).is_dir() else None, partial / name)
            if problem:
                problems.append(problem)
        return problems


def _listing(folder: Path) -> set[str]:
    return {p.name for p in folder.iterdir()} if folder.is_dir() else set()


def _normalised(path: Path) -> bytes:
    data = path.read_bytes()
    return _CREATED_AT.sub(b'"created_at": ""', data) if path.name == "manifest.json" else data


def _checkpoints(folder: Path) -> set[str]:
    return {n for n in _listing(folder) if n.startswith("checkpoint-")}


def _weights_problem(reference: Path | None, output: Path) -> str | None:
    """Why the checkpoint at `output` is unreadable or differs from `reference`'s weights; None when it matches."""
    from libspec.format.checkpoint import load_tensors

    try:
        ours = load_tensors(output)
    except SpecError as error:
        return f"{output}: unreadable ({error})"
    if not ours:
        return f"{output}: unreadable (no weight files)"
    if reference is None:
        return None
    theirs = load_tensors(reference)
    if ours.keys() != theirs.keys() or any(not ours[k].equal(theirs[k]) for k in ours):
        return f"{output}: weights differ from the reference's"
    return None
