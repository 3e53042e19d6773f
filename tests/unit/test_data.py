"""The global batch order: seeded epochs, disjoint rank shares, the step as the data position; reader processes."""

import os
import signal

import numpy as np
import pytest

from bertpipe.train.batches import RankBatches, epoch_order, global_batch_indices, rank_batch_stream, rank_micro_batches


class Indices:
    """Stands for a data set whose record i is just i."""

    def __init__(self, size):
        self.size = size

    def __len__(self):
        return self.size

    def read(self, indices, epochs):
        return {"input_ids": np.asarray(indices), "epochs": np.asarray(epochs)}


def test_an_epoch_is_a_permutation_and_batches_cross_epochs_in_order():
    batches = [global_batch_indices(step, 4, 10, seed=3)[0] for step in range(5)]  # 20 samples: two epochs
    flat = np.concatenate(batches)
    assert sorted(flat[:10]) == list(range(10)) and sorted(flat[10:]) == list(range(10))
    assert not np.array_equal(flat[:10], flat[10:]), "each epoch has its own order"
    assert np.array_equal(global_batch_indices(2, 4, 10, seed=3)[0], batches[2]), "a function of the step alone"
    assert not np.array_equal(global_batch_indices(0, 4, 10, seed=4)[0], batches[0])


@pytest.mark.parametrize("samples", [1, 2, 3, 7, 64, 1000, 4097])
def test_each_epoch_is_a_permutation_even_when_a_batch_spans_several(samples):
    batch = 64  # above the smallest sizes: one batch then holds several whole epochs
    steps = -(-3 * samples // batch)
    flat = np.concatenate([global_batch_indices(step, batch, samples, seed=11)[0] for step in range(steps)])
    for epoch in range(3):
        order = flat[epoch * samples:(epoch + 1) * samples]
        assert np.array_equal(np.sort(order), np.arange(samples))
        assert np.array_equal(order, epoch_order(np.arange(samples), samples, seed=11, epoch=epoch))


def test_epochs_and_seeds_give_different_orders():
    offsets = np.arange(1000)
    first = epoch_order(offsets, 1000, seed=5, epoch=0)
    assert not np.array_equal(first, epoch_order(offsets, 1000, seed=5, epoch=1))
    assert not np.array_equal(first, epoch_order(offsets, 1000, seed=6, epoch=0))
    assert np.array_equal(first, epoch_order(offsets, 1000, seed=5, epoch=0))


def test_no_samples_is_an_error_and_one_sample_is_always_itself():
    with pytest.raises(ValueError):
        global_batch_indices(0, 4, 0, seed=0)[0]
    assert np.array_equal(global_batch_indices(3, 4, 1, seed=0)[0], np.zeros(4))


def test_the_order_has_no_visible_structure():
    # Statistics of a random permutation, which the identity, a rotation or an affine map x -> ax + b (mod n) fail:
    # samples move n/3 on average, and neighbours' differences take about n(1 - 1/e) distinct values, not one.
    samples = 10_000
    for seed, epoch in [(0, 0), (0, 1), (42, 7)]:
        order = epoch_order(np.arange(samples), samples, seed, epoch)
        steps = np.diff(order)
        assert abs(np.abs(order - np.arange(samples)).mean() / samples - 1 / 3) < 0.02
        assert np.count_nonzero(np.abs(steps) == 1) < 10, "neighbours stay neighbours"
        assert 0.6 < len(np.unique(steps % samples)) / samples < 0.66
        assert abs(np.corrcoef(np.arange(samples), order)[0, 1]) < 0.05


@pytest.mark.parametrize("samples", [5, 100, 1000])
def test_a_slice_of_a_global_batch_is_that_slice_of_the_whole(samples):
    for step in (0, 3, 17):
        whole = global_batch_indices(step, 24, samples, seed=2)[0]
        assert len(whole) == 24
        for start, count in [(0, 24), (0, 1), (5, 7), (23, 1), (8, 16)]:
            part = global_batch_indices(step, 24, samples, seed=2, start=start, count=count)[0]
            assert np.array_equal(part, whole[start:start + count])
        assert np.array_equal(global_batch_indices(step, 24, samples, seed=2, start=10)[0], whole[10:])
    with pytest.raises(ValueError):
        global_batch_indices(0, 24, samples, seed=2, start=20, count=5)[0]


def test_a_batch_of_a_huge_data_set_costs_a_batch():
    samples = 10**15  # a whole permutation would take 8 PB
    indices = global_batch_indices(10**9, 256, samples, seed=3)[0]
    assert len(set(indices.tolist())) == 256 and indices.min() >= 0 and indices.max() < samples


def test_ranks_share_each_global_batch_disjointly_and_completely():
    data = Indices(100)
    for step in range(3):
        shares = [rank_micro_batches(step, data, micro_batch=2, accumulation=3, rank=rank, world=4, seed=1)
                  for rank in range(4)]
        taken = np.concatenate([b["input_ids"] for share in shares for b in share])
        assert len(shares[0]) == 3 and all(len(b["input_ids"]) == 2 for share in shares for b in share)
        assert np.array_equal(taken, global_batch_indices(step, 24, 100, seed=1)[0]), "rank r's share is the r-th"
        assert len(set(taken.tolist())) == 24


def test_each_sample_is_read_with_its_epoch_across_ranks_and_micro_batches():
    # 10 samples, global batches of 8: step 1 holds positions 8-15, the last two of epoch 0 and six of epoch 1.
    data = Indices(10)
    shares = [rank_micro_batches(1, data, micro_batch=2, accumulation=2, rank=rank, world=2, seed=5)
              for rank in range(2)]
    epochs = np.concatenate([b["epochs"] for share in shares for b in share])
    assert epochs.tolist() == [0, 0, 1, 1, 1, 1, 1, 1]
    indices, _ = global_batch_indices(1, 8, 10, seed=5)
    assert sorted(indices[2:].tolist()) == sorted(set(indices[2:].tolist())), "epoch 1's part has no repeats"


class ReaderPids(Indices):
    """Record i is i, and says which process read it and how that process treats SIGTERM."""

    def read(self, indices, epochs):
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
