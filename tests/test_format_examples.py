"""formats/examples: every schema has an example, every example validates, and they are current."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from format_examples import write_examples
from libspec.format.schemas import SCHEMA_NAMES, schema_problems
from libspec.validate.artifacts import validate

EXAMPLES = Path(__file__).resolve().parent.parent / "formats" / "examples"

# Which example shows each schema; a new schema without an example fails the first test.
SCHEMA_EXAMPLES = {
    "dataset-manifest": ["dataset/manifest.json", "dataset-zstd-fp8/manifest.json"],
    "record": ["record.json"],
    "tensor-shard-metadata": ["tensor-shard-metadata.json"],
    "stream-frame": ["stream-frames.json"],
    "speculator-config": ["checkpoint-eagle3/config.json"],
    "bench-report": ["bench-report.json"],
}


def test_every_schema_has_an_example():
    assert set(SCHEMA_EXAMPLES) == set(SCHEMA_NAMES)


@pytest.mark.parametrize("schema", SCHEMA_NAMES)
def test_examples_match_their_schema(schema):
    for name in SCHEMA_EXAMPLES[schema]:
        document = json.loads((EXAMPLES / name).read_text())
        for item in document if isinstance(document, list) else [document]:
            if schema == "stream-frame" and item["type"] == "sample":
                item = {**item, "hidden": b""}  # binary in the real stream; shown as hex in the JSON view
            assert schema_problems(schema, item) == [], f"{name}"


@pytest.mark.parametrize(
    "artifact",
    ["dataset", "stream.spst", "stream-fp8.spst", "checkpoint-eagle3", "dataset/records-00000.msgpack.zst", "dataset/hidden-00001.safetensors",
     "dataset-zstd-fp8", "dataset-zstd-fp8/hidden-00001.safetensors"],
)
def test_example_artifacts_validate(artifact):
    report = validate(str(EXAMPLES / artifact))
    assert report.ok, report.problems


def test_committed_examples_are_what_the_code_writes(tmp_path):
    write_examples(tmp_path / "examples", tmp_path / "work")
    fresh = {p.relative_to(tmp_path / "examples"): p.read_bytes() for p in (tmp_path / "examples").rglob("*") if p.is_file()}
    committed = {p.relative_to(EXAMPLES): p.read_bytes() for p in EXAMPLES.rglob("*") if p.is_file()}
    assert sorted(fresh) == sorted(committed)
    stale = [str(name) for name in fresh if fresh[name] != committed[name]]
    assert not stale, f"formats/examples is stale ({stale}); run ./just format-examples"
