"""EAGLE-1 / EAGLE-2 / HASS: the checkpoint config (config.py), the draft model (model.py), its training step (train.py).

The algorithm's plug-in (see libspec/algorithms/__init__.py).
"""

from libspec.algorithms.eagle import train as training
from libspec.algorithms.eagle.config import ALGORITHM, checkpoint_facts, config_problems, config_warnings, expected_tensors, verifier_problems
from libspec.algorithms.eagle.model import load_proposer

__all__ = ["ALGORITHM", "checkpoint_facts", "config_problems", "config_warnings", "expected_tensors", "load_proposer", "training", "verifier_problems"]
