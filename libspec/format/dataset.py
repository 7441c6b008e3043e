"""Data set directories: manifest.json plus pairs of record and tensor shards (SPEC.md, "Data sets").

The writer commits one shard at a time: both shard files are written atomically, then the manifest
is rewritten atomically to list them. A crash therefore loses at most the shard in progress, and a
rerun (`resume=True`) continues after the last listed shard.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator

import torch

from libspec.format.atomic import write_text_atomic
from libspec.format.bounded_io import regular_file_size
from libspec.format.digest import FileDigest, check_digest, digest_file, sha256_text
from libspec.format.json_files import json_value_problem, read_json_object
from libspec.errors import SpecError, where
from libspec.verifier import VerifierFingerprint
from libspec.format.records import MAX_RECORD_SHARD_BYTES, check_record, read_record_shard, record_bytes, write_record_shard
from libspec.format.sample import Sample, header_of, header_problems
from libspec.format.schemas import check_schema
from libspec.format.tensors import TensorShard, encode_hidden, storage_dtype, write_tensor_shard

MANIFEST = "manifest.json"
DEFAULT_SHARD_BYTES = 256 << 20  # big enough to stream well, small enough to redo after a crash
# manifest.json (SPEC.md §9): a few hundred bytes per shard; 64 MiB lists over 100,000 shards.
MAX_MANIFEST_BYTES = 64 << 20
# Shard files and the temp files of interrupted atomic writes (see libspec.format.atomic).
_SHARD_PREFIXES = ("records-", "hidden-", ".records-", ".hidden-", f".{MANIFEST}.")


def shard_file_names(index: int) -> tuple[str, str]:
    """Names of the record and tensor files of shard `index`."""
    return f"records-{index:05d}.msgpack.zst", f"hidden-{index:05d}.safetensors"


def dataset_fingerprint(manifest: dict) -> str:
    """A digest naming a data set's content: verifier, captured layers, and every shard checksum."""
    content = {
        "verifier": manifest["verifier"],
        "hidden_states": manifest["hidden_states"],
        "shards": [(s["records_sha256"], s["tensors_sha256"]) for s in manifest["shards"]],
    }
    return sha256_text(json.dumps(content, sort_keys=True))


def read_manifest(directory: str | Path) -> dict:
    """Parse and schema-check a data set's manifest.json."""
    path = Path(directory) / MANIFEST
    manifest = read_json_object(path, missing="missing; a data set directory needs its manifest", max_bytes=MAX_MANIFEST_BYTES)
    problem = json_value_problem(manifest)
    if problem is not None:
        raise SpecError(f"{path}: {problem} (SPEC.md §2)")
    check_schema("dataset-manifest", manifest, str(path))
    problems = header_problems(manifest)
    if problems:
        raise SpecError(f"{path}: {problems[0]}")
    return manifest


