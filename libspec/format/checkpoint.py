"""Speculator checkpoints: a Hugging Face folder (config.json + model.safetensors), SPEC.md "Speculator checkpoints".

The folder is what `vllm serve DIR` and upstream `speculators` load as is. Writes are atomic at
the folder level: a reader sees the old checkpoint or the complete new one.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import safetensors
import safetensors.torch
import torch

from libspec.format.atomic import atomic_directory, default_file_mode, write_text_atomic
from libspec.format.digest import digest_file
from libspec.format.json_files import read_json_object, read_weight_map
from libspec.errors import SpecError

CONFIG = "config.json"
WEIGHTS = "model.safetensors"
FLOAT_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def is_checkpoint(directory: str | Path) -> bool:
    """True if `directory` has a config.json with a speculators_config."""
    path = Path(directory) / CONFIG
    if not path.is_file():
        return False
    try:
        return "speculators_config" in read_json_object(path)
    except SpecError:
        return False


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
    """The safetensors files holding the weights (one file, or the shards an index lists)."""
    directory = Path(directory)
    index = directory / f"{WEIGHTS}.index.json"
    if index.is_file():
        names = sorted(set(read_weight_map(index).values()))
        return [directory / name for name in names]
    single = directory / WEIGHTS
    if not single.is_file():
        raise SpecError(f"{single}: missing; a speculator checkpoint needs its weights")
    return [single]


def checkpoint_files(directory: str | Path) -> list[Path]:
    """The files a checkpoint consists of: config.json, the weights, and their index when sharded."""
    directory = Path(directory)
    index = directory / f"{WEIGHTS}.index.json"
    return [directory / CONFIG, *([index] if index.is_file() else []), *weight_files(directory)]


def weight_checksums(directory: str | Path) -> dict[str, str]:
    """File name -> sha256 of every weight file: identifies the weights whatever config.json says."""
    return {path.name: digest_file(path).sha256 for path in weight_files(directory)}


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


def write_checkpoint(directory: str | Path, config: dict, tensors: dict[str, torch.Tensor], extra_files: dict[str, str] | None = None) -> Path:
    """Write config.json + model.safetensors (+ extra text files) as one atomic folder replacement."""
    directory = Path(directory)
    with atomic_directory(directory) as staging:
        contiguous = {name: t.detach().to("cpu").contiguous() for name, t in tensors.items()}
        safetensors.torch.save_file(contiguous, str(staging / WEIGHTS), metadata={"format": "pt"})
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
