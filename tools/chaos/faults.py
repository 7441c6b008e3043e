"""The fault trials: kill -9 at a random moment then resume, a full disk, a read-only output folder.

A full disk is a tmpfs of a chosen size mounted over the output's parent (we are root in the
sandboxes this runs in; `mount` works there). Where mounting is not allowed, RLIMIT_FSIZE set in
the child stands in: writes past the limit fail with EFBIG instead of ENOSPC, per file rather
than in total, which still makes a write fail part-way. A read-only folder is a tmpfs mounted
`ro`; without mount, a folder without write permission, which binds only a non-root user.
"""

from __future__ import annotations

import contextlib
import random
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from libspec.errors import SpecError
from tools.chaos.launch import Launcher, Outcome
from tools.chaos.workloads import DIFFERENT, LOST, OK, Verdict

BAD_ERROR, SKIPPED = "bad error", "skipped"
PAGE = 4096


@dataclass
class Trial:
    """One trial's record: what was done to which tool, and the verdict."""

    kind: str  # "kill -9", "disk full", "read-only"
    tool: str
    index: int
    result: str
    detail: str = ""
    facts: dict = field(default_factory=dict)


def reference_run(launcher: Launcher, workload, folder: Path) -> Outcome:
    """The uninterrupted run every trial is compared with; a failure here stops the campaign."""
    shutil.rmtree(folder, ignore_errors=True)
    outcome = launcher.run(workload.tool, workload.argv(folder / "out"), folder / "log.txt")
    if outcome.exit_code != 0:
        raise SpecError(f"the reference {workload.name} run failed (exit {outcome.exit_code}); see {outcome.log}")
    return outcome


KILL_ATTEMPTS = 3  # a run that ended before its kill moment is started again, to be killed this time


def kill_trial(launcher: Launcher, workload, reference: Path, folder: Path, index: int, kill_at_s: float) -> Trial:
    """Start the tool, SIGKILL it `kill_at_s` seconds in, rerun the same command, compare with the reference.

    Run times vary on a loaded machine: when the run ended before its moment, the output is cleared
    and the run started again with a moment drawn within the duration just seen
    (up to KILL_ATTEMPTS), so the kills land mid-run, not after the end."""
    first = None
    for _attempt in range(KILL_ATTEMPTS):
        shutil.rmtree(folder, ignore_errors=True)
        output = folder / "out"
        first = launcher.run(workload.tool, workload.argv(output), folder / "killed.log", kill_after_s=kill_at_s)
        if first.killed:
            break
        kill_at_s = first.duration_s * random.Random(index * 7919 + _attempt).uniform(0.0, 0.95)
    facts = {"kill_at_s": round(kill_at_s, 3), "killed": first.killed, "first_exit": first.exit_code}
    rerun = launcher.run(workload.tool, workload.argv(output), folder / "rerun.log")
    if rerun.exit_code != 0:
        return Trial("kill -9", workload.name, index, LOST, f"the rerun failed (exit {rerun.exit_code}): {_last_line(rerun)}", facts)
    verdict = workload.compare(reference, output)
    return Trial("kill -9", workload.name, index, verdict.result, verdict.detail, facts)


def kill_moments(count: int, duration_s: float, seed: int) -> list[float]:
    """`count` moments drawn uniformly over a run's duration, so kills land in every phase."""
    rng = random.Random(seed)
    return [rng.uniform(0.0, duration_s) for _ in range(count)]


