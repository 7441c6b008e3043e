"""Property-based fuzzing of the readers (issue 16): byte-level mutations of valid examples.

Whatever the bytes, a reader either returns a valid result or raises SpecError — no other exception,
no hang (a per-example deadline), no memory out of proportion to the input (a per-example peak).
The mutations are applied to the file as stored and, for zstd-compressed formats, also to the content
inside the frame (recompressed with a valid checksum), so the msgpack and JSON parsers meet them too.

Derandomized, so CI tries the same examples each run: SPEC_FUZZ_EXAMPLES (default 200) per reader.
"""

from __future__ import annotations

import contextlib
import gzip
import io
import json
import os
import shutil
import signal
import struct
import tempfile
import tracemalloc
from collections import Counter
from datetime import timedelta
from pathlib import Path

import pytest
import torch
import zstandard
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from libspec.bench.openai_protocol import RequestError, parse_request
from libspec.bench.server import parse_body
from libspec.capture.inputs import normalise, read_items
from libspec.errors import SpecError
from libspec.format import checkpoint as ckpt
from libspec.format.dataset import MANIFEST, Dataset
from libspec.format.paths import read_weight_map
from libspec.format.records import check_record, decode_records
from libspec.format.stream import MAGIC, StreamReader
from libspec.format.tensors import TensorShard, safetensors_bytes
from libspec.validate.artifacts import validate

EXAMPLES = Path(__file__).resolve().parent.parent / "formats" / "examples"
FUZZ_EXAMPLES = int(os.environ.get("SPEC_FUZZ_EXAMPLES", "200"))
HANG_S = 30  # an example still running after this is a hang
PEAK_BYTES = 64 << 20  # the inputs are a few KB; the limits let no reader go past this from them
TRIED: Counter = Counter()  # examples run per reader, for the report at the end

FUZZ = settings(
    max_examples=FUZZ_EXAMPLES,
    derandomize=True,
    database=None,
    deadline=timedelta(seconds=5),
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    print_blob=True,
)

INTERESTING = [b"\x00", b"\xff", b"\x7f", b"\x80", b"\xff\xff\xff\xff", b"\x00\x00\x00\x80", b"\xff\xff\xff\xff\xff\xff\xff\x7f", b"\xdd", b"\xdf", b"\xc6", b"\xc1"]


@st.composite
def mutated(draw, original: bytes) -> bytes:
    """`original` after 1-4 byte-level edits: flips, overwrites, inserts, deletes, truncation, repeats."""
    data = bytearray(original)
    for _ in range(draw(st.integers(1, 4))):
        edit = draw(st.sampled_from(["flip", "set", "interesting", "insert", "delete", "truncate", "repeat"]))
        at = draw(st.integers(0, max(0, len(data) - 1)))
        if edit == "flip" and data:
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif edit == "set" and data:
            data[at] = draw(st.integers(0, 255))
        elif edit == "interesting":
            value = draw(st.sampled_from(INTERESTING))
            data[at : at + len(value)] = value
        elif edit == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=16))
        elif edit == "delete":
            del data[at : at + draw(st.integers(1, 16))]
        elif edit == "truncate":
            del data[at:]
        elif edit == "repeat":
            data[at:at] = data[at : at + draw(st.integers(1, 64))]
    return bytes(data)


def zstd(content: bytes) -> bytes:
    return zstandard.ZstdCompressor(level=1, write_checksum=True, write_content_size=True).compress(content)


def unzstd(frame: bytes) -> bytes:
    return zstandard.ZstdDecompressor().decompress(frame)


@st.composite
def stored_or_inner(draw, original: bytes, inner) -> bytes:
    """Mutate the bytes as stored, or (`inner(original, edit)`) the content inside the zstd frames."""
    if draw(st.booleans()):
        return draw(mutated(original))
    return inner(original, lambda content: draw(mutated(content)))


