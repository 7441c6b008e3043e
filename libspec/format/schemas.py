"""JSON Schemas of the on-disk format (formats/*.schema.json) and validation against them."""

from __future__ import annotations

import functools
import json
from pathlib import Path
from importlib import resources
from typing import Any

import jsonschema
import referencing

from libspec.errors import SpecError

SCHEMA_NAMES = (
    "dataset-manifest",
    "record",
    "tensor-shard-metadata",
    "stream-frame",
    "speculator-config",
    "bench-report",
)


@functools.cache
def load_schema(name: str) -> dict:
    """The parsed JSON Schema `formats/<name>.schema.json`."""
    if name not in SCHEMA_NAMES:
        raise KeyError(f"unknown schema {name!r}; known: {', '.join(SCHEMA_NAMES)}")
    text = formats_dir().joinpath(f"{name}.schema.json").read_text("utf-8")
    return json.loads(text)


def formats_dir():
    """Where the schemas are: the data package libspec.formats when installed from a wheel,
    the repository's formats/ when running from a source tree or an editable install."""
    source_tree = Path(__file__).resolve().parents[2] / "formats"
    if source_tree.is_dir():
        return source_tree
    return resources.files("libspec.formats")


@functools.cache
def _registry() -> referencing.Registry:
    """All schemas by their $id, so that one may $ref another (the stream header reuses the manifest's)."""
    resources_ = [(load_schema(n)["$id"], referencing.Resource.from_contents(load_schema(n))) for n in SCHEMA_NAMES]
    return referencing.Registry().with_resources(resources_)


@functools.cache
def _validator(name: str) -> jsonschema.protocols.Validator:
    schema = load_schema(name)
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    return cls(schema, registry=_registry())


def schema_problems(name: str, document: Any) -> list[str]:
    """Every way `document` breaks schema `name`, each as 'at <json path>: <message>'."""
    problems = []
    for error in sorted(_validator(name).iter_errors(document), key=lambda e: list(e.absolute_path)):
        location = "/".join(str(p) for p in error.absolute_path) or "(top level)"
        problems.append(f"at {location}: {_short(error.message)}")
    return problems


def check_schema(name: str, document: Any, where: str) -> None:
    """Raise SpecError naming `where` and the first problem if `document` breaks schema `name`."""
    problems = schema_problems(name, document)
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise SpecError(f"{where}: does not match the {name} schema {problems[0]}{more}")


def _short(message: str, limit: int = 200) -> str:
    """jsonschema quotes whole instances in messages; a list of 8k token ids is not helpful."""
    return message if len(message) <= limit else message[: limit - 3] + "..."
