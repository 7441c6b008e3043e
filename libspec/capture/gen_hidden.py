"""spec-gen-hidden's job: conversations in, verifier hidden states out (a data set or a stream).

    inputs -> normalise -> (regenerate) -> tokens + loss masks -> truncate -> capture -> records

The first four steps are `RecordMaker` (records.py); this module sets a run up in named steps
(`load_setup`, `build_header`, `open_output`, `load_engine`) and runs the windows (`GenHiddenRun`).

Inputs are processed in windows of `window` items. Within a window, samples are sorted by length
and captured in padded batches, and written in that order (longest first), so the output depends
only on the inputs and the options, never on timing.

Sharding: input item i (its global position over all inputs, bad items included) belongs to
shard i mod num_shards. Round robin needs no first pass to count the inputs (stdin and compressed
files work), and spreads files sorted by length or source evenly over the shards; `merge_datasets`
joins the shard outputs (in shard order).

Resume: the data set writer commits a shard at a time. Before each window the manifest metadata
is given `progress` = where the window starts, how many records came before it and the counts so
far; every commit during the window writes it. A rerun of the same command (checked: same options
that shape the output, same input files by sha256) reads it back, restarts at that window, and
skips the records of the window that were already committed. Windows and batch plans are
deterministic, so the resumed data set is identical to an uninterrupted one.
"""

from __future__ import annotations

import itertools
import json
import queue
import sys
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import BinaryIO, Callable, Iterator

import torch

from libspec.algorithms.eagle3.config import default_aux_layer_ids
from libspec.capture.chat import TURN_POLICIES, ChatRenderer
from libspec.capture.hooks import BatchLimits, HiddenStateCapture, plan_batches
from libspec.capture.inputs import RawItem, count_items, describe_inputs, expand_inputs, read_items
from libspec.capture.record_maker import GenCounts, PreparedRecord, RecordMaker
from libspec.capture.regenerate import Regenerator, SamplingOptions
from libspec.errors import SpecError
from libspec.options import option
from libspec.format.dataset import DEFAULT_SHARD_BYTES, MANIFEST, DatasetWriter, read_manifest
from libspec.format.digest import sha256_text
from libspec.format.sample import make_header
from libspec.format.sample_io import SampleSink, create_sink
from libspec.format.hidden_codec import TENSOR_ENCODINGS
from libspec.format.tensors import STORAGE_DTYPES
from libspec.verifier import LoadedVerifier, load_model, load_verifier

TOOL = "spec-gen-hidden"
BACKENDS = ("hf", "vllm")


CAPTURE, CHAT, REGENERATION, SCALE = "capture", "chat template and loss mask", "on-policy regeneration", "scale and output"


def layer_id_list(text: str) -> tuple[int, ...]:
    """`2,4,5,8` -> (2, 4, 5, 8) (a command-line value)."""
    try:
        return tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise ValueError(f"expected comma-separated layer ids such as 2,4,5,8; found {text!r}") from None


