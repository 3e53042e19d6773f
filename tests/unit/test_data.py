"""The global batch order: seeded epochs, disjoint rank shares, the step as the data position; reader processes."""

import os
import signal

import numpy as np
import pytest

from bertpipe.train.data import RankBatches, global_batch_indices, rank_batch_stream, rank_micro_batches


class Indices:
    """Stands for a data set whose record i is just i."""

    def __init__(self, size):
        self.size = size

    def __len__(self):
        return self.size

    def read(self, indices):
        return {"input_ids": np.asarray(indices)}


def test_an_epoch_is_a_permutation_and_batches_cross_epochs_in_order():
    batches = [global_batch_indices(step, 4, 10, seed=3) for step in range(5)]  # 20 samples: two epochs
    flat = np.concatenate(batches)
    assert sorted(flat[:10]) == list(range(10)) and sorted(flat[10:]) == list(range(10))
    assert not np.array_equal(flat[:10], flat[10:]), "each epoch has its own order"
    assert np.array_equal(global_batch_indices(2, 4, 10, seed=3), batches[2]), "a function of the step alone"
    assert not np.array_equal(global_batch_indices(0, 4, 10, seed=4), batches[0])


def test_ranks_share_each_global_batch_disjointly_and_completely():
    data = Indices(100)
    for step in range(3):
        shares = [rank_micro_batches(step, data, micro_batch=2, accumulation=3, rank=rank, world=4, seed=1)
                  for rank in range(4)]
        taken = np.concatenate([b["input_ids"] for share in shares for b in share])
        assert len(shares[0]) == 3 and all(len(b["input_ids"]) == 2 for share in shares for b in share)
        assert sorted(taken) == sorted(global_batch_indices(step, 24, 100, seed=1))
        assert len(set(taken.tolist())) == 24


class ReaderPids(Indices):
    """Record i is i, and says which process read it and how that process treats SIGTERM."""

    def read(self, indices):
        return {"input_ids": np.asarray(indices), "pid": os.getpid(),
                "ignores_sigterm": signal.getsignal(signal.SIGTERM) == signal.SIG_IGN}


@pytest.mark.parametrize("workers", [0, 2])
def test_reader_processes_give_each_step_its_batches_in_order_from_any_start(workers):
    data = ReaderPids(50)
    batches = RankBatches(data, micro_batch=2, accumulation=2, rank=1, world=2, seed=7)
    stream = list(rank_batch_stream(batches, range(5, 12), num_workers=workers))
    assert len(stream) == 7
    for step, got in zip(range(5, 12), stream):
        expected = rank_micro_batches(step, data, micro_batch=2, accumulation=2, rank=1, world=2, seed=7)
        assert [list(b["input_ids"]) for b in got] == [list(b["input_ids"]) for b in expected]
    readers = {int(b["pid"]) for share in stream for b in share}
    if workers:
        # Slurm signals every process of the job; only the trainer may act on it (it checkpoints, then stops).
        assert os.getpid() not in readers and len(readers) == 2
        assert all(b["ignores_sigterm"] for share in stream for b in share)
    else:
        assert readers == {os.getpid()}
