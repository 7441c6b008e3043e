"""Optional check that upstream `speculators` (PyPI 0.9.0, `pip install .[interop]`) loads a checkpoint.

Upstream is not a dependency: when it is not importable the check is skipped (and says so). When
it is, `SpeculatorModel.from_pretrained(folder)` must build the right class and hold exactly the
tensors the folder stores.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import logging
from pathlib import Path


def upstream_version() -> str | None:
    """The installed upstream speculators version, or None when it is not importable here."""
    if importlib.util.find_spec("speculators") is None:
        return None
    try:
        return importlib.metadata.version("speculators")
    except importlib.metadata.PackageNotFoundError:
        return None


def upstream_load_problems(directory: str | Path) -> tuple[list[str], str]:
    """Load the folder with upstream's SpeculatorModel.from_pretrained: (problems, a note on what was checked).

    Upstream 0.9.0 reads the verifier's config and weights while loading an EAGLE-3 draft (even
    with the verifier unset), so the check needs the verifier locally; without it the check is
    skipped with a note, not failed: the folder is not at fault.
    """
    import torch

    from libspec import checkpoint as ckpt
    from libspec.fingerprint import resolve_model_dir
    from libspec.errors import SpecError

    verifier = (ckpt.read_config(directory).get("speculators_config") or {}).get("verifier", {}).get("name_or_path")
    try:
        resolve_model_dir(str(verifier))
    except SpecError:
        return [], f"skipped: upstream needs the verifier {verifier!r} to load a draft, and it is not available here"
    try:
        logging.getLogger("speculators").setLevel(logging.ERROR)
        _quiet_loguru()
        from speculators import SpeculatorModel

        model = SpeculatorModel.from_pretrained(str(directory))
    except Exception as error:  # upstream raises many types; any of them means "does not load"
        first_line = str(error).splitlines()[0] if str(error) else ""
        return [f"upstream speculators cannot load it: {type(error).__name__}: {first_line}"], "fails to load it"
    problems = []
    loaded = model.state_dict()
    for name, tensor in ckpt.load_tensors(directory).items():
        if name not in loaded:
            problems.append(f"upstream speculators ({type(model).__name__}) has no parameter for tensor {name}")
        elif tuple(loaded[name].shape) != tuple(tensor.shape) or not torch.equal(loaded[name].to(tensor.dtype), tensor):
            problems.append(f"upstream speculators loaded tensor {name} with different values or shape")
    return problems, f"loads it as {type(model).__name__}" if not problems else "loads it differently"


def _quiet_loguru() -> None:
    """Upstream logs through loguru at INFO on stderr; a validator should print only its report."""
    try:
        from loguru import logger

        logger.remove()
    except ImportError:
        pass