def json_object(text: str) -> dict:
    """A JSON object given on the command line."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        raise ValueError(f"not valid JSON: {error}") from None
    if not isinstance(value, dict):
        raise ValueError("expected a JSON object such as '{\"enable_thinking\": false}'")
    return value


@dataclass(frozen=True)
class GenHiddenConfig:
    """Every option of a spec-gen-hidden run (recorded in the data set's manifest)."""

    verifier: str
    inputs: tuple[str, ...]
    output: str  # a data set directory, or "-" for a stream on stdout
    layer_ids: tuple[int, ...] | None = option(
        None, "layer ids to capture, e.g. 2,4,5,8 (default: EAGLE-3's aux layers plus n)", flag="--layers", metavar="IDS", group=CAPTURE, parse=layer_id_list
    )
    storage_dtype: str = option("bfloat16", "how hidden states are stored (float8_e4m3fn halves disk, with per-token scales)", choices=tuple(STORAGE_DTYPES), group=CAPTURE)
    tensor_encoding: str = option(
        "zstd", "how tensor shards store hidden states: zstd (per-record frames of byte planes, lossless, ~0.7x the bytes in bf16; "
        "spec-train decodes them ahead of each step) or raw (memory-mapped as is)",
        choices=TENSOR_ENCODINGS, group=CAPTURE,
    )  # fmt: skip
    dtype: str = option("auto", "compute dtype (auto: float32 on CPU, bfloat16 on GPU)", choices=("auto", "float32", "bfloat16", "float16"), group=CAPTURE)
    device: str = option("auto", "auto (cuda when present), cpu, cuda, cuda:N", group=CAPTURE)
    backend: str = option("hf", "hf: transformers with forward hooks; vllm: vLLM's extract_hidden_states (optional, GPU)", choices=BACKENDS, group=CAPTURE)
    max_len: int | None = option(None, "truncate records to N tokens (default: the verifier's max_position_embeddings)", metavar="N", group=CAPTURE)
    batch_tokens: int = option(8192, "padded tokens per forward batch", metavar="N", group=CAPTURE)
    batch_size: int = option(64, "sequences per forward batch at most", metavar="N", group=CAPTURE)
    window: int = option(256, "inputs sorted by length together", metavar="N", group=CAPTURE)
    trust_remote_code: bool = option(False, "allow the verifier's own Python code", group=CAPTURE)
    chat_template: str | None = option(None, "a Jinja chat template file replacing the tokenizer's", metavar="FILE", group=CHAT)
    chat_template_kwargs: dict = option(
        None, "extra template variables, e.g. '{\"enable_thinking\": false}'", metavar="JSON", group=CHAT, parse=json_object, default_factory=dict
    )
    turn_policy: str = option(
        "auto", "auto: one record per conversation when the template renders history stably, else one per assistant turn; "
        "per-turn: always one per turn", choices=TURN_POLICIES, group=CHAT,
    )  # fmt: skip
    skip_bad: bool = option(False, "skip and count malformed inputs instead of stopping at the first", group=CHAT)
    regenerate: bool = option(False, "replace assistant replies with the verifier's own before capturing, and answer prompt-only inputs", group=REGENERATION)
    temperature: float = option(0.0, "sampling temperature of the regenerated replies; 0 is greedy", group=REGENERATION)
    top_p: float = option(1.0, "nucleus sampling of the regenerated replies", group=REGENERATION)
    max_new_tokens: int = option(512, "longest regenerated reply", metavar="N", group=REGENERATION)
    seed: int = option(0, "sampling seed (a rerun with the same seed samples the same replies)", group=REGENERATION)
    shard_index: int = option(0, "this job's share of the inputs: item k goes to shard k mod --num-shards", metavar="I", group=SCALE)
    num_shards: int = option(1, "how many jobs share the inputs", metavar="N", group=SCALE)
    shard_bytes: int = DEFAULT_SHARD_BYTES  # stored hidden states per data set shard (spec-gen-hidden --shard-mb)

    def check(self) -> None:
        """Raise SpecError on inconsistent options."""
        if self.storage_dtype not in STORAGE_DTYPES:
            raise SpecError(f"--storage-dtype {self.storage_dtype!r}: expected one of {', '.join(STORAGE_DTYPES)}")
        if self.turn_policy not in TURN_POLICIES:
            raise SpecError(f"--turn-policy {self.turn_policy!r}: expected one of {', '.join(TURN_POLICIES)}")
        if self.backend not in BACKENDS:
            raise SpecError(f"--backend {self.backend!r}: expected one of {', '.join(BACKENDS)}")
        if not 0 <= self.shard_index < self.num_shards:
            raise SpecError(f"--shard-index {self.shard_index}: expected 0 <= index < --num-shards ({self.num_shards})")
        for name in ("batch_tokens", "batch_size", "window", "shard_bytes", "max_new_tokens"):
            if getattr(self, name) < 1:
                raise SpecError(f"--{name.replace('_', '-')}: expected a positive number")
        if self.max_len is not None and self.max_len < 2:
            raise SpecError("--max-len: expected at least 2 tokens")
        if not 0 < self.top_p <= 1:
            raise SpecError("--top-p: expected a value in (0, 1]")
        if self.regenerate and self.backend == "vllm":
            raise SpecError("--regenerate runs on the hf backend only; use --backend hf")

    def output_shaping(self) -> dict:
        """The options that decide which records and values a run writes: a resume must match them."""
        # tensor_encoding changes how values are stored, not which: the header's hidden_states records it
        # (and a resume must match that), so data sets made before the option existed still resume.
        ignored = {"output", "device", "backend", "trust_remote_code", "shard_bytes", "verifier", "tensor_encoding"}
        shaping = {k: v for k, v in asdict(self).items() if k not in ignored}
        return json.loads(json.dumps(shaping))  # as the manifest stores it (tuples become lists)


@dataclass(frozen=True)
class GenProgress:
    """Reported after every captured batch."""

    inputs_done: int
    inputs_total: int | None  # this shard's share, when the inputs can be counted
    records: int
    tokens: int
    elapsed_s: float


def resolve_layer_ids(requested: tuple[int, ...] | None, num_hidden_layers: int) -> list[int]:
    """The layers to capture: as requested (checked), or EAGLE-3's default aux layers plus the last."""
    n = num_hidden_layers
    if requested is None:
        return sorted({*default_aux_layer_ids(n), n})
    ids = list(requested)
    if not ids or ids != sorted(set(ids)) or ids[0] < 0 or ids[-1] > n:
        raise SpecError(f"--layers {','.join(map(str, ids))}: expected ascending distinct ids within [0, {n}] (the verifier has {n} layers)")
    return ids


class _CountingWriter:
    """A binary stream wrapper that counts the bytes written through it."""

    def __init__(self, raw: BinaryIO):
        self.raw, self.bytes_written = raw, 0

    def write(self, data: bytes) -> int:
        """Write through, counting (the summary reports the stream's size)."""
        self.bytes_written += len(data)
        return self.raw.write(data)

    def flush(self) -> None:
        """Flush the wrapped stream."""
        self.raw.flush()


class _WriterThread:
    """Runs the sink's work (encoding, shard files, checksums, fsync) on a thread, in submission order.

    Disk work then overlaps the next forward pass instead of following it (torch and file I/O
    release the GIL). At most `depth` batches wait, which bounds the memory they hold.
    """

    def __init__(self, depth: int = 2):
        self._jobs: queue.Queue = queue.Queue(maxsize=depth)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._work, name="spec-gen-hidden-writer", daemon=True)

    def start(self) -> None:
        """Start taking jobs (not at construction: a run that fails before capturing leaves no thread)."""
        self._thread.start()

    def _work(self) -> None:
        while (job := self._jobs.get()) is not None:
            if self._error is None:  # after a failure, drain without writing more
                try:
                    job()
                except BaseException as error:  # re-raised in the main thread
                    self._error = error

    def _raise(self) -> None:
        if self._error is not None:
            raise self._error

    def submit(self, job: Callable[[], None]) -> None:
        """Queue a job (waiting while `depth` are queued); re-raise an earlier job's failure."""
        self._raise()
        self._jobs.put(job)

    @property
    def running(self) -> bool:
        """Whether jobs go to the thread (started and not finished)."""
        return self._thread.is_alive()

    def finish(self) -> None:
        """Wait until every submitted job ran; re-raise the first failure."""
        if self.running:
            self._jobs.put(None)
            self._thread.join()
        self._raise()


