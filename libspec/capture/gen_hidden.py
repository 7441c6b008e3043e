"""spec-gen-hidden's job: conversations in, verifier hidden states out (a data set or a stream).

    inputs -> normalise -> (regenerate) -> tokens + loss masks -> truncate -> capture -> records

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
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import BinaryIO, Callable, Iterator


from libspec.algorithms.eagle3.config import default_aux_layer_ids
from libspec.capture.hooks import BatchLimits, HiddenStateCapture, plan_batches
from libspec.capture.chat import (
    TURN_POLICIES,
    ChatRenderer,
    ChatTemplateError,
    TokenizedSample,
    UnstableTemplate,
    prompt_completion_sample,
    samples_from_turns,
    text_sample,
    truncate,
)
from libspec.format.sample_io import create_sink
from libspec.format.dataset import DEFAULT_SHARD_BYTES, MANIFEST, DatasetWriter, read_manifest
from libspec.format.digest import sha256_text
from libspec.errors import SpecError
from libspec.capture.inputs import Example, RawItem, count_items, describe_inputs, expand_inputs, normalise, read_items
from libspec.capture.regenerate import Regenerated, Regenerator, SamplingOptions
from libspec.format.sample import make_header
from libspec.format.tensors import STORAGE_DTYPES
from libspec.verifier import LoadedVerifier, load_model, load_verifier

TOOL = "spec-gen-hidden"
BACKENDS = ("hf", "vllm")
MAX_ERRORS_KEPT = 5  # first error messages kept in the summary, for --skip-bad runs


@dataclass(frozen=True)
class GenHiddenConfig:
    """Every option of a spec-gen-hidden run (recorded in the data set's manifest)."""

    verifier: str
    inputs: tuple[str, ...]
    output: str  # a data set directory, or "-" for a stream on stdout
    layer_ids: tuple[int, ...] | None = None  # None: EAGLE-3's aux layers + the last
    storage_dtype: str = "bfloat16"
    dtype: str = "auto"
    device: str = "auto"
    max_len: int | None = None  # None: the verifier's max_position_embeddings
    batch_tokens: int = 8192
    batch_size: int = 64
    window: int = 256
    shard_bytes: int = DEFAULT_SHARD_BYTES
    skip_bad: bool = False
    turn_policy: str = "auto"
    chat_template: str | None = None  # a template file replacing the tokenizer's
    chat_template_kwargs: dict = field(default_factory=dict)
    regenerate: bool = False
    temperature: float = 0.0
    top_p: float = 1.0
    max_new_tokens: int = 512
    seed: int = 0
    shard_index: int = 0
    num_shards: int = 1
    backend: str = "hf"
    trust_remote_code: bool = False

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
        ignored = {"output", "device", "backend", "trust_remote_code", "shard_bytes", "verifier"}
        shaping = {k: v for k, v in asdict(self).items() if k not in ignored}
        return json.loads(json.dumps(shaping))  # as the manifest stores it (tuples become lists)


@dataclass
class GenCounts:
    """What happened to the inputs. `dropped` counts inputs, except no_supervised_tokens, which counts records."""

    inputs_read: int = 0  # items of this shard's partition that were processed
    records_written: int = 0
    tokens_written: int = 0
    supervised_tokens: int = 0
    dropped: dict[str, int] = field(default_factory=dict)
    first_errors: list[str] = field(default_factory=list)

    def drop(self, reason: str, message: str | None = None, count: int = 1) -> None:
        self.dropped[reason] = self.dropped.get(reason, 0) + count
        if message and len(self.first_errors) < MAX_ERRORS_KEPT:
            self.first_errors.append(message)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "GenCounts":
        return cls(**{k: data[k] for k in cls.__dataclass_fields__ if k in data})


@dataclass(frozen=True)
class GenProgress:
    """Reported after every captured batch."""

    inputs_done: int
    inputs_total: int | None  # this shard's share, when the inputs can be counted
    records: int
    tokens: int
    elapsed_s: float


@dataclass
class _Prepared:
    """A record ready for capture."""

    record: dict
    sample: TokenizedSample


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
        self.bytes_written += len(data)
        return self.raw.write(data)

    def flush(self) -> None:
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
        self._raise()
        self._jobs.put(job)

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    def finish(self) -> None:
        """Wait until every submitted job ran; re-raise the first failure."""
        if self.running:
            self._jobs.put(None)
            self._thread.join()
        self._raise()


class GenHiddenRun:
    """One spec-gen-hidden run: set up with a config, then `run()`."""

    def __init__(self, config: GenHiddenConfig, on_progress: Callable[[GenProgress], None] | None = None, stdin: BinaryIO | None = None, stdout: BinaryIO | None = None):
        config.check()
        self.config = config
        self.on_progress = on_progress or (lambda progress: None)
        self.stdin, self.stdout = stdin, stdout
        self.files = expand_inputs(config.inputs)
        self.counts = GenCounts()
        self.started = time.perf_counter()

    # -- setup ---------------------------------------------------------------------------------

    def _load(self) -> None:
        """Tokenizer, fingerprint and layer ids: all a header needs (the weights load later, if needed)."""
        config = self.config
        self.verifier: LoadedVerifier = load_verifier(config.verifier, config.trust_remote_code)
        self.layer_ids = resolve_layer_ids(config.layer_ids, self.verifier.num_hidden_layers)
        template = None
        if config.chat_template:
            try:
                template = Path(config.chat_template).read_text("utf-8")
            except OSError as error:
                raise SpecError(f"--chat-template {config.chat_template}: cannot read: {error.strerror}") from None
        self.renderer = ChatRenderer(self.verifier.tokenizer, template, config.chat_template_kwargs, self.verifier.stop_token_ids)
        self.template_sha256 = sha256_text(template) if template else self.verifier.fingerprint.chat_template_sha256
        self.max_len = config.max_len or self.verifier.max_position_embeddings or 8192
        self.limits = BatchLimits(config.batch_tokens, config.batch_size)

    def _capturer(self):
        if self.config.backend == "vllm":
            from libspec.capture.vllm_backend import VllmCapture

            # vLLM schedules its own batches: hand it a whole window at once. Records keep the same
            # order (the plan is one longest-first list, cut into batches by the limits).
            self.capture_limits = BatchLimits(max_tokens=2**62, max_sequences=self.config.window)
            return VllmCapture(self.verifier, self.layer_ids, self.config.dtype)
        self.capture_limits = self.limits
        return HiddenStateCapture(self.verifier.model, self.layer_ids, self.verifier.num_hidden_layers)

    def _header(self) -> dict:
        metadata = {
            "gen_hidden": {
                "options": self.config.output_shaping(),
                "inputs": describe_inputs(self.files),
                "chat_template_sha256": self.template_sha256,
                "max_len": self.max_len,
                "stop_token_ids": list(self.verifier.stop_token_ids),
            }
        }
        return make_header(self.verifier.fingerprint, self.layer_ids, self.config.storage_dtype, TOOL, metadata)

    def _open_output(self, header: dict) -> dict | None:
        """Open the sink; returns the resumed progress, or None when starting fresh."""
        output = self.config.output
        if output == "-":
            self.stream_out = _CountingWriter(self.stdout or sys.stdout.buffer)
            self.sink = create_sink("-", header, stdout=self.stream_out)
            return None
        directory = Path(output)
        resumed = None
        if (directory / MANIFEST).exists():
            manifest = read_manifest(directory)
            _check_same_run(directory, manifest, header)
            if manifest["complete"]:
                self.already_complete = manifest
                return None
            resumed = manifest["metadata"].get("progress")
        # The writer's own size-based commits are the shard boundaries; progress rides along.
        self.sink = DatasetWriter(directory, header, shard_bytes=self.config.shard_bytes, resume=(directory / MANIFEST).exists())
        return resumed

    # -- the run -------------------------------------------------------------------------------

    def run(self) -> dict:
        """Do the whole job; returns the summary (also when the output was already complete)."""
        self.already_complete = None
        self._load()
        progress = self._open_output(self._header())
        if self.already_complete is not None:
            return self._summary(self.already_complete)
        if self.config.backend == "hf":
            load_model(self.verifier, self.config.device, self.config.dtype, self.config.trust_remote_code)
        self.capturer = self._capturer()
        self.regenerator = None
        if self.config.regenerate:
            options = SamplingOptions(self.config.temperature, self.config.top_p, self.config.max_new_tokens, self.config.seed)
            self.regenerator = Regenerator(self.verifier.model, self.verifier.tokenizer, self.renderer, options, self.limits, self.max_len, self.verifier.pad_token_id)
        position = records_before = skip = 0
        if progress:
            self.counts = GenCounts.from_dict(progress["counts"])
            position, records_before = progress["window_start"], progress["records_before_window"]
            # Records of the interrupted window that a shard commit already holds.
            skip = self.sink.num_records - records_before
        total = count_items(self.files)
        self.inputs_total = None if total is None else len(range(self.config.shard_index, total, self.config.num_shards))
        self.items_seen = 0
        items = self._partition(read_items(self.files, self.stdin))
        self.capture_started = time.perf_counter()
        self.writer = _WriterThread()
        try:
            for window in _windows(itertools.islice(items, position, None), self.config.window):
                self._record_progress(position, records_before)
                records_before += self._process_window(window, skip)
                position += len(window)
                skip = 0
        finally:
            getattr(self.capturer, "close", lambda: None)()
            self.writer.finish()  # whatever was captured is written (and committed) even on failure
        self._record_progress(position, records_before)
        manifest = self.sink.close()
        return self._summary(manifest if isinstance(self.sink, DatasetWriter) else None)

    def _record_progress(self, window_start: int, records_before: int) -> None:
        """Tell the data set where this window starts; every shard commit during it writes this down."""
        if isinstance(self.sink, DatasetWriter):
            progress = {"progress": {"window_start": window_start, "records_before_window": records_before, "counts": self.counts.to_dict()}}
            if self.writer.running:  # in order with the samples queued before it
                self.writer.submit(lambda: self.sink.update_metadata(progress))
            else:
                self.sink.update_metadata(progress)

    def _partition(self, items: Iterator[RawItem]) -> Iterator[RawItem]:
        for item in items:
            self.items_seen = item.index + 1
            if item.index % self.config.num_shards == self.config.shard_index:
                yield item

    def _process_window(self, window: list[RawItem], skip: int) -> int:
        """Prepare, capture and write one window; the first `skip` records were committed before a crash."""
        prepared = self._prepare(window)
        order = plan_batches([len(p.sample.input_ids) for p in prepared], self.capture_limits)
        out_dtype = None if self.config.storage_dtype == "float8_e4m3fn" else STORAGE_DTYPES[self.config.storage_dtype]
        written = 0
        for batch in order:
            todo = [prepared[i] for i in batch]
            if written + len(todo) <= skip:  # already in the data set: nothing to capture
                written += len(todo)
                continue
            hidden = self.capturer.capture([p.sample.input_ids for p in todo], self.verifier.pad_token_id, out_dtype)
            new = [(item.record, states) for n, (item, states) in enumerate(zip(todo, hidden), start=written) if n >= skip]
            self.writer.submit(lambda new=new: [self.sink.add(record, states) for record, states in new])
            written += len(todo)
            elapsed = time.perf_counter() - self.capture_started
            self.on_progress(GenProgress(self.counts.inputs_read, self.inputs_total, self.counts.records_written, self.counts.tokens_written, elapsed))
        return written

    # -- inputs to records ---------------------------------------------------------------------

    def _prepare(self, window: list[RawItem]) -> list[_Prepared]:
        """Records (token ids + loss masks) for a window of input items; drops are counted."""
        examples = []
        for item in window:
            self.counts.inputs_read += 1
            try:
                examples.append(normalise(item))
            except SpecError as error:
                self._bad_input("bad_input", error)
        regenerated: dict[int, Regenerated] = {}
        if self.regenerator is not None:
            chat_like = [e for e in examples if e.kind in ("messages", "prompt_completion")]
            regenerated = {r.example.index: r for r in self._regenerate(chat_like)}
        prepared = []
        for example in examples:
            try:
                samples, extra = self._tokenize(example, regenerated.get(example.index))
            except UnstableTemplate as error:
                self.counts.drop("unstable_template", str(error))
                continue
            except ChatTemplateError as error:
                self._bad_input("template_error", error)
                continue
            if samples is None:
                continue
            prepared += self._records(example, samples, extra)
        return prepared

    def _regenerate(self, examples: list[Example]) -> list[Regenerated]:
        try:
            return self.regenerator.regenerate(examples)
        except ChatTemplateError:
            if not self.config.skip_bad:
                raise
        results = []  # one input's template failed: regenerate one by one to isolate it
        for example in examples:
            try:
                results += self.regenerator.regenerate([example])
            except ChatTemplateError as error:
                self._bad_input("template_error", error)
        return results

    def _bad_input(self, reason: str, error: SpecError) -> None:
        if not self.config.skip_bad:
            raise error
        self.counts.drop(reason, str(error))

    def _tokenize(self, example: Example, regenerated: Regenerated | None) -> tuple[list[TokenizedSample] | None, dict]:
        """Token samples for one example (None when dropped), and record metadata to add."""
        tokenizer = self.verifier.tokenizer
        if regenerated is not None:
            if regenerated.dropped:
                self.counts.drop(regenerated.dropped)
                return None, {}
            extra = {"regenerated": True, "finish_reasons": regenerated.finish_reasons}
            return samples_from_turns(regenerated.turns, self.config.turn_policy), extra
        if example.kind == "messages":
            turns = self.renderer.assistant_turns(example.messages, example.tools, example.location)
            if not turns:
                self.counts.drop("no_assistant_turn")
                return None, {}
            return samples_from_turns(turns, self.config.turn_policy), {}
        if example.kind == "prompt_completion":
            return [prompt_completion_sample(tokenizer, example.prompt, example.completion)], {}
        if example.kind == "text":
            return [text_sample(tokenizer, example.text)], {}
        return [TokenizedSample(list(example.input_ids), list(example.loss_mask))], {}

    def _records(self, example: Example, samples: list[TokenizedSample], extra: dict) -> list[_Prepared]:
        vocab = self.verifier.fingerprint.vocab_size
        prepared = []
        for k, sample in enumerate(samples):
            sample = truncate(sample, self.max_len)
            if sample.num_supervised == 0:
                self.counts.drop("no_supervised_tokens")
                continue
            top = max(sample.input_ids)
            if top >= vocab:
                self._bad_input("bad_input", SpecError(f"{example.location}: token id {top} >= the verifier's vocab size {vocab}"))
                continue
            metadata = {"source": example.source, "line": example.line, "kind": example.kind, **extra}
            if sample.turns and example.kind == "messages":
                metadata["turns"] = list(sample.turns)
            record_id = str(example.index) if len(samples) == 1 else f"{example.index}.{k}"
            record = {"id": record_id, "input_ids": sample.input_ids, "loss_mask": sample.loss_mask, "metadata": metadata}
            self.counts.records_written += 1
            self.counts.tokens_written += len(sample.input_ids)
            self.counts.supervised_tokens += sample.num_supervised
            prepared.append(_Prepared(record, sample))
        return prepared

    # -- the end -------------------------------------------------------------------------------

    def _summary(self, manifest: dict | None) -> dict:
        counts = self.counts
        if manifest is not None and self.already_complete is not None:
            counts = GenCounts.from_dict(manifest["metadata"].get("progress", {}).get("counts", {}))
        directory = Path(self.config.output)
        if manifest is not None:
            data_bytes = sum(s["records_bytes"] + s["tensors_bytes"] for s in manifest["shards"]) + (directory / MANIFEST).stat().st_size
        else:
            data_bytes = self.stream_out.bytes_written
        elapsed = time.perf_counter() - self.started
        capture_s = time.perf_counter() - getattr(self, "capture_started", self.started)
        return {
            "output": self.config.output,
            "already_complete": self.already_complete is not None,
            "shard": {"index": self.config.shard_index, "count": self.config.num_shards},
            **counts.to_dict(),
            "inputs_other_shards": None if self.already_complete is not None else self.items_seen - counts.inputs_read,
            "bytes_written": data_bytes,
            "layer_ids": self.layer_ids,
            "storage_dtype": self.config.storage_dtype,
            "elapsed_s": round(elapsed, 3),  # including loading the model
            "capture_s": round(capture_s, 3),
            "tokens_per_s": round(counts.tokens_written / capture_s, 1) if capture_s > 0 and self.already_complete is None else None,
        }


def _windows(items: Iterator[RawItem], size: int) -> Iterator[list[RawItem]]:
    while window := list(itertools.islice(items, size)):
        yield window


def _check_same_run(directory: Path, manifest: dict, header: dict) -> None:
    """Refuse to resume (or call complete) a data set made by a different command."""
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


def generate_hidden_states(config: GenHiddenConfig, on_progress: Callable[[GenProgress], None] | None = None, stdin: BinaryIO | None = None, stdout: BinaryIO | None = None) -> dict:
    """Run spec-gen-hidden with `config`; returns the JSON summary (counts, drops by reason, bytes)."""
    return GenHiddenRun(config, on_progress, stdin, stdout).run()
