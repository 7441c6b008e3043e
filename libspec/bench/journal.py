"""spec-bench's journal: every measured prompt is appended to a file next to the report, so that a run
of hours (all of MT-Bench and HumanEval, k = 1..6) killed halfway resumes where it stopped.

The file is JSON lines: a header naming what the run measures (settings, verifier fingerprint, the
draft's weight checksums, device and dtype, each prompt set's items by hash), then one line per
prompt with its raw results (the baseline's and each k's `Generation`, and the isolated-cost passes
timed after it). A rerun of the same measurement replays those lines into its totals and measures
only the rest; a rerun of another measurement is refused, naming what differs, so figures of two
different runs are never pooled. Each line is flushed and fsynced before the next prompt starts; a
line cut short by a kill is dropped (that prompt is measured again).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from pathlib import Path

from libspec.bench.decoding import Generation
from libspec.bench.prompts import PromptSet
from libspec.errors import SpecError

JOURNAL_FORMAT = "spec-tools/bench-journal"
MAX_LINE_BYTES = 16 * 2**20  # a prompt's line holds a few hundred token ids per decoding; anything larger is not ours


def journal_path(report_path: str | os.PathLike) -> Path:
    """Where the journal of a run writing `report_path` lives."""
    report_path = Path(report_path)
    return report_path.with_name(report_path.name + ".partial.jsonl")


def items_digest(items: list[dict]) -> str:
    """A prompt set's identity: the sha256 of its items as canonical JSON."""
    return hashlib.sha256(json.dumps(items, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


def describe_measurement(report: dict, kernels: str, prompt_sets: list[PromptSet]) -> dict:
    """What a run measures, from its report header (measure.report_header): two attempts resume each other only if these are equal."""
    return {
        **{key: report[key] for key in ("device", "hardware", "dtype", "settings", "verifier")},
        "speculator_weights": (report["speculator"] or {}).get("weight_files"),
        "kernels": kernels,
        "prompt_sets": [{"name": s.name, "items_sha256": items_digest(s.items)} for s in prompt_sets],
    }


@dataclasses.dataclass
class MeasuredPrompt:
    """One prompt's raw results, as measured or as replayed from the journal."""

    baseline: Generation
    runs: dict[int, Generation]  # k -> the speculative generation
    costs: dict | None  # the isolated-cost passes timed after this prompt (measure.measure_isolated_costs), if any

    def to_dict(self) -> dict:
        return {
            "baseline": dataclasses.asdict(self.baseline),
            "runs": {str(k): dataclasses.asdict(g) for k, g in self.runs.items()},
            "costs": self.costs,
        }

    @classmethod
    def from_dict(cls, data: dict) -> MeasuredPrompt:
        return cls(Generation(**data["baseline"]), {int(k): Generation(**g) for k, g in data["runs"].items()}, data["costs"])


class BenchJournal:
    """The prompts already measured by earlier attempts at the same run, and the file new ones are appended to."""

    def __init__(self, path: str | os.PathLike, measurement: dict):
        self.path = Path(path)
        self.measurement = measurement
        self.done: dict[tuple[str, int], MeasuredPrompt] = {}
        if self.path.exists():
            self._load()
        else:
            self._append({"format": JOURNAL_FORMAT, "measurement": measurement})

    @property
    def resumed(self) -> int:
        """How many prompts came from earlier attempts."""
        return len(self.done)

    def get(self, set_name: str, index: int) -> MeasuredPrompt | None:
        return self.done.get((set_name, index))

    def record(self, set_name: str, index: int, measured: MeasuredPrompt) -> None:
        """Append one measured prompt, durably (flushed and fsynced) before the run moves on."""
        self._append({"set": set_name, "index": index, **measured.to_dict()})

    def finish(self) -> None:
        """The report holds everything now: the journal goes (a rerun then measures afresh)."""
        self.path.unlink(missing_ok=True)

    def _append(self, line: dict) -> None:
        with open(self.path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(line, separators=(",", ":")) + "\n")
            handle.flush()
            os.fsync(handle.fileno())

    def _load(self) -> None:
        if not self.path.is_file():
            raise SpecError(f"{self.path}: spec-bench's journal of a partial run must be a regular file")
        lines = self._read_lines()
        header = _parse(self.path, 1, lines[0]) if lines else None
        if not isinstance(header, dict) or header.get("format") != JOURNAL_FORMAT:
            raise SpecError(f"{self.path}: not a spec-bench journal (expected a first line with format {JOURNAL_FORMAT!r}); move it away or pick another -o")
        differences = _differences(header.get("measurement"), self.measurement)
        if differences:
            raise SpecError(
                f"{self.path}: a partial run of another measurement ({'; '.join(differences[:4])}"
                f"{f'; {len(differences) - 4} more' if len(differences) > 4 else ''}); "
                "rerun with that run's options to resume it, or delete the file to start afresh"
            )
        for number, text in enumerate(lines[1:], start=2):
            entry = _parse(self.path, number, text)
            try:
                self.done[(entry["set"], int(entry["index"]))] = MeasuredPrompt.from_dict(entry)
            except (KeyError, TypeError, ValueError, AttributeError):
                raise SpecError(f"{self.path}:{number}: expected a measured prompt (set, index, baseline, runs, costs)") from None

    def _read_lines(self) -> list[str]:
        """The complete lines; a last line without its newline (cut short by a kill) is dropped."""
        lines, complete_bytes, cut_short = [], 0, False
        with open(self.path, "rb") as handle:
            while raw := handle.readline(MAX_LINE_BYTES + 1):  # bounded: a damaged file cannot fill memory
                if len(raw) > MAX_LINE_BYTES:
                    raise SpecError(f"{self.path}: a line of {len(raw):,} bytes; spec-bench's journal lines are far smaller")
                if not raw.endswith(b"\n"):
                    cut_short = True
                    break
                complete_bytes += len(raw)
                lines.append(raw.decode("utf-8", errors="replace"))
        if cut_short:  # cut it off, so the next line appended starts on a line of its own
            os.truncate(self.path, complete_bytes)
        return lines


def _parse(path: Path, number: int, text: str):
    try:
        return json.loads(text)
    except (json.JSONDecodeError, RecursionError):
        raise SpecError(f"{path}:{number}: not valid JSON; the journal is damaged: delete it to start afresh") from None


def _differences(recorded, current: dict, prefix: str = "") -> list[str]:
    """The fields where two measurement descriptions differ, as `field: recorded -> current`."""
    if isinstance(recorded, dict) and isinstance(current, dict):
        found = []
        for key in sorted(set(recorded) | set(current)):
            found += _differences(recorded.get(key), current.get(key), f"{prefix}{key}.")
        return found
    if recorded != current:
        return [f"{prefix.rstrip('.')}: {_short(recorded)} -> {_short(current)}"]
    return []


def _short(value) -> str:
    text = json.dumps(value)
    return text if len(text) <= 40 else text[:37] + "..."
