"""EAGLE-1 / EAGLE-2 / HASS: the checkpoint config (config.py) and the draft model (model.py).

The algorithm's plug-in (see libspec/algorithms/__init__.py); it has no training step yet.
"""

from libspec.algorithms.eagle.config import ALGORITHM, checkpoint_facts, config_problems, config_warnings, expected_tensors, verifier_problems
from libspec.algorithms.eagle.model import load_proposer

training = None  # spec-train cannot train EAGLE-1 drafts yet

__all__ = ["ALGORITHM", "checkpoint_facts", "config_problems", "config_warnings", "expected_tensors", "load_proposer", "training", "verifier_problems"]
