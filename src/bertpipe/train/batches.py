"""Pretraining batches from samples with random access (tfrecord_reader.TFRecordSamples,
loose_json_samples.LooseJsonSamples): a seeded order per epoch, and each rank's disjoint slice of each global batch.

The position in the data is the step: global batch `step` is a fixed slice of the endless sequence of epochs, each
a seeded permutation of the samples, so a resumed run reads exactly what the uninterrupted run would have read, and
nothing beyond the step needs saving. The permutation is a keyed bijection evaluated only at the positions asked for
(`epoch_order`): a rank computes its own share of a batch in memory of the batch's size, whatever the data's size.
Reader processes (`--num-workers`, a torch DataLoader) make the batches of the next steps while the trainer computes:
a batch is a function of its step alone, so they may work ahead and a resumed run simply starts at its step.
"""

import signal

import numpy as np
import torch

# Four rounds of random functions make a Feistel network a strong pseudorandom permutation (Luby and Rackoff); eight
# leave a margin for a round function that is a fast mixer rather than a keyed hash, and cost little at a batch's size.
_ROUNDS = 8


def _mix(values: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser: each output bit depends on every input bit (uint64 array arithmetic wraps)."""
    values = (values ^ (values >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    values = (values ^ (values >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return values ^ (values >> np.uint64(31))


def _feistel(values: np.ndarray, half_bits: int, keys: np.ndarray) -> np.ndarray:
    """A bijection of [0, 4**half_bits): each round swaps the halves and mixes the right one, with its key, into
    the left."""
    mask = np.uint64((1 << half_bits) - 1)
    left, right = values >> np.uint64(half_bits), values & mask
    for key in keys:
        left, right = right, left ^ (_mix(right ^ key) & mask)
    return (left << np.uint64(half_bits)) | right


def epoch_order(offsets: np.ndarray, samples: int, seed: int, epoch: int) -> np.ndarray:
    """The samples at `offsets` of epoch `epoch`'s order: a seeded permutation of [0, samples) evaluated only where
    asked, in memory of the offsets' size. A Feistel network permutes the smallest even number of bits covering
    `samples`; values it sends beyond `samples` go through it again (cycle walking) until they land inside, which
    takes under 4 passes on average since that domain is less than 4 times `samples`."""
    if samples < 1:
        raise ValueError(f"an order of {samples} samples: there must be at least one")
    half_bits = max(1, ((samples - 1).bit_length() + 1) // 2)
    keys = np.random.SeedSequence([seed, epoch]).generate_state(_ROUNDS, np.uint64)
    values = np.array(offsets, dtype=np.uint64)
    walking = np.arange(len(values))
    while len(walking):
        values[walking] = _feistel(values[walking], half_bits, keys)
        walking = walking[values[walking] >= samples]
    return values.astype(np.int64)


def global_batch_indices(step: int, global_batch: int, samples: int, seed: int, start: int = 0,
                         count: int | None = None) -> tuple:
    """(sample indices, their epochs) of global batch `step` (0-based), or of its `count` positions from `start` on
    (default: to its end). Global batch `step` is positions [step * global_batch, (step + 1) * global_batch) of
    epoch 0's order, then epoch 1's, and so on: position p is offset p % samples of epoch p // samples. The epochs
    are for samples whose masks are drawn as they are read (packed_sequences), which differ from epoch to epoch."""
    count = global_batch - start if count is None else count
    if not 0 <= start < start + count <= global_batch:
        raise ValueError(f"{count} positions from {start} are not inside a global batch of {global_batch}")
    if samples < 1:
        raise ValueError(f"batches of {samples} samples: there must be at least one")
    first = step * global_batch + start
    parts = []
    for epoch in range(first // samples, (first + count - 1) // samples + 1):
        begin, end = max(first, epoch * samples), min(first + count, (epoch + 1) * samples)
        parts.append(epoch_order(np.arange(begin - epoch * samples, end - epoch * samples), samples, seed, epoch))
    return np.concatenate(parts), np.arange(first, first + count) // samples


def rank_micro_batches(step: int, samples, micro_batch: int, accumulation: int, rank: int,
                       world: int, seed: int) -> list:
    """This rank's micro-batches of global batch `step`: its contiguous, disjoint share, cut into `accumulation`."""
    per_rank = micro_batch * accumulation
    indices, epochs = global_batch_indices(step, per_rank * world, len(samples), seed, start=rank * per_rank,
                                           count=per_rank)
    return [samples.read(indices[i * micro_batch:(i + 1) * micro_batch], epochs[i * micro_batch:(i + 1) * micro_batch])
            for i in range(accumulation)]


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
