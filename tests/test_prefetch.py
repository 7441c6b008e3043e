"""The training loop's read-ahead: same batches in the same order, loaded one ahead on one worker thread."""

import threading

import pytest

from libspec.train.prefetch import BatchPrefetcher


class Recorder:
    def __init__(self, fail_on=()):
        self.calls: list[tuple[int, str]] = []
        self.fail_on = set(fail_on)
        self.started = {}

    def __call__(self, key):
        self.calls.append((key, threading.current_thread().name))
        self.started.setdefault(key, threading.Event()).set()
        if key in self.fail_on:
            raise ValueError(f"bad batch {key}")
        return f"batch-{key}"


def test_batches_come_back_in_order_and_the_next_one_is_loaded_ahead():
    load = Recorder()
    with BatchPrefetcher(load) as batches:
        got = []
        for key in range(5):
            got.append(batches.get(key, key + 1 if key < 4 else None))
            # the following batch is being read before anyone asks for it
            if key < 4:
                assert load.started.setdefault(key + 1, threading.Event()).wait(5)
    assert got == [f"batch-{k}" for k in range(5)]
    assert [key for key, _ in load.calls] == list(range(5))  # each batch read once
    assert {name for _, name in load.calls} != {threading.current_thread().name}
    assert len({name for _, name in load.calls}) == 1  # one worker thread reads every batch


def test_an_error_belongs_to_the_batch_that_needs_it():
    load = Recorder(fail_on={2})
    with BatchPrefetcher(load) as batches:
        assert batches.get(0, 1) == "batch-0"
        assert batches.get(1, 2) == "batch-1"  # batch 2 fails in the background: not raised yet
        with pytest.raises(ValueError, match="bad batch 2"):
            batches.get(2, None)


def test_a_read_ahead_never_used_drops_its_error_and_a_missed_guess_still_loads():
    load = Recorder(fail_on={9})
    with BatchPrefetcher(load) as batches:
        assert batches.get(0, 9) == "batch-0"  # guesses 9, which fails and is never asked for
        assert batches.get(3, None) == "batch-3"  # a different key is loaded on demand
    assert [key for key, _ in load.calls] == [0, 9, 3]
