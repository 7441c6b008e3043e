"""Speculator checkpoints: a Hugging Face folder (config.json + model.safetensors), SPEC.md "Speculator checkpoints".

The folder is what `vllm serve DIR` and upstream `speculators` load as is. Writes are atomic at
the folder level: a reader sees the old checkpoint or the complete new one.
"""

from __future__ import annotations

import errno
import json
import os
import re
from pathlib import Path

import safetensors
import safetensors.torch
import torch

import libspec
from libspec.format.atomic import atomic_directory, default_file_mode, write_text_atomic
from libspec.format.digest import FileDigest, digest_file
from libspec.format.json_files import read_json_object
from libspec.format.paths import inside, read_weight_map
from libspec.format.weights_file import WeightFile, write_weights
from libspec.errors import SpecError

CONFIG = "config.json"
WEIGHTS = "model.safetensors"
FLOAT_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def is_checkpoint(directory: str | Path) -> bool:
    """True if `directory` has a config.json with a speculators_config (or the spec_tools record of an EAGLE-1 folder)."""
    path = Path(directory) / CONFIG
    if not path.is_file():
        return False
    try:
        config = read_json_object(path)
    except SpecError:
        return False
    tools = config.get("spec_tools")
    return "speculators_config" in config or (isinstance(tools, dict) and tools.get("algorithm") == "eagle")


def refuse_to_replace(directory: str | Path, overwrite: bool) -> None:
    """Refuse to write a checkpoint to `directory` where that could lose something: a file, a non-empty
    folder that is no checkpoint, or (unless `overwrite`) an existing checkpoint. An empty or new folder is fine."""
    directory = Path(directory)
    if not os.path.lexists(directory):
        return
    if not directory.is_dir():
        raise SpecError(f"{directory}: exists and is not a folder; refusing to replace it")
    if not any(directory.iterdir()):
        return
    if not is_checkpoint(directory):
        raise SpecError(f"{directory}: exists and is not a checkpoint folder (not empty, no speculator config.json); refusing to replace it, even with --overwrite")
    if not overwrite:
        raise SpecError(
            f"{directory}: already holds a checkpoint{_verifier_of(directory)}; refusing to replace it "
            "(pass --overwrite to replace its checkpoint files and leave its other files in place)"
        )


def _verifier_of(directory: Path) -> str:
    """` (for verifier NAME)` as the folder's config.json records it, or nothing."""
    try:
        config = read_config(directory)
        recorded = config.get("speculators_config", {}).get("verifier") or config.get("spec_tools", {}).get("verifier") or {}
        return f" (for verifier {recorded['name_or_path']})"
    except (SpecError, AttributeError, KeyError, TypeError):
        return ""


def read_config(directory: str | Path) -> dict:
    """Parse a checkpoint's config.json (one-line error if missing or not a JSON object)."""
    return read_json_object(Path(directory) / CONFIG, missing="missing; a speculator checkpoint needs its config.json")


def speculative_tokens(config: dict, default: int | None = None) -> int | None:
    """k, the drafted tokens per step a checkpoint is served with, for every algorithm; `default` when not recorded.

    Speculators configs keep it in speculators_config.proposal_methods[0]; an EAGLE-1 folder has no
    speculators_config and keeps it in spec_tools (SPEC.md §11.5).
    """
    try:
        if "speculators_config" in config:
            value = config["speculators_config"]["proposal_methods"][0]["speculative_tokens"]
        else:
            value = config["spec_tools"]["speculative_tokens"]
    except (KeyError, IndexError, TypeError):  # a broken config (spec-push --force may carry one)
        return default
    return default if value is None else value


def set_speculative_tokens(directory: str | Path, k: int) -> dict:
    """Record `k` as the checkpoint's default number of drafted tokens (what vLLM serves with)."""
    config = read_config(directory)
    config["speculators_config"]["proposal_methods"][0]["speculative_tokens"] = int(k)
    write_text_atomic(Path(directory) / CONFIG, json.dumps(config, indent=2) + "\n")
    return config


