"""The verifier: where it is, what its config says, its fingerprint, and loading its tokenizer and weights.

Every stage meets the verifier through this module. It never runs remote code unless asked, works
offline from the Hugging Face cache, and reads config and tokenizer before (and often instead of)
the weights, so a rerun of a finished job or the vLLM backend never loads the model in this process.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterator

import torch

from libspec.errors import SpecError
from libspec.format.digest import digest_file, sha256_text
from libspec.format.json_files import read_json_object
from libspec.format.paths import inside, read_weight_map
from libspec.verifier_weights import digest_weights, weights_differences, weights_unchecked

# Every file any HF tokenizer may be loaded from; whichever exist are hashed.
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "chat_template.jinja",
    "chat_template.json",
    "tokenizer.model",
    "vocab.json",
    "merges.txt",
)
SHAPE_KEYS = ("num_hidden_layers", "hidden_size", "vocab_size")  # integers every stage relies on
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


# ---- where it is and what its config says -----------------------------------------------------


def hub_offline() -> bool:
    """True when HF_HUB_OFFLINE asks the Hub client to use the local cache only."""
    return os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False")


def resolve_model_dir(name_or_path: str) -> Path:
    """A local folder for a verifier given as a folder or as a Hub id already in the local cache."""
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return path
    if path.exists():
        raise SpecError(f"{name_or_path}: expected a model folder, found a file")
    try:
        from huggingface_hub import snapshot_download

        patterns = ["config.json", *TOKENIZER_FILES, "*.safetensors", "*.safetensors.index.json", "generation_config.json"]
        local = snapshot_download(name_or_path, allow_patterns=patterns, local_files_only=hub_offline())
        return Path(local)
    except Exception as error:  # hub client errors have many types; all mean "not available here"
        raise SpecError(f"{name_or_path}: not a local folder and not available from the Hugging Face cache ({error.__class__.__name__})") from None


def text_config(config: dict) -> dict:
    """The language-model part of a config (multimodal models nest it under text_config)."""
    return config.get("text_config") or config


def read_model_config(model_dir: Path) -> dict:
    """Parse a model folder's config.json, with a one-line error if it is missing or broken."""
    return read_json_object(model_dir / "config.json", missing="missing; a verifier folder needs its config.json")


def _check_shape(model_dir: Path, config: dict) -> None:
    lm = text_config(config)
    for key in SHAPE_KEYS:
        if not isinstance(lm.get(key), int):
            raise SpecError(f"{model_dir / 'config.json'}: field {key}: expected an integer")


def read_chat_template(model_dir: Path) -> str | None:
    """The default chat template text as transformers would load it, without loading the tokenizer."""
    jinja = model_dir / "chat_template.jinja"
    if jinja.is_file():
        return jinja.read_text("utf-8")
    for name in ("chat_template.json", "tokenizer_config.json"):
        path = model_dir / name
        if path.is_file():
            template = read_json_object(path).get("chat_template")
            if isinstance(template, list):  # named templates: [{"name": "default", "template": ...}, ...]
                template = next((t["template"] for t in template if t.get("name") == "default"), None)
            if isinstance(template, str):
                return template
    return None


# ---- the fingerprint (SPEC.md, "Verifier fingerprint") -----------------------------------------


@dataclass(frozen=True)
class VerifierFingerprint:
    """Identity and shape of a verifier as recorded in manifests and checkpoints: data made with
    another verifier is refused instead of silently training a useless draft."""

    name_or_path: str
    architectures: list[str]
    model_type: str
    num_hidden_layers: int
    hidden_size: int
    vocab_size: int
    config_sha256: str
    tokenizer_sha256: str
    tokenizer_files: dict[str, str]
    chat_template_sha256: str | None
    weights: dict[str, dict] | None = None  # libspec.verifier_weights; None: recorded before weights were

    def to_dict(self) -> dict:
        data = asdict(self)
        if data["weights"] is None:
            del data["weights"]  # an old fingerprint read back stays as it was written
        return data

    @classmethod
    def from_dict(cls, data: dict) -> "VerifierFingerprint":
        weights = data.get("weights")
        if weights is not None and not (isinstance(weights, dict) and all(isinstance(v, dict) for v in weights.values())):
            raise TypeError("weights: expected a map of file name to digests")  # callers treat it as an incomplete record
        return cls(**{k: data[k] for k in cls.__dataclass_fields__ if k != "weights"}, weights=weights)


def fingerprint_verifier(name_or_path: str, like: VerifierFingerprint | None = None) -> VerifierFingerprint:
    """Fingerprint a verifier folder (or cached Hub id) from its config, tokenizer and weight files.

    `like` is a recorded fingerprint this one will be compared with: the weight digests it has are
    computed here too (libspec.verifier_weights.digest_weights).
    """
    model_dir = resolve_model_dir(name_or_path)
    config = read_model_config(model_dir)
    _check_shape(model_dir, config)
    lm = text_config(config)
    tokenizer_files = {
        name: digest_file(model_dir / name).sha256 for name in TOKENIZER_FILES if (model_dir / name).is_file()
    }
    tokenizer_sha = sha256_text("".join(f"{name}\0{sha}\n" for name, sha in sorted(tokenizer_files.items())))
    template = read_chat_template(model_dir)
    return VerifierFingerprint(
        name_or_path=str(name_or_path),
        architectures=list(config.get("architectures") or []),
        model_type=str(config.get("model_type", "")),
        num_hidden_layers=lm["num_hidden_layers"],
        hidden_size=lm["hidden_size"],
        vocab_size=lm["vocab_size"],
        config_sha256=digest_file(model_dir / "config.json").sha256,
        tokenizer_sha256=tokenizer_sha,
        tokenizer_files=tokenizer_files,
        chat_template_sha256=None if template is None else sha256_text(template),
        weights=digest_weights(model_dir, like.weights if like is not None else None),
    )


