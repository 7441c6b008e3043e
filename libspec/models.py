"""Loading verifiers (any HF causal LM) and their tokenizers, offline-friendly and without remote code."""

from __future__ import annotations

import torch

from libspec.errors import SpecError
from libspec.fingerprint import resolve_model_dir

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def pick_device(name: str = "auto") -> torch.device:
    """`auto` is CUDA when present, else CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise SpecError(f"--device {name}: CUDA is not available on this machine")
    return torch.device(name)


def pick_dtype(name: str, device: torch.device) -> torch.dtype:
    """`auto` is float32 on CPU (exact, and bf16 matmuls are slower there at batch 1), bfloat16 on GPU."""
    if name == "auto":
        return torch.float32 if device.type == "cpu" else torch.bfloat16
    try:
        return DTYPES[name]
    except KeyError:
        raise SpecError(f"unknown dtype {name!r}; expected auto or one of {', '.join(DTYPES)}") from None


def load_causal_lm(name_or_path: str, device: torch.device, dtype: torch.dtype, trust_remote_code: bool = False):
    """An AutoModelForCausalLM in eval mode on `device`."""
    from transformers import AutoModelForCausalLM

    from transformers.utils import logging as hf_logging

    path = resolve_model_dir(name_or_path)
    hf_logging.disable_progress_bar()  # a per-tensor bar for a load that takes a second; our tools show their own progress
    try:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as error:
        raise SpecError(f"{name_or_path}: cannot load as a causal LM: {error}") from None
    return model.to(device).eval()


def load_tokenizer(name_or_path: str, trust_remote_code: bool = False):
    """The verifier's tokenizer."""
    from transformers import AutoTokenizer

    path = resolve_model_dir(name_or_path)
    try:
        return AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as error:
        raise SpecError(f"{name_or_path}: cannot load its tokenizer: {error}") from None


def eos_token_ids(model, tokenizer) -> set[int]:
    """Every id that ends generation: the generation config's (may be a list) and the tokenizer's."""
    ids: set[int] = set()
    for source in (getattr(model, "generation_config", None), model.config, tokenizer):
        value = getattr(source, "eos_token_id", None)
        if isinstance(value, int):
            ids.add(value)
        elif isinstance(value, (list, tuple)):
            ids.update(int(v) for v in value)
    return ids
