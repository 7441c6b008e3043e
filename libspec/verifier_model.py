"""Loading a verifier for inference: model, tokenizer, fingerprint and the facts capture needs.

Remote code stays off unless asked for; weights load from safetensors through transformers.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import torch

from libspec.errors import SpecError
from libspec.fingerprint import VerifierFingerprint, fingerprint_verifier, read_model_config, resolve_model_dir, text_config

COMPUTE_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class LoadedVerifier:
    """A verifier ready to run."""

    directory: Path
    fingerprint: VerifierFingerprint
    config: dict  # its config.json
    model: torch.nn.Module | None  # None when another backend runs the model
    tokenizer: object
    stop_token_ids: tuple[int, ...]  # eos ids of the tokenizer and the generation config
    pad_token_id: int

    @property
    def num_hidden_layers(self) -> int:
        return self.fingerprint.num_hidden_layers

    @property
    def max_position_embeddings(self) -> int | None:
        value = text_config(self.config).get("max_position_embeddings")
        return value if isinstance(value, int) and value > 0 else None


@contextlib.contextmanager
def quiet_transformers() -> Iterator[None]:
    """Silence transformers' progress bars and info logs: the library leaves all output to the tools."""
    from transformers.utils import logging

    bars, level = logging.is_progress_bar_enabled(), logging.get_verbosity()
    logging.disable_progress_bar()
    logging.set_verbosity_error()
    try:
        yield
    finally:
        logging.set_verbosity(level)
        if bars:
            logging.enable_progress_bar()


def resolve_device(name: str) -> torch.device:
    """`auto` is cuda when a GPU is present, else cpu; anything else is passed to torch."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as error:
        raise SpecError(f"--device {name!r}: {error}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SpecError(f"--device {name}: no CUDA device is available here")
    return device


def resolve_dtype(name: str, config: dict) -> torch.dtype:
    """`auto` is the dtype the checkpoint was saved in (float32 when it does not say)."""
    if name == "auto":
        saved = text_config(config).get("dtype") or config.get("dtype") or config.get("torch_dtype") or "float32"
        name = saved if saved in COMPUTE_DTYPES else "float32"
    if name not in COMPUTE_DTYPES:
        raise SpecError(f"--dtype {name!r}: expected auto or one of {', '.join(COMPUTE_DTYPES)}")
    return COMPUTE_DTYPES[name]


def load_tokenizer(directory: Path, trust_remote_code: bool = False):
    """The verifier's tokenizer, with a one-line error when it cannot be loaded."""
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(directory, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as error:
        raise SpecError(f"{directory}: cannot load the tokenizer: {error}") from None


def _stop_token_ids(directory: Path, tokenizer) -> tuple[int, ...]:
    from transformers import GenerationConfig

    ids = set()
    if tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    try:
        eos = GenerationConfig.from_pretrained(directory).eos_token_id
    except OSError:  # no generation_config.json
        eos = None
    ids.update(eos if isinstance(eos, list) else [] if eos is None else [eos])
    return tuple(sorted(ids))


def load_model(verifier: LoadedVerifier, device: str = "auto", dtype: str = "auto", trust_remote_code: bool = False) -> torch.nn.Module:
    """Load the verifier's weights (eval mode, on `device`) into `verifier.model` and return it."""
    from transformers import AutoModelForCausalLM

    torch_dtype = resolve_dtype(dtype, verifier.config)
    target = resolve_device(device)
    try:
        with quiet_transformers():
            model = AutoModelForCausalLM.from_pretrained(verifier.directory, dtype=torch_dtype, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as error:
        raise SpecError(f"{verifier.directory}: cannot load the model: {error}") from None
    verifier.model = model.to(target).eval()
    return verifier.model


def load_verifier(name_or_path: str, device: str = "auto", dtype: str = "auto", trust_remote_code: bool = False, load_weights: bool = True) -> LoadedVerifier:
    """Fingerprint, tokenizer and (unless `load_weights` is false) the model in eval mode on `device`."""
    directory = resolve_model_dir(name_or_path)
    fingerprint = fingerprint_verifier(name_or_path)
    config = read_model_config(directory)
    tokenizer = load_tokenizer(directory, trust_remote_code)
    stop_ids = _stop_token_ids(directory, tokenizer)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (stop_ids[0] if stop_ids else 0)
    verifier = LoadedVerifier(directory, fingerprint, config, None, tokenizer, stop_ids, pad)
    if load_weights:
        load_model(verifier, device, dtype, trust_remote_code)
    return verifier
