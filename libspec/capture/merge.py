"""Merging data sets: join the outputs of `--shard-index i --num-shards n` runs into one data set.

Shard files are renamed, never rewritten, so their checksums carry over unchanged; they are
hard-linked when source and destination share a file system (instant, no extra disk), else
copied. The merge is built in a temporary sibling directory that is renamed into place at the
end: an interrupted merge leaves no half data set, and rerunning it starts over.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import shutil
from pathlib import Path

from libspec.format.atomic import fsync_dir, write_text_atomic
from libspec.format.dataset import MANIFEST, Dataset, shard_file_names
from libspec.format.digest import FileDigest, check_digest, digest_file
from libspec.format.paths import inside
from libspec.errors import SpecError
from libspec.verifier import fingerprint_differences
from libspec.format.sample import header_of
from libspec.format.schemas import check_schema

COUNT_KEYS = ("inputs_read", "records_written", "tokens_written", "supervised_tokens")


def _gen_options(dataset: Dataset) -> dict | None:
    return dataset.manifest["metadata"].get("gen_hidden", {}).get("options")


def _order_by_shard_index(datasets: list[Dataset], allow_partial: bool) -> list[Dataset]:
    """Sort the outputs of one sharded run by shard index, checking they are one run's complete set."""
    options = [_gen_options(d) for d in datasets]
    if any(o is None for o in options):
        return datasets  # not all made by spec-gen-hidden: keep the order given
    without_index = [{k: v for k, v in o.items() if k != "shard_index"} for o in options]
    for dataset, other in zip(datasets[1:], without_index[1:]):
        if other != without_index[0]:
            differing = sorted(k for k in other if other[k] != without_index[0].get(k))
            raise SpecError(f"{dataset.directory}: made with other options than {datasets[0].directory} ({', '.join(differing)}); not shards of one run")
    indices = [o["shard_index"] for o in options]
    if len(set(indices)) != len(indices):
        raise SpecError(f"shard index given twice among the inputs: {sorted(indices)}")
    missing = sorted(set(range(options[0]["num_shards"])) - set(indices))
    if missing and not allow_partial:
        raise SpecError(f"shard indices {missing} of {options[0]['num_shards']} are missing; merge them all (or allow a partial merge)")
    return [d for _, d in sorted(zip(indices, datasets), key=lambda pair: pair[0])]


def _check_compatible(datasets: list[Dataset]) -> None:
    first = datasets[0]
    for dataset in datasets[1:]:
        differences = fingerprint_differences(first.verifier, dataset.verifier)
        if differences:
            raise SpecError(f"{dataset.directory}: made with another verifier than {first.directory} ({differences[0]})")
        if dataset.manifest["hidden_states"] != first.manifest["hidden_states"]:
            raise SpecError(f"{dataset.directory}: captured other layers, dtype or tensor encoding than {first.directory}")


def _link_or_copy(source: Path, target: Path) -> None:
    try:
        os.link(source, target)
    except OSError:  # another file system, or links not allowed: copy
        shutil.copyfile(source, target)
        with open(target, "rb") as handle:
            os.fsync(handle.fileno())


def _link_verified(dataset: Dataset, shard: dict, kind: str, target: Path) -> None:
    """Link or copy one shard file (`kind`: records or tensors) to `target`, then check that what landed
    there has the size and sha256 its manifest records: a corrupted shard is never merged."""
    what = f"{dataset.directory / MANIFEST}: shard {shard['index']} {kind}"
    source = inside(dataset.directory, shard[kind], what)
    _link_or_copy(source, target)
    expected = FileDigest(shard[f"{kind}_bytes"], shard[f"{kind}_sha256"])
    try:
        check_digest(source, digest_file(target), expected)
    except SpecError as error:
        raise SpecError(f"{error}; nothing was merged") from None


def merge_datasets(sources: list[str | Path], destination: str | Path, allow_partial: bool = False) -> dict:
    """Join complete data sets of one verifier and layer set into `destination`; returns its manifest.

    Outputs of one sharded spec-gen-hidden run are ordered by shard index and must all be there
    (unless `allow_partial`); record ids must be unique across all inputs.
    """
    if len(sources) < 1:
        raise SpecError("merge: give at least one data set")
    destination = Path(destination)
    if destination.exists() and (not destination.is_dir() or any(destination.iterdir())):
        raise SpecError(f"{destination}: exists and is not empty; merge into a new directory")
    datasets = [Dataset(source) for source in sources]  # refuses incomplete data sets
    _check_compatible(datasets)
    datasets = _order_by_shard_index(datasets, allow_partial)
    seen_ids: dict[str, Path] = {}
    for dataset in datasets:  # reading the records also verifies their checksums
        for index in range(dataset.num_shards):
            for record in dataset.shard_records(index):
                if record["id"] in seen_ids:
                    raise SpecError(f"{dataset.directory}: record id {record['id']!r} also appears in {seen_ids[record['id']]}")
                seen_ids[record["id"]] = dataset.directory

    work = destination.with_name(f".{destination.name}.merge-tmp")
    shutil.rmtree(work, ignore_errors=True)  # left by an interrupted merge
    work.mkdir(parents=True)
    shards = []
    try:
        for dataset in datasets:
            for shard in dataset.manifest["shards"]:
                records_name, tensors_name = shard_file_names(len(shards))
                _link_verified(dataset, shard, "records", work / records_name)
                _link_verified(dataset, shard, "tensors", work / tensors_name)
                shards.append({**shard, "index": len(shards), "records": records_name, "tensors": tensors_name})
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    manifest = {
        **header_of(datasets[0].manifest),
        "created_at": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "metadata": _merged_metadata(datasets),
        "complete": True,
        "num_records": sum(s["num_records"] for s in shards),
        "num_tokens": sum(s["num_tokens"] for s in shards),
        "shards": shards,
    }
    check_schema("dataset-manifest", manifest, str(destination / MANIFEST))
    write_text_atomic(work / MANIFEST, json.dumps(manifest, indent=2) + "\n")
    if destination.exists():
        destination.rmdir()  # empty, checked above
    os.rename(work, destination)
    fsync_dir(destination.parent)
    return manifest


def _merged_metadata(datasets: list[Dataset]) -> dict:
    """Where the parts came from, their summed counts, and the generating options they share."""
    metadata: dict = {
        "merged_from": [
            {"path": str(d.directory), "fingerprint": d.fingerprint, "num_records": d.num_records, "num_tokens": d.num_tokens}
            for d in datasets
        ]
    }
    options = [_gen_options(d) for d in datasets]
    if all(o is not None for o in options):
        common = {k: v for k, v in options[0].items() if k != "shard_index" and all(o.get(k) == v for o in options)}
        gen = dict(datasets[0].manifest["metadata"]["gen_hidden"], options=common)
        metadata["gen_hidden"] = gen
        progress = [d.manifest["metadata"].get("progress", {}).get("counts", {}) for d in datasets]
        counts = {key: sum(p.get(key, 0) for p in progress) for key in COUNT_KEYS}
        dropped: dict[str, int] = {}
        for p in progress:
            for reason, n in p.get("dropped", {}).items():
                dropped[reason] = dropped.get(reason, 0) + n
        metadata["counts"] = {**counts, "dropped": dropped}
    return metadata
