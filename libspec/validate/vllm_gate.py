"""The vLLM gate: vLLM's own parser, SpeculativeConfig and draft weight loader, run on a checkpoint on CPU.

vLLM's PyPI wheel is a CUDA build, but its configuration code and model classes are plain Python
and torch. With CPU torch and vLLM installed without its GPU dependencies (`./just gates`), this
module runs, in order, what `vllm serve` runs before it touches a GPU:

1. the speculators parser (`SpeculatorsConfig`, `maybe_override_with_speculators`: the short form);
   an EAGLE-1 folder (SPEC.md §11.6) has no speculators config, and vLLM must see none;
2. `SpeculativeConfig` for the exact speculative config our serve command passes (method
   eagle3, dflash, or eagle for an EAGLE-1 folder);
3. vLLM's draft class for the checkpoint (`Eagle3LlamaForCausalLM`, `DFlashDraftModel`,
   `EagleLlamaForCausalLM`, ...), built with only the attention layer replaced, and vLLM's
   `DefaultModelLoader` feeding our safetensors through the model's own `load_weights`.

vLLM does not notice a missing tensor (EAGLE-3's `load_weights` returns None, which turns its
"weights not initialized" check off), so the gate tracks the load itself: every vLLM parameter
starts as a sentinel (NaN, or the smallest int64) and must be fully overwritten, and every
checkpoint tensor must reach some parameter's weight loader (vLLM silently drops some names).
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import tempfile
from pathlib import Path
from typing import Iterator
from unittest import mock

import torch
from torch import nn

from libspec.format import checkpoint as ckpt
from libspec.algorithms import algorithm_for, algorithm_name
from libspec.algorithms.eagle import config as eagle
from libspec.errors import SpecError
from libspec import serving
from libspec.validate.gate_verifier import gate_verifier
from libspec.validate.artifacts import Report

KIND = "vllm-gate"
# The version this gate was written against; others are checked too, with a note in the report.
TESTED_VERSION = "0.33.0"
# Keys vLLM copies from the top level of config.json onto the draft config (speculators/algos.py);
# for an absent one it assumes a default, which the report lists.
COPIED_KEYS = {
    "eagle3": ("draft_vocab_size", "norm_before_residual", "norm_before_fc", "fc_norm", "norm_output", "eagle_aux_hidden_state_layer_ids"),
}
# Checkpoint tensors vLLM ignores by design: t2d (it maps draft ids with d2t alone).
IGNORED_BY_VLLM = {"t2d"}
EAGLE3_LAYER_HIDDEN_NORM = re.compile(r"model\.layers\.(\d+)\.hidden_norm\.weight")


def check(path: str | Path) -> Report:
    """Run vLLM's own code on a checkpoint folder and report everything it rejects or leaves unloaded."""
    report = Report(str(path), KIND)
    try:
        config = ckpt.read_config(path)
        with _captured_vllm_warnings():  # on CPU vLLM warns about missing CUDA kernels: noise here
            import vllm

            report.facts["vllm_version"] = vllm.__version__
            if vllm.__version__ != TESTED_VERSION:
                report.facts["note"] = f"this gate was written against vLLM {TESTED_VERSION}"
            with tempfile.TemporaryDirectory(prefix="spec-vllm-gate-") as workdir:
                _run_stages(Path(path), config, report, Path(workdir))
    except SpecError as error:
        report.problems.append(str(error))
    return report


def _run_stages(path: Path, config: dict, report: Report, workdir: Path) -> None:
    """Each stage adds problems and returns None when the next stage cannot run."""
    plain_eagle = algorithm_name(config) == eagle.ALGORITHM
    speculative = _plain_eagle_folder(path, config, report) if plain_eagle else _parse(path, config, report)
    if speculative is None:
        return
    target = _target_model_config(config, report, workdir)
    if target is None:
        return
    spec_config = _stage(report, "SpeculativeConfig", lambda: _speculative_config(speculative, target))
    if spec_config is None:
        return
    report.facts["draft_architecture"] = spec_config.draft_model_config.architecture
    model_and_config = _stage(report, "building the draft model", lambda: _build_draft(target, spec_config))
    if model_and_config is None:
        return
    model, vllm_config = model_and_config
    report.facts["draft_layer_attention"] = _layer_attention(model)
    _load_and_account(config, report, model, vllm_config, spec_config)


def _stage(report: Report, name: str, action):
    """Run one vLLM step; any exception is vLLM refusing the checkpoint, reported with its message."""
    try:
        return action()
    except Exception as error:  # vLLM raises ValueError, AssertionError, KeyError, pydantic errors, ...
        message = str(error).strip().splitlines()[0] if str(error).strip() else ""
        report.problems.append(f"vLLM {name} failed: {type(error).__name__}: {message}"[:600])
        return None


