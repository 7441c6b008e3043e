"""Verifier fingerprints: which model (config, tokenizer, chat template) produced a data set.

Stored in every data set manifest and every checkpoint we train, so that a stage can refuse data
made with another verifier or other layers instead of silently training a useless draft.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

from libspec.format.digest import digest_file, sha256_text
from libspec.errors import SpecError

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


@dataclass(frozen=True)
class VerifierFingerprint:
    """Identity and shape of a verifier as recorded in manifests (SPEC.md, "Verifier fingerprint")."""

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

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "VerifierFingerprint":
        return cls(**{k: data[k] for k in cls.__dataclass_fields__})


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
        local = snapshot_download(name_or_path, allow_patterns=patterns, local_files_only=_offline())
        return Path(local)
    except Exception as error:  # hub client errors have many types; all mean "not available here"
        raise SpecError(f"{name_or_path}: not a local folder and not available from the Hugging Face cache ({error.__class__.__name__})") from None


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False")


def text_config(config: dict) -> dict:
    """The language-model part of a config (multimodal models nest it under text_config)."""
    return config.get("text_config") or config


def read_model_config(model_dir: Path) -> dict:
    """Parse a model folder's config.json, with a one-line error if it is missing or broken."""
    path = model_dir / "config.json"
    try:
        return json.loads(path.read_text("utf-8"))
    except FileNotFoundError:
        raise SpecError(f"{path}: missing; a verifier folder needs its config.json") from None
    except json.JSONDecodeError as error:
        raise SpecError(f"{path}: not valid JSON: {error}") from None


def fingerprint_verifier(name_or_path: str) -> VerifierFingerprint:
    """Fingerprint a verifier folder (or cached Hub id) from its config and tokenizer files."""
    model_dir = resolve_model_dir(name_or_path)
    config = read_model_config(model_dir)
    lm = text_config(config)
    for key in ("num_hidden_layers", "hidden_size", "vocab_size"):
        if not isinstance(lm.get(key), int):
            raise SpecError(f"{model_dir / 'config.json'}: field {key}: expected an integer")
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
    )


def read_chat_template(model_dir: Path) -> str | None:
    """The default chat template text as transformers would load it, without loading the tokenizer."""
    jinja = model_dir / "chat_template.jinja"
    if jinja.is_file():
        return jinja.read_text("utf-8")
    for name in ("chat_template.json", "tokenizer_config.json"):
        path = model_dir / name
        if path.is_file():
            template = json.loads(path.read_text("utf-8")).get("chat_template")
            if isinstance(template, list):  # named templates: [{"name": "default", "template": ...}, ...]
                template = next((t["template"] for t in template if t.get("name") == "default"), None)
            if isinstance(template, str):
                return template
    return None


def fingerprint_differences(a: VerifierFingerprint, b: VerifierFingerprint) -> list[str]:
    """Fields that differ in a way that matters for training (the name/path may differ)."""
    keys = ("model_type", "num_hidden_layers", "hidden_size", "vocab_size", "config_sha256", "tokenizer_sha256")
    return [f"{k}: {getattr(a, k)!r} vs {getattr(b, k)!r}" for k in keys if getattr(a, k) != getattr(b, k)]
