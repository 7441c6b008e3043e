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

import gzip
import io
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Iterable, Iterator

import zstandard

from libspec.format.digest import digest_file
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
        elif path.is_file():
            files.append(str(path))
        else:
            raise SpecError(f"{path}: no such file or directory")
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
    """Every input item of every file in order, numbered globally; JSON errors become error items."""
    index = 0
    for name in files:
        for line, value, error in _file_items(name, stdin):
            yield RawItem(index, name, line, value, error)
            index += 1


def _open_text(name: str, stdin: BinaryIO | None) -> io.TextIOBase:
    if name == "-":
        return io.TextIOWrapper(stdin or sys.stdin.buffer, encoding="utf-8")
    if name.endswith(".gz"):
        return gzip.open(name, "rt", encoding="utf-8")
    if name.endswith(".zst"):
        return io.TextIOWrapper(zstandard.ZstdDecompressor().stream_reader(open(name, "rb"), closefd=True), encoding="utf-8")
    return open(name, encoding="utf-8")


def _file_items(name: str, stdin: BinaryIO | None) -> Iterator[tuple[int, Any, str | None]]:
    """(line or item number, parsed value, error) for each item of one input file."""
    try:
        with _open_text(name, stdin) as handle:
            lines = enumerate(handle, start=1)
            for number, text in lines:
                if not text.strip():
                    continue
                if text.lstrip().startswith("["):  # one JSON array (e.g. a ShareGPT dump), not JSONL
                    yield from _array_items(name, text + handle.read())
                    return
                yield _parse_line(number, text)
                break
            for number, text in lines:
                if text.strip():
                    yield _parse_line(number, text)
    except UnicodeDecodeError as error:
        raise SpecError(f"{name}: not UTF-8 text ({error.reason})") from None
    except (OSError, EOFError, zstandard.ZstdError) as error:
        raise SpecError(f"{name}: cannot read: {error}") from None


def _parse_line(number: int, text: str) -> tuple[int, Any, str | None]:
    try:
        return number, json.loads(text), None
    except json.JSONDecodeError as error:
        return number, None, f"not valid JSON: {error.msg} at column {error.colno}"


def _array_items(name: str, text: str) -> Iterator[tuple[int, Any, str | None]]:
    try:
        items = json.loads(text)
    except json.JSONDecodeError as error:
        raise SpecError(f"{name}: not a valid JSON array: {error}") from None
    for number, value in enumerate(items, start=1):
        yield number, value, None


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
    total = 0
    for name in files:
        with _open_text(name, None) as handle:
            for text in handle:
                if not text.strip():
                    continue
                if text.lstrip().startswith("["):
                    total += sum(1 for _ in _array_items(name, text + handle.read()))
                    break
                total += 1 + sum(1 for rest in handle if rest.strip())
    return total