@contextlib.contextmanager
def no_hang(seconds: int = HANG_S):
    def expired(signum, frame):
        raise TimeoutError(f"reader still running after {seconds} s: a hang")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def outcome(reader: str, read) -> str:
    """Run `read()`: 'ok' or 'SpecError'; any other exception, a hang or a memory peak fails the example."""
    TRIED[reader] += 1
    tracemalloc.start()  # only around the reader: tracing Hypothesis itself would slow it fivefold
    try:
        with no_hang():
            read()
        result = "ok"
    except SpecError as error:
        assert "\n" not in str(error), f"a SpecError is one line: {error!r}"
        result = "SpecError"
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    assert peak < PEAK_BYTES, f"{reader}: {peak >> 20} MiB at peak for a few KB of input"
    return result


@pytest.fixture(scope="module")
def workdir():
    with tempfile.TemporaryDirectory() as directory:
        yield Path(directory)


def teardown_module():
    print("\nfuzz examples tried per reader: " + ", ".join(f"{name} {count}" for name, count in sorted(TRIED.items())))


# ---- the manifest ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def dataset_copy(workdir) -> Path:
    shutil.copytree(EXAMPLES / "dataset", workdir / "data")
    return workdir / "data"


MANIFEST_BYTES = (EXAMPLES / "dataset" / MANIFEST).read_bytes()


@FUZZ
@given(data=mutated(MANIFEST_BYTES))
def test_manifest_reader(dataset_copy, data):
    (dataset_copy / MANIFEST).write_bytes(data)

    def read():
        for sample in Dataset(dataset_copy, allow_incomplete=True):
            sample.hidden_states()

    outcome("manifest", read)


# ---- record shards ---------------------------------------------------------------------------


RECORD_SHARD = (EXAMPLES / "dataset" / "records-00000.msgpack.zst").read_bytes()


@FUZZ
@given(data=stored_or_inner(RECORD_SHARD, lambda frame, edit: zstd(edit(unzstd(frame)))))
def test_record_shard_reader(data):
    def read():
        for index, record in enumerate(decode_records(data, "records-00000.msgpack.zst")):
            check_record(record, f"record {index}", vocab_size=64)

    outcome("record shard", read)


# ---- tensor shards ---------------------------------------------------------------------------


TENSOR_SHARD = (EXAMPLES / "dataset" / "hidden-00000.safetensors").read_bytes()


def edit_header(shard: bytes, edit) -> bytes:
    """Mutate only the header JSON, keeping the length prefix true to it."""
    (length,) = struct.unpack("<Q", shard[:8])
    header = edit(shard[8 : 8 + length])
    return struct.pack("<Q", len(header)) + header + shard[8 + length :]


@FUZZ
@given(data=stored_or_inner(TENSOR_SHARD, edit_header))
def test_tensor_shard_header_reader(workdir, data):
    path = workdir / "hidden-00000.safetensors"
    path.write_bytes(data)

    def read():
        shard = TensorShard(path)
        for index in range(shard.num_records):
            hidden, scales = shard.record_rows(index)
            hidden.float().sum()

    outcome("tensor shard", read)


ZSTD_SHARD_PATH = EXAMPLES / "dataset-zstd-fp8" / "hidden-00000.safetensors"
ZSTD_TENSOR_SHARD = ZSTD_SHARD_PATH.read_bytes()


def edit_first_frame(edit) -> bytes:
    """The zstd example shard with the content of record 0's frame edited (recompressed with a valid checksum)."""
    example = TensorShard(ZSTD_SHARD_PATH)
    tensors = {name: tensor.clone() for name, tensor in example.tensors.items()}
    frames, ends = tensors["hidden_frames"], tensors["frame_offsets"]
    content = zstandard.ZstdDecompressor().decompress(frames[: int(ends[1])].numpy().tobytes())
    first = zstandard.ZstdCompressor(write_checksum=True).compress(edit(content))
    tensors["hidden_frames"] = torch.cat([torch.frombuffer(bytearray(first), dtype=torch.uint8), frames[int(ends[1]) :]])
    tensors["frame_offsets"] = torch.cat([torch.tensor([0]), ends[1:] - int(ends[1]) + len(first)])
    return safetensors_bytes(tensors, dict(example.metadata))


