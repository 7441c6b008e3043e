"""`./just chaos` (tools/chaos), kept from rotting: its comparisons can fail, and a short campaign
on spec-gen-hidden runs end to end (2 kill -9 trials, 1 disk-full, 1 read-only; ~25 s).
The full campaign (100 kills per tool, spec-train, concurrent load) is `./just chaos`, not CI."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from tools.chaos.campaign import MARKER, fresh_work_folder
from tools.chaos.load import BAD, GOOD, _is_error_document, _request
from tools.chaos.workloads import DIFFERENT, LOST, OK, GenHidden, Inputs

REPO = Path(__file__).resolve().parent.parent
DATASET = REPO / "formats" / "examples" / "dataset"


def test_the_data_set_comparison_sees_a_flipped_byte_a_stray_file_and_a_lost_manifest(tmp_path):
    workload = GenHidden(Inputs(Path("v"), Path("c"), Path("d")))
    copy = shutil.copytree(DATASET, tmp_path / "copy")
    manifest = copy / "manifest.json"
    manifest.write_text(manifest.read_text().replace(json.loads(manifest.read_text())["created_at"], "2000-01-01T00:00:00Z"))
    assert workload.compare(DATASET, copy).result == OK  # when the run began may differ, nothing else
    shard = next(copy.glob("hidden-*.safetensors"))
    original = shard.read_bytes()
    shard.write_bytes(original[:-1] + bytes([original[-1] ^ 1]))
    verdict = workload.compare(DATASET, copy)
    assert verdict.result == DIFFERENT and shard.name in verdict.detail
    assert workload.committed_problems(DATASET, copy) == [f"{shard}: differs from the reference's shard of that name"]
    shard.write_bytes(original)
    (copy / ".records-00000.msgpack.zst.x.tmp").write_bytes(b"")
    assert workload.compare(DATASET, copy).result == DIFFERENT
    assert workload.committed_problems(DATASET, copy) == [f"{copy}/.records-00000.msgpack.zst.x.tmp: a temp file left behind"]
    manifest.unlink()
    assert workload.compare(DATASET, copy).result == LOST


def test_load_bursts_mix_good_and_bad_requests_and_only_error_documents_count_as_refusals():
    names = [_request(number)[0] for number in range(25)]
    assert sum(name in {n for n, _, _ in BAD} for name in names) == 5 and {n for n, _, _ in GOOD} <= set(names)
    assert _is_error_document(b'{"error": {"message": "queue full", "type": "x", "param": null, "code": 503}}')
    assert not _is_error_document(b"Internal Server Error") and not _is_error_document(b'{"detail": "x"}')


def test_a_short_campaign_on_spec_gen_hidden_passes_and_reports_every_trial(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE", "TOKENIZERS_PARALLELISM": "false"}
    command = [sys.executable, "-m", "tools.chaos", "--trials", "2", "--space-trials", "1", "--bursts", "0",
               "--tools", "spec-gen-hidden", "--work", str(tmp_path / "work"), "--json"]  # fmt: skip
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout)
    rows = {row["kind"]: row for row in report["rows"]}
    assert set(rows) == {"kill -9", "disk full", "read-only"} and report["ok"]
    assert rows["kill -9"]["trials"] == rows["kill -9"]["ok"] == 2
    assert rows["disk full"]["ok"] == 1 and rows["read-only"]["ok"] + rows["read-only"]["skipped"] == 1
    disk_full = next(t for t in report["trials"] if t["kind"] == "disk full")
    assert "error:" in disk_full["facts"]["error"] and ("No space left" in disk_full["facts"]["error"] or "File too large" in disk_full["facts"]["error"])
    assert (tmp_path / "work" / "chaos.log").read_text().count("[kill -9 spec-gen-hidden") == 2


def test_the_working_folder_is_emptied_when_chaos_made_it_and_refused_otherwise(tmp_path):
    work = fresh_work_folder(tmp_path / "work")
    (work / "old-trial.log").write_text("x")
    assert list(fresh_work_folder(work).iterdir()) == [work / MARKER]


def test_a_folder_chaos_did_not_make_is_refused(tmp_path):
    (tmp_path / "mine.txt").write_text("keep")
    result = subprocess.run([sys.executable, "-m", "tools.chaos", "--work", str(tmp_path)], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 1 and "was not made by chaos" in result.stderr and "Traceback" not in result.stderr
    assert (tmp_path / "mine.txt").read_text() == "keep"
