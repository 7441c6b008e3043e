"""The spec-train loop: set up, then train epoch by epoch; each step is `train_step`.

A run is `prepare` (data checked against the verifier, layers and vocabulary chosen, the draft's
config.json written in memory), `start_session` (draft, objective, optimizer; resumed from OUT/state
when a previous run of the same command left one), then `train_epoch` until done. The algorithm's
part of a step (its draft, objective and metrics) is looked up in libspec.algorithms' registry;
what the run writes to OUT is in libspec/train/outputs.py.
"""

from __future__ import annotations

import math
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Callable

import torch
from torch import nn

import libspec
from libspec.algorithms import training_for
from libspec.errors import SpecError
from libspec.verifier import VerifierFingerprint, fingerprint_differences, fingerprint_verifier, text_config, weights_not_checked
from libspec.format.sample_table import SampleTable, open_sample_table
from libspec.train import distributed, outputs
from libspec.train.config import TrainConfig, check_config
from libspec.train.packing import PackedBatch, build_batch, is_validation_record, num_queries, plan_epoch
from libspec.train.prefetch import BatchPrefetcher
from libspec.train.state import Progress
from libspec.train.teacher import VerifierHead, load_verifier_head
from libspec.train.vocab_map import VocabMap, build_vocab_map, choose_draft_vocab_size, count_supervised_tokens

EventCallback = Callable[[str, dict], None]


@dataclass
class Run:
    """What a run is made of once set up (built by `prepare`)."""

    config: TrainConfig
    algorithm: ModuleType  # the algorithm's training module (libspec.algorithms registry)
    topology: distributed.Topology
    table: SampleTable
    head: VerifierHead
    aux_layer_ids: list[int]
    vocab: VocabMap
    draft_config: dict
    train_indices: list[int]
    val_indices: list[int]
    layer_columns: tuple[list[int], int]  # positions of the aux layers and of layer n in the data's layer axis
    warnings: list[str] = field(default_factory=list)  # what could not be checked; the tool shows them


@dataclass
class Session:
    """The trained objects and where training is (built by `start_session`)."""

    draft: nn.Module
    objective: nn.Module  # draft + teacher; forward(batch) is one step's loss and counts
    wrapped: nn.Module  # the objective under DDP/FSDP (itself when not distributed)
    optimizer: torch.optim.Optimizer
    trainable: list[nn.Parameter]
    progress: Progress
    autocast: object
    last_metrics: dict = field(default_factory=dict)
    checkpoints: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Schedule:
    """How long the run is: steps per epoch, total steps, warmup (built by `plan_schedule`)."""

    train_counts: list[int]  # draft queries per record (0: not trained on)
    batches_per_step: int
    steps_per_epoch: int
    total_steps: int
    warmup_steps: int
    max_steps: float  # inf without --max-steps


@dataclass
class TrainResult:
    output: Path
    progress: Progress
    last_metrics: dict
    best: dict | None
    checkpoints: list[str]


def train(config: TrainConfig, on_event: EventCallback | None = None, stdin=None, command: str | None = None) -> TrainResult:
    """Run (or resume) the training described by `config`; returns where things are and the last metrics.

    `command` (the command line, if any) is recorded in every checkpoint next to the config.
    """
    emit = on_event or (lambda kind, payload: None)
    run = prepare(config, stdin)
    for warning in run.warnings:
        emit("warning", {"message": warning})
    if command is not None:
        run.draft_config["spec_tools"]["training"]["command"] = command
    out = Path(config.output)
    if run.topology.is_main:
        outputs.claim_output(out, config, run.table.fingerprint)
    distributed.barrier(run.topology)
    session = start_session(run)
    schedule = plan_schedule(run)
    emit("start", _start_event(run, session, schedule))
    while session.progress.step < schedule.max_steps and session.progress.epoch < config.epochs:
        train_epoch(run, session, schedule, emit)
    distributed.barrier(run.topology)
    result = TrainResult(out, session.progress, session.last_metrics, session.progress.best, session.checkpoints)
    emit("done", {"step": session.progress.step, "best": session.progress.best})
    distributed.shutdown(run.topology)
    return result