@dataclass(frozen=True)
class CaptureSetup:
    """The verifier before its weights load (tokenizer, fingerprint) and how records are made: all a header needs."""

    verifier: LoadedVerifier
    layer_ids: list[int]
    renderer: ChatRenderer
    template_sha256: str  # of the chat template actually used
    max_len: int


def load_setup(config: GenHiddenConfig) -> CaptureSetup:
    """Tokenizer, fingerprint, layer ids and chat template: cheap, so a finished run says so before loading weights."""
    verifier = load_verifier(config.verifier, config.trust_remote_code)
    layer_ids = resolve_layer_ids(config.layer_ids, verifier.num_hidden_layers)
    template = None
    if config.chat_template:
        try:
            template = Path(config.chat_template).read_text("utf-8")
        except OSError as error:
            raise SpecError(f"--chat-template {config.chat_template}: cannot read: {error.strerror}") from None
    renderer = ChatRenderer(verifier.tokenizer, template, config.chat_template_kwargs, verifier.stop_token_ids)
    template_sha256 = sha256_text(template) if template else verifier.fingerprint.chat_template_sha256
    max_len = config.max_len or verifier.max_position_embeddings or 8192
    return CaptureSetup(verifier, layer_ids, renderer, template_sha256, max_len)


def build_header(config: GenHiddenConfig, setup: CaptureSetup, files: list[str]) -> dict:
    """The data header: fingerprint and layers, plus what a resume must match (options, input digests)."""
    metadata = {
        "gen_hidden": {
            "options": config.output_shaping(),
            "inputs": describe_inputs(files),
            "chat_template_sha256": setup.template_sha256,
            "max_len": setup.max_len,
            "stop_token_ids": list(setup.verifier.stop_token_ids),
        }
    }
    return make_header(setup.verifier.fingerprint, setup.layer_ids, config.storage_dtype, TOOL, metadata, tensor_encoding=config.tensor_encoding)


