"""Pretraining batches from the tfrecords stage's files: an index of every record, a seeded order per epoch, and
each rank's disjoint slice of each global batch.

The position in the data is the step: global batch `step` is a fixed slice of a fixed permutation, so a resumed run
reads exactly what the uninterrupted run would have read, and nothing beyond the step needs saving.
Records are read by offset (random access) and parsed with TensorFlow's Example protobuf, as Megatron did.
Reader processes (`--num-workers`, a torch DataLoader) make the batches of the next steps while the trainer computes:
a batch is a function of its step alone, so they may work ahead and a resumed run simply starts at its step.
"""

import functools
import glob
import os
import signal
import struct
from pathlib import Path

import numpy as np
import torch

from bertpipe import BertpipeError
from bertpipe.tfrecords import INT_FEATURES

FEATURES = (*INT_FEATURES, "masked_lm_weights")
_HEADER = 12  # uint64 length + uint32 masked crc of it; the record follows, then a uint32 crc of the record


def expand_files(patterns) -> list:
    """Files named or matched by globs, in a fixed order; a pattern that matches nothing is an error."""
    files = []
    for pattern in patterns:
        matched = sorted(glob.glob(str(pattern))) if glob.has_magic(str(pattern)) else [str(pattern)]
        if not matched or not all(Path(f).is_file() for f in matched):
            raise BertpipeError(f"{pattern}: no TFRecord file there; check --train-data/--valid-data")
        files.extend(matched)
    return files


class TFRecordSamples:
    """Random access to every record of a list of TFRecord files."""

    def __init__(self, files):
        self.files = expand_files(files)
        file_ids, offsets, lengths = [], [], []
        for file_id, path in enumerate(self.files):
            size, offset = os.path.getsize(path), 0
            with open(path, "rb") as f:
                while offset < size:
                    header = f.read(_HEADER)
                    if len(header) < _HEADER:
                        raise BertpipeError(f"{path}: truncated record header at byte {offset}; rebuild this file")
                    (length,) = struct.unpack("<Q", header[:8])
                    file_ids.append(file_id)
                    offsets.append(offset + _HEADER)
                    lengths.append(length)
                    offset += _HEADER + length + 4
                    f.seek(offset)
            if offset != size:
                raise BertpipeError(f"{path}: the last record ends past the end of the file; rebuild this file")
        self.file_ids = np.asarray(file_ids, dtype=np.int32)
        self.offsets = np.asarray(offsets, dtype=np.int64)
        self.lengths = np.asarray(lengths, dtype=np.int64)
        if not len(self.offsets):
            raise BertpipeError(f"no records in {', '.join(self.files)}")
        # (sequence length, predictions): the same in every file, or batches could not be stacked
        shapes = {}
        for file_id in np.unique(self.file_ids):
            first = self.read([int(np.argmax(self.file_ids == file_id))])
            shapes[self.files[file_id]] = (first["input_ids"].shape[1], first["masked_lm_ids"].shape[1])
        if len(set(shapes.values())) > 1:
            raise BertpipeError("records of different shapes (length, predictions) in one data set: "
                                + ", ".join(f"{path} {shape}" for path, shape in shapes.items()))
        self.shape = next(iter(shapes.values()))

    def __len__(self) -> int:
        return len(self.offsets)

    def read(self, indices) -> dict:
        """The records at `indices` as a batch of torch tensors (int64, masked_lm_weights float32)."""
        from tensorflow.core.example.example_pb2 import Example

        columns = {name: [] for name in FEATURES}
        handles = {}
        try:
            for index in indices:
                file_id = int(self.file_ids[index])
                if file_id not in handles:
                    handles[file_id] = open(self.files[file_id], "rb")
                handle = handles[file_id]
                handle.seek(int(self.offsets[index]))
                feature = Example.FromString(handle.read(int(self.lengths[index]))).features.feature
                for name in FEATURES:
                    values = feature[name]
                    columns[name].append(values.float_list.value if name == "masked_lm_weights"
                                         else values.int64_list.value)
        finally:
            for handle in handles.values():
                handle.close()
        return {name: torch.tensor(np.asarray(values, dtype=np.float32 if name == "masked_lm_weights" else np.int64))
                for name, values in columns.items()}


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
