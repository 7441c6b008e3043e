"""DFlash (block drafting): the checkpoint config (config.py), the draft model (model.py), its training step (train.py).

The algorithm's plug-in: the names below are what libspec.algorithms' registry promises for every
algorithm (see libspec/algorithms/__init__.py).
"""

from libspec.algorithms.dflash import train as training
from libspec.algorithms.dflash.config import ALGORITHM, checkpoint_facts, config_problems, config_warnings, expected_tensors, verifier_problems
from libspec.algorithms.dflash.model import load_proposer

__all__ = ["ALGORITHM", "checkpoint_facts", "config_problems", "config_warnings", "expected_tensors", "load_proposer", "training", "verifier_problems"]
