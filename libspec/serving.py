"""How `vllm serve` finds a checkpoint's verifier, and the command line that serves a checkpoint.

Pure rules (no vLLM import), so `spec-validate` can state them without the gate environment. The
facts come from vLLM 0.33's `maybe_override_with_speculators` (research: vllm-guidellm.md §1.4):
the short form `vllm serve CKPT` serves `speculators_config.verifier.name_or_path`, and since 0.33
that must be a Hub repo id that is not also a local path; a local verifier needs the long form
with `--speculative-config`, which must name `method` (without it vLLM loads the folder as a plain
draft model).
"""

from __future__ import annotations

import json
import shlex
from pathlib import Path

# speculators_model_type -> the speculative config vLLM derives from it (build_vllm_speculative_config).
VLLM_METHODS = {
    "eagle3": {"method": "eagle3"},
    "peagle": {"method": "eagle3", "parallel_drafting": True},
    "dflash": {"method": "dflash"},
    "dflash2": {"method": "dflash"},
    "dspark": {"method": "dspark"},
}
PATH_PREFIXES = ("/", "./", "../", "~")


def is_hub_repo_id(name: str) -> bool:
    """True if `name` passes the Hub's repo id rules (vLLM checks the verifier with the same function)."""
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    try:
        validate_repo_id(name)
    except HFValidationError:
        return False
    return True


def verifier_kind(name_or_path: str) -> str:
    """"hub" (served by the short form), "local" (a path: long form only) or "invalid" (neither)."""
    if Path(name_or_path).expanduser().exists() or name_or_path.startswith(PATH_PREFIXES):
        return "local"
    return "hub" if is_hub_repo_id(name_or_path) else "invalid"


def verifier_problem(name_or_path: str) -> str | None:
    """Why `vllm serve` could not find this verifier reference at all, or None if it can."""
    if verifier_kind(name_or_path) == "invalid":
        return (
            f"speculators_config.verifier.name_or_path {name_or_path!r} is neither a Hub repo id (org/name) nor a path: "
            "vllm serve could not find the verifier"
        )
    return None


def speculative_config(checkpoint_dir: str | Path, config: dict) -> dict:
    """The `--speculative-config` that serves this checkpoint next to an explicitly given verifier."""
    model_type = config.get("speculators_model_type")
    return {
        **VLLM_METHODS.get(model_type, {"method": model_type}),
        "model": str(checkpoint_dir),
        "num_speculative_tokens": config["speculators_config"]["proposal_methods"][0]["speculative_tokens"],
    }


def serve_command(checkpoint_dir: str | Path, config: dict) -> str:
    """The exact `vllm serve` command line that serves this checkpoint with its verifier."""
    verifier = config["speculators_config"]["verifier"]["name_or_path"]
    if verifier_kind(verifier) == "hub":
        return f"vllm serve {shlex.quote(str(checkpoint_dir))}"
    long_form = json.dumps(speculative_config(checkpoint_dir, config))
    return f"vllm serve {shlex.quote(verifier)} --speculative-config {shlex.quote(long_form)}"

