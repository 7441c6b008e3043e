"""Running a spec-tools command as a child process that can be SIGKILLed at a chosen moment.

Warm mode (the default) forks each run from this process, which has already imported torch,
transformers and the tools: the child runs the tool's own front door (`tools._cli.run(main)`) with
the same arguments, so it writes exactly what `python -m tools.X ARGS` writes, but starts in
milliseconds. A fresh interpreter spends seconds importing torch and transformers first (the
campaign's reference runs on the shared 2-core machine: spec-gen-hidden 18.2 s cold vs 1.6 s warm,
spec-train 21.6 s vs 4.5 s), so most kills would land in the imports, where nothing is written.
Cold mode (`--cold`) execs a fresh `python -m tools.X` instead, for the full start-up path.
"""

from __future__ import annotations

import importlib
import os
import resource
import signal
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

POLL_S = 0.002  # how often a waiting parent looks at its child; kill moments are this precise


@dataclass(frozen=True)
class Outcome:
    """How one run ended: its exit code (None when we killed it or it hung), and when."""

    exit_code: int | None
    killed: bool  # SIGKILLed by us at kill_after_s (False: it ended first)
    hung: bool  # still running at the timeout, then killed
    duration_s: float
    log: Path

    def log_text(self) -> str:
        return self.log.read_text("utf-8", errors="replace") if self.log.is_file() else ""


def warm_up(tools: list[str]) -> None:
    """Import what the tools import, so forked children start at once (warm mode only)."""
    import torch  # noqa: F401
    import transformers  # noqa: F401
    from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: F401

    for tool in tools:
        importlib.import_module(f"tools.{tool}")


class Launcher:
    """Starts tool runs, warm (forked) or cold (a fresh interpreter), and kills them on request."""

    def __init__(self, cold: bool, timeout_s: float):
        self.cold = cold
        self.timeout_s = timeout_s

    def run(self, tool: str, argv: list[str], log: Path, kill_after_s: float | None = None, file_size_limit: int | None = None) -> Outcome:
        """Run `tools.<tool>` with `argv`; SIGKILL it `kill_after_s` seconds after its start if still running."""
        sys.stdout.flush()
        sys.stderr.flush()
        log.parent.mkdir(parents=True, exist_ok=True)
        start = time.monotonic()
        pid = os.fork()
        if pid == 0:  # the child never returns
            _child(tool, argv, log, file_size_limit, self.cold)
        return self._wait(pid, start, log, kill_after_s)

    def _wait(self, pid: int, start: float, log: Path, kill_after_s: float | None) -> Outcome:
        killed = hung = False
        while True:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                return Outcome(os.waitstatus_to_exitcode(status), False, False, time.monotonic() - start, log)
            elapsed = time.monotonic() - start
            killed = kill_after_s is not None and elapsed >= kill_after_s
            hung = elapsed >= self.timeout_s
            if killed or hung:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                return Outcome(None, killed and not hung, hung, elapsed, log)
            time.sleep(POLL_S)


def _child(tool: str, argv: list[str], log: Path, file_size_limit: int | None, cold: bool) -> None:
    """In the forked child: output to `log`, limits applied, then the tool (exec'd or called); never returns."""
    code = 1
    try:
        fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        os.dup2(os.open(os.devnull, os.O_RDONLY), 0)
        if file_size_limit is not None:
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # writes past the limit fail with EFBIG instead of killing
            resource.setrlimit(resource.RLIMIT_FSIZE, (file_size_limit, file_size_limit))
        if cold:
            os.execv(sys.executable, [sys.executable, "-m", f"tools.{tool}", *argv])
        code = _call_tool(tool, argv)
    except BaseException:  # what an uncaught exception does in a real interpreter: traceback, exit 1
        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def _call_tool(tool: str, argv: list[str]) -> int:
    """The tool's front door as `python -m tools.<tool>` runs it; its exit status."""
    from tools._cli import run

    module = importlib.import_module(f"tools.{tool}")
    sys.argv = [tool.replace("_", "-"), *argv]
    try:
        run(module.main, argv)
    except SystemExit as exit_:
        return exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 1)
    return 0
