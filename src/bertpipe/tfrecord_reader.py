"""Reading the tfrecords stage's files for training and evaluation, without TensorFlow: a record index beside each
file, memory-mapped, then random access with every record's checksums verified.

A TFRecord is a sequence of (uint64 length, masked CRC-32C of the length, data, masked CRC-32C of the data); the
data is a serialised `tf.train.Example`. The index (`<file>.index.npy`, written by the tfrecords stage, or by
`bertpipe tfrecords index` for TFRecords made elsewhere) holds each record's data offset and length as two int64:
16 bytes a record on disk and, memory-mapped, only the pages a run touches in memory. Opening a data set reads one
index header and one record per file, whatever the number of records.

The Example message is built here from its definition (TensorFlow's example.proto and feature.proto) with the
protobuf runtime, so the trainer and evaluate need neither TensorFlow nor generated code. The feature names are
google-research/bert's; the writer (the tfrecords stage) takes them from here.
"""

import array
import functools
import glob
import json
import struct
from pathlib import Path

import google_crc32c
import numpy as np

from bertpipe import BertpipeError
from bertpipe.atomic import atomic_file

INT_FEATURES = ("input_ids", "input_mask", "segment_ids", "masked_lm_positions", "masked_lm_ids",
                "next_sentence_labels")
FEATURES = (*INT_FEATURES, "masked_lm_weights")
INDEX_SUFFIX = ".index.npy"
_HEADER = 12  # uint64 length + its masked crc; the data follows, then its masked crc (4 bytes)


@functools.cache
def example_class():
    """tensorflow.Example as a protobuf message class, from the fields of TensorFlow's example.proto and
    feature.proto (their numbers and types are the wire format), in a descriptor pool of its own."""
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

    field = descriptor_pb2.FieldDescriptorProto
    repeated, optional = field.LABEL_REPEATED, field.LABEL_OPTIONAL

    def message(name, fields, **extra):
        proto = descriptor_pb2.DescriptorProto(name=name, **extra)
        for number, (field_name, label, kind, type_name, *oneof) in enumerate(fields, 1):
            proto.field.add(name=field_name, number=number, label=label, type=kind,
                            **({"type_name": type_name} if type_name else {}), **({"oneof_index": 0} if oneof else {}))
        return proto

    entry = message("FeatureEntry", [("key", optional, field.TYPE_STRING, ""),
                                     ("value", optional, field.TYPE_MESSAGE, ".tensorflow.Feature")])
    entry.options.map_entry = True
    definition = descriptor_pb2.FileDescriptorProto(name="bertpipe/tensorflow_example.proto", package="tensorflow",
                                                    syntax="proto3", message_type=[
        message("BytesList", [("value", repeated, field.TYPE_BYTES, "")]),
        message("FloatList", [("value", repeated, field.TYPE_FLOAT, "")]),
        message("Int64List", [("value", repeated, field.TYPE_INT64, "")]),
        message("Feature", [("bytes_list", optional, field.TYPE_MESSAGE, ".tensorflow.BytesList", "kind"),
                            ("float_list", optional, field.TYPE_MESSAGE, ".tensorflow.FloatList", "kind"),
                            ("int64_list", optional, field.TYPE_MESSAGE, ".tensorflow.Int64List", "kind")],
                oneof_decl=[descriptor_pb2.OneofDescriptorProto(name="kind")]),
        message("Features", [("feature", repeated, field.TYPE_MESSAGE, ".tensorflow.Features.FeatureEntry")],
                nested_type=[entry]),
        message("Example", [("features", optional, field.TYPE_MESSAGE, ".tensorflow.Features")])])
    pool = descriptor_pool.DescriptorPool()
    pool.Add(definition)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("tensorflow.Example"))


