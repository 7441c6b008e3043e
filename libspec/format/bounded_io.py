"""Reading files a person pointed a reader at, within bounds (SPEC.md §2, "Limits").

Only regular files are opened, so a FIFO cannot hang a reader and `/dev/zero` cannot fill memory;
zstd frames are decompressed only up to a stated limit, checked against the declared content
size before anything is allocated.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import BinaryIO

import zstandard

from libspec.errors import SpecError

# zstd never expands more than 32 KiB of output per input byte (an RLE block: 4 bytes -> 128 KiB),
# so feeding the decompressor (budget left / 32 KiB) bytes at a time overshoots the budget at most once.
_ZSTD_MAX_RATIO = 1 << 15
_ZSTD_MIN_PIECE = 1 << 12


def size_text(num_bytes: int) -> str:
    """`1 GiB`, `256 MiB`, `8 MiB`, `100000000 bytes`: how limits are named in errors."""
    for unit, shift in (("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if num_bytes >= 1 << shift and num_bytes % (1 << shift) == 0:
            return f"{num_bytes >> shift} {unit}"
    return f"{num_bytes} bytes"


def _kind(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISFIFO(mode):
        return "a FIFO (named pipe)"
    if stat.S_ISCHR(mode):
        return "a character device"
    if stat.S_ISBLK(mode):
        return "a block device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "not a regular file"


def regular_file_size(path: str | Path, what: str = "file", missing: str | None = None, inside: str | Path | None = None) -> int:
    """The size of `path` if it is a regular file (symlinks followed), else a SpecError naming it.

    `missing` is the message for a path that does not exist (default "<what> is missing");
    with `inside`, the file must also resolve to a place inside that folder.
    """
    path = Path(path)
    try:
        info = os.stat(path)
    except FileNotFoundError:
        raise SpecError(f"{path}: {missing or what + ' is missing'}") from None
    except OSError as error:  # ELOOP (a symlink loop), ENOTDIR, EACCES, ENAMETOOLONG
        raise SpecError(f"{path}: cannot open the {what}: {error.strerror or error}") from None
    if not stat.S_ISREG(info.st_mode):
        raise SpecError(f"{path}: the {what} is {_kind(info.st_mode)}, expected a regular file")
    if inside is not None:
        folder = Path(inside).resolve()
        if not path.resolve().is_relative_to(folder):
            raise SpecError(f"{path}: the {what} resolves to {path.resolve()}, outside {folder}; refusing to read it")
    return info.st_size


def open_regular(path: str | Path, what: str = "file", missing: str | None = None, inside: str | Path | None = None) -> BinaryIO:
    """Open `path` for binary reading if it is a regular file (see regular_file_size); never blocks on a FIFO."""
    regular_file_size(path, what, missing, inside)
    try:
        # O_NONBLOCK: if the path was swapped for a FIFO since the check, open() still returns at once.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except OSError as error:
        raise SpecError(f"{path}: cannot open the {what}: {error.strerror or error}") from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise SpecError(f"{path}: the {what} is not a regular file")
    os.set_blocking(fd, True)
    return os.fdopen(fd, "rb")


def read_regular(path: str | Path, what: str, limit_bytes: int, limit_name: str, missing: str | None = None, inside: str | Path | None = None) -> bytes:
    """The bytes of a regular file no larger than `limit_bytes` (checked before reading)."""
    with open_regular(path, what, missing, inside) as handle:
        size = os.fstat(handle.fileno()).st_size
        if size > limit_bytes:
            raise SpecError(f"{path}: the {what} is {size} bytes, past the {size_text(limit_bytes)} limit ({limit_name})")
        return handle.read(limit_bytes + 1)


def zstd_bound(num_bytes: int) -> int:
    """The largest zstd frame that can hold `num_bytes` of content (ZSTD_compressBound, plus a frame header)."""
    return num_bytes + (num_bytes >> 8) + (128 << 10) + 64


def decompress_frame(data: bytes, limit_bytes: int, location: str, what: str, limit_name: str) -> bytes:
    """The content of the one zstd frame `data`, refused past `limit_bytes` before it is allocated.

    The declared content size is checked first; a frame without one is decompressed piece by piece
    and stopped once its output passes the limit. Bytes after the frame are an error.
    """
    try:
        declared = zstandard.frame_content_size(data)
    except zstandard.ZstdError as error:
        raise SpecError(f"{location}: not a zstd frame ({error})") from None
    if declared not in (zstandard.CONTENTSIZE_UNKNOWN, zstandard.CONTENTSIZE_ERROR) and declared > limit_bytes:
        raise SpecError(f"{location}: {what} expands to {declared} bytes, past the {size_text(limit_bytes)} limit ({limit_name})")
    decompressor = zstandard.ZstdDecompressor().decompressobj()
    chunks, produced, position = [], 0, 0
    view = memoryview(data)
    try:
        while position < len(data) and not decompressor.eof:
            piece = max(_ZSTD_MIN_PIECE, (limit_bytes - produced) // _ZSTD_MAX_RATIO)
            chunk = decompressor.decompress(view[position : position + piece])
            position += piece
            produced += len(chunk)
            if produced > limit_bytes:
                raise SpecError(f"{location}: {what} expands past the {size_text(limit_bytes)} limit ({limit_name})")
            chunks.append(chunk)
    except zstandard.ZstdError as error:
        raise SpecError(f"{location}: not a complete zstd frame (truncated or corrupted): {error}") from None
    if not decompressor.eof:
        raise SpecError(f"{location}: not a complete zstd frame (truncated)")
    if decompressor.unused_data or position < len(data):
        raise SpecError(f"{location}: bytes follow the zstd frame (expected exactly one frame)")
    return b"".join(chunks)