@st.composite
def zstd_shard_mutations(draw) -> bytes:
    """The zstd example shard mutated as stored, in its header JSON, or inside record 0's frame."""
    where = draw(st.sampled_from(["stored", "header", "frame"]))
    if where == "stored":
        return draw(mutated(ZSTD_TENSOR_SHARD))
    edit = lambda content: draw(mutated(content))  # noqa: E731
    return edit_header(ZSTD_TENSOR_SHARD, edit) if where == "header" else edit_first_frame(edit)


@FUZZ
@given(data=zstd_shard_mutations())
def test_zstd_tensor_shard_reader(workdir, data):
    path = workdir / "hidden-00000.safetensors"
    path.write_bytes(data)

    def read():
        shard = TensorShard(path)
        for index in range(shard.num_records):
            hidden, scales = shard.record_rows(index)
            hidden.float().sum()

    outcome("zstd tensor shard", read)


# ---- streams ---------------------------------------------------------------------------------


def stream_frames(stream: bytes) -> list[bytes]:
    frames, position = [], len(MAGIC)
    while position < len(stream):
        (length,) = struct.unpack("<I", stream[position : position + 4])
        frames.append(stream[position + 4 : position + 4 + length])
        position += 4 + length
    return frames


def edit_one_frame(stream: bytes, edit, which: int) -> bytes:
    frames = stream_frames(stream)
    which %= len(frames)
    frames[which] = zstd(edit(unzstd(frames[which])))
    return MAGIC + b"".join(struct.pack("<I", len(f)) + f for f in frames)


STREAMS = [(EXAMPLES / name).read_bytes() for name in ("stream.spst", "stream-fp8.spst")]


@st.composite
def mutated_streams(draw) -> bytes:
    stream = draw(st.sampled_from(STREAMS))
    which = draw(st.integers(0, 7))
    return draw(stored_or_inner(stream, lambda original, edit: edit_one_frame(original, edit, which)))


@FUZZ
@given(data=mutated_streams())
def test_stream_frame_reader(data):
    def read():
        for sample in StreamReader(io.BytesIO(data), "fuzz.spst"):
            sample.hidden_states()

    outcome("stream", read)


# ---- JSONL (and JSON array) training inputs --------------------------------------------------


INPUT_ITEMS = [
    {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": [{"type": "text", "text": "2+2?"}]},
                  {"role": "assistant", "content": "4", "reasoning_content": "add",
                   "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "calc", "arguments": "{\"x\": 2}"}}]},
                  {"role": "tool", "content": "4", "tool_call_id": "c1"}],
     "tools": [{"type": "function", "function": {"name": "calc"}}]},
    {"system": "S", "conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "hello"}]},
    {"text": "plain text, every token supervised"},
    {"prompt": "import os", "completion": "\nprint(os.getcwd())"},
    {"input_ids": [5, 6, 7], "loss_mask": [0, 1, 1]},
]  # fmt: skip
JSONL = "".join(json.dumps(item) + "\n" for item in INPUT_ITEMS).encode()
INPUT_FILES = {
    "in.jsonl": JSONL,
    "in.json": json.dumps(INPUT_ITEMS, indent=1).encode(),
    "in.jsonl.gz": gzip.compress(JSONL, mtime=0),
    "in.jsonl.zst": zstd(JSONL),
}


@st.composite
def mutated_inputs(draw) -> tuple[str, bytes]:
    name = draw(st.sampled_from(sorted(INPUT_FILES)))
    return name, draw(mutated(INPUT_FILES[name]))


@FUZZ
@given(named=mutated_inputs())
def test_jsonl_input_parser(workdir, named):
    name, data = named
    path = workdir / name
    path.write_bytes(data)

    def read():
        for item in read_items([str(path)]):
            with contextlib.suppress(SpecError):  # a bad item is the expected SpecError; the file goes on
                normalise(item)
                normalise(item, prompt_only=True)

    outcome("jsonl input", read)


# ---- JSON documents: checkpoint config, shard index, HTTP request body ------------------------------

JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=True) | st.text(max_size=8),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=6), children, max_size=3),
    max_leaves=8,
)