# ---- 1. the speculators parser and the serve command ----------------------------------------


def _parse(path: Path, config: dict, report: Report) -> dict | None:
    """vLLM's reading of config.json; returns the speculative config our serve command passes."""
    from vllm.transformers_utils.configs.speculators.base import SpeculatorsConfig

    extracted = _stage(report, "speculators parser", lambda: SpeculatorsConfig.extract_vllm_speculative_config(config))
    draft = _stage(report, "speculators parser", lambda: SpeculatorsConfig.from_pretrained(str(path)))
    if extracted is None or draft is None:
        return None
    report.facts["method"] = extracted["method"]
    report.facts["num_speculative_tokens"] = extracted["num_speculative_tokens"]
    report.facts["architecture"] = (draft.architectures or [None])[0]
    ours = serving.speculative_config(path, config)
    for key in ("method", "num_speculative_tokens", "parallel_drafting"):
        if extracted.get(key) != ours.get(key):
            report.problems.append(f"vLLM derives {key}={extracted.get(key)!r} but our serve command passes {ours.get(key)!r}")
    model_type = config.get("speculators_model_type")
    algorithm = algorithm_for(model_type)
    expected = getattr(algorithm, "VLLM_ARCHITECTURES", {}).get((config.get("transformer_layer_config") or {}).get("model_type"))
    if expected is not None and report.facts["architecture"] != expected:
        report.problems.append(f"vLLM picked draft class {report.facts['architecture']}, expected {expected}")
    _compare_copied_keys(config, draft, report)
    _check_short_form(path, config, report)
    report.facts["serve"] = serving.serve_command(path, config)
    return ours


def _plain_eagle_folder(path: Path, config: dict, report: Report) -> dict | None:
    """An EAGLE-1 folder (SPEC.md §11.6) has no speculators config: vLLM must see none, and serves
    it only by the long form with method "eagle" (SpeculativeConfig renames its Llama class EagleLlamaForCausalLM)."""
    from vllm.transformers_utils.config import maybe_override_with_speculators

    detected = _stage(report, "speculators detection", lambda: maybe_override_with_speculators(str(path), None, trust_remote_code=False))
    if detected is None:
        return None
    if detected[2] is not None:
        report.problems.append(f"vLLM reads {path} as a speculators checkpoint ({detected[2]}), not as an EAGLE-1 folder")
        return None
    ours = serving.speculative_config(path, config)
    report.facts.update({"method": ours["method"], "num_speculative_tokens": ours["num_speculative_tokens"]})
    report.facts["architecture"] = (config.get("architectures") or [None])[0]
    report.facts["short_form"] = "none: vLLM serves an EAGLE-1 folder only by the --speculative-config form with method eagle"
    report.facts["serve"] = serving.serve_command(path, config)
    return ours


def _compare_copied_keys(config: dict, draft, report: Report) -> None:
    """Keys vLLM copies onto the draft config must arrive unchanged; absent ones get vLLM's default."""
    assumed = {}
    for key in COPIED_KEYS.get(config.get("speculators_model_type"), ()):
        seen = getattr(draft, key, None)
        if key not in config:
            assumed[key] = seen
        elif seen != config[key]:
            report.problems.append(f"vLLM reads {key} as {seen!r}, config.json says {config[key]!r}")
    if assumed:
        report.facts["vllm_assumes"] = assumed  # a silent default: our own checks say which ones matter


def _check_short_form(path: Path, config: dict, report: Report) -> None:
    """Run `vllm serve CKPT`'s resolution: a Hub verifier must pass, a local one is refused (long form)."""
    from vllm.transformers_utils.config import maybe_override_with_speculators

    verifier = config["speculators_config"]["verifier"]["name_or_path"]
    kind = serving.verifier_kind(verifier)
    try:
        served, _, speculative = maybe_override_with_speculators(str(path), None, trust_remote_code=False)
    except ValueError as error:
        if kind == "hub":
            report.problems.append(f"vllm serve {path} would fail: {error}")
        else:
            report.facts["short_form"] = "refused for a local verifier, as vLLM >= 0.33 does: use the --speculative-config form"
        return
    if served != verifier or (speculative or {}).get("model") != str(path):
        report.problems.append(f"vllm serve {path} would serve {served!r} with draft {(speculative or {}).get('model')!r}")
    else:
        report.facts["short_form"] = f"vllm serve {path} serves {served}"


# ---- 2. the target (verifier) model config and SpeculativeConfig ---------------------------


