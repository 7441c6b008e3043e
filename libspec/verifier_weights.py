"""The verifier's weights digest (SPEC.md §3, `weights`): which weights made the hidden states, cheaply.

Two fine-tunes of one base share config, tokenizer and chat template; only the weights tell them
apart, and hashing a 140 GB model every time a stage starts is not an option. So each weight file
gets the cheapest digest that still identifies it:

- `sha256` (whole file) when the folder is a Hugging Face cache snapshot: the file is a link to
  `blobs/<sha256>`, a name the Hub client checked when it downloaded the file, so nothing is read;
  also for pickled `.bin` weights, which cannot be parsed safely and are hashed whole;
- `sampled_sha256` for a local `.safetensors` file: its header plus a fixed sample of every tensor's
  bytes (the first, middle and last 4 KiB of its data range), with the file size. A fine-tune moves
  (nearly) every value of every tensor it trains, so the sample sees it.

Every entry also has the file's size. Two digests of a file compare on a kind both have; when a
comparison needs a kind the other side lacks, `digest_weights(..., like=...)` computes it.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import struct
from pathlib import Path

from libspec.errors import SpecError
from libspec.format.bounded_io import open_regular
from libspec.format.digest import digest_file
from libspec.format.paths import inside

WINDOW_BYTES = 4096  # each of the three windows per tensor
SAMPLE_RULE = b"spec-tools weights sample v1\0"  # prefixed to the hashed bytes: a new rule gives new digests
MAX_HEADER_BYTES = 100_000_000  # the safetensors library's own header limit
KINDS = ("sha256", "sampled_sha256")
_HEX64 = re.compile(r"[0-9a-f]{64}")


def weight_file_names(model_dir: Path) -> list[str]:
    """The files transformers loads weights from: every `*.safetensors`, else every `*.bin` (pickled)."""
    names = sorted(p.name for p in model_dir.glob("*.safetensors"))
    return names or sorted(p.name for p in model_dir.glob("*.bin"))


def digest_weights(model_dir: Path, like: dict | None = None) -> dict[str, dict]:
    """File name -> {"bytes", and "sha256" and/or "sampled_sha256"} for the folder's weight files.

    `like` is another such map (a recorded fingerprint's): for a file it names, the kinds it has are
    computed here too, so the two can be compared (reading the whole file when that needs `sha256`).
    """
    digests = {}
    for name in weight_file_names(model_dir):
        path = inside(model_dir, name, str(model_dir))
        wanted = set((like or {}).get(name, {})) & set(KINDS)
        digests[name] = _digest_one(path, wanted)
    return digests


def _digest_one(path: Path, wanted: set[str]) -> dict:
    blob = hub_blob_sha256(path)
    entry: dict = {"bytes": path.stat().st_size}
    if blob is not None:
        entry["sha256"] = blob
    elif path.suffix != ".safetensors" or "sha256" in wanted:
        entry["sha256"] = digest_file(path).sha256
    if path.suffix == ".safetensors" and (blob is None or "sampled_sha256" in wanted):
        entry["sampled_sha256"] = sampled_sha256(path)[0]
    return entry


def hub_blob_sha256(path: Path) -> str | None:
    """The sha256 a Hub cache snapshot's link names (`snapshots/<rev>/f -> ../../blobs/<sha256>`), or None.

    Only a link whose target lies in the blobs/ folder of the same cache repository and is named by
    64 hex digits counts; anything else (a copy, a link elsewhere) is digested from its bytes.
    """
    snapshot = path.parent
    if not path.is_symlink() or snapshot.parent.name != "snapshots":
        return None
    target = Path(os.path.realpath(path))
    blobs = Path(os.path.realpath(snapshot.parent.parent / "blobs"))
    if target.parent != blobs or not _HEX64.fullmatch(target.name) or not target.is_file():
        return None
    return target.name


def sampled_sha256(path: Path) -> tuple[str, int]:
    """(digest, bytes read) of a safetensors file by the sample rule: size, header, and each tensor's
    first, middle and last WINDOW_BYTES (the whole range when it is at most three windows long)."""
    sha = hashlib.sha256(SAMPLE_RULE)
    with open_regular(path, "weight file") as handle:
        size = os.fstat(handle.fileno()).st_size
        header_bytes, ranges = _read_header(handle, path, size)
        sha.update(struct.pack("<Q", size) + header_bytes)
        read = len(header_bytes)
        data_start = len(header_bytes)
        for begin, end in ranges:
            for start, stop in sample_windows(begin, end):
                handle.seek(data_start + start)
                chunk = handle.read(stop - start)
                sha.update(chunk)
                read += len(chunk)
    return sha.hexdigest(), read


def sample_windows(begin: int, end: int) -> list[tuple[int, int]]:
    """The byte ranges sampled from a tensor's data range [begin, end)."""
    if end - begin <= 3 * WINDOW_BYTES:
        return [(begin, end)]
    middle = begin + (end - begin - WINDOW_BYTES) // 2
    return [(begin, begin + WINDOW_BYTES), (middle, middle + WINDOW_BYTES), (end - WINDOW_BYTES, end)]


def _read_header(handle, path: Path, size: int) -> tuple[bytes, list[tuple[int, int]]]:
    """The raw length prefix and JSON header, and every tensor's data range in file order."""
    prefix = handle.read(8)
    if len(prefix) < 8:
        raise SpecError(f"{path}: too short to be a safetensors file ({size} bytes)")
    (header_len,) = struct.unpack("<Q", prefix)
    if header_len > MAX_HEADER_BYTES or 8 + header_len > size:
        raise SpecError(f"{path}: safetensors header says {header_len} bytes; the file has {size} (truncated or not safetensors?)")
    raw = handle.read(header_len)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        raise SpecError(f"{path}: safetensors header is not valid JSON") from None
    if not isinstance(header, dict):
        raise SpecError(f"{path}: safetensors header is not a JSON object")
    data_bytes = size - 8 - header_len
    ranges = []
    for name, info in header.items():
        if name == "__metadata__":
            continue
        offsets = info.get("data_offsets") if isinstance(info, dict) else None
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(type(o) is int for o in offsets) and 0 <= offsets[0] <= offsets[1] <= data_bytes):
            raise SpecError(f"{path}: tensor {name[:80]!r}: expected data_offsets [begin, end] within the file's {data_bytes} data bytes")
        ranges.append((offsets[0], offsets[1]))
    return prefix + raw, sorted(ranges)