@dataclass
class OpenedOutput:
    """Where records go, and what an earlier run of the same command left there."""

    sink: SampleSink | None  # None when the data set is already complete
    stream_out: _CountingWriter | None  # stdout, counted, when streaming
    progress: dict | None  # the manifest's progress: where to resume, or the final counts when complete
    complete: dict | None  # the manifest of an already complete data set


def open_output(config: GenHiddenConfig, header: dict, stdout: BinaryIO | None) -> OpenedOutput:
    """Open the sink: a stream, a new data set, or the one an interrupted run of the same command left."""
    if config.output == "-":
        stream_out = _CountingWriter(stdout or sys.stdout.buffer)
        return OpenedOutput(create_sink("-", header, stdout=stream_out), stream_out, None, None)
    directory = Path(config.output)
    manifest = read_manifest(directory) if (directory / MANIFEST).exists() else None
    if manifest is not None:
        _check_same_run(directory, manifest, header)
    progress = manifest["metadata"].get("progress") if manifest is not None else None
    if manifest is not None and manifest["complete"]:
        return OpenedOutput(None, None, progress, manifest)
    # The writer's own size-based commits are the shard boundaries; progress rides along.
    sink = DatasetWriter(directory, header, shard_bytes=config.shard_bytes, resume=manifest is not None)
    return OpenedOutput(sink, None, progress, None)


@dataclass
class CaptureEngine:
    """What runs the verifier's weights: the capturer with its batch limits, and the regenerator with --regenerate."""

    capturer: object  # HiddenStateCapture, or VllmCapture with --backend vllm
    limits: BatchLimits
    regenerator: Regenerator | None
    out_dtype: torch.dtype | None  # the storage dtype; None for float8 (the sink scales from compute precision)

    def close(self) -> None:
        """Release what the backend holds (vLLM's engine and its temporary files)."""
        getattr(self.capturer, "close", lambda: None)()


