"""A verifier ready for capture: fingerprint, config, tokenizer, stop tokens, and (when needed) weights.

Built on `libspec.models` (device/dtype choice, loading without remote code). The tokenizer and
stop tokens come first and the weights later, so a rerun of a finished job, or the vLLM backend,
never loads the model in this process.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import torch

from libspec.fingerprint import VerifierFingerprint, fingerprint_verifier, read_model_config, resolve_model_dir, text_config
from libspec.models import load_causal_lm, load_tokenizer, pick_device, pick_dtype


@dataclass
class LoadedVerifier:
    """A verifier's identity and tokenizer; `model` is filled in by `load_model`."""

    directory: Path
    fingerprint: VerifierFingerprint
    config: dict  # its config.json
    tokenizer: object
    stop_token_ids: tuple[int, ...]  # every id that ends a reply
    pad_token_id: int
    model: torch.nn.Module | None = None

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


def _stop_token_ids(directory: Path, config: dict, tokenizer) -> tuple[int, ...]:
    """eos ids of the generation config, the model config and the tokenizer (read without the weights)."""
    from transformers import GenerationConfig

    try:
        generation_eos = GenerationConfig.from_pretrained(directory).eos_token_id
    except OSError:  # no generation_config.json
        generation_eos = None
    ids: set[int] = set()
    for value in (generation_eos, text_config(config).get("eos_token_id"), config.get("eos_token_id"), tokenizer.eos_token_id):
        if isinstance(value, int):
            ids.add(value)
        elif isinstance(value, (list, tuple)):
            ids.update(int(v) for v in value)
    return tuple(sorted(ids))


def load_verifier(name_or_path: str, trust_remote_code: bool = False) -> LoadedVerifier:
    """Fingerprint, config, tokenizer and stop tokens of a verifier folder (or cached Hub id)."""
    directory = resolve_model_dir(name_or_path)
    config = read_model_config(directory)
    with quiet_transformers():
        tokenizer = load_tokenizer(str(directory), trust_remote_code)
    stop_ids = _stop_token_ids(directory, config, tokenizer)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (stop_ids[0] if stop_ids else 0)
    return LoadedVerifier(directory, fingerprint_verifier(name_or_path), config, tokenizer, stop_ids, pad)


def load_model(verifier: LoadedVerifier, device: str = "auto", dtype: str = "auto", trust_remote_code: bool = False) -> torch.nn.Module:
    """Load the weights (eval mode, on `device`; `auto` dtype: float32 on CPU, bfloat16 on GPU) into `verifier.model`."""
    target = pick_device(device)
    with quiet_transformers():
        verifier.model = load_causal_lm(str(verifier.directory), target, pick_dtype(dtype, target), trust_remote_code)
    return verifier.model