def train_epoch(run: Run, session: Session, schedule: Schedule, emit: EventCallback) -> None:
    """Train the rest of the current epoch (or up to --max-steps), then validate and checkpoint."""
    config, progress = run.config, session.progress
    plan = epoch_plan(run, schedule.train_counts, progress.epoch)
    epoch_steps = len(plan) // schedule.batches_per_step
    with BatchPrefetcher(lambda index: load_batch(run, plan[index])) as batches:
        while progress.batch < epoch_steps and progress.step < schedule.max_steps:
            emit("step", train_step(run, session, schedule, plan, batches))
            if config.save_every and progress.step % config.save_every == 0 and progress.batch < epoch_steps:
                save(run, session, f"checkpoint-step-{progress.step}", None, emit)
    # End of an epoch, or of the run in mid-epoch (--max-steps): validate, checkpoint, maybe a new best.
    epoch_done = progress.batch >= epoch_steps
    name = f"checkpoint-epoch-{progress.epoch}" if epoch_done else f"checkpoint-step-{progress.step}"
    validation = validate(run, session)
    outputs.log_metrics(Path(config.output), validation, run.topology)
    emit("validation", validation)
    if epoch_done:
        progress.epoch, progress.batch, progress.epoch_counts = progress.epoch + 1, 0, {}
    save(run, session, name, validation, emit)


def train_step(run: Run, session: Session, schedule: Schedule, plan: list[list[int]], batches: BatchPrefetcher) -> dict:
    """One optimizer step at the scheduled learning rate; returns (and logs) its metrics."""
    config, progress = run.config, session.progress
    started = time.perf_counter()
    lr = config.lr * lr_factor(progress.step, schedule.total_steps, schedule.warmup_steps, config.schedule)
    counts, grad_norm = optimizer_step(run, session, plan, progress.batch, lr, batches)
    progress.step += 1
    progress.batch += 1
    progress.tokens += int(counts["queries"])
    _add_counts(progress.epoch_counts, counts)
    session.last_metrics = {
        "kind": "train", "step": progress.step, "epoch": progress.epoch, "lr": lr,
        **run.algorithm.step_metrics(counts, config.draft),
        "grad_norm": grad_norm, "queries": int(counts["queries"]),
        "tokens_per_s": counts["queries"] / (time.perf_counter() - started), "total_steps": schedule.total_steps,
    }  # fmt: skip
    outputs.log_metrics(Path(config.output), session.last_metrics, run.topology)
    return session.last_metrics


def optimizer_step(run: Run, session: Session, plan, batch_index: int, lr: float, batches: BatchPrefetcher) -> tuple[dict, float | None]:
    """One optimizer step over this rank's grad_accum micro-batches; returns counts summed over ranks and the grad norm.

    Micro-batch m of step s on rank r is plan[(s*K + m)*W + r], so one process with K = W*k sees
    exactly the batches of W processes with k each (the DDP test relies on it).
    """
    config, topology = run.config, run.topology
    counts: dict[str, float] = {}
    for micro in range(config.grad_accum):
        index = _plan_index(run, batch_index, micro)
        following = _plan_index(run, batch_index, micro + 1)  # micro K is the next step's first
        batch = batches.get(index, following if following < len(plan) else None).to(topology.device)
        last = micro == config.grad_accum - 1
        with (nullcontext() if last or not hasattr(session.wrapped, "no_sync") else session.wrapped.no_sync()), session.autocast:
            loss, micro_counts = session.wrapped(batch)
        (loss / config.grad_accum).backward()  # gradients average over micro-batches (and over ranks, by DDP)
        _add_counts(counts, micro_counts)
    counts = distributed.sum_counts(counts, topology)  # every rank sees a NaN of any rank, so all stop together
    _refuse_nonfinite_loss(run, counts, plan, batch_index, session.progress.step + 1)
    for group in session.optimizer.param_groups:
        group["lr"] = lr
    grad_norm = torch.nn.utils.clip_grad_norm_(session.trainable, config.grad_clip) if config.grad_clip > 0 else None
    session.optimizer.step()
    session.optimizer.zero_grad(set_to_none=True)
    return counts, None if grad_norm is None else float(grad_norm)