def _target_model_config(config: dict, report: Report, workdir: Path):
    """vLLM's ModelConfig of the verifier: the real one if it is on this machine, else a stand-in."""
    from vllm.config import ModelConfig

    verifier = gate_verifier(config, workdir)
    report.facts["verifier_used"] = verifier.note
    folder, dtype = str(verifier.folder), config.get("dtype") or "float32"
    return _stage(
        report,
        "ModelConfig of the verifier",
        lambda: ModelConfig(model=folder, tokenizer=folder, skip_tokenizer_init=True, dtype=dtype, seed=0),
    )


def _speculative_config(speculative: dict, target):
    from vllm.config import ParallelConfig, SpeculativeConfig

    return SpeculativeConfig(**speculative, target_model_config=target, target_parallel_config=ParallelConfig())


# ---- 3. the draft model and its weights ------------------------------------------------------


class StandInAttention(nn.Module):
    """Takes the place of vLLM's `Attention` layer while the draft is built.

    vLLM's Attention picks a kernel backend for the current platform in its constructor; with the
    CUDA wheel on a CPU machine the platform is unknown and construction fails ("Invalid attention
    backend"). The layer holds no weights (only KV-cache scale buffers that default to 1.0), so
    standing in for it changes neither the parameter names nor the shapes that loading checks.
    """

    def __init__(self, *args, **kwargs) -> None:
        super().__init__()
        self.per_layer_sliding_window = kwargs.get("per_layer_sliding_window")  # what vLLM asked for, reported


def _build_draft(target, spec_config):
    """vLLM's own model construction for the draft, with only the attention layer replaced."""
    from vllm.config import DeviceConfig, LoadConfig, VllmConfig
    from vllm.model_executor.layers.attention import Attention
    from vllm.model_executor.model_loader.utils import get_model_architecture, initialize_model
    from vllm.utils.torch_utils import set_default_torch_dtype

    vllm_config = VllmConfig(
        model_config=target,
        speculative_config=spec_config,
        load_config=LoadConfig(use_tqdm_on_load=False),
        device_config=DeviceConfig(device="cpu"),
    )
    _init_single_process_group(vllm_config)
    draft_config = spec_config.draft_model_config
    get_model_architecture(draft_config)  # imports the draft's model modules, so that _attention_replaced sees them
    with _attention_replaced(Attention), set_default_torch_dtype(draft_config.dtype):
        model = initialize_model(vllm_config, model_config=draft_config)
    return model, vllm_config


def _layer_attention(model: nn.Module) -> list[dict]:
    """How vLLM built each draft layer's attention: its sliding window (None: full) and, for
    DFlash, whether the block is causal (get_draft_attn_causal)."""
    windows = [m.per_layer_sliding_window for m in model.modules() if isinstance(m, StandInAttention)]
    causal = model.get_draft_attn_causal() if hasattr(model, "get_draft_attn_causal") else [None] * len(windows)
    return [{"sliding_window": w, **({} if c is None else {"causal": c})} for w, c in zip(windows, causal)]


@contextlib.contextmanager
def _attention_replaced(attention_class: type) -> Iterator[None]:
    """Bind StandInAttention wherever a vLLM model module imported the real Attention class."""
    import sys

    with contextlib.ExitStack() as stack:
        for name, module in list(sys.modules.items()):
            if name.startswith("vllm.model_executor.models.") and getattr(module, "Attention", None) is attention_class:
                stack.enter_context(mock.patch.object(module, "Attention", StandInAttention))
        yield


_process_group_dir: tempfile.TemporaryDirectory | None = None


def _init_single_process_group(vllm_config) -> None:
    """vLLM's parallel layers ask for the tensor-parallel group: make a one-process gloo group, once."""
    global _process_group_dir
    from vllm.config import set_current_vllm_config
    from vllm.distributed import parallel_state

    if parallel_state.model_parallel_is_initialized():
        return
    _process_group_dir = tempfile.TemporaryDirectory(prefix="spec-vllm-gate-pg-")
    init_file = Path(_process_group_dir.name) / "init"
    parallel_state.init_distributed_environment(
        world_size=1, rank=0, local_rank=0, distributed_init_method=f"file://{init_file}", backend="gloo"
    )
    with set_current_vllm_config(vllm_config):
        parallel_state.initialize_model_parallel(1, 1)


