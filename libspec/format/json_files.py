"""Reading a JSON file that must hold one object (configs, manifests, reports, shard indexes)."""

from __future__ import annotations

import json
from pathlib import Path

from libspec.errors import SpecError


def read_json_object(path: str | Path, missing: str = "missing", expected: str = "a JSON object") -> dict:
    """The object in `path`, or a one-line SpecError naming the file: missing, unreadable, not JSON, not an object.

    `missing` is what to say when the file does not exist (e.g. "missing; a data set needs its manifest");
    `expected` names what the object should be when the file holds another JSON value.
    """
    path = Path(path)
    try:
        value = json.loads(path.read_text("utf-8"))
    except FileNotFoundError:
        raise SpecError(f"{path}: {missing}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise SpecError(f"{path}: not valid JSON: {error}") from None
    except OSError as error:
        raise SpecError(f"{path}: unreadable: {error.strerror or error}") from None
    if not isinstance(value, dict):
        raise SpecError(f"{path}: expected {expected}")
    return value
