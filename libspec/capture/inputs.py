"""Training inputs in the formats people have, read and normalised into one `Example` type.

Accepted per record (one JSON object per JSONL line, or per item of a JSON array file):

- OpenAI-style `messages`: roles system/developer/user/assistant/tool, `content` as a string or a
  list of text parts, `tool_calls`, `tool_call_id`, `name`; reasoning in `reasoning_content`,
  `reasoning` or `thinking` is kept (copied to both `reasoning_content` and `thinking`, the keys
  chat templates read); an optional top-level `tools` list is passed to the chat template.
- ShareGPT `conversations`: `from`/`value` turns (human/user, gpt/assistant/model, system,
  tool/function/observation), with an optional top-level `system` string.
- plain `text` (every token supervised), or `prompt` + `completion` (only the completion).
- pre-tokenized `input_ids` + `loss_mask` (passed through unchanged).

Prompt-only inputs, for the verifier to answer (`spec-gen-hidden --regenerate`): `messages` or
`conversations` ending in a user turn, and `prompt` without `completion` (accepted by `normalise`
only with `prompt_only=True`; otherwise refused, naming --regenerate). `text` and token inputs
have no prompt/reply split, so they are never prompt-only.

Files are `.jsonl`/`.json`, optionally `.gz` or `.zst` compressed; directories are searched
recursively for them (in sorted order); `-` is JSONL (or one JSON array) on stdin. Every non-blank
line or array item is an input item with a global position `index`, bad ones included, so that
`--shard-index` partitions stay the same whether or not bad items are skipped.
"""

from __future__ import annotations

import codecs
import contextlib
import gzip
import io
import json
import sys
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Iterable, Iterator

import zstandard

from libspec.format.bounded_io import open_regular, regular_file_size, size_text
from libspec.format.digest import digest_file
from libspec.format.json_files import MAX_NESTING, json_value_problem
from libspec.errors import SpecError

INPUT_SUFFIXES = (".jsonl", ".json", ".jsonl.gz", ".json.gz", ".jsonl.zst", ".json.zst")
ROLES = ("system", "developer", "user", "assistant", "tool")
SHAREGPT_ROLES = {
    "human": "user", "user": "user",
    "gpt": "assistant", "assistant": "assistant", "chatgpt": "assistant", "bard": "assistant", "bing": "assistant",
    "model": "assistant", "function_call": "assistant",
    "system": "system",
    "tool": "tool", "function": "tool", "function_response": "tool", "observation": "tool",
}  # fmt: skip
REASONING_KEYS = ("reasoning_content", "reasoning", "thinking")
MESSAGE_KEYS = ("role", "content", "name", "tool_calls", "tool_call_id", *REASONING_KEYS)
# One JSONL line or JSON array item (SPEC.md §9.1): ~2M tokens of text, past any model's context;
# tokenizing costs ~200 bytes of memory per byte of text, so longer lines are refused, not read.
MAX_LINE_BYTES = 8 << 20


@dataclass(frozen=True)
class RawItem:
    """One input item before normalisation: where it came from and its parsed JSON (or why not)."""

    index: int  # position among all items of all inputs, 0-based
    source: str
    line: int  # 1-based line of a JSONL file, or item number of a JSON array
    value: Any = None
    error: str | None = None  # set when the line is not valid JSON

    @property
    def location(self) -> str:
        return f"{self.source}:{self.line}"


@dataclass(frozen=True)
class Example:
    """A normalised training input. `kind` says which of the optional fields are set."""

    index: int
    source: str
    line: int
    kind: str  # "messages" | "text" | "prompt_completion" | "tokens"
    messages: list[dict] = field(default_factory=list)
    tools: list | None = None
    text: str | None = None
    prompt: str | None = None
    completion: str | None = None
    input_ids: list[int] | None = None
    loss_mask: list[int] | None = None

    @property
    def location(self) -> str:
        return f"{self.source}:{self.line}"


