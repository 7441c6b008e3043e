"""The spec-train loop: data checks, draft setup, optimizer, schedule, checkpoints, resume, DDP/FSDP.

One frozen `TrainConfig` describes a run; it is written to OUT/run.json when the run starts, and a
rerun of the same command finds it there and resumes from OUT/state/ (refusing a changed command).
The algorithm-specific part of a step lives in libspec.algorithms.eagle3.train; this module only
drives it. Output layout:

    OUT/run.json                 the config and the data set fingerprint (what makes a rerun a resume)
    OUT/metrics.jsonl            one line per optimizer step, one per validation
    OUT/checkpoint-step-N/       every --save-every steps   } SPEC.md §11 checkpoints,
    OUT/checkpoint-epoch-E/      at the end of every epoch  } served by vLLM as they are
    OUT/best -> checkpoint-...   the best so far (highest validation tau_sim), + OUT/best.json
    OUT/state/train-state.safetensors   everything needed to resume bit-identically
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import nn

import libspec
from libspec.train import distributed
from libspec.algorithms.eagle3 import config as eagle3
from libspec.algorithms.eagle3.model import Eagle3Draft
from libspec.algorithms.eagle3.train import LOSSES, TTT_INPUTS, TTT_WEIGHTINGS, Eagle3Objective, TTTOptions, derive_metrics
from libspec.format.atomic import write_text_atomic
from libspec.format.checkpoint import write_checkpoint
from libspec.format.json_files import read_json_object
from libspec.errors import SpecError
from libspec.verifier import VerifierFingerprint, fingerprint_differences, fingerprint_verifier, text_config
from libspec.train.packing import PackedBatch, build_batch, is_validation_record, num_queries, plan_epoch
from libspec.format.sample_table import SampleTable, open_sample_table
from libspec.train.teacher import VerifierHead, load_verifier_head
from libspec.train.state import STATE_FILE, Progress, TrainState, capture_rng, load_train_state, restore_rng, save_train_state
from libspec.train.vocab_map import VocabMap, build_vocab_map, count_supervised_tokens

RUN_FILE = "run.json"
METRICS_FILE = "metrics.jsonl"
SMALL_VOCAB = 32768  # up to this size the draft predicts over the full vocabulary by default
REDUCED_DRAFT_VOCAB = 32000  # EAGLE-3's usual draft vocabulary above it


@dataclass(frozen=True)
class TrainConfig:
    """Everything that decides a run's result. Recorded in run.json and in every checkpoint."""

    data: str
    verifier: str
    output: str
    algorithm: str = "eagle3"
    # the draft
    num_layers: int = 1
    layer_style: str = "llama"
    aux_layer_ids: tuple[int, ...] | None = None  # None: EAGLE-3's default [2, n//2, n-3]
    draft_vocab_size: int | None = None  # None: full vocabulary up to 32k tokens, else 32000
    norm_before_residual: bool = True
    norm_before_fc: bool = False
    fc_norm: bool = False
    norm_output: bool = False
    # test-time training
    ttt_steps: int = 3
    loss: str = "kl"
    step_decay: float = 1.0
    ttt_inputs: str = "data"
    ttt_weighting: str = "uniform"
    # optimisation
    tokens_per_batch: int = 2048
    grad_accum: int = 1
    epochs: int = 1
    max_steps: int | None = None
    lr: float = 1e-3
    weight_decay: float = 0.01
    schedule: str = "cosine"
    warmup_steps: int | None = None  # None: 1% of the steps (at least 1)
    grad_clip: float = 1.0
    seed: int = 0
    val_fraction: float = 0.05
    precision: str = "auto"  # auto: fp32 on CPU, bf16 autocast on CUDA
    device: str = "auto"
    fsdp: bool = False
    # outputs
    save_every: int = 0  # also checkpoint every N optimizer steps (0: only at epoch ends)
    save_dtype: str = "bfloat16"

    def ttt(self) -> TTTOptions:
        return TTTOptions(self.ttt_steps, self.loss, self.step_decay, self.ttt_inputs, self.ttt_weighting)

    def to_dict(self) -> dict:
        data = asdict(self)
        data["aux_layer_ids"] = None if self.aux_layer_ids is None else list(self.aux_layer_ids)
        return data