def load_engine(config: GenHiddenConfig, setup: CaptureSetup) -> CaptureEngine:
    """Load the weights and build the capturer on them (and the regenerator, with --regenerate)."""
    verifier = setup.verifier
    limits = BatchLimits(config.batch_tokens, config.batch_size)
    if config.backend == "vllm":
        from libspec.capture.vllm_backend import VllmCapture

        # vLLM schedules its own batches: hand it a whole window at once. Records keep the same
        # order (the plan is one longest-first list, cut into batches by the limits).
        capture_limits = BatchLimits(max_tokens=2**62, max_sequences=config.window)
        capturer = VllmCapture(verifier, setup.layer_ids, config.dtype)
    else:
        load_model(verifier, config.device, config.dtype, config.trust_remote_code)
        capture_limits = limits
        capturer = HiddenStateCapture(verifier.model, setup.layer_ids, verifier.num_hidden_layers)
    regenerator = None
    if config.regenerate:
        options = SamplingOptions(config.temperature, config.top_p, config.max_new_tokens, config.seed)
        regenerator = Regenerator(verifier.model, verifier.tokenizer, setup.renderer, options, limits, setup.max_len, verifier.pad_token_id)
    out_dtype = None if config.storage_dtype == "float8_e4m3fn" else STORAGE_DTYPES[config.storage_dtype]
    return CaptureEngine(capturer, capture_limits, regenerator, out_dtype)


class GenHiddenRun:
    """The capture loop of one run, on an opened output: built ready to go, then `run()`."""

    def __init__(self, config: GenHiddenConfig, setup: CaptureSetup, files: list[str], output: OpenedOutput, started: float, on_progress: Callable[[GenProgress], None] | None = None, stdin: BinaryIO | None = None):
        self.config, self.setup, self.files, self.output, self.stdin = config, setup, files, output, stdin
        self.on_progress = on_progress or (lambda progress: None)
        self.started = started  # when the run began, loading included
        self.counts = GenCounts.from_dict((output.progress or {}).get("counts", {}))
        self.engine = load_engine(config, setup)
        self.records = RecordMaker(setup.verifier, setup.renderer, setup.max_len, config.turn_policy, config.skip_bad, self.engine.regenerator, self.counts)
        total = count_items(files)
        self.inputs_total = None if total is None else len(range(config.shard_index, total, config.num_shards))
        self.items_seen = 0  # input items read so far, of every shard
        self.writer = _WriterThread()
        self.capture_started = started  # reset when the first window starts

    def run(self) -> dict:
        """Capture window after window from where an earlier run stopped; returns the summary."""
        position, records_before, skip = self._resume_point()
        items = self._partition(read_items(self.files, self.stdin))
        self.capture_started = time.perf_counter()
        self.writer.start()
        try:
            for window in _windows(itertools.islice(items, position, None), self.config.window):
                self._record_progress(position, records_before)
                records_before += self._process_window(window, skip)
                position += len(window)
                skip = 0
        finally:
            self.engine.close()
            self.writer.finish()  # whatever was captured is written (and committed) even on failure
        self._record_progress(position, records_before)
        return self._finish()

    def _resume_point(self) -> tuple[int, int, int]:
        """(input position, records before it, records to skip): the start of the window a crash interrupted."""
        progress = self.output.progress
        if not progress:
            return 0, 0, 0
        # Records of the interrupted window that a shard commit already holds.
        skip = self.output.sink.num_records - progress["records_before_window"]
        return progress["window_start"], progress["records_before_window"], skip

    def _partition(self, items: Iterator[RawItem]) -> Iterator[RawItem]:
        """This shard's items (index mod num_shards), counting every item read for the summary."""
        for item in items:
            self.items_seen = item.index + 1
            if item.index % self.config.num_shards == self.config.shard_index:
                yield item

    def _record_progress(self, window_start: int, records_before: int) -> None:
        """Tell the data set where this window starts; every shard commit during it writes this down."""
        sink = self.output.sink
        if isinstance(sink, DatasetWriter):
            progress = {"progress": {"window_start": window_start, "records_before_window": records_before, "counts": self.counts.to_dict()}}
            if self.writer.running:  # in order with the samples queued before it
                self.writer.submit(lambda: sink.update_metadata(progress))
            else:
                sink.update_metadata(progress)

    def _process_window(self, window: list[RawItem], skip: int) -> int:
        """Prepare, capture and write one window; the first `skip` records were committed before a crash."""
        prepared = self.records.prepare(window)
        written = 0
        for batch in plan_batches([len(p.sample.input_ids) for p in prepared], self.engine.limits):
            todo = [prepared[i] for i in batch]
            if written + len(todo) > skip:  # else already in the data set: nothing to capture
                self._capture_batch(todo, max(0, skip - written))
            written += len(todo)
        return written

    def _capture_batch(self, todo: list[PreparedRecord], committed: int) -> None:
        """One forward pass; the records after the first `committed` go to the writer thread."""
        hidden = self.engine.capturer.capture([p.sample.input_ids for p in todo], self.setup.verifier.pad_token_id, self.engine.out_dtype)
        new = [(p.record, states) for p, states in list(zip(todo, hidden))[committed:]]
        for record, states in new:
            _refuse_nonfinite(record, states, self.config.storage_dtype)
        sink = self.output.sink
        self.writer.submit(lambda: [sink.add(record, states) for record, states in new])
        elapsed = time.perf_counter() - self.capture_started
        self.on_progress(GenProgress(self.counts.inputs_read, self.inputs_total, self.counts.records_written, self.counts.tokens_written, elapsed))

    def _finish(self) -> dict:
        """Close the sink (a data set is marked complete) and sum the run up."""
        manifest = self.output.sink.close()
        if isinstance(self.output.sink, DatasetWriter):
            bytes_written = _data_set_bytes(Path(self.config.output), manifest)
        else:
            bytes_written = self.output.stream_out.bytes_written
        now = time.perf_counter()
        other_shards = self.items_seen - self.counts.inputs_read
        return _summary(self.config, self.setup.layer_ids, self.counts, bytes_written, now - self.started, now - self.capture_started, other_shards, False)