def expand_inputs(paths: Iterable[str]) -> list[str]:
    """Input files in reading order: files as given, directories searched recursively (sorted), `-` kept."""
    files: list[str] = []
    for name in paths:
        if name == "-":
            files.append(name)
            continue
        path = Path(name)
        if path.is_dir():
            found = sorted(str(p) for p in path.rglob("*") if p.is_file() and p.name.endswith(INPUT_SUFFIXES))
            if not found:
                raise SpecError(f"{path}: directory holds no input files ({', '.join(INPUT_SUFFIXES)})")
            files += found
        else:  # a named pipe would be read twice (sizes and checksums, then items): give - instead
            regular_file_size(path, "input file", missing="no such file or directory")
            files.append(str(path))
    if files.count("-") > 1:
        raise SpecError("stdin (-) can be given only once as input")
    return files


def describe_inputs(files: list[str]) -> list[dict]:
    """Name, size and sha256 of each input file (stdin: name only), for manifests and resume checks."""
    described = []
    for name in files:
        if name == "-":
            described.append({"path": "-"})
        else:
            digest = digest_file(name)
            described.append({"path": name, "bytes": digest.num_bytes, "sha256": digest.sha256})
    return described


def read_items(files: list[str], stdin: BinaryIO | None = None) -> Iterator[RawItem]:
    """Every input item of every file in order, numbered globally; bad lines become error items.

    A line that is not JSON, not UTF-8, nested too deeply or longer than MAX_LINE_BYTES is an error
    item (counted and skipped with --skip-bad); a file that cannot be read at all raises SpecError.
    """
    index = 0
    for name in files:
        for line, value, error in _file_items(name, stdin):
            yield RawItem(index, name, line, value, error)
            index += 1


@contextlib.contextmanager
def _open_binary(name: str, stdin: BinaryIO | None) -> Iterator[BinaryIO]:
    """The decompressed bytes of one input: `-` (stdin), or a regular file, plain, .gz or .zst."""
    if name == "-":
        yield stdin or sys.stdin.buffer
        return
    with open_regular(name, "input file", missing="no such file or directory") as handle:
        if name.endswith(".gz"):
            with gzip.GzipFile(fileobj=handle, mode="rb") as unzipped:
                yield unzipped
        elif name.endswith(".zst"):
            with io.BufferedReader(_ZstdFrames(handle), buffer_size=1 << 20) as unzstd:
                yield unzstd
        else:
            yield handle


class _ZstdFrames(io.RawIOBase):
    """The content of a file of zstd frames, one after the other (`zstd -T`, pzstd and `cat a.zst b.zst`
    write several). A file that ends inside a frame is an error: python-zstandard's stream_reader
    would just stop there, silently dropping the rest of the input."""

    _PIECE = 4096  # compressed bytes per step: at most 128 MiB of output even from a zip bomb

    def __init__(self, source: BinaryIO):
        self.source = source
        self.frame = zstandard.ZstdDecompressor().decompressobj()
        self.in_frame = False  # bytes of the current frame were fed
        self.compressed, self.fed = b"", 0
        self.output, self.taken = b"", 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        while self.taken == len(self.output):
            if self.fed == len(self.compressed):
                self.compressed, self.fed = self.source.read(1 << 20), 0
                if not self.compressed:
                    if self.in_frame:
                        raise zstandard.ZstdError("the file ends inside a zstd frame (truncated)")
                    return 0
            piece = memoryview(self.compressed)[self.fed : self.fed + self._PIECE]
            self.fed += len(piece)
            self.output, self.taken = self.frame.decompress(piece), 0
            self.in_frame = True
            if self.frame.eof:  # the next frame starts in what this one left over
                self.compressed, self.fed = self.frame.unused_data + self.compressed[self.fed :], 0
                self.frame = zstandard.ZstdDecompressor().decompressobj()
                self.in_frame = False
        count = min(len(buffer), len(self.output) - self.taken)
        buffer[:count] = memoryview(self.output)[self.taken : self.taken + count]
        self.taken += count
        return count


