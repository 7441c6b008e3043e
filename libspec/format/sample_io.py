"""One door to samples wherever they are: a data set directory, a stream file, or `-` (stdin/stdout)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import BinaryIO, Iterator, Protocol

import torch

from libspec.format.bounded_io import open_regular
from libspec.format.dataset import MANIFEST, Dataset, DatasetWriter
from libspec.errors import SpecError
from libspec.format.sample import Sample
from libspec.format.stream import MAGIC, StreamReader, StreamWriter


class SampleSource(Protocol):
    header: dict

    def __iter__(self) -> Iterator[Sample]: ...


class SampleSink(Protocol):
    def add(self, record: dict, hidden: torch.Tensor) -> None: ...

    def close(self) -> dict: ...


def open_data(source: str | Path, stdin: BinaryIO | None = None) -> SampleSource:
    """Open `source` for reading: `-` is a stream on stdin, a directory a data set, a file a stream."""
    if str(source) == "-":
        return StreamReader(stdin or sys.stdin.buffer, "<stdin>")
    path = Path(source)
    if path.is_dir():
        return Dataset(path)
    # A named pipe is refused rather than read: a stream file is read once per epoch, a pipe only once.
    with open_regular(path, "stream file", missing="no such file or directory; give a data set directory, a stream file or - (stdin)") as probe:
        if probe.read(len(MAGIC)) != MAGIC:
            raise SpecError(f"{path}: neither a data set directory (with {MANIFEST}) nor a spec-tools stream")
    return _FileStream(path)


class _FileStream:
    """A stream file; each iteration reopens it so the source can be read more than once (epochs)."""

    def __init__(self, path: Path):
        self.path = path
        with open_regular(path, "stream file") as handle:
            self.header = StreamReader(handle, str(path)).header

    def __iter__(self) -> Iterator[Sample]:
        with open_regular(self.path, "stream file") as handle:
            yield from StreamReader(handle, str(self.path))


def create_sink(destination: str | Path, header: dict, resume: bool = False, stdout: BinaryIO | None = None, **options) -> SampleSink:
    """Open `destination` for writing: `-` streams to stdout, anything else is a data set directory."""
    if str(destination) == "-":
        return StreamWriter(stdout or sys.stdout.buffer, header)
    return DatasetWriter(destination, header, resume=resume, **options)
