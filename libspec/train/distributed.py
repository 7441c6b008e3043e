"""Data parallelism applied from outside the model: torchrun's environment, DDP or FSDP2 wrapping,
summed metric counts, and full (unsharded) state dicts for checkpoints.

The same command runs alone or under `torchrun --nproc-per-node N`; gloo on CPU, nccl on CUDA.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn


@dataclass(frozen=True)
class Topology:
    """Where this process sits: rank among world_size processes, and its device."""

    rank: int
    world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def init_topology(device: str = "auto") -> Topology:
    """Read torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK) and join the process group if there is one."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    target = torch.device(f"cuda:{local_rank}") if device == "cuda" else torch.device(device)
    if target.type == "cuda":
        torch.cuda.set_device(target)
    if world_size > 1 and not dist.is_initialized():
        backend = "nccl" if target.type == "cuda" else "gloo"
        dist.init_process_group(backend, timeout=datetime.timedelta(minutes=30))
    return Topology(rank, world_size, target)


def shutdown(topology: Topology) -> None:
    """Leave the process group (no-op for a single process)."""
    if topology.distributed and dist.is_initialized():
        dist.destroy_process_group()


def barrier(topology: Topology) -> None:
    if topology.distributed:
        dist.barrier()


def wrap(module: nn.Module, topology: Topology, fsdp: bool, shard_units: list[nn.Module] | None = None) -> nn.Module:
    """DDP (replicated weights) or FSDP2 `fully_shard` (sharded per unit, then the root) over the module."""
    if fsdp:
        from torch.distributed.fsdp import fully_shard

        for unit in shard_units or []:
            fully_shard(unit)
        return fully_shard(module)
    if not topology.distributed:
        return module
    from torch.nn.parallel import DistributedDataParallel

    ids = [topology.device.index] if topology.device.type == "cuda" else None
    return DistributedDataParallel(module, device_ids=ids)


def sum_counts(counts: dict[str, float], topology: Topology) -> dict[str, float]:
    """Sum metric counts over all ranks (keys in sorted order, so every rank packs them alike)."""
    if not topology.distributed:
        return counts
    keys = sorted(counts)
    packed = torch.tensor([counts[k] for k in keys], dtype=torch.float64, device=topology.device)
    dist.all_reduce(packed)
    return dict(zip(keys, packed.tolist()))


def broadcast_flag(value: bool, topology: Topology) -> bool:
    """Rank 0's value of a flag, on every rank."""
    if not topology.distributed:
        return value
    flag = torch.tensor([int(value)], device=topology.device)
    dist.broadcast(flag, 0)
    return bool(flag.item())
