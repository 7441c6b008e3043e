"""Checks of every artifact in SPEC.md: data sets, shards, streams and speculator checkpoints.

Each check collects every problem it can find instead of stopping at the first, so a person can
fix them all in one go. `validate(path)` recognises what the path is.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import BinaryIO, Callable

import torch

from libspec.format import checkpoint as ckpt
from libspec.algorithms import algorithm_for, algorithm_name
from libspec.algorithms.eagle import config as eagle
from libspec.format.bounded_io import open_regular
from libspec.format.dataset import MANIFEST, Dataset, read_manifest
from libspec.format.json_files import read_json_object
from libspec.errors import SpecError, where
from libspec.format.records import read_record_shard, record_problems
from libspec.format.schemas import schema_problems
from libspec.format.stream import MAGIC, StreamReader
from libspec.format.tensors import TensorShard

KINDS = ("dataset", "checkpoint", "record-shard", "tensor-shard", "stream")


@dataclass
class Report:
    """What a check found: problems make it invalid; warnings name what it cannot vouch for
    (e.g. vLLM and upstream reading the same file differently) without making it invalid;
    facts describe what was checked."""

    path: str
    kind: str
    problems: list[str] = field(default_factory=list)
    facts: dict = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict:
        return {**asdict(self), "ok": self.ok}


def detect_kind(path: str) -> str:
    """Which artifact `path` is, from its name and first bytes."""
    if path == "-":
        return "stream"
    p = Path(path)
    if p.is_dir():
        if (p / MANIFEST).is_file():
            return "dataset"
        if (p / ckpt.CONFIG).is_file():
            return "checkpoint"
        raise SpecError(f"{path}: a directory with neither {MANIFEST} (data set) nor {ckpt.CONFIG} (checkpoint)")
    if not p.exists():
        raise SpecError(f"{path}: no such file or directory")
    with open_regular(p, "file") as handle:  # a FIFO or device in its place must not hang spec-validate
        head = handle.read(len(MAGIC))
    if head == MAGIC:
        return "stream"
    if p.name.endswith(".msgpack.zst"):
        return "record-shard"
    if p.name.endswith(".safetensors"):
        return "tensor-shard"
    raise SpecError(f"{path}: not a spec-tools artifact (expected a data set or checkpoint folder, a shard or a stream)")


def validate(path: str, stdin: BinaryIO | None = None) -> Report:
    """Check the artifact at `path` (`-`: a stream on stdin) and report every problem found."""
    try:
        kind = detect_kind(path)
    except SpecError as error:
        return Report(str(path), "unknown", [str(error)])
    report = Report(str(path), kind)
    checks: dict[str, Callable[[Report], None]] = {
        "dataset": _check_dataset,
        "checkpoint": _check_checkpoint,
        "record-shard": _check_record_shard,
        "tensor-shard": _check_tensor_shard,
        "stream": lambda r: _check_stream(r, stdin),
    }
    try:
        checks[kind](report)
    except SpecError as error:  # a problem that stops the check from going further
        report.problems.append(str(error))
    return report


def nonfinite_count(tensor: torch.Tensor, chunk_rows: int = 1 << 15) -> int:
    """How many NaN/inf values a (possibly memory-mapped, low-precision) tensor holds, chunk by chunk."""
    bad = 0
    for start in range(0, tensor.shape[0], chunk_rows):
        bad += int((~torch.isfinite(tensor[start : start + chunk_rows].float())).sum())
    return bad


# ---- data sets and their parts -------------------------------------------------------------


def _check_dataset(report: Report) -> None:
    directory = Path(report.path)
    manifest = read_manifest(directory)
    dataset = Dataset(directory, allow_incomplete=True, check_files=False)
    if not manifest["complete"]:
        report.problems.append(f"{directory / MANIFEST}: data set is incomplete (its writer did not finish)")
    shards = manifest["shards"]
    if manifest["num_records"] != sum(s["num_records"] for s in shards):
        report.problems.append(f"{directory / MANIFEST}: num_records differs from the sum over shards")
    if manifest["num_tokens"] != sum(s["num_tokens"] for s in shards):
        report.problems.append(f"{directory / MANIFEST}: num_tokens differs from the sum over shards")
    seen_ids: set[str] = set()
    for index in range(len(shards)):
        _check_dataset_shard(report, dataset, index, seen_ids)
    report.facts.update(
        {
            "verifier": manifest["verifier"]["name_or_path"],
            "layer_ids": manifest["hidden_states"]["layer_ids"],
            "storage_dtype": manifest["hidden_states"]["storage_dtype"],
            "tensor_encoding": manifest["hidden_states"].get("tensor_encoding", "raw"),
            "num_shards": len(shards),
            "num_records": manifest["num_records"],
            "num_tokens": manifest["num_tokens"],
            "num_supervised_tokens": sum(s["num_supervised_tokens"] for s in shards),
            "bytes": sum(s["records_bytes"] + s["tensors_bytes"] for s in shards),
            "fingerprint": dataset.fingerprint,
        }
    )


def _check_dataset_shard(report: Report, dataset: Dataset, index: int, seen_ids: set[str]) -> None:
    shard = dataset.manifest["shards"][index]
    if shard["index"] != index:
        report.problems.append(f"{dataset.directory / MANIFEST}: shard {index} is listed with index {shard['index']}")
    try:
        records = dataset.shard_records(index)
    except SpecError as error:
        report.problems.append(str(error))
        records = None
    try:
        tensors = dataset.shard_tensors(index)
    except SpecError as error:
        report.problems.append(str(error))
        return
    _check_finite(report, tensors)
    if records is None:
        return
    if sum(sum(r["loss_mask"]) for r in records) != shard["num_supervised_tokens"]:
        report.problems.append(f"{dataset.directory / shard['records']}: supervised token count differs from the manifest")
    for i, record in enumerate(records):
        rows = int(tensors.offsets[i + 1] - tensors.offsets[i])
        if rows != len(record["input_ids"]):
            report.problems.append(f"{where(tensors.path, i)}: {rows} rows of hidden states for {len(record['input_ids'])} tokens")
        if record["id"] in seen_ids:
            report.problems.append(f"{where(dataset.directory / shard['records'], i)}: duplicate id {record['id']!r}")
        seen_ids.add(record["id"])


def _check_finite(report: Report, tensors: TensorShard) -> None:
    # A zstd shard is decoded record by record (memory stays one record), which checks every frame too.
    pieces = [tensors.hidden] if tensors.encoding == "raw" else (tensors.record_rows(i)[0] for i in range(tensors.num_records))
    try:
        bad = sum(nonfinite_count(piece) for piece in pieces)
    except SpecError as error:
        report.problems.append(str(error))
        return
    if tensors.scales is not None:
        bad += nonfinite_count(tensors.scales)
    if bad:
        report.problems.append(f"{tensors.path}: {bad} NaN/inf values in the hidden states")


def _check_record_shard(report: Report) -> None:
    records = read_record_shard(report.path)
    for i, record in enumerate(records):
        for problem in record_problems(record):
            report.problems.append(f"{where(report.path, i)}: {problem}")
    report.facts.update({"num_records": len(records), "num_tokens": sum(len(r.get("input_ids") or []) for r in records)})
    report.facts["note"] = "a lone record shard: token ids are not checked against a vocabulary (validate the data set)"


def _check_tensor_shard(report: Report) -> None:
    tensors = TensorShard(report.path)
    _check_finite(report, tensors)
    report.facts.update(
        {
            "num_records": tensors.num_records,
            "num_tokens": tensors.num_tokens,
            "layer_ids": tensors.layer_ids,
            "storage_dtype": str(tensors.storage_dtype).removeprefix("torch."),
            "tensor_encoding": tensors.encoding,
        }
    )


def _check_stream(report: Report, stdin: BinaryIO | None) -> None:
    import sys

    handle = (stdin or sys.stdin.buffer) if report.path == "-" else open_regular(report.path, "stream file")
    try:
        reader = StreamReader(handle, "<stdin>" if report.path == "-" else report.path)
        num_records = num_tokens = 0
        for sample in reader:
            bad = nonfinite_count(sample.hidden) + (0 if sample.scales is None else nonfinite_count(sample.scales))
            if bad:
                report.problems.append(f"{reader.name}: sample {num_records}: {bad} NaN/inf values in the hidden states")
            num_records += 1
            num_tokens += sample.num_tokens
    finally:
        if handle is not stdin and report.path != "-":
            handle.close()
    report.facts.update(
        {
            "verifier": reader.header["verifier"]["name_or_path"],
            "layer_ids": reader.header["hidden_states"]["layer_ids"],
            "storage_dtype": reader.header["hidden_states"]["storage_dtype"],
            "num_records": num_records,
            "num_tokens": num_tokens,
        }
    )


# ---- speculator checkpoints -----------------------------------------------------------------


def _check_checkpoint(report: Report) -> None:
    config = ckpt.read_config(report.path)
    _check_weight_digests(report, config)
    model_type = algorithm_name(config)
    schema = schema_problems("speculator-config", config) if model_type != eagle.ALGORITHM else []  # EAGLE-1: a plain HF config
    report.problems.extend(f"{ckpt.CONFIG} {p}" for p in schema)
    algorithm = algorithm_for(model_type)
    if algorithm is None:
        report.problems.append(f"{ckpt.CONFIG}: speculators_model_type {model_type!r} is not one spec-tools can check")
        return
    verifier_layers = _verifier_layers(config)
    try:
        report.problems.extend(f"{ckpt.CONFIG}: {p}" for p in algorithm.config_problems(config, verifier_layers=verifier_layers))
        report.warnings.extend(f"{ckpt.CONFIG}: {w}" for w in algorithm.config_warnings(config, verifier_layers=verifier_layers))
    except (AttributeError, TypeError, KeyError, ValueError):
        if not schema:
            raise
        return  # the algorithm's checks read the config as the schema types it; the schema said what is wrong
    if report.problems:
        return  # the expected weights cannot be derived from a broken config
    headers = ckpt.tensor_headers(report.path)
    _check_weight_names_and_shapes(report, config, algorithm.expected_tensors(config), headers)
    if not report.problems:
        _check_weight_values(report, config, algorithm)
    report.facts.update(algorithm.checkpoint_facts(config, verifier_layers=verifier_layers))
    report.facts.update({"num_tensors": len(headers), "parameters": sum(_numel(shape) for _, shape in headers.values())})


def _check_weight_digests(report: Report, config: dict) -> None:
    """Every weight file against the size and sha256 config.json records (SPEC.md §11.1 spec_tools.weights);
    a folder that records none (upstream's) is said to, as a fact."""
    problems = ckpt.weight_digest_problems(report.path, config)
    if problems is None:
        report.facts["weight_digests"] = f"no digests recorded ({ckpt.CONFIG} has no spec_tools.weights): a changed weight file cannot be detected"
        return
    report.problems.extend(problems)
    if not problems:
        names = ", ".join(sorted(ckpt.recorded_weight_digests(config) or {}))
        report.facts["weight_digests"] = f"verified: {names} match the size and sha256 {ckpt.CONFIG} records"


def _verifier_layers(config: dict) -> int | None:
    """The verifier's layer count: from its config.json when it is on this machine (a folder or the
    Hugging Face cache; never downloaded), else as spec_tools recorded it, else None."""
    from libspec.validate.gate_verifier import local_verifier_dir
    from libspec.verifier import text_config

    name = _object_at(config, "speculators_config", "verifier").get("name_or_path") or _object_at(config, "spec_tools", "verifier").get("name_or_path")
    folder = local_verifier_dir(name) if isinstance(name, str) and name else None
    if folder is not None and (folder / ckpt.CONFIG).is_file():
        try:
            layers = text_config(read_json_object(folder / ckpt.CONFIG)).get("num_hidden_layers")
        except SpecError:
            layers = None
        if isinstance(layers, int):
            return layers
    recorded = _object_at(config, "spec_tools", "verifier").get("num_hidden_layers")
    return recorded if isinstance(recorded, int) else None


def _object_at(document: dict, *keys: str) -> dict:
    """document[k1][k2]…, or {} where a level is missing or not an object (the schema check says which)."""
    for key in keys:
        document = document.get(key) if isinstance(document, dict) else None
    return document if isinstance(document, dict) else {}


def _numel(shape: tuple[int, ...]) -> int:
    count = 1
    for dim in shape:
        count *= dim
    return count


def _check_weight_names_and_shapes(report: Report, config: dict, expected: dict, headers: dict) -> None:
    weights = ckpt.WEIGHTS
    for name, spec in expected.items():
        if name not in headers:
            if spec.required:
                report.problems.append(f"{weights}: tensor {name} is missing (expected shape {list(spec.shape)})")
            continue
        dtype, shape = headers[name]
        if shape != spec.shape:
            report.problems.append(f"{weights}: tensor {name} has shape {list(shape)}, the config implies {list(spec.shape)}")
        kind_ok = {"float": dtype.is_floating_point, "int64": dtype == torch.int64, "bool": dtype == torch.bool}[spec.kind]
        if not kind_ok:
            report.problems.append(f"{weights}: tensor {name} has dtype {dtype}, expected {spec.kind}")
    for name in sorted(set(headers) - set(expected)):
        report.problems.append(f"{weights}: unexpected tensor {name} (vLLM's loader would reject it)")
    float_dtypes = {headers[n][0] for n, s in expected.items() if s.kind == "float" and n in headers}
    declared = ckpt.FLOAT_DTYPES.get(config.get("dtype") or config.get("torch_dtype") or "")
    if declared is not None and float_dtypes - {declared}:
        found = ", ".join(sorted(str(d) for d in float_dtypes))
        report.problems.append(f"{ckpt.CONFIG}: dtype says {declared} but the float weights are {found}")


def _check_weight_values(report: Report, config: dict, algorithm) -> None:
    # Block by block, each from a map of its own: validating a 2 GB checkpoint holds ~16 MB of it.
    readers = ckpt.tensor_readers(report.path)
    for name, reader in readers.items():
        if not reader.entries[name].dtype.is_floating_point:
            continue
        bad = sum(nonfinite_count(chunk.reshape(-1, chunk.shape[-1]) if chunk.dim() > 1 else chunk.reshape(-1, 1)) for chunk in reader.read_in_chunks(name, 16 << 20))
        if bad:
            report.problems.append(f"{ckpt.WEIGHTS}: tensor {name} has {bad} NaN/inf values")
    if "d2t" in readers:
        vocab_size = (config.get("transformer_layer_config") or config)["vocab_size"]
        t2d = readers["t2d"].read("t2d") if "t2d" in readers else None
        report.problems.extend(vocab_map_problems(readers["d2t"].read("d2t"), t2d, vocab_size))


def vocab_map_problems(d2t: torch.Tensor, t2d: torch.Tensor | None, vocab_size: int) -> list[str]:
    """d2t is an offset table (target = draft + d2t[draft]); t2d marks exactly those targets."""
    problems = []
    targets = torch.arange(len(d2t)) + d2t
    if bool((targets < 0).any()) or bool((targets >= vocab_size).any()):
        bad = int(((targets < 0) | (targets >= vocab_size)).sum())
        problems.append(f"{ckpt.WEIGHTS}: d2t maps {bad} draft ids outside the vocabulary [0, {vocab_size})")
        return problems
    if len(torch.unique(targets)) != len(targets):
        problems.append(f"{ckpt.WEIGHTS}: d2t maps several draft ids to the same verifier id")
    if t2d is not None:
        if int(t2d.sum()) != len(d2t):
            problems.append(f"{ckpt.WEIGHTS}: t2d marks {int(t2d.sum())} verifier ids, draft_vocab_size is {len(d2t)}")
        elif not bool(t2d[targets].all()):
            problems.append(f"{ckpt.WEIGHTS}: t2d and d2t disagree on which verifier ids are in the draft vocabulary")
    return problems
