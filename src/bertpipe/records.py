"""Reading the tfrecords stage's files for training and evaluation: an index of every record, then random access.

Records are read by offset and parsed with TensorFlow's Example protobuf, as Megatron did. The feature names are
google-research/bert's; the writer (the tfrecords stage) takes them from here.
"""

import glob
import os
import struct
from pathlib import Path

import numpy as np
import torch

from bertpipe import BertpipeError

INT_FEATURES = ("input_ids", "input_mask", "segment_ids", "masked_lm_positions", "masked_lm_ids",
                "next_sentence_labels")
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