def _plan_index(run: Run, batch_index: int, micro: int) -> int:
    """Where micro-batch `micro` of step `batch_index` on this rank is in the epoch's plan."""
    return (batch_index * run.config.grad_accum + micro) * run.topology.world_size + run.topology.rank


def _refuse_nonfinite_loss(run: Run, counts: dict, plan, batch_index: int, step: int) -> None:
    """A non-finite loss would poison the weights and every later checkpoint: stop the run, naming the step's records."""
    bad = [key for key, value in counts.items() if not math.isfinite(value)]
    if not bad:
        return
    config = run.config
    first = batch_index * config.grad_accum * run.topology.world_size
    indices = [i for batch in plan[first : first + config.grad_accum * run.topology.world_size] for i in batch]
    ids = [run.table.records[i]["id"] for i in indices]
    shown = ", ".join(map(str, ids[:8])) + (f" and {len(ids) - 8} more" if len(ids) > 8 else "")
    raise SpecError(
        f"{config.data}: the loss became {counts[bad[0]]} at optimizer step {step} (records {shown}); "
        f"try a lower --lr; no checkpoint was written from it, and the last one in {config.output} is intact"
    )


def load_batch(run: Run, indices: list[int]) -> PackedBatch:
    """Read and pack the records `indices` (their aux layers and layer n) into one batch."""
    layers, last = run.layer_columns
    picked = [*layers, last]
    samples = [(run.table.records[i], _finite(run, i, run.table.hidden(i, picked))) for i in indices]
    return build_batch(samples, list(range(len(layers))), len(layers), run.config.tokens_per_batch)


def _finite(run: Run, index: int, hidden: torch.Tensor) -> torch.Tensor:
    """A record's hidden states, refused when any value is inf or NaN (they would train a NaN draft)."""
    if not bool(torch.isfinite(hidden).all()):
        bad = hidden.numel() - int(torch.isfinite(hidden).sum())
        raise SpecError(f"{run.config.data}: record {run.table.records[index]['id']}: {bad} hidden-state values are inf or NaN; recapture it (spec-gen-hidden refuses such values now)")
    return hidden


@torch.no_grad()
def validate(run: Run, session: Session) -> dict:
    """Metrics on the held-out records (this rank's share, summed over ranks); epoch train metrics if none."""
    config, progress = run.config, session.progress
    if not run.val_indices:
        counts, source = dict(progress.epoch_counts), "train"
    else:
        counts, source = _validation_counts(run, session), "validation"
    metrics = {"kind": "val", "source": source, "step": progress.step, "epoch": progress.epoch,
               **run.algorithm.step_metrics(counts, config.draft)}  # fmt: skip
    if not all(math.isfinite(v) for v in metrics.values() if isinstance(v, float)):
        raise SpecError(f"{config.data}: {source} metrics are not finite at step {progress.step} (loss {metrics.get('loss')}); no checkpoint was written from them")
    return metrics


def _validation_counts(run: Run, session: Session) -> dict:
    config, topology = run.config, run.topology
    val_counts = [0] * len(run.table.records)
    for i in run.val_indices:
        val_counts[i] = num_queries(len(run.table.records[i]["input_ids"]), config.tokens_per_batch)
    plan = plan_epoch(val_counts, config.tokens_per_batch, config.seed, -1)
    # DDP replicas hold equal weights, so each rank scores its share with the bare module (no
    # collectives, so unequal shares cannot hang). FSDP shards need every rank in every forward:
    # there each rank scores all batches and nothing is summed.
    ranks = 1 if config.fsdp else topology.world_size
    rank = 0 if config.fsdp else topology.rank
    model = session.wrapped if config.fsdp else session.objective
    counts: dict[str, float] = {}
    session.objective.eval()
    for index in range(rank, len(plan), ranks):
        with session.autocast:
            _, batch_counts = model(load_batch(run, plan[index]).to(topology.device))
        _add_counts(counts, batch_counts)
    session.objective.train()
    counts.setdefault("queries", 0.0)
    counts = run.algorithm.complete_counts(counts, config.draft)
    return counts if config.fsdp else distributed.sum_counts(counts, topology)