def fingerprint_differences(a: VerifierFingerprint, b: VerifierFingerprint) -> list[str]:
    """Fields that differ in a way that matters for training (the name/path may differ); weights are
    compared where both sides have a digest of the same kind (see `weights_not_checked`)."""
    keys = ("model_type", "num_hidden_layers", "hidden_size", "vocab_size", "config_sha256", "tokenizer_sha256")
    differences = [f"{k}: {getattr(a, k)!r} vs {getattr(b, k)!r}" for k in keys if getattr(a, k) != getattr(b, k)]
    return differences + weights_differences(a.weights, b.weights)


def weights_not_checked(recorded: VerifierFingerprint, current: VerifierFingerprint) -> str | None:
    """Why `fingerprint_differences` could not compare the weights (e.g. data made before they were
    recorded), for a one-line warning; None when it did compare them."""
    return weights_unchecked(recorded.weights, current.weights)


# ---- the config-only view (spec-convert: shapes and a few tensors, never the whole model) -------


@dataclass(frozen=True)
class VerifierConfig:
    """The model a draft serves as far as its config goes, and its local folder when there is one."""

    name_or_path: str
    config: dict
    directory: Path | None

    @property
    def lm(self) -> dict:
        return text_config(self.config)

    @property
    def weight_files(self) -> list[Path]:
        """Local safetensors weights (empty when only the config is at hand)."""
        if self.directory is None:
            return []
        return [inside(self.directory, path.name, str(self.directory)) for path in sorted(self.directory.glob("*.safetensors"))]


def read_verifier_config(name_or_path: str) -> VerifierConfig:
    """The verifier's config (and folder): a local folder or a Hub id in the local cache."""
    directory = resolve_model_dir(name_or_path)
    config = read_model_config(directory)
    _check_shape(directory, config)
    return VerifierConfig(name_or_path, config, directory)


def verifier_weight_file(verifier: VerifierConfig, suffix: str):
    """(the WeightFile, the full name) of the verifier's local tensor whose name ends in `suffix`, or
    None; it reads one tensor, or some rows, at a time (libspec/format/weights_file.py)."""
    from libspec.format.weights_file import WeightFile

    for path in verifier.weight_files:
        weights = WeightFile(path)
        for name in weights.names():
            if name.endswith(suffix):
                return weights, name
    return None


# ---- device and dtype ---------------------------------------------------------------------------


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


# ---- tokenizer, weights and stop tokens (any HF causal LM, no remote code unless asked) ----------


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


def load_causal_lm(name_or_path: str, device: torch.device, dtype: torch.dtype, trust_remote_code: bool = False):
    """An AutoModelForCausalLM in eval mode on `device`."""
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    path = resolve_model_dir(name_or_path)
    check_weight_files(path)  # transformers follows an index wherever it points; we do not
    hf_logging.disable_progress_bar()  # a per-tensor bar for a load that takes a second; our tools show their own progress
    try:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as error:
        raise SpecError(f"{name_or_path}: cannot load as a causal LM: {error}") from None
    return model.to(device).eval()


def check_weight_files(model_dir: Path) -> None:
    """Refuse a model folder whose weights (or what its shard index names) lie outside it (libspec.format.paths.inside)."""
    for index_name in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        if os.path.lexists(model_dir / index_name):
            read_weight_map(model_dir, index_name)
    for name in ("model.safetensors", "pytorch_model.bin"):
        if os.path.lexists(model_dir / name):
            inside(model_dir, name, str(model_dir))


def load_tokenizer(name_or_path: str, trust_remote_code: bool = False):
    """The verifier's tokenizer."""
    from transformers import AutoTokenizer

    path = resolve_model_dir(name_or_path)
    try:
        return AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    except (OSError, ValueError, KeyError) as error:  # KeyError: a tokenizer.json transformers cannot read (no added_tokens)
        raise SpecError(f"{name_or_path}: cannot load its tokenizer: {type(error).__name__}: {error}") from None


def _token_ids(values) -> set[int]:
    """The ids in eos_token_id-like values: each an int, a list of ints, or None."""
    ids: set[int] = set()
    for value in values:
        if isinstance(value, int):
            ids.add(value)
        elif isinstance(value, (list, tuple)):
            ids.update(int(v) for v in value)
    return ids


def eos_token_ids(model, tokenizer) -> set[int]:
    """Every id that ends generation: the generation config's (may be a list) and the tokenizer's."""
    sources = (getattr(model, "generation_config", None), model.config, tokenizer)
    return _token_ids(getattr(source, "eos_token_id", None) for source in sources)


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


def _stop_token_ids(directory: Path, config: dict, tokenizer) -> tuple[int, ...]:
    """eos ids of the generation config, the model config and the tokenizer (read without the weights)."""
    from transformers import GenerationConfig

    try:
        generation_eos = GenerationConfig.from_pretrained(directory).eos_token_id
    except OSError:  # no generation_config.json
        generation_eos = None
    values = (generation_eos, text_config(config).get("eos_token_id"), config.get("eos_token_id"), tokenizer.eos_token_id)
    return tuple(sorted(_token_ids(values)))


def load_verifier(name_or_path: str, trust_remote_code: bool = False) -> LoadedVerifier:
    """Fingerprint, config, tokenizer and stop tokens of a verifier folder (or cached Hub id); no weights."""
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
