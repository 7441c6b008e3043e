"""Reading a draft checkpoint in whatever layout it comes: a folder, one weights file plus a
config, sharded weights with an index, or a Hugging Face Hub id.

Pickled weights (`.bin`, `.pt`) are read with `torch.load(weights_only=True)` only, so a file
holding anything but tensors is refused instead of executed. Every tensor is a view on a map of
its file (libspec/format/weights_file.py explains why): a source costs memory only for the pages
a conversion touches.
"""

from __future__ import annotations

import os
import pickle
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import torch

from libspec.errors import SpecError
from libspec.format.json_files import read_json_object
from libspec.format.paths import inside, read_weight_map
from libspec.format.weights_file import map_weights
from libspec.serving import is_owner_name_repo_id
from libspec.verifier import hub_offline

PICKLE_SUFFIXES = (".bin", ".pt", ".pth")
SHARD_INDEXES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")
SINGLE_FILES = ("model.safetensors", "pytorch_model.bin")
HUB_PATTERNS = ["*.json", "*.safetensors", "*.bin", "*.pt"]


@dataclass
class Source:
    """A draft checkpoint as found: its config.json and every tensor, under the source's own names."""

    path: str
    config: dict
    config_path: Path
    tensors: dict[str, torch.Tensor]
    weight_files: list[Path] = field(default_factory=list)

    def has(self, *names: str) -> bool:
        return all(name in self.tensors for name in names)

    def any_prefix(self, prefix: str) -> bool:
        return any(name.startswith(prefix) for name in self.tensors)


def load_source(path: str, config_path: str | None = None) -> Source:
    """Read INPUT (folder, weights file, or Hub id) and its config into a Source."""
    location = Path(path).expanduser()
    if location.is_dir():
        files = weight_files_in(location)
        config_file = Path(config_path) if config_path else location / "config.json"
    elif location.is_file():
        files = [location]
        config_file = Path(config_path) if config_path else location.parent / "config.json"
    elif is_owner_name_repo_id(path):
        source = load_source(str(download_from_hub(path)), config_path)
        source.path = path  # name it as the user did (and as the converted checkpoint records it)
        return source
    else:
        raise SpecError(f"{path}: no such file or directory (and not a Hugging Face Hub id)")
    tensors: dict[str, torch.Tensor] = {}
    for file in files:
        for name, tensor in read_weights(file).items():
            if name in tensors:
                raise SpecError(f"{file}: tensor {name} also appears in another weights file")
            tensors[name] = tensor
    if not tensors:
        raise SpecError(f"{path}: the weights hold no tensors")
    return Source(path, read_config(config_file), config_file, tensors, files)


def weight_files_in(directory: Path) -> list[Path]:
    """The weights of a folder: a shard index wins, then the usual single file, then a lone weights file.

    Every file is one inside `directory` (libspec.format.paths.inside): an index naming
    `../elsewhere` or an absolute path is refused, never followed.
    """
    for index_name in SHARD_INDEXES:
        if os.path.lexists(directory / index_name):
            return sorted(set(read_weight_map(directory, index_name).values()))
    for name in SINGLE_FILES:
        if os.path.lexists(directory / name):
            return [inside(directory, name, str(directory))]
    candidates = sorted(p for p in directory.iterdir() if p.suffix in (".safetensors", *PICKLE_SUFFIXES) and p.is_file())
    safetensor_files = [p for p in candidates if p.suffix == ".safetensors"]
    for group in (safetensor_files, candidates):
        if len(group) == 1:
            return [inside(directory, group[0].name, str(directory))]
        if len(group) > 1:
            names = ", ".join(p.name for p in group)
            raise SpecError(f"{directory}: several weights files ({names}) and no shard index; pass one file as INPUT")
    raise SpecError(f"{directory}: no weights found (expected *.safetensors, a shard index, or pytorch_model.bin)")


def read_weights(file: Path) -> dict[str, torch.Tensor]:
    """All tensors of one weights file as views on a map of it (read when used, never copied whole):
    safetensors through libspec.format.weights_file, pickles with torch.load(mmap=True, weights_only=True)."""
    if file.suffix == ".safetensors":
        return map_weights(file)
    if file.suffix not in PICKLE_SUFFIXES:
        raise SpecError(f"{file}: unknown weights format (expected .safetensors, .bin or .pt)")
    try:
        state = _load_pickle(file)
    except pickle.UnpicklingError as error:
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else "unsupported content"
        raise SpecError(f"{file}: refused: it holds pickled objects other than tensors ({first_line}); only weights_only loading is allowed") from None
    except (OSError, RuntimeError, EOFError) as error:
        raise SpecError(f"{file}: not a readable PyTorch weights file: {error}") from None
    return _state_dict(state, file)


def _load_pickle(file: Path):
    """torch.load with weights_only=True, memory-mapped when the file is in torch's zip format
    (torch.save's since 1.6); the legacy format cannot be mapped and is read whole."""
    if zipfile.is_zipfile(file):
        return torch.load(file, map_location="cpu", weights_only=True, mmap=True)
    return torch.load(file, map_location="cpu", weights_only=True)


def _state_dict(state, file: Path) -> dict[str, torch.Tensor]:
    """A flat name -> tensor dict; training checkpoints that wrap it in one key are unwrapped."""
    if isinstance(state, dict) and len(state) == 1:
        (key, inner), = state.items()
        if key in ("state_dict", "model", "module") and isinstance(inner, dict):
            state = inner
    if not isinstance(state, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()):
        raise SpecError(f"{file}: expected a dict of named tensors")
    return dict(state)


def read_config(path: Path) -> dict:
    """The source's config.json (one-line error when missing or broken)."""
    return read_json_object(path, missing="missing; the source's config.json is needed (pass --config for a lone weights file)")


def download_from_hub(repo_id: str) -> Path:
    """A local snapshot of a Hub repository (the cache when offline)."""
    from huggingface_hub import snapshot_download

    offline = hub_offline()
    try:
        return Path(snapshot_download(repo_id, allow_patterns=HUB_PATTERNS, local_files_only=offline))
    except Exception as error:  # the hub client raises many types; all mean "not available here"
        why = "offline (HF_HUB_OFFLINE=1) and not in the local cache" if offline else f"download failed: {error.__class__.__name__}"
        raise SpecError(f"{repo_id}: not a local path; as a Hugging Face Hub id it is not available: {why}") from None