class DatasetWriter:
    """Writes samples into a data set directory, shard by shard, resumably."""

    def __init__(self, directory: str | Path, header: dict, shard_bytes: int = DEFAULT_SHARD_BYTES, resume: bool = False):
        self.directory = Path(directory)
        self.header = header
        self.shard_bytes = shard_bytes
        self.layer_ids = header["hidden_states"]["layer_ids"]
        self.dtype_name = header["hidden_states"]["storage_dtype"]
        self.tensor_encoding = header["hidden_states"].get("tensor_encoding", "raw")
        self.vocab_size = header["verifier"]["vocab_size"]
        self.hidden_size = header["verifier"]["hidden_size"]
        self.shards: list[dict] = []
        self._pending: list[tuple[dict, torch.Tensor, torch.Tensor | None]] = []
        self._pending_bytes = 0
        self._pending_record_bytes = 0
        self._open(resume)

    def _open(self, resume: bool) -> None:
        manifest_path = self.directory / MANIFEST
        if manifest_path.exists():
            if not resume:
                raise SpecError(f"{self.directory}: already holds a data set; choose another output or resume it")
            manifest = read_manifest(self.directory)
            if manifest["complete"]:
                raise SpecError(f"{self.directory}: data set is already complete; nothing to resume")
            self._check_same_header(manifest)
            self.header = header_of(manifest)
            self.shards = manifest["shards"]
            self._remove_orphans()
        elif self.directory.exists() and any(self.directory.iterdir()):
            raise SpecError(f"{self.directory}: exists and is not empty; refusing to write a data set over it")
        self.directory.mkdir(parents=True, exist_ok=True)
        if not manifest_path.exists():
            # Claim the directory at once, so a crash before the first shard still leaves a data
            # set that a rerun can resume (instead of a non-empty directory it must refuse).
            self._write_manifest(complete=False)

    def _check_same_header(self, manifest: dict) -> None:
        for key in ("verifier", "hidden_states"):
            if manifest[key] != self.header[key]:
                raise SpecError(f"{self.directory / MANIFEST}: field {key} differs from this run's; refusing to mix data")

    def _remove_orphans(self) -> None:
        """Delete shard files a crash left behind that the manifest does not list."""
        listed = {name for s in self.shards for name in (s["records"], s["tensors"])}
        for path in self.directory.iterdir():
            if path.name not in listed and path.name.startswith(_SHARD_PREFIXES):
                path.unlink()

    @property
    def num_records(self) -> int:
        """Records committed so far (including those of earlier runs when resuming)."""
        return sum(s["num_records"] for s in self.shards)

    @property
    def pending_bytes(self) -> int:
        """Stored bytes of the samples queued for the next shard (writers that flush themselves use it)."""
        return self._pending_bytes

    @property
    def metadata(self) -> dict:
        """The header's free-form metadata as it will be written (resumed from the manifest when resuming)."""
        return self.header["metadata"]

    def update_metadata(self, values: dict) -> None:
        """Merge `values` into the header metadata; written with the next manifest (flush or close).

        Lets a producer record its own resume bookkeeping next to the shards it describes.
        """
        self.header = {**self.header, "metadata": {**self.header["metadata"], **values}}

    def add(self, record: dict, hidden: torch.Tensor) -> None:
        """Queue one sample; `hidden` is float [tokens, len(layer_ids), hidden_size]."""
        location = f"{self.directory}: sample {record.get('id', '?')!r}"
        check_record(record, location, self.vocab_size)
        expected = (len(record["input_ids"]), len(self.layer_ids), self.hidden_size)
        if tuple(hidden.shape) != expected:
            raise SpecError(f"{location}: hidden states have shape {list(hidden.shape)}, expected {list(expected)}")
        stored, scales = encode_hidden(hidden.detach().cpu(), self.dtype_name)
        size = record_bytes(record)
        if self._pending_record_bytes + size > MAX_RECORD_SHARD_BYTES:
            self.flush()  # never write a record shard that readers refuse (only tiny hidden sizes get here)
        self._pending.append((record, stored, scales))
        self._pending_bytes += stored.nbytes + (0 if scales is None else scales.nbytes)
        self._pending_record_bytes += size
        if self._pending_bytes >= self.shard_bytes:
            self.flush()

    def flush(self) -> None:
        """Commit the queued samples as one shard (no-op when nothing is queued)."""
        if not self._pending:
            return
        index = len(self.shards)
        records_name, tensors_name = shard_file_names(index)
        records = [r for r, _, _ in self._pending]
        hidden = torch.cat([h for _, h, _ in self._pending])
        scales = None if self._pending[0][2] is None else torch.cat([s for _, _, s in self._pending])
        offsets = [0]
        for record in records:
            offsets.append(offsets[-1] + len(record["input_ids"]))
        tensors_digest = write_tensor_shard(self.directory / tensors_name, hidden, offsets, self.layer_ids, scales, self.tensor_encoding)
        records_digest = write_record_shard(self.directory / records_name, records)
        self.shards.append(
            {
                "index": index,
                "records": records_name,
                "records_bytes": records_digest.num_bytes,
                "records_sha256": records_digest.sha256,
                "tensors": tensors_name,
                "tensors_bytes": tensors_digest.num_bytes,
                "tensors_sha256": tensors_digest.sha256,
                "num_records": len(records),
                "num_tokens": offsets[-1],
                "num_supervised_tokens": sum(sum(r["loss_mask"]) for r in records),
            }
        )
        self._pending, self._pending_bytes, self._pending_record_bytes = [], 0, 0
        self._write_manifest(complete=False)

    def close(self) -> dict:
        """Commit the last shard and mark the data set complete; returns the manifest."""
        self.flush()
        return self._write_manifest(complete=True)

    def _write_manifest(self, complete: bool) -> dict:
        manifest = {
            **self.header,
            "complete": complete,
            "num_records": sum(s["num_records"] for s in self.shards),
            "num_tokens": sum(s["num_tokens"] for s in self.shards),
            "shards": self.shards,
        }
        # The earlier shard entries were checked when they were added: checking only the newest keeps
        # each commit O(1) instead of O(shards) (a full check per commit made many-shard runs crawl).
        check_schema("dataset-manifest", {**manifest, "shards": self.shards[-1:]}, str(self.directory / MANIFEST))
        write_text_atomic(self.directory / MANIFEST, json.dumps(manifest, indent=2) + "\n")
        return manifest


