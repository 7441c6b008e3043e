"""File sizes and sha256 checksums: what the manifest records for every shard file."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from libspec.errors import SpecError


@dataclass(frozen=True)
class FileDigest:
    """Size and sha256 of a file as written."""

    num_bytes: int
    sha256: str


def digest_bytes(data: bytes) -> FileDigest:
    """Size and sha256 of bytes about to be written."""
    return FileDigest(len(data), hashlib.sha256(data).hexdigest())


def digest_file(path: str | Path, chunk_bytes: int = 1 << 22) -> FileDigest:
    """Size and sha256 of a file on disk, read in chunks."""
    sha = hashlib.sha256()
    size = 0
    with open(path, "rb") as handle:
        while chunk := handle.read(chunk_bytes):
            sha.update(chunk)
            size += len(chunk)
    return FileDigest(size, sha.hexdigest())


def check_digest(path: str | Path, found: FileDigest, expected: FileDigest) -> None:
    """Raise SpecError if a file's size or checksum differs from what the manifest recorded."""
    if found.num_bytes != expected.num_bytes:
        raise SpecError(
            f"{path}: size is {found.num_bytes} bytes, the manifest says {expected.num_bytes} (truncated or replaced?)"
        )
    if found.sha256 != expected.sha256:
        raise SpecError(f"{path}: sha256 {found.sha256[:16]}… does not match the manifest's {expected.sha256[:16]}…")


def sha256_text(text: str) -> str:
    """sha256 hex digest of a UTF-8 string (chat templates, canonical JSON)."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()
