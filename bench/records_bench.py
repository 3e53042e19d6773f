"""The trainer's TFRecord data set at Wikipedia scale: start-up time and resident index bytes per record.

A synthetic set of `--records` records (default 100 million, about what English Wikipedia's seq-128 TFRecords hold
at dupe_factor 5) in `--files` files. Each file is sparse: its first record is a real BERT record, the rest of its
length a hole, so the set takes the disk of its indexes only (16 bytes a record) and the data set can open it as
it opens real files (it reads each index's header and each file's first record). Printed: the seconds to open the
data set, and the resident memory it adds, per record, right after opening and after every page of every index
has been read (an epoch of random batches touches them all). Measured against the goal of 16 bytes a record and
10 s, with the old per-record header scan as the reference, timed on the first file and scaled.

    .venv/bin/python -m bench.records_bench [--records 100000000] [--files 100] [--folder /tmp/records-bench]

With `--order`, no records are made: it times the training order alone (train.batches.global_batch_indices) at 10^9
samples, one rank's indices of a global batch of 256 x 8 ranks at step 0 and at a step in a later epoch, with the
seconds and the memory it adds (the process's resident growth, and the peak of numpy's allocations as tracemalloc
sees them; goal: under 1 s and 50 MB), and the whole-epoch permutation it replaces, timed at 10^7, as the reference.

    .venv/bin/python -m bench.records_bench --order
"""

import argparse
import resource
import shutil
import struct
import time
import tracemalloc
from pathlib import Path

import numpy as np

from bertpipe.tfrecord_reader import _HEADER, FEATURES, TFRecordSamples, example_class, index_path, masked_crc
from bertpipe.train.batches import global_batch_indices


def rss_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * resource.getpagesize()


def one_record() -> bytes:
    """A seq-128 BERT record, framed as TFRecord frames it (length, its crc, data, its crc)."""
    example = example_class()()
    for name in FEATURES:
        size = {"masked_lm_positions": 20, "masked_lm_ids": 20, "masked_lm_weights": 20,
                "next_sentence_labels": 1}.get(name, 128)
        feature = example.features.feature[name]
        (feature.float_list if name == "masked_lm_weights" else feature.int64_list).value.extend([1] * size)
    data = example.SerializeToString()
    length = struct.pack("<Q", len(data))
    return length + struct.pack("<I", masked_crc(length)) + data + struct.pack("<I", masked_crc(data))


def make(folder: Path, records: int, files: int) -> list:
    record = one_record()
    per_file = records // files
    paths = []
    for number in range(files):
        path = folder / f"shard-{number:04d}.tfrecord"
        with open(path, "wb") as f:
            f.write(record)
            f.truncate(per_file * len(record))  # a hole: no disk, reads as zeros
        offsets = np.arange(per_file, dtype=np.int64) * len(record) + _HEADER
        index = np.stack([offsets, np.full(per_file, len(record) - _HEADER - 4, dtype=np.int64)], axis=1)
        with open(index_path(path), "wb") as f:
            np.save(f, index)
        paths.append(path)
    return paths


def header_scan_seconds(path: Path, records: int) -> float:
    """The old start-up, reading every record's header (timed on one file; the holes read as zero lengths, so the
    scan is given the record length to step by)."""
    step = path.stat().st_size // records
    started = time.perf_counter()
    with open(path, "rb") as f:
        for offset in range(0, path.stat().st_size, step):
            f.seek(offset)
            f.read(_HEADER)
    return time.perf_counter() - started


def measured(compute) -> tuple:
    """(result, seconds, resident bytes added while it is held, peak bytes traced by tracemalloc) of `compute()`:
    run once untraced for the time and resident growth, once more traced for the allocations alone."""
    before = rss_bytes()
    started = time.perf_counter()
    result = compute()
    seconds = time.perf_counter() - started
    grown = rss_bytes() - before
    del result
    tracemalloc.start()
    result = compute()
    traced = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return result, seconds, grown, traced


def order_bench(samples: int = 10**9, per_rank: int = 256, world: int = 8, reference_samples: int = 10**7):
    global_batch, rank, seed, mb = per_rank * world, 3, 1234, 2**20
    print(f"order of {samples:,} samples, global batch {per_rank} x {world} ranks: rank {rank}'s {per_rank} indices")
    for step in (0, 5 * samples // global_batch + 1000):  # the first step, and one in epoch 5
        (indices, _), seconds, grown, traced = measured(lambda: global_batch_indices(
            step, global_batch, samples, seed, start=rank * per_rank, count=per_rank))
        print(f"  step {step:,} (epoch {step * global_batch // samples}): {seconds * 1000:.2f} ms, resident growth "
              f"{grown / mb:.2f} MB, numpy peak {traced / 2**10:.1f} KiB (goal: under 1 s and 50 MB; "
              f"{len(set(indices.tolist()))} distinct)")
    # At a hundredth of the samples: what the order replaced grows with, not a like-for-like ratio.
    _, reference, grown, traced = measured(lambda: np.random.default_rng([seed, 0]).permutation(reference_samples))
    print(f"the whole-epoch permutation it replaces, at {reference_samples:,} samples: {reference:.2f} s, resident "
          f"growth {grown / mb:.0f} MB, numpy peak {traced / mb:.0f} MB")


def main():
    parser = argparse.ArgumentParser(prog=".venv/bin/python -m bench.records_bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=100_000_000)
    parser.add_argument("--files", type=int, default=100)
    parser.add_argument("--folder", default="/tmp/records-bench")
    parser.add_argument("--order", action="store_true", help="time the training order alone (no records made)")
    args = parser.parse_args()
    if args.order:
        order_bench()
        return
    folder = Path(args.folder)
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    try:
        started = time.perf_counter()
        paths = make(folder, args.records, args.files)
        print(f"made {args.records:,} records in {args.files} files in {time.perf_counter() - started:.1f} s "
              f"(indexes: {sum(index_path(p).stat().st_size for p in paths) / 2**30:.2f} GiB)")
        import torch  # noqa: F401 (loaded in the trainer already: its import is not the data set's cost)

        before = rss_bytes()
        started = time.perf_counter()
        samples = TFRecordSamples([folder / "*.tfrecord"])
        opened = time.perf_counter() - started
        after_open = rss_bytes() - before
        touched = sum(int(index[::256, 0].sum()) for index in samples.indexes)  # one value a 4 KiB page
        after_touch = rss_bytes() - before
        scan = header_scan_seconds(paths[0], len(samples.indexes[0])) * args.files
        print(f"records: {len(samples):,} (checksum of touched offsets {touched % 1000})")
        print(f"open: {opened:.2f} s (goal: under 10 s); the old header scan, timed on one file of the same set "
              f"and multiplied by {args.files}: {scan:.1f} s")
        print(f"resident index bytes per record: {after_open / len(samples):.4f} after opening, "
              f"{after_touch / len(samples):.2f} with every index page read (goal: at most 16; file-backed pages "
              "the kernel can drop and share between the ranks of a node)")
    finally:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
