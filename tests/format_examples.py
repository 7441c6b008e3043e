"""Writes formats/examples/: one small, real example of every artifact in SPEC.md.

Run `./just format-examples` after changing the format; tests/test_format_examples.py checks the
committed examples still validate and are exactly what this script writes.
"""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path

import safetensors.torch
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from conftest import random_checkpoint_tensors, random_samples, write_fake_verifier  # noqa: E402

from libspec.format import checkpoint as ckpt  # noqa: E402
from libspec.algorithms.eagle3 import config as eagle3  # noqa: E402
from libspec.format.dataset import DatasetWriter  # noqa: E402
from libspec.verifier import fingerprint_verifier  # noqa: E402
from libspec.format.sample import make_header  # noqa: E402
from libspec.format.stream import StreamReader, StreamWriter  # noqa: E402

CREATED_AT = "2026-01-01T00:00:00Z"
EXAMPLE_VERIFIER = {
    "architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": 64, "hidden_size": 8,
    "intermediate_size": 16, "num_hidden_layers": 4, "num_attention_heads": 2, "num_key_value_heads": 1,
    "head_dim": 4, "max_position_embeddings": 64, "rms_norm_eps": 1e-6, "rope_theta": 10000.0,
}  # fmt: skip


def example_header(work: Path, dtype: str) -> dict:
    folder = write_fake_verifier(work / "verifier", EXAMPLE_VERIFIER)
    # One small weight file, so the fingerprint shows a weights digest (SPEC.md §3).
    weight = torch.arange(64 * 8, dtype=torch.float32).reshape(64, 8) / 512
    safetensors.torch.save_file({"model.embed_tokens.weight": weight}, str(folder / "model.safetensors"), metadata={"format": "pt"})
    verifier = fingerprint_verifier(str(folder))
    verifier = type(verifier)(**{**verifier.to_dict(), "name_or_path": "examples/tiny-llama"})
    return make_header(verifier, [2, 3, 4], dtype, tool="format-examples", metadata={"note": "random values"}, created_at=CREATED_AT)


def write_examples(out: Path, work: Path) -> None:
    """Write every example into `out` (which must not exist yet)."""
    out.mkdir(parents=True)
    samples = random_samples(3, vocab=64, layers=3, hidden=8, seed=7, max_len=6)
    header = example_header(work, "bfloat16")
    writer = DatasetWriter(out / "dataset", header, shard_bytes=120)
    for record, hidden in samples:
        writer.add(record, hidden)
    writer.close()
    (out / "record.json").write_text(json.dumps(samples[0][0], indent=2) + "\n")
    (out / "tensor-shard-metadata.json").write_text(
        json.dumps({"format": "spec-tools/hidden-states", "format_version": "1", "layer_ids": "[2, 3, 4]", "num_records": "2"}, indent=2) + "\n"
    )
    for name, dtype in (("stream.spst", "bfloat16"), ("stream-fp8.spst", "float8_e4m3fn")):
        with open(out / name, "wb") as handle:
            stream = StreamWriter(handle, example_header(work, dtype))
            for record, hidden in samples:
                stream.add(record, hidden)
            stream.close()
    (out / "stream-frames.json").write_text(json.dumps(stream_frames_as_json(out / "stream.spst"), indent=2) + "\n")
    options = eagle3.Eagle3Options(aux_layer_ids=(2, 3, 4), draft_vocab_size=48)
    config = eagle3.make_config(EXAMPLE_VERIFIER, "meta-llama/Llama-3.2-1B-Instruct", options)
    ckpt.write_checkpoint(out / "checkpoint-eagle3", config, random_checkpoint_tensors(config, seed=7))
    (out / "bench-report.json").write_text(json.dumps(example_bench_report(example_header(work, "bfloat16")), indent=2) + "\n")


def example_bench_report(header: dict) -> dict:
    """A spec-bench report with made-up raw counts (the shape is real; derived figures come from derive())."""
    from libspec.bench.measure import BenchSettings, best_k, derive, isolated_cost_figures, report_header

    settings = BenchSettings((1, 2), max_new_tokens=64, cost_repeats=3)
    report = report_header(settings, torch.device("cpu"), torch.float32, header["verifier"], None, "spec-bench --verifier ... (example)")
    report.update(created_at=CREATED_AT, hardware="example CPU, 1 torch thread(s)", torch_version="2.x")
    report["speculator"] = {"path": "examples/checkpoint-eagle3", "algorithm": "eagle3", "aux_layer_ids": [2, 3, 4], "draft_layers": 1, "draft_vocab_size": 48, "speculative_tokens": 3}
    baseline = {"histogram": [], "tokens": 640, "prompts": 10, "seconds": {"prefill": 0.05, "decode": 2.52}, "calls": {"prefill": 10, "decode": 630}, "mismatched_prompts": []}
    costs = {"context_tokens": [41, 41, 57], "draft_step_s": [0.0006, 0.0007, 0.0006],
             "forward_s": {str(n): [round(0.004 + 0.0006 * (n > 1) + 0.0001 * n + 0.0001 * i, 6) for i in range(3)] for n in range(1, 9)}}
    runs = []
    for k, histogram in ((1, [180, 230]), (2, [110, 110, 100])):
        raw = {"histogram": histogram, "tokens": 640, "prompts": 10, "calls": {},
               "seconds": {"prefill": 0.07, "draft": 0.3 * k, "verify": 1.9, "accept": 0.05}, "mismatched_prompts": []}
        runs.append({"k": k, **raw, "derived": derive(k, raw, baseline, greedy=True, isolated_costs=costs)})
    report["prompt_sets"] = [{"name": "code", "path": "code.jsonl", "num_prompts": 10, "baseline": baseline, "runs": runs, "best_k": best_k(runs),
                              "isolated_costs": {**costs, "derived": isolated_cost_figures(costs)}}]
    return report


def stream_frames_as_json(path: Path) -> list[dict]:
    """The frames of a stream shown as JSON (binary fields as hex), for people reading SPEC.md."""
    data = path.read_bytes()
    reader = StreamReader(io.BytesIO(data))
    frames = [{"type": "header", **reader.header}]
    for sample in reader:
        raw = sample.hidden.contiguous().view(torch.uint8).numpy().tobytes()
        frames.append({"type": "sample", "record": sample.record, "hidden": raw[:16].hex() + "...", "scales": None})
    frames.append(reader.end)
    return frames


if __name__ == "__main__":
    import shutil
    import tempfile

    target = Path(sys.argv[1] if len(sys.argv) > 1 else "formats/examples")
    with tempfile.TemporaryDirectory() as tmp:
        write_examples(Path(tmp) / "examples", Path(tmp) / "work")
        shutil.rmtree(target, ignore_errors=True)
        shutil.copytree(Path(tmp) / "examples", target)
    print(target)