class Dataset:
    """A data set directory opened for reading. Checksums are verified the first time a shard is read."""

    def __init__(self, directory: str | Path, verify_checksums: bool = True, allow_incomplete: bool = False, check_files: bool = True):
        self.directory = Path(directory)
        self.manifest = read_manifest(self.directory)
        if not self.manifest["complete"] and not allow_incomplete:
            raise SpecError(f"{self.directory / MANIFEST}: data set is incomplete (its writer did not finish); resume the run that makes it")
        self.header = header_of(self.manifest)
        self.verify_checksums = verify_checksums
        self.verifier = VerifierFingerprint.from_dict(self.manifest["verifier"])
        self.layer_ids: list[int] = self.manifest["hidden_states"]["layer_ids"]
        self.storage_dtype = storage_dtype(self.manifest["hidden_states"]["storage_dtype"])
        self.tensor_encoding: str = self.manifest["hidden_states"].get("tensor_encoding", "raw")
        self._tensor_shards: dict[int, TensorShard] = {}
        if check_files:
            self._check_files_present()

    def _check_files_present(self) -> None:
        for shard in self.manifest["shards"]:
            for key in ("records", "tensors"):
                what = f"shard {shard['index']} {key} file"
                regular_file_size(self.directory / shard[key], what, missing=f"{what} is missing", inside=self.directory)

    @property
    def num_records(self) -> int:
        return self.manifest["num_records"]

    @property
    def num_tokens(self) -> int:
        return self.manifest["num_tokens"]

    @property
    def num_shards(self) -> int:
        return len(self.manifest["shards"])

    @property
    def fingerprint(self) -> str:
        return dataset_fingerprint(self.manifest)

    def shard_records(self, index: int) -> list[dict]:
        """The records of shard `index`, checksum-verified and checked against the manifest."""
        shard = self.manifest["shards"][index]
        path = self.directory / shard["records"]
        expected = FileDigest(shard["records_bytes"], shard["records_sha256"]) if self.verify_checksums else None
        records = read_record_shard(path, expected, inside=self.directory)
        if len(records) != shard["num_records"]:
            raise SpecError(f"{path}: holds {len(records)} records, the manifest says {shard['num_records']}")
        vocab = self.verifier.vocab_size
        for i, record in enumerate(records):
            check_record(record, where(path, i), vocab)
        return records

    def shard_tensors(self, index: int) -> TensorShard:
        """The memory-mapped tensor shard `index` (sha256 verified on first open)."""
        if index not in self._tensor_shards:
            shard = self.manifest["shards"][index]
            path = self.directory / shard["tensors"]
            size = regular_file_size(path, "tensor shard", inside=self.directory)
            if self.verify_checksums:
                expected = FileDigest(shard["tensors_bytes"], shard["tensors_sha256"])
                if size != expected.num_bytes:
                    check_digest(path, FileDigest(size, ""), expected)  # a wrong size needs no hashing to refuse
                check_digest(path, digest_file(path), expected)
            tensors = TensorShard(path, inside=self.directory)
            self._check_tensor_shard(shard, tensors)
            self._tensor_shards[index] = tensors
        return self._tensor_shards[index]

    def _check_tensor_shard(self, shard: dict, tensors: TensorShard) -> None:
        path = tensors.path
        if tensors.layer_ids != self.layer_ids:
            raise SpecError(f"{path}: layer ids {tensors.layer_ids} differ from the manifest's {self.layer_ids}")
        if tensors.encoding != self.tensor_encoding:
            raise SpecError(f"{path}: {tensors.encoding} encoding differs from the manifest's tensor_encoding {self.tensor_encoding}")
        if tensors.storage_dtype != self.storage_dtype:
            raise SpecError(f"{path}: dtype {tensors.storage_dtype} differs from the manifest's storage dtype")
        if tensors.hidden_size != self.verifier.hidden_size:
            raise SpecError(f"{path}: hidden size {tensors.hidden_size}, the verifier's is {self.verifier.hidden_size}")
        if tensors.num_records != shard["num_records"] or tensors.num_tokens != shard["num_tokens"]:
            raise SpecError(
                f"{path}: holds {tensors.num_records} records / {tensors.num_tokens} tokens, "
                f"the manifest says {shard['num_records']} / {shard['num_tokens']}"
            )

    def shard_samples(self, index: int) -> Iterator[Sample]:
        """The samples of shard `index`, hidden states as views on the mapped file."""
        records = self.shard_records(index)
        tensors = self.shard_tensors(index)
        for i, record in enumerate(records):
            hidden, scales = tensors.record_rows(i)
            if hidden.shape[0] != len(record["input_ids"]):
                raise SpecError(
                    f"{where(tensors.path, i)}: {hidden.shape[0]} rows of hidden states for {len(record['input_ids'])} tokens"
                )
            yield Sample(record, hidden, scales)

    def __iter__(self) -> Iterator[Sample]:
        for index in range(self.num_shards):
            yield from self.shard_samples(index)