def _file_items(name: str, stdin: BinaryIO | None, parse: bool = True) -> Iterator[tuple[int, Any, str | None]]:
    """(line or item number, parsed value, error) for each item of one input file (without `parse`, JSONL
    lines are counted but not parsed: (number, None, None))."""
    try:
        with _open_binary(name, stdin) as handle:
            number, first = 0, b""
            while _is_blank(first):
                first = handle.readline(MAX_LINE_BYTES + 1)
                if not first:
                    return
                number += 1
            if first.lstrip().startswith(b"["):  # one JSON array (e.g. a ShareGPT dump, often one long line), not JSONL
                yield from _array_items(name, first, handle)
                return
            for number, data in _lines(handle, number, first):
                if data is None or not _is_blank(data):
                    yield _parse_line(number, data) if parse else (number, None, None)
    except (OSError, EOFError, zlib.error, zstandard.ZstdError) as error:
        damaged = "corrupt or truncated compressed data: " if name.endswith((".gz", ".zst")) else ""
        raise SpecError(f"{name}: cannot read ({damaged}{error})") from None


def _is_blank(data: bytes) -> bool:
    """Blank as str.strip() sees it (Unicode spaces too), decoding only lines that may hold them."""
    stripped = data.strip()
    if not stripped or stripped[0] < 0x80:
        return not stripped
    try:
        return not data.decode("utf-8").strip()
    except UnicodeDecodeError:
        return False


def _lines(handle: BinaryIO, number: int, first: bytes) -> Iterator[tuple[int, bytes | None]]:
    """(1-based line number, bytes) per line from line `number` (`first`) on; None for a line longer than
    MAX_LINE_BYTES, whose rest is skipped without keeping it."""
    data = first
    while data:
        if len(data) > MAX_LINE_BYTES and not data.endswith(b"\n"):
            while (rest := handle.readline(1 << 20)) and not rest.endswith(b"\n"):
                pass
            yield number, None
        else:
            yield number, data
        data = handle.readline(MAX_LINE_BYTES + 1)
        number += 1


def _parse_line(number: int, data: bytes | None) -> tuple[int, Any, str | None]:
    if data is None:
        return number, None, f"line longer than the {size_text(MAX_LINE_BYTES)} limit (SPEC.md §9.1)"
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        return number, None, f"not UTF-8 text ({error.reason} at byte {error.start})"
    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        return number, None, f"not valid JSON: {error.msg} at column {error.colno}"
    except RecursionError:
        return number, None, "not valid JSON: nested too deeply"
    # Fewer brackets than the nesting limit cannot nest past it: most lines need no walk.
    problem = json_value_problem(value) if data.count(b"[") + data.count(b"{") > MAX_NESTING else None
    return (number, None, f"not valid JSON: {problem}") if problem else (number, value, None)


def _array_items(name: str, start: bytes, handle: BinaryIO) -> Iterator[tuple[int, Any, str | None]]:
    """The items of a JSON array file, parsed one at a time so that memory stays within one item.

    `start` is the file's first non-blank line (or its first MAX_LINE_BYTES); the rest is read from `handle`.
    Items are limited to MAX_LINE_BYTES each, like JSONL lines; a bad item stops the file with SpecError.
    """
    array = _JsonArray(name, start, handle)
    number = 0
    cut = lambda: f"it ends after {number} items without its closing ] (truncated?)"  # noqa: E731
    if array.next_char(cut()) != "]":
        while True:
            number += 1
            yield number, array.item(number), None
            separator = array.next_char(cut())
            if separator == "]":
                break
            if separator != ",":
                raise SpecError(f"{name}: not a valid JSON array: expected , or ] after item {number}")
            array.position += 1
            array.next_char(cut())  # items start after blanks: raw_decode does not skip them
    array.position += 1  # the closing ]
    if array.next_char(None) is not None:
        raise SpecError(f"{name}: not a valid JSON array: data after its closing ]")