def _refuse_nonfinite(record: dict, states: torch.Tensor, storage_dtype: str) -> None:
    """inf or NaN in captured hidden states would train a NaN draft: stop before writing them."""
    bad = states.numel() - int(torch.isfinite(states).sum())
    if bad:
        hint = (
            f"float16 overflows past 65504 and this verifier's activations are larger; use --storage-dtype bfloat16"
            if storage_dtype == "float16"
            else "the verifier itself produced them (check its weights and --dtype)"
        )
        raise SpecError(f"record {record['id']}: {bad} hidden-state values are not finite (inf or NaN) in {storage_dtype}; {hint}; nothing of it was written")


def _data_set_bytes(directory: Path, manifest: dict) -> int:
    """A data set's size on disk: its shard files and its manifest."""
    return sum(s["records_bytes"] + s["tensors_bytes"] for s in manifest["shards"]) + (directory / MANIFEST).stat().st_size


def _summary(config: GenHiddenConfig, layer_ids: list[int], counts: GenCounts, bytes_written: int, elapsed_s: float, capture_s: float, inputs_other_shards: int | None, already_complete: bool) -> dict:
    """The run's JSON summary: the counts, what was written, and how fast."""
    return {
        "output": config.output,
        "already_complete": already_complete,
        "shard": {"index": config.shard_index, "count": config.num_shards},
        **counts.to_dict(),
        "inputs_other_shards": inputs_other_shards,
        "bytes_written": bytes_written,
        "layer_ids": layer_ids,
        "storage_dtype": config.storage_dtype,
        "tensor_encoding": config.tensor_encoding,
        "elapsed_s": round(elapsed_s, 3),  # including loading the model
        "capture_s": round(capture_s, 3),
        "tokens_per_s": round(counts.tokens_written / capture_s, 1) if capture_s > 0 and not already_complete else None,
    }