# Fields that may differ between a run and its resumption: where things are, not what they are (the
# data's identity is its fingerprint, compared separately; the verifier's is checked against the data).
RESUMABLE_DIFFERENCES = ("output", "data", "verifier")


def check_config(config: TrainConfig) -> None:
    """Reject option values that cannot work, before any data is read."""
    choices = {"loss": LOSSES, "ttt_inputs": TTT_INPUTS, "ttt_weighting": TTT_WEIGHTINGS, "schedule": ("cosine", "linear", "constant"),
               "layer_style": tuple(eagle3.VLLM_ARCHITECTURES), "precision": ("auto", "fp32", "bf16"),
               "save_dtype": ("bfloat16", "float32", "float16"), "algorithm": ("eagle3",)}  # fmt: skip
    for name, allowed in choices.items():
        if getattr(config, name) not in allowed:
            raise SpecError(f"--{name.replace('_', '-')} {getattr(config, name)!r}: expected one of {', '.join(allowed)}")
    positive = ("num_layers", "ttt_steps", "tokens_per_batch", "grad_accum", "epochs")
    for name in positive:
        if getattr(config, name) < 1:
            raise SpecError(f"--{name.replace('_', '-')} {getattr(config, name)}: expected at least 1")
    if config.max_steps is not None and config.max_steps < 1:
        raise SpecError(f"--max-steps {config.max_steps}: expected at least 1")
    if not 0 <= config.val_fraction < 1:
        raise SpecError(f"--val-fraction {config.val_fraction}: expected a value in [0, 1)")
    if config.norm_before_fc and config.fc_norm:
        raise SpecError("--norm-before-fc and --fc-norm are mutually exclusive")


@dataclass
class Run:
    """What a run is made of once set up (built by `prepare`)."""

    config: TrainConfig
    topology: distributed.Topology
    table: SampleTable
    head: VerifierHead
    aux_layer_ids: list[int]
    vocab: VocabMap
    draft_config: dict
    train_indices: list[int]
    val_indices: list[int]
    layer_columns: tuple[list[int], int]  # positions of the aux layers and of layer n in the data's layer axis


