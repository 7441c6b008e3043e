"""DFlash (block drafting): the checkpoint config (config.py) and the draft model (model.py).

The algorithm's plug-in (see libspec/algorithms/__init__.py); it has no training step yet.
"""

from libspec.algorithms.dflash.config import ALGORITHM, checkpoint_facts, config_problems, config_warnings, expected_tensors, verifier_problems
from libspec.algorithms.dflash.model import load_proposer

training = None  # spec-train cannot train DFlash drafts yet

__all__ = ["ALGORITHM", "checkpoint_facts", "config_problems", "config_warnings", "expected_tensors", "load_proposer", "training", "verifier_problems"]
