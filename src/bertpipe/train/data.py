"""Pretraining batches from samples with random access (records.TFRecordSamples, loose_json.LooseJsonSamples): a
seeded order per epoch, and each rank's disjoint slice of each global batch.

The position in the data is the step: global batch `step` is a fixed slice of a fixed permutation, so a resumed run
reads exactly what the uninterrupted run would have read, and nothing beyond the step needs saving.
Reader processes (`--num-workers`, a torch DataLoader) make the batches of the next steps while the trainer computes:
a batch is a function of its step alone, so they may work ahead and a resumed run simply starts at its step.
"""

import functools
import signal

import numpy as np
import torch



@functools.lru_cache(maxsize=2)
def _epoch_order(samples: int, seed: int, epoch: int) -> np.ndarray:
    return np.random.default_rng([seed, epoch]).permutation(samples)


def global_batch_indices(step: int, global_batch: int, samples: int, seed: int) -> np.ndarray:
    """The sample indices of global batch `step` (0-based): epoch after epoch of seeded permutations, in order."""
    indices, start = [], step * global_batch
    while len(indices) < global_batch:
        epoch, offset = divmod(start, samples)
        taken = _epoch_order(samples, seed, epoch)[offset:offset + global_batch - len(indices)]
        indices.extend(taken.tolist())
        start += len(taken)
    return np.asarray(indices)


def rank_micro_batches(step: int, samples, micro_batch: int, accumulation: int, rank: int,
                       world: int, seed: int) -> list:
    """This rank's micro-batches of global batch `step`: its contiguous, disjoint share, cut into `accumulation`."""
    per_rank = micro_batch * accumulation
    indices = global_batch_indices(step, per_rank * world, len(samples), seed)[rank * per_rank:(rank + 1) * per_rank]
    return [samples.read(indices[i * micro_batch:(i + 1) * micro_batch]) for i in range(accumulation)]


class RankBatches(torch.utils.data.Dataset):
    """Item `step`: this rank's micro-batches of global batch `step` (`rank_micro_batches`)."""

    def __init__(self, samples, micro_batch: int, accumulation: int, rank: int, world: int, seed: int):
        self.samples, self.micro_batch, self.accumulation = samples, micro_batch, accumulation
        self.rank, self.world, self.seed = rank, world, seed

    def __getitem__(self, step: int) -> list:
        return rank_micro_batches(step, self.samples, self.micro_batch, self.accumulation, self.rank, self.world,
                                  self.seed)


def _leave_signals_to_the_trainer(_worker_id):
    """Slurm signals every process of a job step. The trainer checkpoints and stops on SIGTERM and SIGUSR1; a reader
    process killed by them would fail the trainer's next read instead. Readers still end with the trainer."""
    for number in (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT):
        signal.signal(number, signal.SIG_IGN)


def rank_batch_stream(batches: RankBatches, steps: range, num_workers: int, pin_memory: bool = False):
    """An iterator over `batches[step]` for each step of `steps`, in order: made by `num_workers` reader processes,
    each some steps ahead of the trainer, or in this process on demand with 0."""
    # Its own generator: a DataLoader draws a seed when it starts, which from the global RNG would shift the dropout
    # stream of a resumed run (the batches themselves draw nothing).
    return iter(torch.utils.data.DataLoader(
        batches, sampler=steps, batch_size=None, num_workers=num_workers, pin_memory=pin_memory,
        generator=torch.Generator().manual_seed(0),
        worker_init_fn=_leave_signals_to_the_trainer if num_workers else None,
        prefetch_factor=4 if num_workers else None))
