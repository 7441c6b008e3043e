"""Read the next batch while the current step computes.

Loading a batch means reading its records' hidden states and, for zstd tensor shards, decoding them
(SPEC.md §8.1) — work that would otherwise sit on the training step's critical path. One worker
thread does every load of an epoch, one batch ahead: zstd and torch release the GIL while they
work, so the load overlaps the step, and since only that thread touches the shards no reader state
is shared between threads. Order and contents are unchanged, so results are bit-identical with or
without it.
"""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor
from typing import Callable, Hashable, Optional

from libspec.train.packing import PackedBatch


class BatchPrefetcher:
    """`get(key, next_key)` returns batch `key` and starts loading `next_key` in the background."""

    def __init__(self, load: Callable[[Hashable], PackedBatch]):
        self._load = load
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="spec-train-prefetch")
        self._pending: Optional[tuple[Hashable, Future]] = None

    def get(self, key: Hashable, next_key: Hashable | None) -> PackedBatch:
        if self._pending is not None and self._pending[0] == key:
            future = self._pending[1]
        else:
            self.drain()  # a guess that missed (never happens in the loop's own order)
            future = self._pool.submit(self._load, key)
        self._pending = None
        batch = future.result()  # a load's error (a NaN record, a damaged shard) surfaces here, for the batch that needs it
        if next_key is not None:
            self._pending = (next_key, self._pool.submit(self._load, next_key))
        return batch

    def drain(self) -> None:
        """Wait for a load started ahead and drop it: its error, if any, belongs to a batch never used."""
        if self._pending is not None:
            _, future = self._pending
            self._pending = None
            future.exception()  # waits; does not raise

    def close(self) -> None:
        self.drain()
        self._pool.shutdown(wait=True)

    def __enter__(self) -> "BatchPrefetcher":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
