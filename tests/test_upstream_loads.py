"""Upstream speculators 0.9.0 loads what spec-train writes (skipped cleanly when upstream is absent).

Runs in-process when `speculators` is importable here (`pip install .[interop]`), or in the Python
named by SPEC_UPSTREAM_PYTHON (a venv with upstream installed, e.g. `pip install --no-deps
speculators==0.9.0` plus its light deps), which imports this checkout through PYTHONPATH.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from libspec.training import TrainConfig, train
from libspec.upstream import upstream_version
from verifier_data import make_dataset, make_verifier, pattern_records

REPO = Path(__file__).resolve().parent.parent
UPSTREAM_PYTHON = os.environ.get("SPEC_UPSTREAM_PYTHON")

pytestmark = pytest.mark.skipif(
    upstream_version() is None and not UPSTREAM_PYTHON,
    reason="upstream speculators not installed (pip install .[interop], or set SPEC_UPSTREAM_PYTHON)",
)


@pytest.mark.parametrize("changes", [{}, {"draft_vocab_size": 24, "num_layers": 2}, {"layer_style": "qwen3", "norm_before_fc": True}])
def test_upstream_loads_our_checkpoints(tmp_path, changes):
    verifier = make_verifier(tmp_path / "verifier", head_scale=3.0)
    data = make_dataset(verifier, tmp_path / "data", pattern_records(20, 64))
    config = TrainConfig(data=str(data), verifier=str(verifier), output=str(tmp_path / "run"), tokens_per_batch=128, epochs=1, **changes)
    train(config)
    checkpoint = str(tmp_path / "run" / "best")
    if upstream_version() is not None:
        from libspec.validate import validate

        report = validate(checkpoint)
        facts, problems = report.facts, report.problems
    else:
        script = "import json, sys; from libspec.validate import validate; r = validate(sys.argv[1]); print(json.dumps(r.to_dict()))"
        env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
        result = subprocess.run([UPSTREAM_PYTHON, "-c", script, checkpoint], env=env, capture_output=True, text=True)
        assert result.returncode == 0, result.stderr[-2000:]
        report = json.loads(result.stdout.strip().splitlines()[-1])
        facts, problems = report["facts"], report["problems"]
    assert problems == []
    assert "loads it as Eagle3DraftModel" in facts["upstream_speculators"]
