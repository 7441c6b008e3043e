"""How `vllm serve` finds a checkpoint's verifier, and the one builder of the command line that serves a checkpoint.

Pure rules (no vLLM import), so `spec-validate` can state them without the gate environment. The
facts come from vLLM 0.33's `maybe_override_with_speculators` (research: vllm-guidellm.md §1.4):
the short form `vllm serve CKPT` serves `speculators_config.verifier.name_or_path`, and since 0.33
that must be a Hub repo id that is not also a local path; a local verifier needs the long form
with `--speculative-config`, which must name `method` (without it vLLM loads the folder as a plain
draft model). An EAGLE-1 folder has no speculators_config: vLLM serves it only in the long form,
as method "eagle" (SPEC.md §11.5).
"""

from __future__ import annotations

import json
import shlex
from pathlib import Path

from libspec.format.checkpoint import speculative_tokens

# speculators_model_type -> the speculative config vLLM derives from it (build_vllm_speculative_config).
VLLM_METHODS = {
    "eagle3": {"method": "eagle3"},
    "peagle": {"method": "eagle3", "parallel_drafting": True},
    "dflash": {"method": "dflash"},
    "dflash2": {"method": "dflash"},
    "dspark": {"method": "dspark"},
}
EAGLE1_METHOD = {"method": "eagle"}
PATH_PREFIXES = ("/", "./", "../", "~")


# ---- Hub repo ids ---------------------------------------------------------------------------


def is_hub_repo_id(name: str | None) -> bool:
    """True if `name` can only mean a Hub repository, by vLLM's rule: it passes the Hub's repo id
    check (huggingface_hub.validate_repo_id), is no existing path and is not written like one."""
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    if not name or name.startswith(PATH_PREFIXES) or Path(name).expanduser().exists():
        return False
    try:
        validate_repo_id(name)
    except HFValidationError:
        return False
    return True


def is_owner_name_repo_id(name: str | None) -> bool:
    """A Hub repo id written as owner/name (spec-convert's rule for a source, and for its serve line so far)."""
    return name is not None and name.count("/") == 1 and is_hub_repo_id(name)


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


# ---- the command line -------------------------------------------------------------------------


def speculative_method(config: dict) -> dict:
    """The `method` (and, for P-EAGLE, `parallel_drafting`) vLLM derives from a checkpoint config."""
    if "speculators_config" not in config:
        return dict(EAGLE1_METHOD)
    model_type = config.get("speculators_model_type")
    return dict(VLLM_METHODS.get(model_type, {"method": model_type}))


def speculative_config(checkpoint: str | Path, config: dict, method: dict | None = None, default_tokens: int | None = None) -> dict:
    """The `--speculative-config` that serves this checkpoint next to an explicitly given verifier.

    `method` replaces the one vLLM derives (the model card states the speculators_model_type as is);
    `default_tokens` is k when the config records none.
    """
    return {
        **(speculative_method(config) if method is None else method),
        "model": str(checkpoint),
        "num_speculative_tokens": speculative_tokens(config, default_tokens),
    }


def vllm_serve_command(model: str, speculative: dict | None = None, quote: bool = True) -> str:
    """`vllm serve MODEL [--speculative-config JSON]`: the one place the command line is spelled.

    quote=False keeps spec-convert's spelling: MODEL as given, the JSON between single quotes.
    """
    text = None if speculative is None else json.dumps(speculative)
    if quote:
        words = [shlex.quote(model)] + ([] if text is None else ["--speculative-config", shlex.quote(text)])
    else:
        words = [model] + ([] if text is None else ["--speculative-config", f"'{text}'"])
    return " ".join(["vllm", "serve", *words])


def checkpoint_verifier(config: dict) -> str:
    """The verifier a checkpoint config names (speculators_config, or spec_tools in an EAGLE-1 folder)."""
    if "speculators_config" in config:
        return config["speculators_config"]["verifier"]["name_or_path"]
    return config["spec_tools"]["verifier"]["name_or_path"]


def serve_command(checkpoint: str | Path, config: dict, verifier: str | None = None, quote: bool = True, owner_name_only: bool = False) -> str:
    """The exact `vllm serve` command line that serves this checkpoint with its verifier.

    The short form when vLLM can find the verifier itself (a Hub id in a speculators config), else
    the long form. `verifier` overrides the one the config names; owner_name_only=True takes the
    short form only for an owner/name id, and quote=False spells the line unquoted (both: spec-convert's output).
    """
    verifier = checkpoint_verifier(config) if verifier is None else verifier
    on_hub = is_owner_name_repo_id(verifier) if owner_name_only else is_hub_repo_id(verifier)
    if "speculators_config" in config and on_hub:
        return vllm_serve_command(str(checkpoint), quote=quote)
    return vllm_serve_command(verifier, speculative_config(checkpoint, config), quote=quote)
