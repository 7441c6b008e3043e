"""Running the interop gates: here when their packages import, else in the gate venv (`./just gates`)."""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import os
import subprocess
import tempfile
from pathlib import Path
from typing import IO, TYPE_CHECKING, Sequence

from libspec.errors import SpecError

if TYPE_CHECKING:  # libspec.validate.artifacts imports torch: too slow for `./just gates` to wait on
    from libspec.validate.artifacts import Report

GATES = ("vllm", "upstream")
GATE_MODULES = {"vllm": "libspec.validate.vllm_gate", "upstream": "libspec.validate.upstream_gate"}
GATE_PACKAGES = {"vllm": "vllm", "upstream": "speculators"}
REPO_ROOT = Path(__file__).resolve().parents[2]
REQUIREMENTS = REPO_ROOT / "requirements" / "gates.txt"
STAMP = ".spec-gates-installed"
INSTALL_HINT = "run ./just gates to install it (a separate venv with CPU torch, about 2.5 GB)"


def gate_venv() -> Path:
    """Where the gate environment lives: $SPEC_GATES_VENV, else a cache folder named for its requirements.

    The folder name carries a hash of requirements/gates.txt, so every checkout with the same list
    (worktrees, CI runs on this machine) shares one install, and a changed list gets a new one.
    """
    if os.environ.get("SPEC_GATES_VENV"):
        return Path(os.environ["SPEC_GATES_VENV"])
    cache = Path(os.environ.get("SPEC_TOOLS_CACHE") or Path.home() / ".cache" / "spec-tools")
    try:
        key = hashlib.sha256(REQUIREMENTS.read_bytes()).hexdigest()[:12]
    except OSError:
        raise SpecError(f"{REQUIREMENTS}: missing; run the gates from a source checkout or set SPEC_GATES_VENV") from None
    return cache / f"gates-{key}"


def gate_python() -> Path | None:
    """The gate environment's python, or None until `./just gates` has finished installing it."""
    venv = gate_venv()
    return venv / "bin" / "python" if (venv / STAMP).is_file() else None


def where_gate_runs(gate: str) -> str | None:
    """"here" (its package imports in this process), "venv" (in the gate environment) or None."""
    if importlib.util.find_spec(GATE_PACKAGES[gate]) is not None:
        return "here"
    return "venv" if gate_python() is not None else None


def run_gate_here(gate: str, path: str | Path) -> Report:
    """Run one gate in this process (its package must be importable)."""
    module = importlib.import_module(GATE_MODULES[gate])
    return module.check(path)


class GateSession:
    """Runs gates on checkpoints: in this process where possible, else in one long-lived gate-venv child."""

    def __init__(self) -> None:
        self._child: subprocess.Popen | None = None
        self._child_log: IO[str] | None = None  # the child's stderr, for error messages

    def check(self, paths: Sequence[str | Path], gates: Sequence[str] = GATES) -> list[Report]:
        """Reports for every (path, gate) pair, path by path; SpecError if a gate is not installed."""
        for gate in gates:
            if gate not in GATES:
                raise SpecError(f"unknown gate {gate!r}: expected one of {', '.join(GATES)}")
            if where_gate_runs(gate) is None:
                raise SpecError(f"the {gate} gate is not installed: {INSTALL_HINT}")
        away = [gate for gate in gates if where_gate_runs(gate) == "venv"]
        remote = iter(self._ask_child([str(p) for p in paths], away) if away else [])
        reports = []
        for path in paths:
            for gate in gates:
                reports.append(next(remote) if gate in away else run_gate_here(gate, path))
        return reports

    def close(self) -> None:
        """Stop the child process, if one was started."""
        if self._child is not None:
            with contextlib.suppress(BrokenPipeError):
                self._child.stdin.close()  # the child stops at end of input
            try:
                self._child.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self._child.kill()
                self._child.wait()
            self._child.stdout.close()
            self._child = None
        if self._child_log is not None:
            self._child_log.close()
            self._child_log = None

    def __enter__(self) -> "GateSession":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _ask_child(self, paths: list[str], gates: list[str]) -> list[Report]:
        child = self._start_child()
        try:
            child.stdin.write(json.dumps({"paths": paths, "gates": gates}) + "\n")
            child.stdin.flush()
        except BrokenPipeError:  # it died on start-up
            self._raise_child_failure()
        line = child.stdout.readline()
        if not line:
            self._raise_child_failure()
        from libspec.validate.artifacts import Report

        answer = json.loads(line)
        if "error" in answer:
            raise SpecError(f"gate environment {gate_venv()}: {answer['error']}")
        return [Report(r["path"], r["kind"], r["problems"], r["facts"], r.get("warnings", [])) for r in answer["reports"]]

    def _start_child(self) -> subprocess.Popen:
        if self._child is not None and self._child.poll() is None:
            return self._child
        self.close()
        env = dict(os.environ)
        # The child imports this very source tree, and never downloads anything.
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
        env["HF_HUB_OFFLINE"] = "1"
        env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
        self._child_log = tempfile.TemporaryFile(mode="w+", prefix="spec-gates-", suffix=".log")
        self._child = subprocess.Popen(
            [str(gate_python()), "-m", "libspec.validate.gate_child"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._child_log,
            text=True,
            env=env,
        )
        return self._child

    def _raise_child_failure(self) -> None:
        """The child died: raise with the last line it wrote to stderr."""
        status = self._child.wait(timeout=60) if self._child is not None else None
        tail = ""
        if self._child_log is not None:
            self._child_log.seek(0)
            lines = [line for line in self._child_log.read().splitlines() if line.strip()]
            tail = lines[-1] if lines else ""
        self.close()
        raise SpecError(f"gate environment {gate_venv()} failed (exit {status}): {tail or 'no output'}")


def run_gates(paths: Sequence[str | Path], gates: Sequence[str] = GATES) -> list[Report]:
    """Run the named gates on each checkpoint folder once (see GateSession)."""
    with GateSession() as session:
        return session.check(paths, gates)
