"""spec-gen-hidden end to end: data sets, streams, shards, resume after kill -9, regeneration, backends."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
import types
from pathlib import Path

import pytest
import torch
from tiny_chat import conversations, loaded_verifier, write_chat_verifier, write_jsonl

from libspec.capture.chat import ChatRenderer
from libspec.capture.hooks import HiddenStateCapture
from libspec.capture.inputs import RawItem, normalise
from libspec.format.dataset import Dataset
from libspec.errors import SpecError
from libspec.format.stream import StreamReader
from libspec.validate.artifacts import validate
from tools._cli import run as run_tool
from tools.spec_gen_hidden import main

ROOT = Path(__file__).resolve().parent.parent
ODD_INPUTS = [
    {"text": "def add(a, b): return a + b"},
    {"prompt": "import os", "completion": "\nprint(os.getcwd())"},
    {"input_ids": [1, 2, 3, 4], "loss_mask": [0, 0, 1, 1]},
    "not json",
    {"messages": [{"role": "user", "content": "no reply"}]},
]


@pytest.fixture(scope="module")
def verifier_dir(tmp_path_factory) -> Path:
    return write_chat_verifier(tmp_path_factory.mktemp("verifier") / "v", "chatml")


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> Path:
    return write_jsonl(tmp_path_factory.mktemp("inputs") / "in.jsonl", conversations(30) + ODD_INPUTS)


def run_json(capsys, *argv) -> dict:
    assert main(["--quiet", "--json", *map(str, argv)]) == 0
    return json.loads(capsys.readouterr().out)


def samples_by_id(source) -> dict[str, tuple[dict, torch.Tensor]]:
    return {s.record["id"]: (s.record, s.hidden_states()) for s in source}


def test_data_set_holds_the_verifiers_hidden_states_at_the_default_layers(capsys, tmp_path, verifier_dir, inputs):
    summary = run_json(capsys, "--verifier", verifier_dir, "--data", inputs, "-o", tmp_path / "out", "--skip-bad", "--storage-dtype", "float32", "--dtype", "float32", "--window", "8")
    assert summary["dropped"] == {"bad_input": 1, "no_assistant_turn": 1}
    assert summary["inputs_read"] == 35 and summary["records_written"] == 33 and summary["first_errors"][0].endswith("in.jsonl:34: not valid JSON: Expecting value at column 1")
    assert validate(str(tmp_path / "out")).ok
    dataset = Dataset(tmp_path / "out")
    assert dataset.layer_ids == [1, 2, 4]  # EAGLE-3's [2, n//2, n-3] made valid for n = 4, plus n
    assert summary["bytes_written"] == sum(f.stat().st_size for f in (tmp_path / "out").iterdir())
    assert dataset.manifest["metadata"]["gen_hidden"]["options"]["window"] == 8
    verifier = loaded_verifier(str(verifier_dir))
    direct = HiddenStateCapture(verifier.model, [1, 2, 4], 4)
    kinds = set()
    for sample in dataset:
        (expected,) = direct.capture([sample.record["input_ids"]])  # alone, unpadded
        torch.testing.assert_close(sample.hidden_states(), expected, rtol=1e-5, atol=1e-5)
        kinds.add(sample.record["metadata"]["kind"])
    assert kinds == {"messages", "text", "prompt_completion", "tokens"}
    tokens = next(s for s in dataset if s.record["metadata"]["kind"] == "tokens").record
    assert tokens["input_ids"] == [1, 2, 3, 4] and tokens["loss_mask"] == [0, 0, 1, 1]  # passed through


def test_stream_on_stdout_carries_the_same_samples(capsysbinary, tmp_path, verifier_dir, inputs):
    argv = ["--quiet", "--json", "--verifier", str(verifier_dir), "--data", str(inputs), "--skip-bad", "--storage-dtype", "float8_e4m3fn"]
    assert main([*argv, "-o", str(tmp_path / "out")]) == 0
    capsysbinary.readouterr()
    assert main([*argv, "-o", "-"]) == 0
    captured = capsysbinary.readouterr()
    reader = StreamReader(io.BytesIO(captured.out), "stdout")  # stdout holds the stream and nothing else
    streamed = samples_by_id(reader)
    assert reader.end is not None
    stored = samples_by_id(Dataset(tmp_path / "out"))
    assert streamed.keys() == stored.keys()
    for key, (record, hidden) in stored.items():
        assert streamed[key][0] == record
        torch.testing.assert_close(streamed[key][1], hidden, rtol=0, atol=0)
    summary = json.loads(captured.err.decode().strip().splitlines()[-1])  # the summary went to stderr
    assert summary["records_written"] == len(stored) and summary["bytes_written"] == len(captured.out)


def test_shards_partition_the_inputs_and_merge_back(capsys, tmp_path, verifier_dir, inputs):
    common = ["--verifier", verifier_dir, "--data", inputs, "--skip-bad", "--storage-dtype", "float32", "--dtype", "float32"]
    whole = run_json(capsys, *common, "-o", tmp_path / "whole")
    parts = [run_json(capsys, *common, "--shard-index", i, "--num-shards", 3, "-o", tmp_path / f"part{i}") for i in range(3)]
    ids = [set(samples_by_id(Dataset(tmp_path / f"part{i}"))) for i in range(3)]
    for i, part_ids in enumerate(ids):
        assert all(int(record_id.split(".")[0]) % 3 == i for record_id in part_ids)
    assert not (ids[0] & ids[1]) and not (ids[0] & ids[2]) and not (ids[1] & ids[2])
    assert sum(p["inputs_read"] for p in parts) == whole["inputs_read"] == 35
    assert all(p["inputs_read"] + p["inputs_other_shards"] == 35 for p in parts)
    assert sum(sum(p["dropped"].values()) for p in parts) == sum(whole["dropped"].values())

    merged = run_json(capsys, "--merge", tmp_path / "part2", tmp_path / "part0", tmp_path / "part1", "-o", tmp_path / "merged")
    assert merged["num_records"] == whole["records_written"]
    assert validate(str(tmp_path / "merged")).ok
    got, want = samples_by_id(Dataset(tmp_path / "merged")), samples_by_id(Dataset(tmp_path / "whole"))
    assert got.keys() == want.keys()
    for key in want:
        assert got[key][0] == want[key][0]
        torch.testing.assert_close(got[key][1], want[key][1], rtol=1e-5, atol=1e-6)  # other batches: float noise only
    manifest = Dataset(tmp_path / "merged").manifest
    assert [m["path"] for m in manifest["metadata"]["merged_from"]] == [str(tmp_path / f"part{i}") for i in range(3)]  # shard order
    assert manifest["metadata"]["counts"]["records_written"] == whole["records_written"]
    with pytest.raises(SpecError, match=r"shard indices \[1\] of 3 are missing"):
        main(["--merge", str(tmp_path / "part0"), str(tmp_path / "part2"), "-o", str(tmp_path / "partial")])


@pytest.mark.slow  # a real subprocess (imports torch + transformers) and two more runs: ~10 s
def test_kill_9_mid_run_then_rerun_gives_the_identical_data_set(capsys, tmp_path, verifier_dir):
    data = write_jsonl(tmp_path / "many.jsonl", conversations(120, seed=5) + ["broken line"] * 3)
    argv = ["--verifier", str(verifier_dir), "--data", str(data), "--skip-bad", "--window", "4", "--shard-mb", "0.01", "--threads", "1"]
    killed = tmp_path / "killed"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    process = subprocess.Popen([sys.executable, "-m", "tools.spec_gen_hidden", *argv, "--quiet", "-o", str(killed)], cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    manifest_path, state = killed / "manifest.json", None
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None:
        try:
            state = json.loads(manifest_path.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            state = None
        if state and len(state["shards"]) >= 3:
            process.send_signal(signal.SIGKILL)
            break
        time.sleep(0.005)
    process.wait()
    assert process.returncode == -signal.SIGKILL, process.stderr.read().decode()[-2000:]
    assert not state["complete"]  # killed mid-run, after some shards were committed

    resumed = run_json(capsys, *argv, "-o", killed)
    fresh = run_json(capsys, *argv, "-o", tmp_path / "fresh")
    for key in ("inputs_read", "records_written", "tokens_written", "supervised_tokens", "dropped", "first_errors", "bytes_written"):
        assert resumed[key] == fresh[key], key
    a, b = Dataset(killed), Dataset(tmp_path / "fresh")
    assert [(s["records_sha256"], s["tensors_sha256"]) for s in a.manifest["shards"]] == [(s["records_sha256"], s["tensors_sha256"]) for s in b.manifest["shards"]]
    assert a.fingerprint == b.fingerprint and a.num_records == b.num_records == 120
    assert sorted(p.name for p in killed.iterdir()) == sorted(p.name for p in (tmp_path / "fresh").iterdir())  # no leftovers
    assert run_json(capsys, *argv, "-o", killed)["already_complete"]  # a third run has nothing to do


def test_rerun_with_other_options_is_refused(capsys, tmp_path, verifier_dir, inputs):
    argv = ["--verifier", str(verifier_dir), "--data", str(inputs), "--skip-bad", "-o", str(tmp_path / "out")]
    run_json(capsys, *argv)
    with pytest.raises(SpecError, match=r"was made with different options \(max_len: None then, 64 now\)"):
        main([*argv, "--max-len", "64"])
    with pytest.raises(SpecError, match="field hidden_states differs"):
        main([*argv, "--layers", "0,4"])


def test_rerun_into_a_data_set_without_a_weights_digest_is_refused_saying_why(capsys, tmp_path, verifier_dir, inputs):
    """A data set begun before the verifier fingerprint had a weights digest is not continued with one."""
    argv = ["--verifier", str(verifier_dir), "--data", str(inputs), "--skip-bad", "-o", str(tmp_path / "out")]
    run_json(capsys, *argv)
    manifest_path = tmp_path / "out" / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    del manifest["verifier"]["weights"]
    manifest_path.write_text(json.dumps(manifest))
    with pytest.raises(SpecError, match=r"manifest.json: field verifier records no weights digest \(an older spec-tools made it\)"):
        main(argv)


def test_bad_input_stops_the_run_with_file_and_line(tmp_path, verifier_dir, inputs):
    with pytest.raises(SpecError, match=r"in.jsonl:34: not valid JSON"):
        main(["--quiet", "--verifier", str(verifier_dir), "--data", str(inputs), "-o", str(tmp_path / "out")])
    with pytest.raises(SpecError, match=r"--layers 0,5: expected ascending distinct ids within \[0, 4\]"):
        main(["--quiet", "--verifier", str(verifier_dir), "--data", str(inputs), "--layers", "0,5", "-o", str(tmp_path / "other")])


def test_regenerate_end_to_end_and_max_len(capsys, tmp_path, verifier_dir):
    data = write_jsonl(tmp_path / "chats.jsonl", conversations(6))
    argv = ["--verifier", verifier_dir, "--data", data, "--regenerate", "--max-new-tokens", "5", "--temperature", "0.8", "--seed", "3", "--max-len", "60"]
    summary = run_json(capsys, *argv, "-o", tmp_path / "a")
    run_json(capsys, *argv, "-o", tmp_path / "b")
    a, b = Dataset(tmp_path / "a"), Dataset(tmp_path / "b")
    assert a.fingerprint == b.fingerprint  # same seed, same data set
    for sample in a:
        record = sample.record
        assert record["metadata"]["regenerated"] and len(record["input_ids"]) <= 60
        assert sum(record["loss_mask"]) <= 5 * len(record["metadata"]["finish_reasons"])
    inputs_with_records = {sample.record["id"].split(".")[0] for sample in a}
    assert set(summary["dropped"]) <= {"prompt_too_long"}  # max-len 60 leaves some prompts no room
    assert len(inputs_with_records) + sum(summary["dropped"].values()) == 6


PROMPT_ONLY = [  # issue 12: one prompt-only input per accepted format (text and tokens have no prompt/reply split)
    {"messages": [{"role": "user", "content": "hello quick fox"}]},
    {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "def add code please"}]},
    {"conversations": [{"from": "human", "value": "print hello"}]},
    {"system": "Be brief.", "conversations": [{"from": "human", "value": "lazy dog"}]},
    {"prompt": "import os"},
    {"prompt": "def add(a, b):", "completion": ""},
]


def test_issue_12_regenerate_answers_prompt_only_inputs_in_every_format(capsys, tmp_path, verifier_dir):
    data = write_jsonl(tmp_path / "prompts.jsonl", PROMPT_ONLY)
    summary = run_json(capsys, "--verifier", verifier_dir, "--data", data, "--regenerate", "--max-new-tokens", "4", "-o", tmp_path / "out")
    assert summary["records_written"] == len(PROMPT_ONLY) and not summary["dropped"]
    assert validate(str(tmp_path / "out")).ok
    verifier = loaded_verifier(str(verifier_dir))
    renderer = ChatRenderer(verifier.tokenizer, stop_token_ids=verifier.stop_token_ids)
    for sample in Dataset(tmp_path / "out"):
        record = sample.record
        source = normalise(RawItem(0, "x", 1, PROMPT_ONLY[int(record["id"])]), prompt_only=True)
        if source.kind == "messages":
            prompt = renderer.render_ids(source.messages, True)
            assert record["metadata"]["turns"] == [len(source.messages)]  # the verifier's answer, after the last user turn
        else:
            prompt = verifier.tokenizer(source.prompt)["input_ids"]
        generated = len(record["input_ids"]) - len(prompt)
        assert record["input_ids"][: len(prompt)] == prompt and 1 <= generated <= 4
        assert record["loss_mask"] == [0] * len(prompt) + [1] * generated  # exactly the verifier's tokens supervised
        assert record["metadata"]["regenerated"] and len(record["metadata"]["finish_reasons"]) == 1


def test_issue_12_prompt_only_inputs_without_regenerate_fail_saying_why(capsys, tmp_path, verifier_dir):
    chats = write_jsonl(tmp_path / "chats.jsonl", PROMPT_ONLY[:4])
    argv = ["--quiet", "--verifier", str(verifier_dir), "--data", str(chats), "-o", str(tmp_path / "out")]
    with pytest.raises(SystemExit) as exit_info:
        run_tool(main, argv)  # as the console script runs it
    assert exit_info.value.code == 1
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.endswith("no records written to " + str(tmp_path / "out") + ": all 4 inputs skipped: no_assistant_turn (4); pass --regenerate to have the verifier answer prompt-only inputs")
    with pytest.raises(SpecError, match="all 4 inputs skipped") as raised:
        main([*argv[1:], "--json"])  # a rerun finds the data set complete, and empty: still a failure
    assert raised.value.summary["already_complete"] and json.loads(capsys.readouterr().out)["records_written"] == 0  # the summary came first
    assert "chats.jsonl:1: no assistant turn to learn from; --regenerate has the verifier answer" in raised.value.summary["first_errors"][0]

    prompts = write_jsonl(tmp_path / "prompts.jsonl", PROMPT_ONLY[4:])
    argv = ["--quiet", "--verifier", str(verifier_dir), "--data", str(prompts)]
    with pytest.raises(SpecError, match=r"prompts.jsonl:1: field completion: expected a non-empty string; a prompt alone needs --regenerate"):
        main([*argv, "-o", str(tmp_path / "refused")])
    with pytest.raises(SpecError, match=r"all 2 inputs skipped: bad_input \(2\); first: .*prompts.jsonl:1: .*a prompt alone needs --regenerate"):
        main([*argv, "--skip-bad", "-o", str(tmp_path / "skipped")])


def test_issue_12_an_empty_data_set_or_stream_never_exits_0(capsysbinary, tmp_path, verifier_dir):
    empty = write_jsonl(tmp_path / "empty.jsonl", [])
    with pytest.raises(SpecError, match=r"no records written to stdout: the inputs \(.*empty.jsonl\) hold no item"):
        main(["--quiet", "--verifier", str(verifier_dir), "--data", str(empty), "-o", "-"])
    few = write_jsonl(tmp_path / "few.jsonl", conversations(2))
    with pytest.raises(SpecError, match="shard 2 of 3 got no input item; use fewer shards"):
        main(["--quiet", "--verifier", str(verifier_dir), "--data", str(few), "--shard-index", "2", "--num-shards", "3", "-o", str(tmp_path / "part2")])
    assert main(["--quiet", "--verifier", str(verifier_dir), "--data", str(few), "--shard-index", "1", "--num-shards", "3", "-o", str(tmp_path / "part1")]) == 0


def test_vllm_backend_with_a_stand_in_engine_writes_the_same_data_set(capsys, tmp_path, verifier_dir, inputs, monkeypatch):
    """Our side of --backend vllm (engine options, file reading, checks) against a stand-in for vLLM.

    The stand-in does what vLLM's extract_hidden_states + ExampleHiddenStatesConnector do: one
    safetensors file per request with hidden_states [T, L, H] and token_ids, its path returned in
    kv_transfer_params. Real vLLM is not needed (nor installable here: it needs a GPU build).
    """
    from safetensors.torch import save_file

    seen = {}

    class LLM:
        def __init__(self, model, dtype, enable_chunked_prefill, speculative_config, kv_transfer_config):
            seen.update(speculative=speculative_config, transfer=kv_transfer_config, chunked=enable_chunked_prefill)  # a dict: the stand-in has no vllm.config
            layer_ids = speculative_config["draft_model_config"]["hf_config"]["eagle_aux_hidden_state_layer_ids"]
            self.capture = HiddenStateCapture(loaded_verifier(model).model, layer_ids, 4)
            self.storage = Path(kv_transfer_config["kv_connector_extra_config"]["shared_storage_path"])

        def generate(self, prompts, sampling, use_tqdm):
            outputs = []
            for prompt in prompts:
                ids = prompt["prompt_token_ids"]
                path = self.storage / f"req-{len(list(self.storage.iterdir()))}.safetensors"
                save_file({"hidden_states": self.capture.capture([ids])[0].contiguous(), "token_ids": torch.tensor(ids)}, str(path))
                outputs.append(types.SimpleNamespace(kv_transfer_params={"hidden_states_path": str(path)}))
            return outputs

    monkeypatch.setitem(sys.modules, "vllm", types.SimpleNamespace(LLM=LLM, SamplingParams=lambda max_tokens: None))
    common = ["--verifier", verifier_dir, "--data", inputs, "--skip-bad", "--storage-dtype", "float32", "--dtype", "float32"]
    run_json(capsys, *common, "--backend", "vllm", "-o", tmp_path / "vllm")
    run_json(capsys, *common, "-o", tmp_path / "hf")
    assert seen["speculative"]["method"] == "extract_hidden_states" and seen["transfer"]["kv_connector"] == "ExampleHiddenStatesConnector"
    assert seen["chunked"] is False
    got, want = samples_by_id(Dataset(tmp_path / "vllm")), samples_by_id(Dataset(tmp_path / "hf"))
    assert got.keys() == want.keys()
    for key in want:
        assert got[key][0] == want[key][0]
        torch.testing.assert_close(got[key][1], want[key][1], rtol=1e-5, atol=1e-6)


def test_usage_errors_exit_2_and_help_explains(capsys, tmp_path):
    for argv, status in ((["--version"], 0), (["--help"], 0), (["--data", "x", "-o", "y"], 2), (["--data", "x", "--merge", "y", "-o", "z"], 2), (["--verifer", "v", "--data", "x", "-o", "y"], 2)):
        with pytest.raises(SystemExit) as exit_info:
            main(argv)
        assert exit_info.value.code == status, argv
    output = capsys.readouterr()
    assert "--regenerate" in output.out and "--shard-index" in output.out
    assert "--verifier is required" in output.err and "did you mean --verifier?" in output.err


def test_human_summary_is_a_few_lines_not_json(capsys, tmp_path, verifier_dir, inputs):
    argv = ["--quiet", "--verifier", str(verifier_dir), "--data", str(inputs), "--skip-bad", "-o", str(tmp_path / "out")]
    assert main(argv) == 0
    err = capsys.readouterr().err
    assert "records" in err and "supervised" in err and str(tmp_path / "out") in err.replace("\n", "")
    assert not err.lstrip().startswith("{")
    assert main(argv) == 0  # a rerun says so
    assert "already complete" in capsys.readouterr().err


def test_issue_16_binary_overlong_and_deeply_nested_lines_are_counted_and_skipped_with_skip_bad(capsys, tmp_path, verifier_dir, monkeypatch):
    import libspec.capture.inputs as inputs_module

    monkeypatch.setattr(inputs_module, "MAX_LINE_BYTES", 4096)  # the 8 MiB limit, scaled down
    good = [json.dumps(c).encode() for c in conversations(3)]
    bad = [b"\x89PNG\r\x00\xff\xfe", json.dumps({"text": "a" * 10_000}).encode(), b"[" * 2000 + b"]" * 2000]
    path = tmp_path / "in.jsonl"
    path.write_bytes(b"\n".join([good[0], bad[0], good[1], bad[1], bad[2], good[2]]) + b"\n")
    summary = run_json(capsys, "--verifier", verifier_dir, "--data", path, "-o", tmp_path / "out", "--skip-bad")
    assert summary["inputs_read"] == 6 and summary["records_written"] == 3 and summary["dropped"] == {"bad_input": 3}
    assert [error.split("in.jsonl:")[1] for error in summary["first_errors"]] == [
        "2: not UTF-8 text (invalid start byte at byte 0)",
        "4: line longer than the 4 KiB limit (SPEC.md §9.1)",
        "5: not valid JSON: nested too deeply",
    ]
    with pytest.raises(SpecError, match=r"in.jsonl:2: not UTF-8 text"):
        main(["--quiet", "--verifier", str(verifier_dir), "--data", str(path), "-o", str(tmp_path / "strict")])
