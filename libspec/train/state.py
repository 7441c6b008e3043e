"""The full state of a training run, for resuming bit-identically after a crash or kill -9.

One safetensors file, written atomically: the fp32 master weights, every optimizer state tensor,
the RNG states, and (as JSON in the header metadata) the progress counters, the optimizer's
non-tensor fields and the best checkpoint so far. No pickle is ever read back.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import safetensors
import torch

import os

from libspec.format.atomic import atomic_path, default_file_mode
from libspec.format.checkpoint import save_safetensors
from libspec.errors import SpecError

STATE_FILE = "train-state.safetensors"


@dataclass
class Progress:
    """Where the run is: the next batch to train is batch `batch` of epoch `epoch`."""

    epoch: int = 0
    batch: int = 0  # optimizer steps already done in this epoch
    step: int = 0  # optimizer steps done in all
    tokens: int = 0  # draft queries trained on in all
    best: dict | None = None  # {"checkpoint", "metric", "value", "epoch", "step"}
    epoch_counts: dict = field(default_factory=dict)  # raw metric counts summed over this epoch so far


@dataclass
class TrainState:
    model: dict[str, torch.Tensor]
    optimizer: dict  # torch optimizer state_dict (parameter keys may be ints or names)
    rng: dict[str, torch.Tensor]
    progress: Progress


def save_train_state(path: str | Path, state: TrainState) -> None:
    """Write the state atomically: a reader (a resumed run) sees the old file or the complete new one."""
    tensors = {f"model.{name}": t.detach().to("cpu").contiguous() for name, t in state.model.items()}
    optimizer_fields: dict[str, dict] = {}
    for key, slots in state.optimizer["state"].items():
        fields = {}
        for slot, value in slots.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optimizer.{key}.{slot}"] = value.detach().to("cpu").contiguous()
            else:
                fields[slot] = value
        optimizer_fields[str(key)] = {"key_is_int": isinstance(key, int), "fields": fields}
    for name, value in state.rng.items():
        tensors[f"rng.{name}"] = value.contiguous()
    metadata = {
        "progress": json.dumps(asdict(state.progress)),
        "optimizer": json.dumps({"param_groups": state.optimizer["param_groups"], "state": optimizer_fields}),
    }
    with atomic_path(path) as tmp:
        save_safetensors(tensors, tmp, metadata)  # a full disk: an OSError naming the file
        os.chmod(tmp, default_file_mode())  # the writer recreates the file with 0600


def load_train_state(path: str | Path) -> TrainState:
    """Read a state written by save_train_state (one-line error if it is unreadable)."""
    try:
        with safetensors.safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
            tensors = {name: handle.get_tensor(name) for name in handle.keys()}
        progress = Progress(**json.loads(metadata["progress"]))
        optimizer_meta = json.loads(metadata["optimizer"])
    except (safetensors.SafetensorError, OSError, KeyError, json.JSONDecodeError, TypeError) as error:
        raise SpecError(f"{path}: not a readable training state ({error}); delete it to restart the run from its last checkpoint-free start") from None
    model = {name.removeprefix("model."): t for name, t in tensors.items() if name.startswith("model.")}
    rng = {name.removeprefix("rng."): t for name, t in tensors.items() if name.startswith("rng.")}
    optimizer_state: dict = {}
    keys = {key: int(key) if entry["key_is_int"] else key for key, entry in optimizer_meta["state"].items()}
    for key, entry in optimizer_meta["state"].items():
        optimizer_state[keys[key]] = dict(entry["fields"])
    for name, tensor in tensors.items():
        if name.startswith("optimizer."):
            key, slot = name.removeprefix("optimizer.").rsplit(".", 1)  # slot names have no dots; parameter names may
            optimizer_state[keys[key]][slot] = tensor
    return TrainState(model, {"state": optimizer_state, "param_groups": optimizer_meta["param_groups"]}, rng, progress)


def capture_rng() -> dict[str, torch.Tensor]:
    """The torch RNG states (CPU and every CUDA device)."""
    states = {"torch_cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        for index, cuda_state in enumerate(torch.cuda.get_rng_state_all()):
            states[f"torch_cuda_{index}"] = cuda_state
    return states


def restore_rng(states: dict[str, torch.Tensor]) -> None:
    torch.set_rng_state(states["torch_cpu"])
    cuda = [states[k] for k in sorted(states) if k.startswith("torch_cuda_")]
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)
