"""A write the system refuses (a full disk, a file-size limit, a read-only folder) is a one-line
error and exit 1, never a traceback, and the file being written is named.

Regression tests for what `./just chaos` found (issue 16): an ENOSPC in spec-gen-hidden's shard
writer and safetensors' own error type in spec-train's checkpoint writer both escaped as tracebacks.
RLIMIT_FSIZE stands in for a full disk here (it needs no root): writes past it fail with EFBIG.
"""

from __future__ import annotations

import errno
import os
import resource
import signal
import subprocess
import sys
from pathlib import Path

import torch

from libspec.format.atomic import write_bytes_atomic
from libspec.format.checkpoint import save_safetensors
from tiny_chat import conversations, write_chat_verifier, write_jsonl
from verifier_data import make_dataset, make_verifier, pattern_records

REPO = Path(__file__).resolve().parent.parent
LIMIT_BYTES = 20_000  # smaller than one checkpoint and one hidden-state shard of these runs


def limited_writes():
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG instead of death by signal
    resource.setrlimit(resource.RLIMIT_FSIZE, (LIMIT_BYTES, LIMIT_BYTES))


def run_limited(*args) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE"}
    return subprocess.run([sys.executable, "-m", *args], cwd=REPO, env=env, capture_output=True, text=True, preexec_fn=limited_writes, timeout=300)


def assert_one_line_error(result: subprocess.CompletedProcess, path_part: str) -> None:
    assert result.returncode == 1, result.stderr[-2000:]
    assert "Traceback" not in result.stderr, result.stderr[-2000:]
    errors = [line for line in result.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1 and path_part in errors[0] and "File too large (errno 27)" in errors[0], result.stderr[-2000:]


def test_an_atomic_write_that_fails_names_the_file_and_leaves_no_temp_file(tmp_path):
    target = tmp_path / "shard.bin"
    pid = os.fork()
    if pid == 0:  # the limit applies to this child only
        limited_writes()
        try:
            write_bytes_atomic(target, b"x" * (LIMIT_BYTES + 1))
        except OSError as error:
            os._exit(0 if error.errno == errno.EFBIG and error.filename == str(target) else 3)
        os._exit(4)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert list(tmp_path.iterdir()) == []


def test_a_safetensors_write_that_fails_is_an_os_error_naming_the_file(tmp_path):
    pid = os.fork()
    if pid == 0:
        limited_writes()
        try:
            save_safetensors({"w": torch.zeros(LIMIT_BYTES)}, tmp_path / "staging.safetensors", {}, shown_as=tmp_path / "final.safetensors")
        except OSError as error:
            os._exit(0 if error.errno == errno.EFBIG and error.filename == str(tmp_path / "final.safetensors") else 3)
        os._exit(4)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0


def test_spec_gen_hidden_on_a_full_disk_says_so_in_one_line(tmp_path):
    verifier = write_chat_verifier(tmp_path / "verifier", "chatml")
    data = write_jsonl(tmp_path / "in.jsonl", conversations(30))
    result = run_limited("tools.spec_gen_hidden", "--verifier", str(verifier), "--data", str(data), "-o", str(tmp_path / "out"),
                         "--storage-dtype", "float32", "--quiet")  # fmt: skip
    assert_one_line_error(result, str(tmp_path / "out"))


def test_spec_train_on_a_full_disk_says_so_in_one_line(tmp_path):
    verifier = make_verifier(tmp_path / "verifier", head_scale=3.0)
    data = make_dataset(verifier, tmp_path / "data", pattern_records(8, 64))
    result = run_limited("tools.spec_train", "--data", str(data), "--verifier", str(verifier), "-o", str(tmp_path / "run"),
                         "--epochs", "1", "--save-dtype", "float32")  # fmt: skip
    assert_one_line_error(result, str(tmp_path / "run"))
