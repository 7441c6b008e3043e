"""The campaign: references first, then every trial in turn, each logged as it ends."""

from __future__ import annotations

import dataclasses
import shutil
import time
from pathlib import Path

from libspec.errors import SpecError
from tools._cli import stderr
from tools.chaos import faults
from tools.chaos.launch import Launcher, warm_up
from tools.chaos.load import LoadResult, load_trial
from tools.chaos.workloads import OK, GenHidden, Inputs, Train, prepare_inputs

MARKER = ".chaos-work"  # a folder holding this is ours to empty


def fresh_work_folder(work: Path) -> Path:
    """Empty `work` if an earlier campaign made it; refuse a folder that is not ours."""
    if work.exists():
        if not (work / MARKER).is_file():
            raise SpecError(f"{work}: exists and was not made by chaos (no {MARKER} in it); choose another --work")
        faults.unmount_leftovers(work)
        shutil.rmtree(work)
    work.mkdir(parents=True)
    (work / MARKER).write_text("chaos working folder: emptied by the next `chaos --work` run\n")
    return work


class Campaign:
    """Runs every trial the options ask for; `trials`, `reference_s` and `load` hold the results."""

    def __init__(self, options, work: Path):
        self.options = options
        self.work = work
        self.log = work / "chaos.log"
        self.launcher = Launcher(options.cold, options.timeout_s)
        self.trials: list[faults.Trial] = []
        self.reference_s: dict[str, float] = {}
        self.load: LoadResult | None = None

    def run(self) -> None:
        chosen = self.options.tools.split(",")
        workloads = [w for w in self._references(with_training="spec-train" in chosen) if w.name in chosen]
        for number, workload in enumerate(workloads):
            self._kill_trials(workload, seed=self.options.seed * 1000 + number)
        for workload in workloads:
            self._space_trials(workload)
        if self.options.bursts:
            self._load_trial(workloads[0].inputs.verifier)

    def say(self, message: str) -> None:
        """Progress: stderr and the campaign's log file."""
        stderr.print(message, highlight=False, markup=False)
        with open(self.log, "a", encoding="utf-8") as handle:
            handle.write(f"{time.strftime('%H:%M:%S')} {message}\n")

    def _references(self, with_training: bool) -> list:
        """The inputs and one uninterrupted run of each tool: what every trial is compared with, and its duration."""
        self.say(f"preparing inputs and reference runs in {self.work} ({'cold' if self.options.cold else 'warm'} starts)")
        verifier, conversations = prepare_inputs(self.work)
        if not self.options.cold:
            warm_up([GenHidden.tool, Train.tool])
        gen = GenHidden(Inputs(verifier, conversations, self.work / "reference" / GenHidden.tool / "out"))
        train = Train(gen.inputs)
        for workload in (gen, train) if with_training else (gen,):
            outcome = faults.reference_run(self.launcher, workload, self.work / "reference" / workload.tool)
            self.reference_s[workload.name] = round(outcome.duration_s, 3)
            self.say(f"reference {workload.name}: {outcome.duration_s:.2f} s")
        return [gen, train] if with_training else [gen]

    def reference(self, workload) -> Path:
        return self.work / "reference" / workload.tool / "out"

    def _kill_trials(self, workload, seed: int) -> None:
        moments = faults.kill_moments(self.options.trials, self.reference_s[workload.name], seed)
        for index, moment in enumerate(moments):
            folder = self.work / "kill" / workload.tool / f"{index:03d}"
            trial = faults.kill_trial(self.launcher, workload, self.reference(workload), folder, index, moment)
            self._record(trial, len(moments), f"kill at {moment:.3f} s{'' if trial.facts['killed'] else ' (it had ended)'}")
            if trial.result == OK:
                shutil.rmtree(folder, ignore_errors=True)  # keep only what needs a look

    def _space_trials(self, workload) -> None:
        count = self.options.space_trials
        for index in range(count):
            fraction = 0.05 + 0.9 * index / max(1, count - 1)
            folder = self.work / "disk-full" / f"{workload.tool}-{index}"
            trial = faults.disk_full_trial(self.launcher, workload, self.reference(workload), folder, index, fraction)
            self._record(trial, count, f"room for {fraction:.0%} of the reference output")
        trial = faults.read_only_trial(self.launcher, workload, self.work / "read-only" / workload.tool, 0)
        self._record(trial, 1, "output under a read-only folder")

    def _record(self, trial: faults.Trial, count: int, what: str) -> None:
        self.trials.append(trial)
        said = trial.detail or trial.facts.get("error", "")
        detail = f": {said}" if said else ""
        self.say(f"[{trial.kind} {trial.tool} {trial.index + 1}/{count}] {what} -> {trial.result}{detail}")

    def _load_trial(self, verifier: Path) -> None:
        best = self.reference(Train) / "best"
        self.say(f"load: {self.options.bursts} bursts of {self.options.burst_size} concurrent requests against spec-bench serve")
        self.load = load_trial(verifier, best, self.work / "load", self.options.bursts, self.options.burst_size)
        self.say(f"load: statuses {dict(self.load.statuses)}, healthy after: {self.load.healthy_after}")

    def load_document(self) -> dict | None:
        return None if self.load is None else {**dataclasses.asdict(self.load), "statuses": dict(self.load.statuses)}