def weight_files(directory: str | Path) -> list[Path]:
    """The safetensors files holding the weights (one file, or the shards an index lists), each inside `directory`."""
    directory = Path(directory)
    index = f"{WEIGHTS}.index.json"
    if os.path.lexists(directory / index):
        return sorted(set(read_weight_map(directory, index).values()))
    if not os.path.lexists(directory / WEIGHTS):
        raise SpecError(f"{directory / WEIGHTS}: missing; a speculator checkpoint needs its weights")
    return [inside(directory, WEIGHTS, str(directory))]


def checkpoint_files(directory: str | Path) -> list[Path]:
    """The files a checkpoint consists of: config.json, the weights, and their index when sharded (all inside `directory`)."""
    directory = Path(directory)
    index = f"{WEIGHTS}.index.json"
    own = [CONFIG, *([index] if os.path.lexists(directory / index) else [])]
    return [*(inside(directory, name, str(directory)) for name in own), *weight_files(directory)]


def file_names(directory: str | Path) -> set[str]:
    """Relative names of the checkpoint files in `directory` as far as they can be read (empty if none):
    what writing another checkpoint over it replaces, so that no stale shard or index is left behind."""
    directory = Path(directory)
    names = {name for name in (CONFIG, WEIGHTS, f"{WEIGHTS}.index.json") if os.path.lexists(directory / name)}
    try:
        names.update(path.relative_to(directory).as_posix() for path in weight_files(directory))
    except SpecError:  # a broken index: its shards cannot be told apart from other files, so they stay
        pass
    return names


def weight_checksums(directory: str | Path) -> dict[str, str]:
    """File name -> sha256 of every weight file: identifies the weights whatever config.json says."""
    directory = Path(directory)
    return {path.relative_to(directory).as_posix(): digest_file(path).sha256 for path in weight_files(directory)}


def with_weight_digests(config: dict, directory: str | Path) -> dict:
    """A copy of `config` whose `spec_tools.weights` records {file: {bytes, sha256}} for every weight file in `directory`."""
    config = json.loads(json.dumps(config))
    record = config.get("spec_tools")
    if not isinstance(record, dict):
        record = config["spec_tools"] = {"version": libspec.__version__, "format_version": libspec.FORMAT_VERSION}
    directory = Path(directory)
    record["weights"] = {
        path.relative_to(directory).as_posix(): {"bytes": digest.num_bytes, "sha256": digest.sha256}
        for path in weight_files(directory)
        for digest in [digest_file(path)]
    }
    return config


def recorded_weight_digests(config: dict) -> dict[str, FileDigest] | None:
    """The weight digests config.json records (`spec_tools.weights`), or None when it records none (upstream's folders)."""
    record = config.get("spec_tools")
    weights = record.get("weights") if isinstance(record, dict) else None
    if weights is None:
        return None
    if not isinstance(weights, dict):
        raise SpecError(f"{CONFIG}: spec_tools.weights: expected an object file -> {{bytes, sha256}}, found {type(weights).__name__}")
    digests = {}
    for name, entry in weights.items():
        if not (isinstance(entry, dict) and isinstance(entry.get("bytes"), int) and isinstance(entry.get("sha256"), str)):
            raise SpecError(f"{CONFIG}: spec_tools.weights[{name!r}]: expected {{\"bytes\": int, \"sha256\": hex}}, found {entry!r}")
        digests[name] = FileDigest(entry["bytes"], entry["sha256"])
    return digests


def weight_digest_problems(directory: str | Path, config: dict) -> list[str] | None:
    """One line per weight file whose size or sha256 differs from what config.json records, or that
    it does not record; None when config.json records no digests at all."""
    directory = Path(directory)
    try:
        recorded = recorded_weight_digests(config)
    except SpecError as error:
        return [str(error)]
    if recorded is None:
        return None
    problems = []
    present = {path.relative_to(directory).as_posix(): path for path in weight_files(directory)}
    for name in sorted(set(present) - set(recorded)):
        problems.append(f"{name}: no digest recorded in {CONFIG} spec_tools.weights, which lists {sorted(recorded)}")
    for name, expected in sorted(recorded.items()):
        if name not in present:
            problems.append(f"{name}: recorded in {CONFIG} spec_tools.weights but not a weight file of this checkpoint")
            continue
        found = digest_file(present[name])
        if found.num_bytes != expected.num_bytes:
            problems.append(f"{name}: {found.num_bytes} bytes, {CONFIG} records {expected.num_bytes} (truncated or replaced?)")
        elif found.sha256 != expected.sha256:
            problems.append(f"{name}: sha256 {found.sha256}, {CONFIG} records {expected.sha256} (the file changed after it was written)")
    return problems