class _JsonArray:
    """A JSON array read from a file in pieces: `text[position:]` is what is not yet parsed."""

    def __init__(self, name: str, start: bytes, handle: BinaryIO):
        self.name, self.handle = name, handle
        self.decoder, self.scanner = codecs.getincrementaldecoder("utf-8")(), json.JSONDecoder()
        self.text, self.position, self.eof = "", 0, False
        self._decode(start)
        self.position = self.text.index("[") + 1

    def _decode(self, data: bytes) -> None:
        try:
            self.text += self.decoder.decode(data, final=self.eof)
        except UnicodeDecodeError as error:
            raise SpecError(f"{self.name}: not UTF-8 text ({error.reason})") from None

    def _more(self, minimum: int = 0) -> None:
        """Read on; drop what was parsed, so memory stays within an item and one read."""
        self.text, self.position = self.text[self.position :], 0
        data = self.handle.read(max(1 << 20, minimum))
        self.eof = not data
        self._decode(data)

    def next_char(self, at_end: str | None) -> str | None:
        """The next non-blank character (not consumed); at the end of the file, None, or SpecError saying `at_end`."""
        while True:
            while self.position < len(self.text) and self.text[self.position] in " \t\r\n":
                self.position += 1
            if self.position < len(self.text):
                return self.text[self.position]
            if self.eof:
                if at_end is None:
                    return None
                raise SpecError(f"{self.name}: not a valid JSON array: {at_end}")
            self._more()

    def item(self, number: int) -> Any:
        """Parse item `number`, which starts at `position`, reading more of the file until it is whole."""
        too_long = f"{self.name}: item {number} of the JSON array is longer than the {size_text(MAX_LINE_BYTES)} limit (SPEC.md §9.1)"
        while True:
            pending = len(self.text) - self.position
            try:
                value, end = self.scanner.raw_decode(self.text, self.position)
            except json.JSONDecodeError as error:
                if pending > MAX_LINE_BYTES:
                    raise SpecError(too_long) from None
                if self.eof:
                    raise SpecError(f"{self.name}: not a valid JSON array: item {number}: {error.msg}") from None
                self._more(pending)
                continue
            except RecursionError:
                raise SpecError(f"{self.name}: not a valid JSON array: item {number} is nested too deeply") from None
            if end == len(self.text) and not self.eof:  # a number or literal may go on in the next read
                self._more(pending)
                continue
            if end - self.position > MAX_LINE_BYTES:
                raise SpecError(too_long)
            problem = json_value_problem(value)
            if problem is not None:
                raise SpecError(f"{self.name}: not a valid JSON array: item {number} is {problem}")
            self.position = end
            return value


def normalise(item: RawItem, prompt_only: bool = False) -> Example:
    """Turn a parsed input item into an Example, or raise SpecError naming file:line and the field.

    With `prompt_only` a `prompt` may come without `completion` (completion None: the verifier writes it).
    """
    where = item.location
    if item.error is not None:
        raise SpecError(f"{where}: {item.error}")
    record = item.value
    if not isinstance(record, dict):
        raise SpecError(f"{where}: expected a JSON object, found {type(record).__name__}")
    base = dict(index=item.index, source=item.source, line=item.line)
    if "input_ids" in record or "loss_mask" in record:
        ids, mask = _token_list(record, "input_ids", where), _token_list(record, "loss_mask", where)
        if any(v not in (0, 1) for v in mask):
            raise SpecError(f"{where}: field loss_mask: expected only 0 and 1")
        if len(ids) != len(mask):
            raise SpecError(f"{where}: field loss_mask: length {len(mask)} differs from input_ids length {len(ids)}")
        return Example(kind="tokens", input_ids=ids, loss_mask=mask, **base)
    if "messages" in record:
        messages = [_openai_message(m, f"{where}: field messages[{i}]") for i, m in enumerate(_list(record, "messages", where))]
        return Example(kind="messages", messages=messages, tools=_tools(record, where), **base)
    if "conversations" in record:
        messages = _sharegpt_messages(record, where)
        return Example(kind="messages", messages=messages, tools=_tools(record, where), **base)
    if "prompt" in record:
        prompt, completion = _string(record, "prompt", where), record.get("completion")
        if completion in (None, "") and not prompt_only:
            raise SpecError(f"{where}: field completion: expected a non-empty string; a prompt alone needs --regenerate (the verifier writes the completion)")
        if completion not in (None, ""):
            completion = _string(record, "completion", where)
        return Example(kind="prompt_completion", prompt=prompt, completion=completion or None, **base)
    if "text" in record:
        return Example(kind="text", text=_string(record, "text", where), **base)
    found = ", ".join(sorted(record)) or "none"
    raise SpecError(
        f"{where}: expected field messages, conversations, text, prompt+completion or input_ids+loss_mask; found {found}"
    )