def prepare(config: TrainConfig, stdin=None) -> Run:
    """Open and check the data against the verifier, choose layers and vocabulary, build the draft config."""
    check_config(config)
    if config.device.startswith("cuda") and not torch.cuda.is_available():
        raise SpecError(f"--device {config.device}: no CUDA device is available here (use cpu or auto)")
    topology = distributed.init_topology(config.device)
    if topology.distributed and config.data == "-":
        raise SpecError("--data -: under torchrun stdin reaches one process only; give a data set directory or a stream file")
    table = open_sample_table(config.data, stdin)
    head = _verifier_for(table, config)
    lm = text_config(head.config)
    depth = lm["num_hidden_layers"]
    aux = _aux_layers(config, table.layer_ids, depth)
    train_indices, val_indices = [], []
    for index, record in enumerate(table.records):
        (val_indices if is_validation_record(record["id"], config.val_fraction) else train_indices).append(index)
    if not train_indices:
        raise SpecError(f"{config.data}: no training samples (all {len(val_indices)} are held out by --val-fraction)")
    vocab_size = lm["vocab_size"]
    draft_vocab = config.draft_vocab_size
    if draft_vocab is None and vocab_size > SMALL_VOCAB:
        draft_vocab = REDUCED_DRAFT_VOCAB
    vocab = build_vocab_map(count_supervised_tokens((table.records[i] for i in train_indices), vocab_size), draft_vocab)
    options = eagle3.Eagle3Options(
        aux_layer_ids=tuple(aux),
        num_layers=config.num_layers,
        layer_style=config.layer_style,
        draft_vocab_size=vocab.draft_vocab_size,
        norm_before_residual=config.norm_before_residual,
        norm_before_fc=config.norm_before_fc,
        fc_norm=config.fc_norm,
        norm_output=config.norm_output,
        speculative_tokens=config.ttt_steps,
    )
    spec_tools = {
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
    draft_config = eagle3.make_config(head.config, _verifier_name(config.verifier), options, config.save_dtype, spec_tools)
    columns = ([table.layer_ids.index(i) for i in aux], table.layer_ids.index(depth))
    return Run(config, topology, table, head, aux, vocab, draft_config, train_indices, val_indices, columns)


def _verifier_for(table: SampleTable, config: TrainConfig) -> VerifierHead:
    """The verifier's head, once the data is shown to come from it (fingerprint, hidden size)."""
    data_verifier = VerifierFingerprint.from_dict(table.header["verifier"])
    differences = fingerprint_differences(fingerprint_verifier(config.verifier), data_verifier)
    if differences:
        raise SpecError(f"{config.data}: made with another verifier than {config.verifier} ({'; '.join(differences)})")
    head = load_verifier_head(config.verifier)
    hidden_size, data_hidden = text_config(head.config)["hidden_size"], table.header["hidden_states"]["hidden_size"]
    if data_hidden != hidden_size:
        raise SpecError(f"{config.data}: hidden size {data_hidden}, the verifier's is {hidden_size}")
    return head


def _aux_layers(config: TrainConfig, captured: list[int], depth: int) -> list[int]:
    """The aux layer ids (requested or EAGLE-3's default), checked against what the data captured."""
    aux = list(config.aux_layer_ids) if config.aux_layer_ids is not None else eagle3.default_aux_layer_ids(depth)
    if aux != sorted(set(aux)) or any(not 0 <= i <= depth for i in aux):
        raise SpecError(f"--aux-layer-ids {aux}: expected ascending distinct ids in [0, {depth}]")
    missing = [i for i in aux if i not in captured]
    if missing:
        raise SpecError(f"{config.data}: captured layers {captured} lack aux layer(s) {missing}; recapture with them or pass --aux-layer-ids from {captured}")
    if depth not in captured:
        raise SpecError(f"{config.data}: captured layers {captured} lack layer {depth} (the last, pre-norm), which the teacher needs")
    return aux


def _verifier_name(given: str) -> str:
    """The name vLLM loads the verifier by: a Hub id as given, a local folder as an absolute path."""
    path = Path(given).expanduser()
    return str(path.resolve()) if path.is_dir() else given


def build_draft(run: Run) -> Eagle3Draft:
    """A freshly initialised draft: seeded init, embedding and lm_head rows from the verifier, both frozen."""
    torch.manual_seed(run.config.seed)
    draft = Eagle3Draft(run.draft_config)
    std = run.draft_config["transformer_layer_config"].get("initializer_range", 0.02)
    with torch.no_grad():
        for module in draft.modules():
            if isinstance(module, nn.Linear):
                module.weight.normal_(0.0, std)
                if module.bias is not None:
                    module.bias.zero_()
        draft.embed_tokens.weight.copy_(run.head.embed_tokens)
        draft.lm_head.weight.copy_(run.head.teacher.lm_head.weight[run.vocab.draft_to_verifier])
        if draft.d2t is not None:
            draft.d2t.copy_(run.vocab.d2t)
            draft.t2d.copy_(run.vocab.t2d)
    draft.embed_tokens.weight.requires_grad_(False)
    draft.lm_head.weight.requires_grad_(False)
    return draft


# ---- the loop --------------------------------------------------------------------------------

EventCallback = Callable[[str, dict], None]


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
    if command is not None:
        run.draft_config["spec_tools"]["training"]["command"] = command
    topology = run.topology
    out = Path(config.output)
    if topology.is_main:
        _claim_output(out, run)
    distributed.barrier(topology)

    draft = build_draft(run)
    objective = Eagle3Objective(draft, run.head.teacher, None if run.vocab.is_full else run.vocab.draft_to_verifier, config.ttt())
    objective.to(topology.device)
    wrapped = distributed.wrap(objective, topology, config.fsdp, shard_units=_fsdp_units(draft))
    trainable = [p for p in draft.parameters() if p.requires_grad]  # after wrapping: FSDP swaps in sharded parameters
    optimizer = torch.optim.AdamW(trainable, lr=config.lr, betas=(0.9, 0.95), weight_decay=config.weight_decay)

    progress = Progress()
    state_path = out / "state" / STATE_FILE
    if state_path.is_file():
        progress = _resume(state_path, objective, optimizer, config)
    elif topology.is_main:
        _truncate_metrics(out / METRICS_FILE, 0)

    train_counts = train_query_counts(run)
    batches_per_step = topology.world_size * config.grad_accum
    # Packing differs a little between epochs (shuffled first-fit), so epochs differ by a step or
    # two; the schedule's length is estimated from epoch 0 and the schedule stays at its end value past it.
    steps_per_epoch = len(plan_epoch(train_counts, config.tokens_per_batch, config.seed, 0)) // batches_per_step
    if steps_per_epoch == 0:
        raise SpecError(
            f"{config.data}: too little training data for one step ({batches_per_step} batches of {config.tokens_per_batch} tokens needed)"
        )
    total_steps = steps_per_epoch * config.epochs
    if config.max_steps is not None:
        total_steps = min(total_steps, config.max_steps)
    warmup = config.warmup_steps if config.warmup_steps is not None else max(1, total_steps // 100)
    emit("start", {
        "output": str(out), "resumed_at_step": progress.step, "total_steps": total_steps, "steps_per_epoch": steps_per_epoch,
        "epochs": config.epochs, "train_records": len(run.train_indices), "val_records": len(run.val_indices),
        "world_size": topology.world_size, "device": str(topology.device), "aux_layer_ids": run.aux_layer_ids,
        "draft_vocab_size": run.vocab.draft_vocab_size, "trainable_parameters": sum(p.numel() for p in trainable),
    })  # fmt: skip

    autocast = _autocast(config, topology.device)
    checkpoints: list[str] = []
    last_metrics: dict = {}
    max_steps = config.max_steps if config.max_steps is not None else math.inf
    while progress.step < max_steps and progress.epoch < config.epochs:
        plan = epoch_plan(run, train_counts, progress.epoch)
        epoch_steps = len(plan) // batches_per_step
        while progress.batch < epoch_steps and progress.step < max_steps:
            started = time.perf_counter()
            lr = config.lr * lr_factor(progress.step, total_steps, warmup, config.schedule)
            counts, grad_norm = _optimizer_step(run, wrapped, optimizer, trainable, plan, progress.batch, lr, autocast)
            progress.step += 1
            progress.batch += 1
            progress.tokens += int(counts["queries"])
            _add_counts(progress.epoch_counts, counts)
            last_metrics = {
                "kind": "train", "step": progress.step, "epoch": progress.epoch, "lr": lr,
                **derive_metrics(counts, config.ttt_steps, config.step_decay),
                "grad_norm": grad_norm, "queries": int(counts["queries"]),
                "tokens_per_s": counts["queries"] / (time.perf_counter() - started), "total_steps": total_steps,
            }  # fmt: skip
            _log_metrics(out, last_metrics, topology)
            emit("step", last_metrics)
            if config.save_every and progress.step % config.save_every == 0 and progress.batch < epoch_steps:
                checkpoints.append(_save(run, objective, optimizer, progress, f"checkpoint-step-{progress.step}", None, emit))
        # End of an epoch, or of the run in mid-epoch (--max-steps): validate, checkpoint, maybe a new best.
        epoch_done = progress.batch >= epoch_steps
        name = f"checkpoint-epoch-{progress.epoch}" if epoch_done else f"checkpoint-step-{progress.step}"
        validation = _validate(run, objective, wrapped, autocast, progress)
        _log_metrics(out, validation, topology)
        emit("validation", validation)
        if epoch_done:
            progress.epoch, progress.batch, progress.epoch_counts = progress.epoch + 1, 0, {}
        checkpoints.append(_save(run, objective, optimizer, progress, name, validation, emit))
    distributed.barrier(topology)
    result = TrainResult(out, progress, last_metrics, progress.best, checkpoints)
    emit("done", {"step": progress.step, "best": progress.best})
    distributed.shutdown(topology)
    return result


def _optimizer_step(run: Run, wrapped: nn.Module, optimizer, trainable, plan, batch_index: int, lr: float, autocast) -> tuple[dict, float | None]:
    """One optimizer step over this rank's grad_accum micro-batches; returns counts summed over ranks and the grad norm.

    Micro-batch m of step s on rank r is plan[(s*K + m)*W + r], so one process with K = W*k sees
    exactly the batches of W processes with k each (the DDP test relies on it).
    """
    config, topology = run.config, run.topology
    counts: dict[str, float] = {}
    for micro in range(config.grad_accum):
        index = (batch_index * config.grad_accum + micro) * topology.world_size + topology.rank
        batch = load_batch(run, plan[index]).to(topology.device)
        last = micro == config.grad_accum - 1
        with (nullcontext() if last or not hasattr(wrapped, "no_sync") else wrapped.no_sync()), autocast:
            loss, micro_counts = wrapped(batch)
        (loss / config.grad_accum).backward()  # gradients average over micro-batches (and over ranks, by DDP)
        _add_counts(counts, micro_counts)
    for group in optimizer.param_groups:
        group["lr"] = lr
    grad_norm = torch.nn.utils.clip_grad_norm_(trainable, config.grad_clip) if config.grad_clip > 0 else None
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return distributed.sum_counts(counts, topology), None if grad_norm is None else float(grad_norm)


def _fsdp_units(draft: Eagle3Draft) -> list[nn.Module]:
    """The draft's big blocks, sharded (and gathered) one at a time; the rest shards with the root.

    Units take plain tensors only: FSDP2 copies dataclass arguments of a unit's forward, so a
    decoder layer (which receives its KV cache) cannot be a unit without losing cache appends.
    """
    units: list[nn.Module] = []
    for layer in draft.layers:
        attention = layer.self_attn
        units += [attention.q_proj, attention.k_proj, attention.v_proj, attention.o_proj, layer.mlp]
    return units


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


def load_batch(run: Run, indices: list[int]) -> PackedBatch:
    """Read and pack the records `indices` (their aux layers and layer n) into one batch."""
    layers, last = run.layer_columns
    picked = [*layers, last]
    samples = [(run.table.records[i], run.table.hidden(i, picked)) for i in indices]
    return build_batch(samples, list(range(len(layers))), len(layers), run.config.tokens_per_batch)


def _add_counts(total: dict, counts: dict) -> None:
    for key, value in counts.items():
        total[key] = total.get(key, 0.0) + float(value)


@torch.no_grad()
def _validate(run: Run, objective: Eagle3Objective, wrapped: nn.Module, autocast, progress: Progress) -> dict:
    """Metrics on the held-out records (this rank's share, summed over ranks); epoch train metrics if none."""
    config, topology = run.config, run.topology
    counts: dict[str, float] = {}
    if run.val_indices:
        val_counts = [0] * len(run.table.records)
        for i in run.val_indices:
            val_counts[i] = num_queries(len(run.table.records[i]["input_ids"]), config.tokens_per_batch)
        plan = plan_epoch(val_counts, config.tokens_per_batch, config.seed, -1)
        # DDP replicas hold equal weights, so each rank scores its share with the bare module (no
        # collectives, so unequal shares cannot hang). FSDP shards need every rank in every forward:
        # there each rank scores all batches and nothing is summed.
        ranks = 1 if config.fsdp else topology.world_size
        rank = 0 if config.fsdp else topology.rank
        model = wrapped if config.fsdp else objective
        objective.eval()
        for index in range(rank, len(plan), ranks):
            with autocast:
                _, batch_counts = model(load_batch(run, plan[index]).to(topology.device))
            _add_counts(counts, batch_counts)
        objective.train()
        counts.setdefault("queries", 0.0)
        counts = _complete(counts, config.ttt_steps)
        if not config.fsdp:
            counts = distributed.sum_counts(counts, topology)
        source = "validation"
    else:
        counts, source = dict(progress.epoch_counts), "train"
    return {"kind": "val", "source": source, "step": progress.step, "epoch": progress.epoch,
            **derive_metrics(counts, config.ttt_steps, config.step_decay)}  # fmt: skip


def _complete(counts: dict, steps: int) -> dict:
    """Every count key present (a rank with no validation batch still joins the all-reduce with zeros)."""
    for step in range(steps):
        for key in ("loss_sum", "trained", "correct", "chain_total", "chain_correct"):
            counts.setdefault(f"{key}_{step}", 0.0)
    return counts


# ---- outputs: run.json, metrics, checkpoints, state ------------------------------------------


def _claim_output(out: Path, run: Run) -> None:
    """Start a new run in an empty OUT, or check that OUT holds this very run (then we resume it)."""
    record = {"config": run.config.to_dict(), "dataset_fingerprint": run.table.fingerprint, "spec_tools": libspec.__version__}
    run_file = out / RUN_FILE
    if run_file.is_file():
        previous = read_json_object(run_file)
        changed = _differences(previous, record)
        if changed:
            raise SpecError(f"{out}: holds a run made with a different command ({'; '.join(changed)}); rerun it unchanged to resume, or choose another -o")
        return
    if out.exists() and any(out.iterdir()):
        raise SpecError(f"{out}: exists and is not a spec-train run; choose an empty or new output directory")
    out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(run_file, json.dumps(record, indent=2) + "\n")


def _differences(previous: dict, current: dict) -> list[str]:
    changed = []
    old, new = previous.get("config", {}), current["config"]
    for key in sorted(set(old) | set(new)):
        if key not in RESUMABLE_DIFFERENCES and old.get(key) != new.get(key):
            changed.append(f"{key}: was {old.get(key)!r}, now {new.get(key)!r}")
    if previous.get("dataset_fingerprint") != current["dataset_fingerprint"]:
        changed.append("the data's fingerprint differs")
    return changed


def _resume(state_path: Path, objective: Eagle3Objective, optimizer: torch.optim.Optimizer, config: TrainConfig) -> Progress:
    state = load_train_state(state_path)
    if config.fsdp:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_state_dict

        options = StateDictOptions(full_state_dict=True, broadcast_from_rank0=False)
        set_state_dict(objective.draft, optimizer, model_state_dict=state.model, optim_state_dict=state.optimizer, options=options)
    else:
        objective.draft.load_state_dict(state.model, strict=False)
        optimizer.load_state_dict(state.optimizer)
    restore_rng(state.rng)
    _truncate_metrics(Path(config.output) / METRICS_FILE, state.progress.step)
    return state.progress


def _truncate_metrics(path: Path, step: int) -> None:
    """Drop metric lines written after the state we resume from (they will be written again)."""
    if not path.is_file():
        return
    kept = [line for line in path.read_text("utf-8").splitlines() if line.strip() and json.loads(line)["step"] <= step]
    write_text_atomic(path, "".join(line + "\n" for line in kept))


def _log_metrics(out: Path, metrics: dict, topology: distributed.Topology) -> None:
    if topology.is_main:
        with open(out / METRICS_FILE, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(metrics) + "\n")


def _full_states(objective: Eagle3Objective, optimizer: torch.optim.Optimizer, fsdp: bool) -> tuple[dict, dict]:
    """Unsharded model and optimizer state (gathered on every rank under FSDP)."""
    if fsdp:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict

        options = StateDictOptions(full_state_dict=True, cpu_offload=True)
        return get_state_dict(objective.draft, optimizer, options=options)
    return objective.draft.state_dict(), optimizer.state_dict()


def _save(run: Run, objective, optimizer, progress: Progress, name: str, validation: dict | None, emit: EventCallback) -> str:
    """Write checkpoint `name`, update best, then the training state (in that order, so a crash in between only redoes work)."""
    config, topology = run.config, run.topology
    out = Path(config.output)
    model_state, optimizer_state = _full_states(objective, optimizer, config.fsdp)
    if topology.is_main:
        save_dtype = getattr(torch, config.save_dtype)
        draft_config = json.loads(json.dumps(run.draft_config))
        draft_config["spec_tools"]["training"].update(
            {"step": progress.step, "epochs_completed": progress.epoch, "batches_into_epoch": progress.batch,
             "tokens": progress.tokens, "validation": validation}
        )
        tensors = {
            k: (v.to(save_dtype) if v.is_floating_point() else v) for k, v in model_state.items() if not k.startswith("rotary.")
        }
        write_checkpoint(out / name, draft_config, tensors)
        if validation is not None and _is_better(validation, progress.best):
            progress.best = {"checkpoint": name, "metric": "tau_sim", "value": validation["tau_sim"],
                             "loss": validation["loss"], "source": validation["source"], "epoch": validation["epoch"], "step": progress.step}  # fmt: skip
            point_best(out, name, progress.best)
        state = TrainState({k: v for k, v in model_state.items()}, optimizer_state, capture_rng(), progress)
        save_train_state(out / "state" / STATE_FILE, state)
    distributed.barrier(topology)
    emit("checkpoint", {"path": str(out / name), "step": progress.step, "best": progress.best})
    return str(out / name)


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


def config_from_dict(values: dict) -> TrainConfig:
    """A TrainConfig from its recorded dict (run.json or a checkpoint's spec_tools.training.config)."""
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    values = {k: v for k, v in values.items() if k in known}
    if values.get("aux_layer_ids") is not None:
        values["aux_layer_ids"] = tuple(values["aux_layer_ids"])
    return TrainConfig(**values)