def _load_and_account(config: dict, report: Report, model: nn.Module, vllm_config, spec_config) -> None:
    """Load through vLLM's loader, then account for every parameter and every checkpoint tensor."""
    from vllm.config import set_current_vllm_config
    from vllm.model_executor.model_loader.default_loader import DefaultModelLoader

    params = dict(model.named_parameters())
    _fill_with_sentinels(params.values())
    consumed: set[int] = set()  # data_ptr of every checkpoint tensor handed to a weight loader
    _record_weight_loaders(params.values(), consumed)
    loader = DefaultModelLoader(vllm_config.load_config)
    yielded: dict[str, torch.Tensor] = {}
    all_weights = loader.get_all_weights

    def recording_weights(*args, **kwargs):
        for name, tensor in all_weights(*args, **kwargs):
            yielded[name] = tensor
            yield name, tensor

    loader.get_all_weights = recording_weights
    with set_current_vllm_config(vllm_config), _captured_vllm_warnings() as warnings:
        loaded = _stage(report, "load_weights", lambda: loader.load_weights(model, spec_config.draft_model_config) or True)
    if warnings:
        report.facts["vllm_load_warnings"] = warnings  # e.g. a tensor it skipped on purpose
    if loaded is None:
        return
    dropped = sorted(n for n, t in yielded.items() if n not in IGNORED_BY_VLLM and t.numel() and t.data_ptr() not in consumed)
    for name in dropped:
        report.problems.append(f"vLLM silently dropped checkpoint tensor {name} (no vLLM parameter took it)")
    exempt = _params_vllm_fills_elsewhere(config, yielded, params, model)
    for name, param in params.items():
        unset = _sentinel_count(param)
        if unset and name not in exempt:
            report.problems.append(
                f"vLLM parameter {name} {list(param.shape)}: {unset} of {param.numel()} values were not loaded from the checkpoint "
                "(vLLM would serve with its initial values there: uninitialised memory for linear layers, ones for norms)"
            )
    report.facts.update(
        {
            "vllm_parameters": len(params),
            "checkpoint_tensors": len(yielded),
            "not_from_checkpoint": {name: why for name, why in sorted(exempt.items())},
        }
    )


def _fill_with_sentinels(params) -> None:
    with torch.no_grad():
        for param in params:
            if param.is_floating_point():
                param.fill_(float("nan"))
            else:
                param.fill_(torch.iinfo(param.dtype).min)


def _sentinel_count(param: torch.Tensor) -> int:
    if param.is_floating_point():
        return int(torch.isnan(param).sum())
    return int((param == torch.iinfo(param.dtype).min).sum())


def _record_weight_loaders(params, consumed: set[int]) -> None:
    """Wrap each parameter's weight loader so that every tensor it is handed is noted."""
    from vllm.model_executor.model_loader.weight_utils import default_weight_loader

    for param in params:
        original = getattr(param, "weight_loader", default_weight_loader)

        def recording(param, loaded_weight, *args, _original=original, **kwargs):
            consumed.add(loaded_weight.data_ptr())
            return _original(param, loaded_weight, *args, **kwargs)

        param.weight_loader = recording


def _params_vllm_fills_elsewhere(config: dict, yielded: dict, params: dict, model: nn.Module) -> dict[str, str]:
    """vLLM parameters that legitimately do not come from the checkpoint, with the reason."""
    exempt = {}
    layer = config.get("transformer_layer_config") or {}
    if "embed_tokens.weight" not in yielded and "model.embed_tokens.weight" in params:
        exempt["model.embed_tokens.weight"] = "shared from the verifier (the checkpoint has no embed_tokens)"
    full_vocab = config.get("draft_vocab_size") in (None, layer.get("vocab_size"))
    if "lm_head.weight" not in yielded and full_vocab and "lm_head.weight" in params:
        exempt["lm_head.weight"] = "shared from the verifier (the checkpoint has no lm_head)"
    if config.get("speculators_model_type") == "eagle3":
        for name in params:
            # vLLM's EAGLE-3 decoder layers all create hidden_norm, but only layer 0 uses it (forward).
            match = EAGLE3_LAYER_HIDDEN_NORM.fullmatch(name)
            if match and int(match.group(1)) > 0:
                exempt[name] = "created by vLLM for every layer but used only in layer 0"
    if "model.mask_embedding" in params and getattr(getattr(model, "model", None), "has_separate_mask_embedding", None) is False:
        # qwen3_dflash: DFlashQwen3Model always creates it; load_weights fills it only from a
        # mask_embedding.pt beside the weights, and embed_input_ids uses it only then.
        exempt["model.mask_embedding"] = "created by vLLM's DFlash model but used only when the folder ships a mask_embedding.pt (it has none)"
    return exempt


@contextlib.contextmanager
def _captured_vllm_warnings() -> Iterator[list[str]]:
    """Collect vLLM's warnings into a list instead of letting them reach the terminal."""
    # vLLM installs a stdout log handler at import unless told not to; our output must stay clean.
    os.environ.setdefault("VLLM_CONFIGURE_LOGGING", "0")
    messages: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            messages.append(record.getMessage().splitlines()[0])

    logger = logging.getLogger("vllm")
    handler, propagate, level = Collect(logging.WARNING), logger.propagate, logger.level
    logger.addHandler(handler)
    logger.propagate = False
    logger.setLevel(logging.WARNING)
    try:
        yield messages
    finally:
        logger.removeHandler(handler)
        logger.propagate, logger.level = propagate, level
