"""What a spec-train run writes into OUT, and how a rerun picks it up again:

    OUT/run.json                 the config and the data set fingerprint (what makes a rerun a resume)
    OUT/metrics.jsonl            one line per optimizer step, one per validation
    OUT/checkpoint-step-N/       every --save-every steps   } SPEC.md §11 checkpoints,
    OUT/checkpoint-epoch-E/      at the end of every epoch  } served by vLLM as they are
    OUT/best -> checkpoint-...   the best so far (highest validation tau_sim), + OUT/best.json
    OUT/state/train-state.safetensors   everything needed to resume bit-identically
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch

import libspec
from libspec.errors import SpecError
from libspec.format.atomic import write_text_atomic
from libspec.format.checkpoint import write_checkpoint
from libspec.format.json_files import read_json_object
from libspec.train import distributed
from libspec.train.config import TrainConfig, config_differences
from libspec.train.state import STATE_FILE, Progress, TrainState, capture_rng, load_train_state, restore_rng, save_train_state

RUN_FILE = "run.json"
METRICS_FILE = "metrics.jsonl"


def state_path(out: Path) -> Path:
    return out / "state" / STATE_FILE


def claim_output(out: Path, config: TrainConfig, dataset_fingerprint: str) -> None:
    """Start a new run in an empty OUT, or check that OUT holds this very run (then we resume it)."""
    record = {"config": config.to_dict(), "dataset_fingerprint": dataset_fingerprint, "spec_tools": libspec.__version__}
    run_file = out / RUN_FILE
    if run_file.is_file():
        previous = read_json_object(run_file)
        changed = config_differences(previous.get("config", {}), record["config"])
        if previous.get("dataset_fingerprint") != dataset_fingerprint:
            changed.append("the data's fingerprint differs")
        if changed:
            raise SpecError(f"{out}: holds a run made with a different command ({'; '.join(changed)}); rerun it unchanged to resume, or choose another -o")
        return
    if out.exists() and any(out.iterdir()):
        raise SpecError(f"{out}: exists and is not a spec-train run; choose an empty or new output directory")
    out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(run_file, json.dumps(record, indent=2) + "\n")


def resume(out: Path, draft: torch.nn.Module, optimizer: torch.optim.Optimizer, fsdp: bool) -> Progress:
    """Load weights, optimizer and RNG from OUT/state; drop metric lines written after that state."""
    state = load_train_state(state_path(out))
    if fsdp:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_state_dict

        options = StateDictOptions(full_state_dict=True, broadcast_from_rank0=False)
        set_state_dict(draft, optimizer, model_state_dict=state.model, optim_state_dict=state.optimizer, options=options)
    else:
        draft.load_state_dict(state.model, strict=False)
        optimizer.load_state_dict(state.optimizer)
    restore_rng(state.rng)
    truncate_metrics(out / METRICS_FILE, state.progress.step)
    return state.progress


def truncate_metrics(path: Path, step: int) -> None:
    """Drop metric lines written after the state we resume from (they will be written again)."""
    if not path.is_file():
        return
    kept = [line for line in path.read_text("utf-8", errors="replace").splitlines() if (_step_of(line) or step + 1) <= step]
    write_text_atomic(path, "".join(line + "\n" for line in kept))


def _step_of(line: str) -> int | None:
    """The step of one metrics line; None for a line torn by a crash mid-write (it is dropped)."""
    try:
        record = json.loads(line)
    except json.JSONDecodeError:
        return None
    return record.get("step") if isinstance(record, dict) and isinstance(record.get("step"), int) else None


def log_metrics(out: Path, metrics: dict, topology: distributed.Topology) -> None:
    if topology.is_main:
        with open(out / METRICS_FILE, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(metrics) + "\n")


def full_states(draft: torch.nn.Module, optimizer: torch.optim.Optimizer, fsdp: bool) -> tuple[dict, dict]:
    """Unsharded model and optimizer state (gathered on every rank under FSDP)."""
    if fsdp:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict

        options = StateDictOptions(full_state_dict=True, cpu_offload=True)
        return get_state_dict(draft, optimizer, options=options)
    return draft.state_dict(), optimizer.state_dict()


def save_checkpoint(out: Path, name: str, draft_config: dict, model_state: dict, progress: Progress, validation: dict | None, save_dtype: str) -> None:
    """Write checkpoint `name` (its config records how far training got) and move `best` if it is better."""
    dtype = getattr(torch, save_dtype)
    config = json.loads(json.dumps(draft_config))
    config["spec_tools"]["training"].update(
        {"step": progress.step, "epochs_completed": progress.epoch, "batches_into_epoch": progress.batch,
         "tokens": progress.tokens, "validation": validation}
    )  # fmt: skip
    tensors = {k: (v.to(dtype) if v.is_floating_point() else v) for k, v in model_state.items() if not k.startswith("rotary.")}
    write_checkpoint(out / name, config, tensors)
    if validation is not None and _is_better(validation, progress.best):
        progress.best = {"checkpoint": name, "metric": "tau_sim", "value": validation["tau_sim"],
                         "loss": validation["loss"], "source": validation["source"], "epoch": validation["epoch"], "step": progress.step}  # fmt: skip
        point_best(out, name, progress.best)


def prune_checkpoints(out: Path, keep: int | None, best: dict | None) -> list[str]:
    """Delete all but the newest `keep` checkpoints (and the best one); returns what was deleted.

    Runs after the new checkpoint and the training state are on disk, so a crash here loses nothing.
    """
    if keep is None:
        return []
    found = sorted((_checkpoint_step(path), path.stat().st_mtime_ns, path) for path in out.glob("checkpoint-*") if path.is_dir() and not path.is_symlink())
    protected = {best["checkpoint"]} if best else set()
    doomed = [path for _, _, path in found[: max(0, len(found) - keep)] if path.name not in protected]
    for path in doomed:
        shutil.rmtree(path)
    return [path.name for path in doomed]


def _checkpoint_step(path: Path) -> int:
    """The optimizer step a checkpoint was written at (recorded in its config.json)."""
    try:
        return int(json.loads((path / "config.json").read_text("utf-8"))["spec_tools"]["training"]["step"])
    except (OSError, ValueError, KeyError, TypeError):
        return -1  # not one of ours, or unreadable: oldest first


def save_state(out: Path, model_state: dict, optimizer_state: dict, progress: Progress) -> None:
    """Everything a rerun needs to continue bit-identically, written after the checkpoint (a crash in between only redoes work)."""
    save_train_state(state_path(out), TrainState(dict(model_state), optimizer_state, capture_rng(), progress))


def _is_better(validation: dict, best: dict | None) -> bool:
    if best is None:
        return True
    return (validation["tau_sim"], -validation["loss"]) > (best["value"], -best["loss"])


def point_best(out: Path, name: str, note: dict) -> None:
    """Make OUT/best a symlink to checkpoint `name` (replaced atomically) and write OUT/best.json."""
    link = out / "best"
    temporary = out / f".best.{os.getpid()}.tmp"
    if temporary.is_symlink() or temporary.exists():
        temporary.unlink()
    os.symlink(name, temporary)
    os.replace(temporary, link)
    write_text_atomic(out / "best.json", json.dumps(note, indent=2) + "\n")
