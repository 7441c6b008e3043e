"""The campaign's counts per trial kind, as rows (for --json) and as a rich table."""

from __future__ import annotations

from rich.table import Table

from tools.chaos.faults import BAD_ERROR, SKIPPED
from tools.chaos.workloads import DIFFERENT, LOST, OK

COLUMNS = ("trials", "ok", "different", "lost", "bad_error", "skipped")


def summary_rows(campaign) -> list[dict]:
    """One row per (trial kind, tool), plus one for the load trial: counts, and a note on what they mean."""
    rows = {}
    for trial in campaign.trials:
        row = rows.setdefault((trial.kind, trial.tool), {"kind": trial.kind, "tool": trial.tool, **dict.fromkeys(COLUMNS, 0), "note": ""})
        row["trials"] += 1
        key = {OK: "ok", DIFFERENT: "different", LOST: "lost", BAD_ERROR: "bad_error", SKIPPED: "skipped"}[trial.result]
        row[key] += 1
    for (kind, tool), row in rows.items():
        if kind == "kill -9":
            killed = sum(t.facts.get("killed", False) for t in campaign.trials if (t.kind, t.tool) == (kind, tool))
            row["note"] = f"{killed} killed mid-run, {row['trials'] - killed} had ended first; reference run {campaign.reference_s[tool]} s"
        elif kind in ("disk full", "read-only"):
            row["note"] = _fault_note(kind, [t for t in campaign.trials if (t.kind, t.tool) == (kind, tool)])
    result = list(rows.values())
    if campaign.load is not None:
        result.append(_load_row(campaign.load))
    return result


def _fault_note(kind: str, trials: list) -> str:
    """How the fault was made, and the error the first refusal printed."""
    if kind == "disk full":
        how = "ENOSPC: a small tmpfs" if trials[0].facts.get("room_bytes") else "EFBIG: RLIMIT_FSIZE (mount not allowed here)"
    else:
        how = "EROFS: a read-only tmpfs" if trials[0].result != "skipped" else trials[0].detail
    said = next((t.facts["error"] for t in trials if t.facts.get("error")), "")
    return f"{how}; {said}" if said else how


def _load_row(load) -> dict:
    statuses = ", ".join(f"{status}: {count}" for status, count in sorted(load.statuses.items()) if status != "200")
    note = f"answered (200) {load.answered}, refused explicitly {load.refused} ({statuses}); healthy after: {'yes' if load.healthy_after else 'NO'}"
    if load.failures:
        note += f"; first no-answers: {'; '.join(load.failures)}"
    return {"kind": "concurrent load", "tool": "spec-bench serve", "trials": load.answered + load.refused + load.no_answer,
            "ok": load.answered + load.refused, "different": 0, "lost": load.no_answer, "bad_error": 0 if load.healthy_after else 1,
            "skipped": 0, "note": note}  # fmt: skip


def summary_table(rows: list[dict]) -> Table:
    table = Table(title="chaos: fault trials (lost = output missing, unreadable or rerun failed; for load, no answer)")
    for name in ("kind", "tool", *COLUMNS, "note"):
        table.add_column(name.replace("_", " "), justify="right" if name in COLUMNS else "left", overflow="fold")
    for row in rows:
        table.add_row(row["kind"], row["tool"], *(str(row[c]) for c in COLUMNS), row["note"])
    return table
