"""What decides a spec-train run's result: one frozen `TrainConfig`, recorded in run.json and in every
checkpoint. Its fields (and those of the algorithm's options object, `draft`) are spec-train's
command-line options: defaults, help and choices live here and in the algorithm's `Options` only.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from libspec.algorithms import trainable_algorithms, training_for
from libspec.errors import SpecError
from libspec.options import check_options, known_values, option

SCHEDULES = ("cosine", "linear", "constant")
PRECISIONS = ("auto", "fp32", "bf16")
SAVE_DTYPES = ("bfloat16", "float32", "float16")
# Fields that may differ between a run and its resumption: where things are and how many are kept,
# not what they are (the data's identity is its fingerprint, compared separately; the verifier's is
# checked against the data).
RESUMABLE_DIFFERENCES = ("output", "data", "verifier", "keep")


@dataclass(frozen=True)
class TrainConfig:
    """Everything that decides a run's result; `draft` holds the algorithm's own options."""

    data: str
    verifier: str
    output: str
    draft: Any = None  # the algorithm's training.Options; None: its defaults
    algorithm: str = option("eagle3", "draft algorithm", choices=trainable_algorithms())
    aux_layer_ids: tuple[int, ...] | None = option(
        None, "verifier layers fed to the draft (default: the algorithm's, EAGLE-3's 2,n/2,n-3); must be captured in the data", metavar="I,J,K"
    )
    draft_vocab_size: int | None = option(
        None, "predict over the D most frequent supervised tokens (default: full vocabulary up to 32k, else 32000)", metavar="D"
    )
    # optimisation
    tokens_per_batch: int = option(2048, "draft queries packed per batch and process", minimum=1, metavar="T")
    grad_accum: int = option(1, "batches per optimizer step and process", minimum=1, metavar="K")
    epochs: int = option(1, "passes over the training data", minimum=1, metavar="N")
    max_steps: int | None = option(None, "stop after this many optimizer steps", minimum=1, metavar="N")
    lr: float = option(1e-3, "peak AdamW learning rate", metavar="LR")
    weight_decay: float = option(0.01, "AdamW weight decay", metavar="W")
    schedule: str = option("cosine", "learning-rate schedule after warmup", choices=SCHEDULES)
    warmup_steps: int | None = option(None, "linear warmup steps (default 1% of the steps, at least 1)", metavar="N")
    grad_clip: float = option(1.0, "max gradient norm, 0 for none", metavar="NORM")
    seed: int = option(0, "initialisation and data order", metavar="N")
    val_fraction: float = option(0.05, "records held out for validation and best", metavar="F")
    precision: str = option("auto", "auto: fp32 on CPU, bf16 autocast on CUDA", choices=PRECISIONS)
    device: str = option("auto", "auto, cpu or cuda", metavar="DEVICE")
    fsdp: bool = option(False, "shard the draft with FSDP2 (under torchrun)")
    # outputs
    save_every: int = option(0, "also checkpoint every N optimizer steps (0: only at epoch ends)", metavar="N")
    save_dtype: str = option("bfloat16", "dtype of checkpoint weights", choices=SAVE_DTYPES)
    keep: int | None = option(3, "checkpoints kept: the newest N plus the best (older ones are deleted); 0 for all", minimum=0, metavar="N")

    def __post_init__(self) -> None:
        if self.draft is None:
            object.__setattr__(self, "draft", training_for(self.algorithm).Options())

    def to_dict(self) -> dict:
        """The flat record of run.json and checkpoints: the algorithm's options beside the general ones."""
        general = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "draft"}
        general["aux_layer_ids"] = None if self.aux_layer_ids is None else list(self.aux_layer_ids)
        return {**general, **dataclasses.asdict(self.draft)}

    @classmethod
    def from_dict(cls, values: dict) -> "TrainConfig":
        """A TrainConfig from its flat record (run.json, a checkpoint's spec_tools.training.config, or keywords)."""
        options_class = training_for(values.get("algorithm", "eagle3")).Options
        general = {k: v for k, v in known_values(cls, values).items() if k != "draft"}
        if general.get("aux_layer_ids") is not None:
            general["aux_layer_ids"] = tuple(general["aux_layer_ids"])
        return cls(**general, draft=options_class(**known_values(options_class, values)))


def check_config(config: TrainConfig) -> None:
    """Reject option values that cannot work, before any data is read."""
    check_options(config)
    if not isinstance(config.draft, training_for(config.algorithm).Options):
        raise SpecError(f"--algorithm {config.algorithm}: the draft options given are {type(config.draft).__name__}")
    config.draft.check()
    if not 0 <= config.val_fraction < 1:
        raise SpecError(f"--val-fraction {config.val_fraction}: expected a value in [0, 1)")
    if config.device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise SpecError(f"--device {config.device}: no CUDA device is available here (use cpu or auto)")


def config_differences(previous: dict, current: dict) -> list[str]:
    """What changed between two recorded configs, ignoring where things are (RESUMABLE_DIFFERENCES)."""
    changed = []
    for key in sorted(set(previous) | set(current)):
        if key not in RESUMABLE_DIFFERENCES and previous.get(key) != current.get(key):
            changed.append(f"{key}: was {previous.get(key)!r}, now {current.get(key)!r}")
    return changed