@st.composite
def json_edited(draw, document: dict) -> bytes:
    """`document` with 1-3 structural edits (a value replaced by any JSON value, a key deleted, a key
    added), serialised; or its serialisation after byte-level edits. Structural edits reach the checks
    behind the parser, which byte edits mostly stop at."""
    if draw(st.booleans()):
        return draw(mutated(json.dumps(document).encode()))
    document = json.loads(json.dumps(document))
    for _ in range(draw(st.integers(1, 3))):
        node = document
        while isinstance(node, dict) and node and draw(st.booleans()):
            child = node[draw(st.sampled_from(sorted(node)))]
            if not isinstance(child, dict) or not child:
                break
            node = child
        if not isinstance(node, dict) or not node:
            continue
        key = draw(st.sampled_from(sorted(node)))
        edit = draw(st.sampled_from(["replace", "delete", "add"]))
        if edit == "replace":
            node[key] = draw(JSON_VALUES)
        elif edit == "delete":
            del node[key]
        else:
            node[draw(st.text(max_size=12))] = draw(JSON_VALUES)
    return json.dumps(document, allow_nan=True).encode()


CHECKPOINT = EXAMPLES / "checkpoint-eagle3"
CHECKPOINT_CONFIG = json.loads((CHECKPOINT / "config.json").read_text())


@pytest.fixture(scope="module")
def checkpoint_copy(workdir) -> Path:
    shutil.copytree(CHECKPOINT, workdir / "checkpoint")
    return workdir / "checkpoint"


@FUZZ
@given(data=json_edited(CHECKPOINT_CONFIG))
def test_checkpoint_config_reader(checkpoint_copy, data):
    (checkpoint_copy / "config.json").write_bytes(data)
    outcome("checkpoint config", lambda: validate(str(checkpoint_copy)))


SHARD = "model-00001-of-00001.safetensors"
INDEX = {"metadata": {"total_size": 0}, "weight_map": {name: SHARD for name in ckpt.tensor_headers(CHECKPOINT)}}


@pytest.fixture(scope="module")
def sharded_checkpoint(workdir) -> Path:
    folder = workdir / "sharded"
    folder.mkdir()
    shutil.copy(CHECKPOINT / "config.json", folder / "config.json")
    shutil.copy(CHECKPOINT / "model.safetensors", folder / SHARD)
    return folder


@FUZZ
@given(data=json_edited(INDEX))
def test_shard_index_reader(sharded_checkpoint, data):
    (sharded_checkpoint / "model.safetensors.index.json").write_bytes(data)

    def read():
        read_weight_map(sharded_checkpoint, "model.safetensors.index.json")
        ckpt.load_tensors(sharded_checkpoint)

    outcome("shard index", read)


class TinyEngine:
    """What parse_request asks of the serving engine: its name, tokenizer and context length."""

    model_name, max_model_len = "tiny", 64

    def __init__(self):
        from tokenizers import Tokenizer, models, pre_tokenizers
        from transformers import PreTrainedTokenizerFast

        words = Tokenizer(models.WordLevel({f"t{i}": i for i in range(64)}, unk_token="t0"))
        words.pre_tokenizer = pre_tokenizers.Whitespace()
        self.tokenizer = PreTrainedTokenizerFast(tokenizer_object=words, eos_token="t63", pad_token="t0")
        self.tokenizer.chat_template = "{% for m in messages %}t1 {{ m['content'] }} t2 {% endfor %}{% if add_generation_prompt %}t3{% endif %}"


ENGINE = TinyEngine()
REQUEST = {"model": "tiny", "messages": [{"role": "user", "content": "t5 t6"}], "prompt": "t7 t8", "max_tokens": 8,
           "temperature": 0.7, "seed": 3, "stream": True, "stream_options": {"include_usage": True}}  # fmt: skip


@FUZZ
@given(data=json_edited(REQUEST), chat=st.booleans())
def test_http_request_parser(data, chat):
    """The server's body parser and request checks: a request, or a one-line 4xx RequestError."""

    def read():
        try:
            parse_request(parse_body(data), chat, ENGINE, max_tokens_limit=32)
        except RequestError as error:
            assert 400 <= error.status < 500 and "\n" not in error.message, (error.status, error.message)

    outcome("http request", read)
