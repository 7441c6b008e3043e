"""Test helper: is a checkpoint servable? Our own checks, then vLLM's and upstream's code (the interop gates).

Other test files call `assert_servable(dir, ...)` on the checkpoints they write. The gates run in one
long-lived child of the gate venv (`./just gates`), shared by the whole test session, so only the
first call pays vLLM's import (~15-20 s); pass several folders in one call where you can. Gates that
are not installed are skipped (the call returns which gates ran); tests *about* the gates use
`require_gates()` to skip with a reason instead.
"""

from __future__ import annotations

import atexit
import os
from pathlib import Path

import pytest

from libspec.validate.gates import GATES, INSTALL_HINT, GateSession, where_gate_runs
from libspec.validate.artifacts import Report, validate

_session: GateSession | None = None


def installed_gates() -> list[str]:
    """The gates this machine can run (here or in the gate venv); none when SPEC_SKIP_GATES is set."""
    if os.environ.get("SPEC_SKIP_GATES"):
        return []
    return [gate for gate in GATES if where_gate_runs(gate) is not None]


def require_gates() -> None:
    """Skip the calling test, with the reason, unless both gates are installed."""
    if os.environ.get("SPEC_SKIP_GATES"):
        pytest.skip("SPEC_SKIP_GATES is set")
    missing = [gate for gate in GATES if gate not in installed_gates()]
    if missing:
        pytest.skip(f"{' and '.join(missing)} gate not installed: {INSTALL_HINT}")


def session() -> GateSession:
    """The test session's gate runner (its child process stops when the tests end)."""
    global _session
    if _session is None:
        _session = GateSession()
        atexit.register(_session.close)
    return _session


def gate_reports(paths, gates=None) -> dict[tuple[str, str], Report]:
    """(path, gate) -> report, for every path and gate (default: every installed gate)."""
    gates = installed_gates() if gates is None else list(gates)
    if not gates:
        return {}
    reports = session().check([str(p) for p in paths], gates)
    names = {"vllm-gate": "vllm", "upstream-gate": "upstream"}
    return {(r.path, names[r.kind]): r for r in reports}


def assert_servable(*checkpoint_dirs: str | Path) -> list[str]:
    """Fail unless each folder passes spec-validate and every installed gate; returns the gates that ran."""
    for directory in checkpoint_dirs:
        report = validate(str(directory))
        assert report.ok, f"spec-validate {directory}: {report.problems}"
    reports = gate_reports(checkpoint_dirs)
    for (path, gate), report in reports.items():
        assert report.ok, f"{gate} gate on {path}: {report.problems}"
    return installed_gates()