def save(run: Run, session: Session, name: str, validation: dict | None, emit: EventCallback) -> None:
    """Write checkpoint `name`, update best, then the training state (in that order, so a crash in between only redoes work)."""
    config, topology, progress = run.config, run.topology, session.progress
    out = Path(config.output)
    model_state, optimizer_state = outputs.full_states(session.objective.draft, session.optimizer, config.fsdp)
    if topology.is_main:
        outputs.save_checkpoint(out, name, run.draft_config, model_state, progress, validation, config.save_dtype)
        outputs.save_state(out, model_state, optimizer_state, progress)
        deleted = outputs.prune_checkpoints(out, config.keep or None, progress.best)
        session.checkpoints = [path for path in session.checkpoints if Path(path).name not in deleted]
    distributed.barrier(topology)
    emit("checkpoint", {"path": str(out / name), "step": progress.step, "best": progress.best})
    session.checkpoints.append(str(out / name))


# ---- setup ----------------------------------------------------------------------------------


def prepare(config: TrainConfig, stdin=None) -> Run:
    """Open and check the data against the verifier, choose layers and vocabulary, build the draft config."""
    check_config(config)
    algorithm = training_for(config.algorithm)
    topology = distributed.init_topology(config.device)
    if topology.distributed and config.data == "-":
        raise SpecError("--data -: under torchrun stdin reaches one process only; give a data set directory or a stream file")
    table = open_sample_table(config.data, stdin)
    warnings: list[str] = []
    head = _verifier_for(table, config, warnings)
    lm = text_config(head.config)
    depth = lm["num_hidden_layers"]
    aux = _aux_layers(config, table.layer_ids, depth)
    train_indices, val_indices = _split_records(table, config)
    vocab = _draft_vocabulary(config, algorithm, table, train_indices, lm["vocab_size"])
    draft_config = algorithm.draft_config(
        config.draft, head.config, _verifier_name(config.verifier), aux, vocab.draft_vocab_size, config.save_dtype, _spec_tools_record(config, table)
    )
    columns = ([table.layer_ids.index(i) for i in aux], table.layer_ids.index(depth))
    return Run(config, algorithm, topology, table, head, aux, vocab, draft_config, train_indices, val_indices, columns, warnings)


def build_draft(run: Run) -> nn.Module:
    """A freshly initialised draft (the algorithm's init, seeded by --seed)."""
    return run.algorithm.build_draft(run.draft_config, run.head, run.vocab, run.config.seed)


def start_session(run: Run) -> Session:
    """Draft, objective (wrapped for DDP/FSDP) and optimizer; resumed from OUT/state when there is one."""
    config, topology = run.config, run.topology
    draft = build_draft(run)
    objective = run.algorithm.build_objective(draft, run.head, run.vocab, config.draft)
    objective.to(topology.device)
    wrapped = distributed.wrap(objective, topology, config.fsdp, shard_units=run.algorithm.fsdp_units(draft))
    trainable = [p for p in draft.parameters() if p.requires_grad]  # after wrapping: FSDP swaps in sharded parameters
    optimizer = torch.optim.AdamW(trainable, lr=config.lr, betas=(0.9, 0.95), weight_decay=config.weight_decay)
    out = Path(config.output)
    progress = Progress()
    if outputs.state_path(out).is_file():
        progress = outputs.resume(out, objective.draft, optimizer, config.fsdp)
    elif topology.is_main:
        outputs.truncate_metrics(out / outputs.METRICS_FILE, 0)
    return Session(draft, objective, wrapped, optimizer, trainable, progress, _autocast(config, topology.device))