def disk_full_trial(launcher: Launcher, workload, reference: Path, folder: Path, index: int, fraction: float) -> Trial:
    """Run with room for `fraction` of the reference output: a one-line error, exit 1, nothing committed harmed; then rerun with room."""
    footprint = _footprint(reference)
    size = max(PAGE, -(-int(footprint * fraction) // PAGE) * PAGE)
    with _small_filesystem(folder, size) as mounted:
        output = folder / "out"
        limit = None if mounted else max(1, int(_largest_file(reference) * fraction))
        facts = {"room_bytes": size if mounted else None, "file_size_limit": limit, "reference_bytes": footprint}
        failed = launcher.run(workload.tool, workload.argv(output), folder.parent / f"{folder.name}-full.log", file_size_limit=limit)
        verdict = _refusal_verdict(failed, "disk full")
        facts["error"] = verdict.detail if verdict.result == OK else ""
        if verdict.result == OK:
            problems = workload.committed_problems(reference, output)
            verdict = Verdict(LOST, "; ".join(problems)) if problems else verdict
        if verdict.result == OK:
            if mounted:
                _remount(folder, f"size={max(footprint * 4, 1 << 20)}")
            rerun = launcher.run(workload.tool, workload.argv(output), folder.parent / f"{folder.name}-rerun.log")
            verdict = workload.compare(reference, output) if rerun.exit_code == 0 else Verdict(LOST, f"the rerun with room failed: {_last_line(rerun)}")
    return Trial("disk full", workload.name, index, verdict.result, verdict.detail, facts)


def read_only_trial(launcher: Launcher, workload, folder: Path, index: int) -> Trial:
    """Output into a read-only folder: a one-line error and exit 1."""
    with _read_only_folder(folder) as read_only:
        if not read_only:
            return Trial("read-only", workload.name, index, SKIPPED, "cannot make a read-only folder here (root without mount)")
        outcome = launcher.run(workload.tool, workload.argv(folder / "out"), folder.parent / f"{folder.name}.log")
    verdict = _refusal_verdict(outcome, "read-only")
    if verdict.result == OK:  # the error line is kept as a fact, not as a problem
        return Trial("read-only", workload.name, index, OK, "", {"error": verdict.detail})
    return Trial("read-only", workload.name, index, verdict.result, verdict.detail)


def _refusal_verdict(outcome: Outcome, fault: str) -> Verdict:
    """OK when a run refused with exit 1 and exactly one error line, no traceback."""
    text = outcome.log_text()
    if outcome.exit_code == 0:
        return Verdict(DIFFERENT, f"{fault}: the run succeeded; the fault did not bite")
    errors = [line for line in text.splitlines() if "error:" in line]
    if outcome.exit_code != 1 or "Traceback" in text or len(errors) != 1:
        return Verdict(BAD_ERROR, f"{fault}: exit {outcome.exit_code}, {len(errors)} error line(s), traceback: {'Traceback' in text} ({outcome.log})")
    return Verdict(OK, errors[0].strip())


def _last_line(outcome: Outcome) -> str:
    lines = [line for line in outcome.log_text().splitlines() if line.strip()]
    return lines[-1].strip() if lines else f"no output ({outcome.log})"


def _footprint(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file() and not p.is_symlink())


def _largest_file(folder: Path) -> int:
    return max(p.stat().st_size for p in folder.rglob("*") if p.is_file() and not p.is_symlink())


def _mount(folder: Path, options: str) -> bool:
    folder.mkdir(parents=True, exist_ok=True)
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder)], capture_output=True)
    return result.returncode == 0


def _remount(folder: Path, options: str) -> None:
    subprocess.run(["mount", "-o", f"remount,{options}", str(folder)], check=True, capture_output=True)


@contextlib.contextmanager
def _small_filesystem(folder: Path, size: int) -> Iterator[bool]:
    """A tmpfs of `size` bytes at `folder` (True), or just the folder when mounting is not allowed (False)."""
    shutil.rmtree(folder, ignore_errors=True)
    mounted = _mount(folder, f"size={size}")
    try:
        yield mounted
    finally:
        if mounted:
            subprocess.run(["umount", str(folder)], check=True, capture_output=True)
        shutil.rmtree(folder, ignore_errors=True)


@contextlib.contextmanager
def _read_only_folder(folder: Path) -> Iterator[bool]:
    """A folder nobody can write into: a read-only tmpfs, else mode 0555 (True if writes are really refused)."""
    shutil.rmtree(folder, ignore_errors=True)
    mounted = _mount(folder, "ro,size=64k")
    if not mounted:
        folder.chmod(0o555)
    try:
        yield mounted or not _writable(folder)
    finally:
        if mounted:
            subprocess.run(["umount", str(folder)], check=True, capture_output=True)
        folder.chmod(0o755)
        shutil.rmtree(folder, ignore_errors=True)


def _writable(folder: Path) -> bool:
    probe = folder / ".chaos-probe"
    try:
        probe.write_bytes(b"")
    except OSError:
        return False
    probe.unlink()
    return True


def unmount_leftovers(work: Path) -> None:
    """Unmount file systems a killed earlier campaign left mounted under `work` (so it can be emptied)."""
    try:
        mounts = Path("/proc/mounts").read_text().splitlines()
    except OSError:
        return
    root = str(work.resolve())
    for point in sorted((line.split()[1] for line in mounts if len(line.split()) > 1), reverse=True):
        if point == root or point.startswith(root + "/"):
            subprocess.run(["umount", point], capture_output=True)
