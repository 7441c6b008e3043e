"""Benchmark spec-gen-hidden against a bare verifier forward, and the bytes per token it stores.

    ./just bench-gen                          # the built-in verifier (full preset), 300 inputs
    python -m tools.bench_gen_hidden --verifier DIR --records 500 --repeats 3

Side by side in one process, alternating, on the same inputs and the same batches:
- bare forward: the verifier's `model(input_ids, attention_mask)` (logits included) over the
  records spec-gen-hidden produced, batched exactly as spec-gen-hidden batches them;
- decoder only: the same without the LM head (what capture actually runs);
- spec-gen-hidden: the whole job from the JSONL file to a checksummed data set on disk (reading,
  chat templates, loss masks, capture, bf16 encoding, shard writing, fsync), model load excluded
  (reported apart).
Then bytes per token on disk for bf16 and fp8 data sets, for upstream speculators' layout (one
uncompressed safetensors file per sample with `hidden_states [T, n_aux+1, H]` bf16 and
`token_ids` int64, written here the way its ExampleHiddenStatesConnector writes them), and what
zstd would save on the tensor shards.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import shutil  # noqa: E402
import statistics  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Sequence  # noqa: E402

import torch  # noqa: E402
import zstandard  # noqa: E402
from rich.table import Table  # noqa: E402

from libspec.capture.hooks import BatchLimits, plan_batches  # noqa: E402
from libspec.demo.corpus import CorpusOptions, write_corpus_conversations  # noqa: E402
from libspec.format.dataset import Dataset  # noqa: E402
from libspec.capture.gen_hidden import GenHiddenConfig, generate_hidden_states  # noqa: E402
from libspec.verifier import load_model, load_verifier  # noqa: E402
from tools._cli import EXIT_OK, make_parser, print_json, run, stdout  # noqa: E402


def verifier_and_files(args) -> tuple[Path, Path, list[Path]]:
    """The verifier folder and the corpus files to cut inputs from (its training split when built-in)."""
    if args.verifier:
        import sysconfig

        root = Path(sysconfig.get_paths()["stdlib"])
        return Path(args.verifier), root, sorted(root.glob("*.py"))
    from libspec.demo.corpus import verifier_training_files
    from libspec.demo.tiny_verifier import build_verifier

    root, files = verifier_training_files(args.preset, "train")
    return build_verifier(args.preset), root, files


def batches_as_gen_hidden_makes_them(dataset: Dataset, window: int, limits: BatchLimits) -> list[list[list[int]]]:
    """The token sequences of each forward batch spec-gen-hidden ran: per input window, planned by length."""
    by_window: dict[int, list[list[int]]] = {}
    for sample in dataset:
        input_index = int(sample.record["id"].split(".")[0])
        by_window.setdefault(input_index // window, []).append(sample.record["input_ids"])
    batches = []
    for _, sequences in sorted(by_window.items()):
        batches += [[sequences[i] for i in plan] for plan in plan_batches([len(s) for s in sequences], limits)]
    return batches


def padded(batch: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(s) for s in batch)
    ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for row, tokens in enumerate(batch):
        ids[row, : len(tokens)] = torch.tensor(tokens)
        mask[row, : len(tokens)] = 1
    return ids, mask


@torch.inference_mode()
def time_forward(module, batches: list[tuple[torch.Tensor, torch.Tensor]]) -> float:
    start = time.perf_counter()
    for ids, mask in batches:
        position_ids = torch.arange(ids.shape[1]).expand_as(ids)
        module(input_ids=ids, attention_mask=mask, position_ids=position_ids, use_cache=False)
    return time.perf_counter() - start


def upstream_layout_bytes(dataset: Dataset, directory: Path) -> int:
    """Write every sample as upstream stores it (one safetensors file each) and total the sizes."""
    from safetensors.torch import save_file

    directory.mkdir()
    total = 0
    for index, sample in enumerate(dataset):
        path = directory / f"hs_{index}.safetensors"
        save_file({"hidden_states": sample.hidden_states(torch.bfloat16).contiguous(), "token_ids": torch.tensor(sample.record["input_ids"], dtype=torch.int64)}, str(path))
        total += path.stat().st_size
    return total


def zstd_savings(dataset: Dataset, level: int, shuffle: bool) -> dict:
    """Size ratio and compress / decompress MB/s of zstd at `level` over the stored hidden states.

    With `shuffle`, each element's bytes are first grouped by position (all high bytes, then all
    low bytes): the float exponents then sit together, the best case for a byte compressor.
    """
    raw = packed = 0
    compress_s = decompress_s = 0.0
    compressor, decompressor = zstandard.ZstdCompressor(level=level), zstandard.ZstdDecompressor()
    for index in range(dataset.num_shards):
        hidden = dataset.shard_tensors(index).stored_hidden()
        data = hidden.contiguous().view(torch.uint8).view(-1, hidden.element_size())
        data = (data.t() if shuffle else data).contiguous().numpy().tobytes()
        start = time.perf_counter()
        frame = compressor.compress(data)
        middle = time.perf_counter()
        decompressor.decompress(frame)
        compress_s, decompress_s = compress_s + middle - start, decompress_s + time.perf_counter() - middle
        raw, packed = raw + len(data), packed + len(frame)
    mb = raw / 2**20
    return {"ratio": packed / raw, "compress_mb_per_s": mb / max(compress_s, 1e-9), "decompress_mb_per_s": mb / max(decompress_s, 1e-9)}


def data_bytes(directory: Path) -> int:
    return sum(p.stat().st_size for p in directory.iterdir() if p.is_file())


def main(argv: Sequence[str] | None = None) -> int:
    parser = make_parser("bench-gen-hidden", "spec-gen-hidden time per token vs a bare verifier forward, and bytes per token on disk.")
    parser.add_argument("--verifier", help="a verifier folder (default: the built-in verifier, --preset)")
    parser.add_argument("--preset", default="full", help="built-in verifier preset (default: full; built and cached on first use)")
    parser.add_argument("--records", type=int, default=300, help="input records cut from the corpus (default: 300)")
    parser.add_argument("--repeats", type=int, default=5, help="timed repetitions, in rotating order; median and fastest are reported (default: 5)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default: 1, the steadiest on a shared machine)")
    parser.add_argument("--dtype", default="auto", help="compute dtype (default: auto = float32 on CPU)")
    parser.add_argument("--window", type=int, default=256)
    parser.add_argument("--batch-tokens", type=int, default=8192)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    load_before = os.getloadavg()
    verifier_dir, root, files = verifier_and_files(args)
    work = Path(tempfile.mkdtemp(prefix="bench-gen-hidden-"))
    try:
        report = bench(args, verifier_dir, root, files, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    report["machine"] = {"cpus": os.cpu_count(), "load_avg_before": load_before, "load_avg_after": os.getloadavg(), "threads": args.threads}
    if args.json:
        print_json(report)
    else:
        show(report)
    return EXIT_OK


def bench(args, verifier_dir: Path, root: Path, files: list[Path], work: Path) -> dict:
    inputs = work / "inputs.jsonl"
    write_corpus_conversations(inputs, files, root, args.records, CorpusOptions())
    config = GenHiddenConfig(verifier=str(verifier_dir), inputs=(str(inputs),), output="", dtype=args.dtype, device="cpu", window=args.window, batch_tokens=args.batch_tokens)

    def gen(name: str, **options) -> dict:
        return generate_hidden_states(GenHiddenConfig(**{**config.__dict__, "output": str(work / name), **options}))

    gen("warmup")  # also the records whose batches the bare forward replays
    dataset = Dataset(work / "warmup")
    limits = BatchLimits(args.batch_tokens, config.batch_size)
    verifier = load_verifier(str(verifier_dir))
    model = load_model(verifier, "cpu", args.dtype)
    batches = [padded(b, verifier.pad_token_id) for b in batches_as_gen_hidden_makes_them(dataset, args.window, limits)]
    num_tokens = dataset.num_tokens
    padded_tokens = sum(ids.numel() for ids, _ in batches)
    timings: dict[str, list[float]] = {"bare": [], "decoder": [], "gen": [], "gen_total": []}

    def gen_timed(repeat: int) -> None:
        summary = gen(f"run{repeat}")
        timings["gen"].append(summary["capture_s"])
        timings["gen_total"].append(summary["elapsed_s"])
        shutil.rmtree(work / f"run{repeat}")

    steps = [
        lambda repeat: timings["bare"].append(time_forward(model, batches)),
        lambda repeat: timings["decoder"].append(time_forward(model.get_decoder(), batches)),
        gen_timed,
    ]
    for repeat in range(args.repeats):  # rotate the order so no variant always runs first or last
        for step in steps[repeat % 3 :] + steps[: repeat % 3]:
            step(repeat)
    median = {key: statistics.median(values) for key, values in timings.items()}
    fastest = {key: min(values) for key, values in timings.items()}
    fp8 = gen("fp8", storage_dtype="float8_e4m3fn")
    bf16_dir, fp8_dir = work / "warmup", work / "fp8"
    upstream = upstream_layout_bytes(dataset, work / "upstream")
    zstd = {
        f"{name}, level {level}{', byte-shuffled' if shuffle else ''}": zstd_savings(Dataset(path), level, shuffle)
        for name, path in (("bfloat16", bf16_dir), ("float8_e4m3fn", fp8_dir))
        for level in (1, 3)
        for shuffle in (False, True)
    }
    return {
        "verifier": str(verifier_dir),
        "records": dataset.num_records,
        "tokens": num_tokens,
        "padded_tokens": padded_tokens,
        "batches": len(batches),
        "layer_ids": dataset.layer_ids,
        "hidden_size": verifier.fingerprint.hidden_size,
        "seconds": timings,
        "us_per_token": {key: 1e6 * value / num_tokens for key, value in median.items()},
        "us_per_token_fastest": {key: 1e6 * value / num_tokens for key, value in fastest.items()},
        "ratio_gen_vs_bare": median["gen"] / median["bare"],
        "ratio_gen_vs_decoder": median["gen"] / median["decoder"],
        "ratio_gen_vs_bare_fastest": fastest["gen"] / fastest["bare"],
        "ratio_gen_vs_decoder_fastest": fastest["gen"] / fastest["decoder"],
        "bytes_per_token": {
            "bfloat16": data_bytes(bf16_dir) / num_tokens,
            "float8_e4m3fn": data_bytes(fp8_dir) / num_tokens,
            "upstream_bf16_file_per_sample": upstream / num_tokens,
        },
        "fp8_records": fp8["records_written"],
        "zstd_on_hidden_states": zstd,
    }


def show(report: dict) -> None:
    us, fast = report["us_per_token"], report["us_per_token_fastest"]
    table = Table(title=f"spec-gen-hidden vs bare forward — {report['records']} records, {report['tokens']} tokens ({report['padded_tokens']} padded) in {report['batches']} batches, {len(report['seconds']['gen'])} alternating runs")
    table.add_column("what")
    table.add_column("µs/token (median)", justify="right")
    table.add_column("× bare (median)", justify="right")
    table.add_column("µs/token (fastest)", justify="right")
    table.add_column("× bare (fastest)", justify="right")
    rows = [
        ("bare verifier forward (with logits)", "bare"),
        ("decoder only (no LM head)", "decoder"),
        ("spec-gen-hidden, file → data set on disk", "gen"),
        ("  … including model load", "gen_total"),
    ]
    for label, key in rows:
        table.add_row(label, f"{us[key]:.1f}", f"{us[key] / us['bare']:.3f}", f"{fast[key]:.1f}", f"{fast[key] / fast['bare']:.3f}")
    stdout.print(table)
    sizes = Table(title=f"bytes per token on disk (layers {report['layer_ids']}, hidden {report['hidden_size']})")
    sizes.add_column("layout")
    sizes.add_column("bytes/token", justify="right")
    sizes.add_column("× upstream", justify="right")
    upstream = report["bytes_per_token"]["upstream_bf16_file_per_sample"]
    for name, value in report["bytes_per_token"].items():
        sizes.add_row(name, f"{value:,.1f}", f"{value / upstream:.3f}")
    stdout.print(sizes)
    packing = Table(title="zstd on the stored hidden states (one core)")
    for column in ("storage, zstd level", "size / raw", "compress MB/s", "decompress MB/s"):
        packing.add_column(column, justify="left" if column.startswith("storage") else "right")
    for name, z in report["zstd_on_hidden_states"].items():
        packing.add_row(name, f"{z['ratio']:.3f}", f"{z['compress_mb_per_s']:.0f}", f"{z['decompress_mb_per_s']:.0f}")
    stdout.print(packing)
    machine = report["machine"]
    stdout.print(f"machine: {machine['cpus']} CPUs, torch threads {machine['threads']}, load average before {machine['load_avg_before'][0]:.2f}, after {machine['load_avg_after'][0]:.2f}")


if __name__ == "__main__":
    run(main)