def plan_schedule(run: Run) -> Schedule:
    """Steps per epoch and in all, and the warmup.

    Packing differs a little between epochs (shuffled first-fit), so epochs differ by a step or
    two; the schedule's length is estimated from epoch 0 and the schedule stays at its end value past it.
    """
    config = run.config
    train_counts = train_query_counts(run)
    batches_per_step = run.topology.world_size * config.grad_accum
    steps_per_epoch = len(plan_epoch(train_counts, config.tokens_per_batch, config.seed, 0)) // batches_per_step
    if steps_per_epoch == 0:
        raise SpecError(
            f"{config.data}: too little training data for one step ({batches_per_step} batches of {config.tokens_per_batch} tokens needed)"
        )
    total_steps = steps_per_epoch * config.epochs
    if config.max_steps is not None:
        total_steps = min(total_steps, config.max_steps)
    warmup = config.warmup_steps if config.warmup_steps is not None else max(1, total_steps // 100)
    max_steps = config.max_steps if config.max_steps is not None else math.inf
    return Schedule(train_counts, batches_per_step, steps_per_epoch, total_steps, warmup, max_steps)


def _start_event(run: Run, session: Session, schedule: Schedule) -> dict:
    return {
        "output": run.config.output, "resumed_at_step": session.progress.step, "total_steps": schedule.total_steps,
        "steps_per_epoch": schedule.steps_per_epoch, "epochs": run.config.epochs, "train_records": len(run.train_indices),
        "val_records": len(run.val_indices), "world_size": run.topology.world_size, "device": str(run.topology.device),
        "aux_layer_ids": run.aux_layer_ids, "draft_vocab_size": run.vocab.draft_vocab_size,
        "trainable_parameters": sum(p.numel() for p in session.trainable),
    }  # fmt: skip


def _split_records(table: SampleTable, config: TrainConfig) -> tuple[list[int], list[int]]:
    """Record indices for training and for validation (a stable hash of each record id decides)."""
    train_indices, val_indices = [], []
    for index, record in enumerate(table.records):
        (val_indices if is_validation_record(record["id"], config.val_fraction) else train_indices).append(index)
    if not train_indices:
        raise SpecError(f"{config.data}: no training samples (all {len(val_indices)} are held out by --val-fraction)")
    return train_indices, val_indices


def _spec_tools_record(config: TrainConfig, table: SampleTable) -> dict:
    """The `spec_tools` block of every checkpoint: who made it, from which data, with which config."""
    return {
        "version": libspec.__version__,
        "format_version": libspec.FORMAT_VERSION,
        "verifier": table.header["verifier"],
        "dataset": {
            "fingerprint": table.fingerprint,
            "kind": table.kind,
            "layer_ids": table.layer_ids,
            "num_records": len(table.records),
            "num_tokens": sum(len(r["input_ids"]) for r in table.records),
        },
        "training": {"config": config.to_dict()},
    }


def _verifier_for(table: SampleTable, config: TrainConfig, warnings: list[str]) -> VerifierHead:
    """The verifier's head, once the data is shown to come from it (fingerprint, hidden size); what
    could not be checked is added to `warnings`."""
    data_verifier = VerifierFingerprint.from_dict(table.header["verifier"])
    current = fingerprint_verifier(config.verifier, like=data_verifier)
    differences = fingerprint_differences(data_verifier, current)
    if differences:
        raise SpecError(f"{config.data}: made with another verifier ({data_verifier.name_or_path}) than {config.verifier}: {'; '.join(differences)}")
    unchecked = weights_not_checked(data_verifier, current)
    if unchecked:
        warnings.append(f"{config.data}: the verifier's weights could not be checked: the data {unchecked}")
    head = load_verifier_head(config.verifier)
    hidden_size, data_hidden = text_config(head.config)["hidden_size"], table.header["hidden_states"]["hidden_size"]
    if data_hidden != hidden_size:
        raise SpecError(f"{config.data}: hidden size {data_hidden}, the verifier's is {hidden_size}")
    return head


def _aux_layers(config: TrainConfig, captured: list[int], depth: int) -> list[int]:
    """The aux layer ids (requested or the algorithm's default), checked against what the data captured."""
    aux = list(config.aux_layer_ids) if config.aux_layer_ids is not None else training_for(config.algorithm).default_aux_layer_ids(depth, config.draft)
    if aux != sorted(set(aux)) or any(not 0 <= i <= depth for i in aux):
        raise SpecError(f"--aux-layer-ids {aux}: expected ascending distinct ids in [0, {depth}]")
    if depth not in captured:  # every algorithm's teacher (and EAGLE-1's input) reads it: name it first
        raise SpecError(
            f"{config.data}: captured layers {captured} lack layer {depth} (the last, pre-norm), which the teacher needs; "
            f"recapture with spec-gen-hidden --layers including {depth}"
        )
    missing = [i for i in aux if i not in captured]
    if missing:
        raise SpecError(f"{config.data}: captured layers {captured} lack aux layer(s) {missing}; recapture with them or pass --aux-layer-ids from {captured}")
    return aux


def _draft_vocabulary(config: TrainConfig, algorithm: ModuleType, table: SampleTable, train_indices: list[int], vocab_size: int) -> VocabMap:
    """The draft's vocabulary: the most frequent supervised tokens (--draft-vocab-size), or the whole
    vocabulary for an algorithm that drafts through the verifier's own lm_head."""
    if algorithm.FULL_VOCABULARY:
        if config.draft_vocab_size not in (None, vocab_size):
            raise SpecError(
                f"--draft-vocab-size {config.draft_vocab_size}: --algorithm {config.algorithm} drafts over the verifier's whole "
                f"vocabulary ({vocab_size}) through its lm_head; leave --draft-vocab-size out"
            )
        return VocabMap(torch.arange(vocab_size), vocab_size)
    supervised = count_supervised_tokens((table.records[i] for i in train_indices), vocab_size)
    return build_vocab_map(supervised, choose_draft_vocab_size(config.draft_vocab_size, vocab_size))


def _verifier_name(given: str) -> str:
    """The name vLLM loads the verifier by: a Hub id as given, a local folder as an absolute path."""
    path = Path(given).expanduser()
    return str(path.resolve()) if path.is_dir() else given


# ---- schedule and batches ---------------------------------------------------------------------


def lr_factor(step: int, total_steps: int, warmup_steps: int, schedule: str) -> float:
    """Learning-rate multiplier at optimizer step `step` (0-based): linear warmup, then the schedule to 0."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    step = min(step, total_steps)
    if schedule == "constant":
        return 1.0
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    if schedule == "linear":
        return max(0.0, 1.0 - progress)
    return 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))


def _autocast(config: TrainConfig, device: torch.device):
    """bf16 autocast on CUDA (or when asked), none on CPU: fp32 is exact and bf16 matmuls are slow there."""
    precision = config.precision
    if precision == "auto":
        precision = "bf16" if device.type == "cuda" else "fp32"
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return nullcontext()


def train_query_counts(run: Run) -> list[int]:
    """Draft queries per record; 0 (never planned) for held-out records and records with nothing to learn."""
    training = set(run.train_indices)
    return [_useful_queries(r, run.config.tokens_per_batch) if i in training else 0 for i, r in enumerate(run.table.records)]


def _useful_queries(record: dict, max_queries: int) -> int:
    """Queries of a record, or 0 when none of them is supervised (e.g. a prompt longer than the batch)."""
    count = num_queries(len(record["input_ids"]), max_queries)
    return count if any(record["loss_mask"][1 : count + 1]) else 0


def epoch_plan(run: Run, train_counts: list[int], epoch: int) -> list[list[int]]:
    """Record indices per batch of `epoch`, in training order (micro-batch m of step s on rank r is (s*K + m)*W + r)."""
    return plan_epoch(train_counts, run.config.tokens_per_batch, run.config.seed, epoch)


def _add_counts(total: dict, counts: dict) -> None:
    for key, value in counts.items():
        total[key] = total.get(key, 0.0) + float(value)