def _string(record: dict, key: str, where: str) -> str:
    value = record.get(key)
    if not isinstance(value, str) or not value:
        raise SpecError(f"{where}: field {key}: expected a non-empty string")
    return value


def _list(record: dict, key: str, where: str) -> list:
    value = record.get(key)
    if not isinstance(value, list) or not value:
        raise SpecError(f"{where}: field {key}: expected a non-empty list")
    return value


def _token_list(record: dict, key: str, where: str) -> list[int]:
    values = _list(record, key, where)
    if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in values):
        raise SpecError(f"{where}: field {key}: expected non-negative integers")
    return values


def _tools(record: dict, where: str) -> list | None:
    tools = record.get("tools")
    if isinstance(tools, str):  # some data sets store the tool list as a JSON string
        try:
            tools = json.loads(tools)
        except json.JSONDecodeError:
            raise SpecError(f"{where}: field tools: a string that is not JSON") from None
    if tools is not None and not isinstance(tools, list):
        raise SpecError(f"{where}: field tools: expected a list of tool definitions")
    return tools or None


def _text_content(content: Any, where: str) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = []
        for part in content:
            kind = part.get("type") if isinstance(part, dict) else None
            if kind != "text" or not isinstance(part.get("text"), str):
                raise SpecError(f"{where}: field content: only text parts are supported, found {kind or type(part).__name__!r}")
            texts.append(part["text"])
        return "".join(texts)
    raise SpecError(f"{where}: field content: expected a string or a list of text parts")


def _openai_message(message: Any, where: str) -> dict:
    if not isinstance(message, dict):
        raise SpecError(f"{where}: expected an object with role and content")
    role = message.get("role")
    if role not in ROLES:
        raise SpecError(f"{where}: field role: expected one of {', '.join(ROLES)}, found {role!r}")
    normalised = {"role": role, "content": _text_content(message.get("content"), where)}
    for key in ("name", "tool_call_id"):
        if isinstance(message.get(key), str):
            normalised[key] = message[key]
    if message.get("tool_calls"):
        normalised["tool_calls"] = [_tool_call(call, f"{where}: field tool_calls") for call in message["tool_calls"]]
    reasoning = next((message[k] for k in REASONING_KEYS if isinstance(message.get(k), str) and message[k]), None)
    if reasoning is not None:
        # Qwen3-style templates read reasoning_content, gpt-oss-style ones thinking.
        normalised["reasoning_content"] = normalised["thinking"] = reasoning
    return normalised


def _tool_call(call: Any, where: str) -> dict:
    """Tool calls as HF chat templates expect them: function.arguments a dict, not a JSON string."""
    if not isinstance(call, dict):
        raise SpecError(f"{where}: expected objects")
    function = call.get("function", call)
    if not isinstance(function, dict) or not isinstance(function.get("name"), str):
        raise SpecError(f"{where}: expected function.name")
    arguments = function.get("arguments", {})
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments) if arguments.strip() else {}
        except json.JSONDecodeError:
            pass  # keep the string; templates that need a dict will say so
    normalised = {"type": "function", "function": {"name": function["name"], "arguments": arguments}}
    if isinstance(call.get("id"), str):
        normalised["id"] = call["id"]
    return normalised


def _sharegpt_messages(record: dict, where: str) -> list[dict]:
    messages = []
    if isinstance(record.get("system"), str) and record["system"]:
        messages.append({"role": "system", "content": record["system"]})
    for i, turn in enumerate(_list(record, "conversations", where)):
        location = f"{where}: field conversations[{i}]"
        if not isinstance(turn, dict):
            raise SpecError(f"{location}: expected an object with from and value")
        speaker = turn.get("from")
        role = SHAREGPT_ROLES.get(speaker.lower() if isinstance(speaker, str) else speaker)
        if role is None:
            raise SpecError(f"{location}: field from: unknown speaker {speaker!r}; expected one of {', '.join(SHAREGPT_ROLES)}")
        messages.append({"role": role, "content": _text_content(turn.get("value"), location)})
    return messages


def count_items(files: list[str]) -> int | None:
    """How many input items the files hold (None when reading stdin), for progress bars."""
    if "-" in files:
        return None
    return sum(1 for name in files for _ in _file_items(name, None, parse=False))