def weights_differences(recorded: dict | None, current: dict | None) -> list[str]:
    """How two weights digests differ; a file whose digests share no kind is not a difference (see weights_unchecked)."""
    if recorded is None or current is None:
        return []
    if set(recorded) != set(current):
        return [f"weights differ: files {sorted(recorded)} vs {sorted(current)}"]
    differences = []
    for name in sorted(recorded):
        a, b = recorded[name], current[name]
        if a.get("bytes") != b.get("bytes"):
            differences.append(f"weights differ: {name} is {a.get('bytes')} bytes vs {b.get('bytes')}")
            continue
        for kind in KINDS:
            if kind in a and kind in b and a[kind] != b[kind]:
                differences.append(f"weights differ: {name} {kind} {a[kind][:12]}… vs {b[kind][:12]}…")
    return differences


def weights_unchecked(recorded: dict | None, current: dict | None) -> str | None:
    """Why two weights digests could not be compared (None when they could)."""
    if recorded is None or current is None:
        return "records no weights digest (made before spec-tools recorded one)"
    if set(recorded) != set(current):
        return None  # a difference, reported by weights_differences
    blind = [name for name in sorted(recorded) if not set(recorded[name]) & set(current[name]) & set(KINDS)]
    if blind:
        return f"has no digest of the same kind for {', '.join(blind)} (only their sizes were compared)"
    return None