def masked_crc(data: bytes) -> int:
    """TFRecord's checksum: CRC-32C, rotated and offset ("masked") so that CRCs of CRCs stay good checksums."""
    crc = google_crc32c.value(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def index_path(tfrecord) -> Path:
    return Path(f"{tfrecord}{INDEX_SUFFIX}")


def index_records(path) -> np.ndarray:
    """(data offset, data length) of every record of TFRecord file `path`, from its headers, whose CRCs must hold."""
    path = Path(path)
    if not path.is_file():
        raise BertpipeError(f"{path}: no such TFRecord file")
    columns, offset, size = array.array("q"), 0, path.stat().st_size
    with open(path, "rb") as f:
        while offset < size:
            header = f.read(_HEADER)
            length, crc = struct.unpack("<QI", header) if len(header) == _HEADER else (None, None)
            if length is None or crc != masked_crc(header[:8]) or offset + _HEADER + length + 4 > size:
                raise BertpipeError(f"{path}: record {len(columns) // 2} (byte {offset}) has a damaged or truncated "
                                    "header; the file is not a whole TFRecord file: delete it and rebuild it")
            columns.extend((offset + _HEADER, length))
            offset += _HEADER + length + 4
            f.seek(offset)
    return np.frombuffer(columns, dtype=np.int64).reshape(-1, 2)


def write_index(tfrecord, index=None, lengths=None) -> Path:
    """Index `tfrecord` into `index` (default: beside it), published whole: from its headers, or, from the writer
    that has just written them, from the records' `lengths` (the frames' sizes must then add up to the file's)."""
    index = Path(index) if index else index_path(tfrecord)
    if lengths is None:
        records = index_records(tfrecord)
    else:
        lengths = np.asarray(lengths, dtype=np.int64)
        ends = np.cumsum(lengths + _HEADER + 4)  # a frame: length and its CRC, the data, the data's CRC
        records = np.stack([ends - lengths - 4, lengths], axis=1)
        size = Path(tfrecord).stat().st_size
        if size != (int(ends[-1]) if len(ends) else 0):
            raise BertpipeError(f"{tfrecord}: {size} bytes, not the frames of its {len(lengths)} records; it was not "
                                "written as plain TFRecords")
    with atomic_file(index) as temp, open(temp, "wb") as f:
        np.save(f, records)
    return index


def expand_files(patterns) -> list:
    """Files named or matched by globs, in a fixed order; a pattern that matches nothing is an error."""
    files = []
    for pattern in patterns:
        matched = sorted(glob.glob(str(pattern))) if glob.has_magic(str(pattern)) else [str(pattern)]
        if not matched or not all(Path(f).is_file() for f in matched):
            raise BertpipeError(f"{pattern}: no TFRecord file there; check --train-data/--valid-data")
        files.extend(matched)
    return files


def _stats(path: Path):
    """The stats the tfrecords stage wrote beside TFRecord file `path` (`<name>.stats.json`), or None."""
    stats = path.with_name(path.name.removesuffix(".tfrecord") + ".stats.json")
    return json.loads(stats.read_text()) if path.suffix == ".tfrecord" and stats.is_file() else None


def dataset_rows(files) -> int:
    """The records in TFRecord `files`, from the stats the tfrecords stage wrote beside each, or None where one is
    missing (files made elsewhere)."""
    rows = 0
    for path in map(Path, files):
        stats = _stats(path)
        if stats is None:
            return None
        rows += stats["instances"]
    return rows


def dataset_features(files) -> list:
    """The feature names of TFRecord `files`: those their stats name (the tfrecords stage's build or pack), else
    google-research/bert's (files made elsewhere)."""
    stats = _stats(Path(files[0])) if files else None
    return list(stats.get("features", FEATURES) if stats else FEATURES)


def _open_index(path: str) -> np.ndarray:
    index_file = index_path(path)
    if not index_file.is_file():
        raise BertpipeError(f"{path}: no record index {index_file.name} beside it; the tfrecords stage writes one, "
                            f"for TFRecords made elsewhere run `bertpipe tfrecords index {path}`")
    try:
        index = np.load(index_file, mmap_mode="r")
    except ValueError as error:
        raise BertpipeError(f"{index_file}: not a record index ({error}); run `bertpipe tfrecords index {path}`")
    size = Path(path).stat().st_size
    end = int(index[-1, 0] + index[-1, 1] + 4) if index.ndim == 2 and len(index) else 0
    if index.dtype != np.int64 or index.ndim != 2 or index.shape[1] != 2 or end != size:
        raise BertpipeError(f"{index_file} does not describe {path} ({size} bytes; the index ends at byte {end}): "
                            f"the file changed after it was indexed; rebuild it, or run `bertpipe tfrecords index "
                            f"{path}` if the file is right")
    return index


class IndexedRecords:
    """Random access to the records of a list of TFRecord files, through their indexes: the data of each record asked
    for, its checksums verified. The samples of either recipe are made of them (TFRecordSamples here,
    packed_sequences.PackedSamples)."""

    def __init__(self, files):
        self.files = expand_files(files)
        self.indexes = [_open_index(path) for path in self.files]
        self.starts = np.cumsum([0] + [len(index) for index in self.indexes])  # global index of each file's first
        if not len(self):
            raise BertpipeError(f"no records in {', '.join(self.files)}")

    def __len__(self) -> int:
        return int(self.starts[-1])

    def _record(self, handle, file_id: int, record: int) -> bytes:
        """The data of one record, its checksums verified."""
        offset, length = (int(value) for value in self.indexes[file_id][record])
        handle.seek(offset - _HEADER)
        chunk = handle.read(_HEADER + length + 4)
        problem = None
        if len(chunk) != _HEADER + length + 4:
            problem = "ends early"
        elif struct.unpack("<QI", chunk[:_HEADER]) != (length, masked_crc(chunk[:8])):
            problem = "has a header that disagrees with the index"
        elif struct.unpack("<I", chunk[-4:])[0] != masked_crc(chunk[_HEADER:-4]):
            problem = "fails its checksum"
        if problem:
            raise BertpipeError(f"{self.files[file_id]}: record {record} (byte {offset - _HEADER}) {problem}: the "
                                "file is damaged; delete it and its index and rebuild them (the tfrecords stage)")
        return chunk[_HEADER:-4]

    def records(self, indices):
        """(file's position in `files`, record's number in its file, the record's data) of each of `indices`, in
        their order."""
        indices = np.asarray(indices, dtype=np.int64)
        if len(indices) and not 0 <= indices.min() <= indices.max() < len(self):
            raise IndexError(f"records {indices.min()} to {indices.max()} of a data set of {len(self)}")
        file_ids = np.searchsorted(self.starts, indices, side="right") - 1
        handles = {}
        try:
            for file_id, record in zip(file_ids.tolist(), (indices - self.starts[file_ids]).tolist()):
                if file_id not in handles:
                    handles[file_id] = open(self.files[file_id], "rb")
                yield file_id, record, self._record(handles[file_id], file_id, record)
        finally:
            for handle in handles.values():
                handle.close()


class TFRecordSamples(IndexedRecords):
    """google-research/bert's pretraining records (the 2019 recipe's), read by index."""

    def __init__(self, files):
        super().__init__(files)
        # (sequence length, predictions): the same in every file, or batches could not be stacked
        shapes = {}
        for file_id, start in enumerate(self.starts[:-1]):
            if len(self.indexes[file_id]):
                first = self.read([int(start)])
                shapes[self.files[file_id]] = (first["input_ids"].shape[1], first["masked_lm_ids"].shape[1])
        if len(set(shapes.values())) > 1:
            raise BertpipeError("records of different shapes (length, predictions) in one data set: "
                                + ", ".join(f"{path} {shape}" for path, shape in shapes.items()))
        self.shape = next(iter(shapes.values()))

    def read(self, indices, epochs=None) -> dict:
        """The records at `indices` as a batch of torch tensors (int64, masked_lm_weights float32). `epochs` is
        not used: the masks are in the records (read by the trainer as it reads PackedSamples)."""
        import torch  # here, not above: the tfrecords stage indexes its files with this module and needs no torch

        example = example_class()
        columns = {name: [] for name in FEATURES}
        for file_id, record, data in self.records(indices):
            feature = example.FromString(data).features.feature
            for name in FEATURES:
                if name not in feature:
                    raise BertpipeError(f"{self.files[file_id]}: record {record} has no feature {name!r}: not "
                                        "a BERT pretraining record (google-research/bert's features)")
                values = feature[name]
                columns[name].append(values.float_list.value if name == "masked_lm_weights"
                                     else values.int64_list.value)
        return {name: torch.tensor(np.asarray(values, dtype=np.float32 if name == "masked_lm_weights" else np.int64))
                for name, values in columns.items()}