def tensor_headers(directory: str | Path) -> dict[str, tuple[torch.dtype, tuple[int, ...]]]:
    """Name -> (dtype, shape) of every weight, read from the safetensors headers only."""
    headers = {}
    for path in weight_files(directory):
        try:
            with safetensors.safe_open(str(path), framework="pt") as handle:
                for name in handle.keys():
                    view = handle.get_slice(name)
                    headers[name] = (_torch_dtype(view.get_dtype()), tuple(view.get_shape()))
        except (safetensors.SafetensorError, OSError) as error:
            raise SpecError(f"{path}: not a readable safetensors file: {error}") from None
    return headers


def load_tensors(directory: str | Path, device: str = "cpu") -> dict[str, torch.Tensor]:
    """All weights of a checkpoint as tensors."""
    tensors = {}
    for path in weight_files(directory):
        try:
            tensors.update(safetensors.torch.load_file(str(path), device=device))
        except (safetensors.SafetensorError, OSError) as error:
            raise SpecError(f"{path}: not a readable safetensors file: {error}") from None
    return tensors


def tensor_readers(directory: str | Path) -> dict[str, WeightFile]:
    """name -> the weights file holding it, read one tensor at a time (libspec/format/weights_file.py)."""
    readers = {}
    for path in weight_files(directory):
        weights = WeightFile(path)
        readers.update({name: weights for name in weights.names()})
    return readers


def save_safetensors(tensors: dict[str, torch.Tensor], path: str | Path, metadata: dict[str, str], shown_as: str | Path | None = None) -> None:
    """safetensors' save_file, except that a failed write (a full disk) is an OSError naming the file, as open()'s are.

    safetensors reports I/O failures as its own SafetensorError with the errno only in the text;
    the tools print OSErrors as one line, so the errno is recovered from "(os error N)".
    """
    try:
        safetensors.torch.save_file(tensors, str(path), metadata=metadata)
    except safetensors.SafetensorError as error:
        found = re.search(r"\(os error (\d+)\)", str(error))
        number = int(found[1]) if found else errno.EIO
        raise OSError(number, os.strerror(number), str(shown_as or path)) from None


def write_checkpoint(directory: str | Path, config: dict, tensors: dict[str, torch.Tensor], extra_files: dict[str, str] | None = None) -> Path:
    """Write config.json + model.safetensors (+ extra text files) as one atomic folder replacement.

    config.json is written last, with the size and sha256 of the weights just written in
    `spec_tools.weights` (any digests `config` carried, e.g. from a converted source, are replaced).
    """
    directory = Path(directory)
    with atomic_directory(directory) as staging:
        # Streamed tensor by tensor: a converted 2 GB source is never a second time in memory.
        try:
            with open(staging / WEIGHTS, "wb") as handle:
                write_weights(handle, tensors, metadata={"format": "pt"})
        except OSError as error:  # a full disk: name the file the user asked for, not the staging one
            raise OSError(error.errno, error.strerror, str(directory / WEIGHTS)) from None
        config = with_weight_digests(config, staging)
        (staging / CONFIG).write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
        for name, text in (extra_files or {}).items():
            (staging / name).write_text(text, encoding="utf-8")
        for path in staging.iterdir():
            # safetensors creates its file 0600; give every file what a plain open() would (SPEC.md §2).
            path.chmod(default_file_mode())
            with open(path, "rb") as handle:
                os.fsync(handle.fileno())
    return directory


def _torch_dtype(name: str) -> torch.dtype:
    table = {
        "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16, "F64": torch.float64,
        "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
        "BOOL": torch.bool, "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2,
    }  # fmt: skip
    return table.get(name, torch.uint8)
