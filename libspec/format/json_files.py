"""Reading a JSON file that must hold one object (configs, manifests, reports, shard indexes)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from libspec.errors import SpecError
from libspec.format.bounded_io import open_regular, size_text

# How deep JSON (and msgpack maps read as JSON) may nest (SPEC.md §2): real documents nest a few
# levels; far deeper ones only come from damage or malice, and would exhaust Python's stack.
MAX_NESTING = 64


def read_json_object(path: str | Path, missing: str = "missing", expected: str = "a JSON object", max_bytes: int | None = None) -> dict:
    """The object in `path`, or a one-line SpecError naming the file: missing, not a regular file, too large
    (over `max_bytes`), not UTF-8 JSON, nested too deeply, not an object.

    `missing` is what to say when the file does not exist (e.g. "missing; a data set needs its manifest");
    `expected` names what the object should be when the file holds another JSON value.
    """
    path = Path(path)
    try:
        with open_regular(path, "file", missing=missing) as handle:
            size = os.fstat(handle.fileno()).st_size
            if max_bytes is not None and size > max_bytes:
                raise SpecError(f"{path}: {size} bytes, past the {size_text(max_bytes)} limit for this file")
            data = handle.read()
    except OSError as error:
        raise SpecError(f"{path}: unreadable: {error.strerror or error}") from None
    try:
        value = json.loads(data.decode("utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise SpecError(f"{path}: not valid JSON: {error}") from None
    except RecursionError:
        raise SpecError(f"{path}: not valid JSON: nested too deeply") from None
    if not isinstance(value, dict):
        raise SpecError(f"{path}: expected {expected}")
    return value


def read_shard_index(index: str | Path) -> dict[str, str]:
    """The `weight_map` (tensor name -> file name) of a sharded safetensors index, e.g. model.safetensors.index.json."""
    weight_map = read_json_object(index, expected="a shard index (a JSON object with weight_map)").get("weight_map")
    if not isinstance(weight_map, dict) or not all(isinstance(name, str) for name in weight_map.values()):
        raise SpecError(f"{index}: not a shard index: expected weight_map to map tensor names to file names, found {type(weight_map).__name__}")
    return weight_map


def json_value_problem(value: Any, max_nesting: int = MAX_NESTING) -> str | None:
    """Why `value` (e.g. a msgpack map's contents) is not plain JSON data nested at most `max_nesting` levels, or None.

    Plain JSON data: maps with string keys, lists, strings, numbers, booleans and null.
    """
    pending = [(value, 1)]
    while pending:
        item, depth = pending.pop()
        if isinstance(item, dict):
            if depth > max_nesting:
                return f"nested more than {max_nesting} levels deep"
            for key, inner in item.items():
                if not isinstance(key, str):
                    return f"map key {key!r} is not a string"
                pending.append((inner, depth + 1))
        elif isinstance(item, list):
            if depth > max_nesting:
                return f"nested more than {max_nesting} levels deep"
            pending.extend((inner, depth + 1) for inner in item)
        elif item is not None and not isinstance(item, (str, int, float)):  # bool is an int
            return f"holds a {type(item).__name__}, not JSON data"
    return None