def _windows(items: Iterator[RawItem], size: int) -> Iterator[list[RawItem]]:
    while window := list(itertools.islice(items, size)):
        yield window


def _check_same_run(directory: Path, manifest: dict, header: dict) -> None:
    """Refuse to resume (or call complete) a data set made by a different command."""
    if "weights" not in manifest["verifier"] and {**manifest["verifier"], "weights": None} == {**header["verifier"], "weights": None}:
        raise SpecError(f"{directory / MANIFEST}: field verifier records no weights digest (an older spec-tools made it); use a new output directory")
    for key in ("verifier", "hidden_states"):
        if manifest[key] != header[key]:
            raise SpecError(f"{directory / MANIFEST}: field {key} differs from this run's; use a new output directory")
    old = manifest.get("metadata", {}).get("gen_hidden")
    new = header["metadata"]["gen_hidden"]
    if old is None:
        raise SpecError(f"{directory}: holds a data set not made by {TOOL}; use a new output directory")
    for key in ("options", "inputs"):
        if old.get(key) != new[key]:
            differing = _first_difference(old.get(key), new[key])
            raise SpecError(f"{directory}: was made with different {key} ({differing}); rerun the same command to resume, or use a new output directory")


def _first_difference(old, new) -> str:
    if isinstance(old, dict) and isinstance(new, dict):
        for key in sorted(set(old) | set(new)):
            if old.get(key) != new.get(key):
                return f"{key}: {old.get(key)!r} then, {new.get(key)!r} now"
    return f"{old!r} then, {new!r} now"


class EmptyDataSet(SpecError):
    """The run wrote no record: an empty data set trains nothing, so the run fails (with its summary attached)."""

    def __init__(self, message: str, summary: dict):
        super().__init__(message)
        self.summary = summary


def why_empty(config: GenHiddenConfig, summary: dict) -> str:
    """One line saying why a run wrote no record, and what would make it write some."""
    where = "stdout" if config.output == "-" else config.output
    read, dropped = summary["inputs_read"], summary["dropped"]
    if read == 0 and config.num_shards > 1:
        return f"no records written to {where}: shard {config.shard_index} of {config.num_shards} got no input item; use fewer shards"
    if read == 0:
        return f"no records written to {where}: the inputs ({', '.join(config.inputs)}) hold no item"
    reasons = ", ".join(f"{reason} ({count})" for reason, count in dropped.items())
    message = f"no records written to {where}: all {read} inputs skipped: {reasons}"
    if "no_assistant_turn" in dropped and not config.regenerate:
        return message + "; pass --regenerate to have the verifier answer prompt-only inputs"
    if summary["first_errors"]:
        return message + f"; first: {summary['first_errors'][0]}"
    return message


def generate_hidden_states(config: GenHiddenConfig, on_progress: Callable[[GenProgress], None] | None = None, stdin: BinaryIO | None = None, stdout: BinaryIO | None = None) -> dict:
    """Run spec-gen-hidden with `config`; returns the JSON summary (counts, drops by reason, bytes).

    Raises EmptyDataSet (after closing the output) when no record was written, also on a rerun.
    """
    config.check()
    started = time.perf_counter()
    files = expand_inputs(config.inputs)
    setup = load_setup(config)
    output = open_output(config, build_header(config, setup, files), stdout)
    if output.complete is None:
        summary = GenHiddenRun(config, setup, files, output, started, on_progress, stdin).run()
        num_records = summary["records_written"]
    else:  # already complete (a rerun): report the counts it recorded, load no weights
        counts = GenCounts.from_dict((output.progress or {}).get("counts", {}))
        elapsed = time.perf_counter() - started
        bytes_written = _data_set_bytes(Path(config.output), output.complete)
        summary = _summary(config, setup.layer_ids, counts, bytes_written, elapsed, elapsed, None, True)
        num_records = output.complete["num_records"]
    if num_records == 0:
        raise EmptyDataSet(why_empty(config, summary), summary)
    return summary
