"""Stage `tfrecords`: one corpus shard to a TFRecord file, written with TensorFlow's TFRecordWriter, with a record
index beside it and its stats. Two kinds, one per recipe:
- `build` (bert2019): masked-LM + next-sentence instances with google-research/bert's feature names and types,
  `dupe_factor` masked copies of every document. The shard's RNG seed is derived from the configured seed and the
  shard's identity (sequence length, split, part, shard), so a rerun writes the same bytes, and shards never share a
  random stream.
- `pack` (modern): the shard's documents packed into full sequences (packed_sequences.py), once, unmasked: the
  trainer draws the masks as it reads them. It draws nothing, so a rerun writes the same bytes.
Memory is bounded by the shard.
"""

import array
import dataclasses
import hashlib
import itertools
import json
import logging
import os
import random
import sys
import time
from pathlib import Path

import numpy as np

from bertpipe import BertpipeError, settings
from bertpipe.atomic import atomic_file
from bertpipe.hashing import file_hash
from bertpipe.packed_sequences import PACKED_FEATURES, pack, serialize_sequences
from bertpipe.pages import stats_page
from bertpipe.pretraining_instances import TokenizedShard, materialize, pair_spans, token_dtype
from bertpipe.settings import InstanceSpec, TFRecordsPhase, TFRecordsSettings
from bertpipe.stages import add_step
from bertpipe.tfrecord_reader import FEATURES, INT_FEATURES, index_path, write_index
from bertpipe.tokenizer_folder import Tokenizer
from bertpipe.tracking import Outcome

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

log = logging.getLogger(__name__)

BATCH = 1024  # instances masked and serialised at a time
ENCODE_SENTENCES = 8192  # sentences tokenised at a time


def tensorflow_without_keras():
    """TensorFlow for the TFRecordWriter, imported without the Keras (and scikit-learn) that TensorFlow loads
    eagerly, much of a small job's CPU (docs/benchmarks.md, "A tfrecords job's start-up"). Nothing here needs Keras;
    TensorFlow Text (the WordPiece tokenizer) imports it itself when a WordPiece job loads it."""
    blocked = "keras" not in sys.modules
    if blocked:
        sys.modules["keras"] = None  # TensorFlow skips its eager Keras import when that import fails
    try:
        import tensorflow
    finally:
        if blocked:
            del sys.modules["keras"]
    return tensorflow


def feature_spec(seq_length: int, max_predictions: int) -> dict:
    """Google's features, for tf.io.parse_single_example."""
    import tensorflow as tf

    return {
        "input_ids": tf.io.FixedLenFeature([seq_length], tf.int64),
        "input_mask": tf.io.FixedLenFeature([seq_length], tf.int64),
        "segment_ids": tf.io.FixedLenFeature([seq_length], tf.int64),
        "masked_lm_positions": tf.io.FixedLenFeature([max_predictions], tf.int64),
        "masked_lm_ids": tf.io.FixedLenFeature([max_predictions], tf.int64),
        "masked_lm_weights": tf.io.FixedLenFeature([max_predictions], tf.float32),
        "next_sentence_labels": tf.io.FixedLenFeature([1], tf.int64),
    }


# Example > Features > map entry (key, Feature) > Int64List or FloatList > packed values: the wire format of
# TensorFlow's example.proto and feature.proto; every field here is a length-delimited one, tagged with its number.
_FIELD_1, _FIELD_2, _FIELD_3 = 0x0A, 0x12, 0x1A
_FLOAT_FEATURES = ("masked_lm_weights",)


def _varint_width(values: np.ndarray) -> int:
    """Bytes of the longest varint among `values` (non-negative)."""
    return max(1, (int(values.max(initial=0)).bit_length() + 6) // 7)


def _varint_sizes(values: np.ndarray, width: int) -> np.ndarray:
    """Bytes of each value's varint, none longer than `width`."""
    if width == 1:
        return np.ones(values.shape, dtype=np.int64)
    values = values.astype(np.uint32 if width <= 4 else np.uint64)
    sizes = np.ones(values.shape, dtype=np.int64)
    for k in range(1, width):
        sizes += values >= 1 << (7 * k)
    return sizes


def _varint_block(values: np.ndarray) -> tuple:
    """The varints of `values` (rows, n), each in a slot as wide as the longest: (bytes, used), (rows, n * width)."""
    width = _varint_width(values)
    if width == 1:
        return values.astype(np.uint8), np.ones(values.shape, dtype=bool)
    values = values.astype(np.uint32 if width <= 4 else np.uint64)
    groups = np.empty((*values.shape, width), dtype=np.uint8)
    used = np.empty((*values.shape, width), dtype=bool)
    used[..., 0] = True
    for k in range(width):
        more = values >= 1 << (7 * (k + 1))  # "more follows": the group's high bit
        groups[..., k] = ((values >> (7 * k)) & 0x7F) | (more.astype(np.uint8) << 7)
        if k + 1 < width:
            used[..., k + 1] = more
    return groups.reshape(len(values), -1), used.reshape(len(values), -1)


def serialize_examples(batch: dict) -> tuple:
    """Every row of the batch as a serialised tf.train.Example with Google's features, byte for byte what protobuf's
    deterministic serialisation writes (the features in key order, values packed), without a Python object per
    value: returns the records concatenated (bytes) and each one's length (int64 array).

    Each record is built in a row of one byte matrix whose columns are fixed slots (a varint's slot as wide as the
    largest value in it needs) with a mask of the bytes the row uses; selecting by the mask concatenates the rows.
    tests/integration/test_tfrecords.py holds it equal to protobuf's SerializeToString(deterministic=True)."""
    rows = len(batch["input_ids"])
    blocks = []  # (bytes, used), each (rows, w), in the record's order

    def constant(data: bytes):
        block = np.broadcast_to(np.frombuffer(data, dtype=np.uint8), (rows, len(data)))
        blocks.append((block, np.ones(block.shape, dtype=bool)))

    def length(n: np.ndarray):
        blocks.append(_varint_block(n[:, None]))

    def with_header(content: np.ndarray) -> np.ndarray:  # a tag byte, the content's length, the content
        return 1 + _varint_sizes(content, _varint_width(content)) + content

    features = sorted(INT_FEATURES + _FLOAT_FEATURES)
    payload, value_list, feature, entry = {}, {}, {}, {}
    for name in features:
        values = batch[name]
        if name in _FLOAT_FEATURES:
            payload[name] = np.full(rows, 4 * values.shape[1], dtype=np.int64)
        else:
            payload[name] = _varint_sizes(values, _varint_width(values)).sum(axis=1)
        value_list[name] = with_header(payload[name])
        feature[name] = with_header(value_list[name])
        entry[name] = 2 + len(name) + with_header(feature[name])  # the key's tag, length and bytes, then the value
    features_length = sum(with_header(entry[name]) for name in features)

    constant(bytes([_FIELD_1]))
    length(features_length)
    for name in features:
        key = name.encode()
        constant(bytes([_FIELD_1]))
        length(entry[name])
        constant(bytes([_FIELD_1, len(key)]) + key + bytes([_FIELD_2]))
        length(feature[name])
        constant(bytes([_FIELD_2 if name in _FLOAT_FEATURES else _FIELD_3]))
        length(value_list[name])
        constant(bytes([_FIELD_1]))
        length(payload[name])
        if name in _FLOAT_FEATURES:
            data = np.ascontiguousarray(batch[name], dtype="<f4").view(np.uint8)
            blocks.append((data, np.ones(data.shape, dtype=bool)))
        else:
            blocks.append(_varint_block(batch[name]))
    data = np.concatenate([b for b, _ in blocks], axis=1)
    used = np.concatenate([u for _, u in blocks], axis=1)
    return data[used].tobytes(), used.sum(axis=1)


def shard_seed(seed: int, *identity) -> int:
    """A seed of the shard's own from the configured seed and its identity (e.g. seq length, split, part, shard)."""
    text = "\0".join(map(str, (seed, *identity)))
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big")


def read_documents(path: Path):
    """The shard's documents as lists of sentences; a clear error names the line of a malformed record."""
    with open(path, encoding="utf-8") as f:
        for line_number, line in enumerate(f, 1):
            try:
                yield json.loads(line)["text"].split("\n")
            except (ValueError, KeyError, TypeError, AttributeError) as error:
                raise BertpipeError(f"{path}, line {line_number}: malformed corpus record ({error!r}); "
                                    "rerun the corpus stage (snakemake --forcerun corpus)") from None


def tokenize_shard(path: Path, tokenizer: Tokenizer) -> TokenizedShard:
    """The shard's documents as token ids, encoded a batch of sentences at a time into flat arrays (a Python int per
    token of a whole shard would cost more memory than its ids). The ids grow in an array.array, which reallocates in
    place, where concatenating batches would hold the shard's ids twice."""
    dtype = token_dtype(tokenizer.vocab_size)
    ids, sentence_lengths, document_sentences = array.array(dtype.char), [], []
    batch = []
    for document in itertools.chain(read_documents(path), [None]):
        if document is not None:
            batch.extend(document)
            document_sentences.append(len(document))
        if batch and (document is None or len(batch) >= ENCODE_SENTENCES):
            batch_ids, batch_lengths = tokenizer.encode_flat(batch)
            ids.frombytes(batch_ids.astype(dtype).tobytes())
            sentence_lengths.append(batch_lengths)
            batch = []
    return TokenizedShard.from_arrays(np.frombuffer(ids, dtype=dtype),
                                      np.concatenate([np.zeros(0, np.int64), *sentence_lengths]),
                                      np.asarray(document_sentences, dtype=np.int64))


def build_shard(shard, tokenizer_dir, out, stats_out, spec: InstanceSpec, seed: int) -> dict:
    """Write the instances of one corpus shard to `out` (TFRecord), its record index beside it
    (tfrecord_reader.index_path) and its stats to `stats_out` (JSON).

    The random streams are seeded by `seed`, the sequence length and the shard's part/split/name (the last three
    components of its path), so every shard has its own stream, whatever folder the corpus lives in."""
    tf = tensorflow_without_keras()

    started = time.perf_counter()
    shard, out = Path(shard), Path(out)
    if not shard.is_file():
        raise BertpipeError(f"{shard}: no such corpus shard")
    if spec.max_predictions < 1 or spec.seq_length < 8:
        raise BertpipeError(f"seq_length {spec.seq_length} / max_predictions {spec.max_predictions}: too small")
    tokenizer = Tokenizer(tokenizer_dir, tensorflow_text=True)
    tokenized = tokenize_shard(shard, tokenizer)
    own_seed = shard_seed(seed, spec.seq_length, *shard.parts[-3:])
    rng = random.Random(own_seed)
    gen = np.random.default_rng(own_seed)
    spans, forced_random_next = pair_spans(tokenized, spec, rng)
    if tokenized.documents == 0:
        log.warning("%s: no documents; writing an empty file", shard)
    elif tokenized.documents == 1:
        log.warning("%s: a single document: no random next segments can be made, only true continuations", shard)

    counts = {"instances": 0, "tokens": 0, "real_tokens": 0, "masked": 0, "mask": 0, "kept": 0, "random": 0,
              "random_next": 0, "padding": 0}
    written = array.array("q")  # each record's length, for its index
    with atomic_file(out) as temp:
        log.info("%s: writing the instances of %d documents", out, tokenized.documents)
        with tf.io.TFRecordWriter(str(temp)) as writer:
            for begin in range(0, len(spans), BATCH):
                batch = materialize(tokenized.tokens, spans[begin:begin + BATCH], spec, tokenizer, gen)
                records, lengths = serialize_examples(batch)
                sizes = lengths.tolist()
                written.extend(sizes)
                offset = 0
                for size in sizes:
                    writer.write(records[offset:offset + size])
                    offset += size
                real = int(batch["input_mask"].sum())
                kinds = batch["masked_lm_kind"]
                counts["instances"] += len(kinds)
                counts["tokens"] += real
                counts["real_tokens"] += real - 3 * len(kinds)  # without [CLS] and the two [SEP]
                counts["padding"] += batch["input_mask"].size - real
                counts["masked"] += int((kinds >= 0).sum())
                counts["mask"] += int((kinds == 0).sum())
                counts["kept"] += int((kinds == 1).sum())
                counts["random"] += int((kinds == 2).sum())
                counts["random_next"] += int(batch["next_sentence_labels"].sum())
        # Published before the records: an index without its file names nothing, and readers check that an index
        # ends where its file does, so an index beside an older file is refused, not followed.
        write_index(temp, index_path(out), lengths=written)
    instances = max(counts["instances"], 1)
    stats = {
        "shard": str(shard),
        "features": list(FEATURES),
        "spec": dataclasses.asdict(spec),
        "seed": seed,
        "shard_seed": own_seed,
        "documents": tokenized.documents,
        "sentences": len(tokenized.sentence_starts) - 1,
        **counts,
        "masked_fraction": counts["masked"] / max(counts["real_tokens"], 1),
        "random_next_share": counts["random_next"] / instances,
        # One-sentence chunks always get a random next segment (as in Google's code); the rest is a coin flip.
        "random_next_forced": forced_random_next,
        # The records' identity, so that pretraining can name its data without reading it all again.
        "records_blake2b": file_hash(out),
        "seconds": round(time.perf_counter() - started, 3),
    }
    with atomic_file(stats_out) as temp:
        temp.write_text(json.dumps(stats, indent=2) + "\n")
    log.info("%s: %d instances from %d documents", out, counts["instances"], tokenized.documents)
    return stats


def pack_shard(shard, tokenizer_dir, out, stats_out, seq_length: int) -> dict:
    """Write the packed sequences of one corpus shard to `out` (TFRecord, packed_sequences.PACKED_FEATURES), its
    record index beside it and its stats to `stats_out` (JSON)."""
    tf = tensorflow_without_keras()

    started = time.perf_counter()
    shard, out = Path(shard), Path(out)
    if not shard.is_file():
        raise BertpipeError(f"{shard}: no such corpus shard")
    tokenizer = Tokenizer(tokenizer_dir, tensorflow_text=True)
    tokenized = tokenize_shard(shard, tokenizer)
    packed = pack(tokenized, seq_length, tokenizer.cls_id, tokenizer.sep_id)
    if tokenized.documents == 0:
        log.warning("%s: no documents; writing an empty file", shard)
    written = array.array("q")  # each record's length, for its index
    with atomic_file(out) as temp:
        with tf.io.TFRecordWriter(str(temp)) as writer:
            for begin in range(0, packed.sequences, BATCH):
                for record in serialize_sequences(packed, begin, begin + BATCH):
                    writer.write(record)
                    written.append(len(record))
        write_index(temp, index_path(out), lengths=written)  # before the records, as build_shard
    tokens = len(packed.tokens)
    stats = {
        "shard": str(shard),
        "features": list(PACKED_FEATURES),
        "seq_length": seq_length,
        "documents": tokenized.documents,
        "sentences": len(tokenized.sentence_starts) - 1,
        "instances": packed.sequences,  # one sequence a record, as an instance is in build's records
        "tokens": tokens,
        "real_tokens": tokens - 2 * tokenized.documents,  # without each document's [CLS] and [SEP]
        "document_pieces": len(packed.document_lengths),
        "padding": packed.sequences * seq_length - tokens,  # the last sequence's, the only one short
        "records_blake2b": file_hash(out),
        "seconds": round(time.perf_counter() - started, 3),
    }
    with atomic_file(stats_out) as temp:
        temp.write_text(json.dumps(stats, indent=2) + "\n")
    log.info("%s: %d sequences of %d from %d documents", out, packed.sequences, seq_length, tokenized.documents)
    return stats


def summarize(stats_files, out, page) -> dict:
    """Add up the per-shard stats of one sequence length and split; `out` holds the totals and, under "per_shard",
    every shard's stats (the shards' jobs are not runs of their own: this is their record); `page`, the totals as a
    table (HTML, for the report). Returns the totals."""
    per_shard = [json.loads(Path(path).read_text()) for path in stats_files]
    if not per_shard:
        raise BertpipeError(f"{out}: no shard stats to add up; rerun the tfrecords jobs of this split")
    # The counts (integers) of either kind of shard, build's or pack's: those every shard has.
    keys = [key for key, value in per_shard[0].items() if type(value) is int and key not in ("seed", "shard_seed",
                                                                                               "seq_length")]
    keys = [key for key in keys if all(key in stats for stats in per_shard)]
    total = {key: sum(stats[key] for stats in per_shard) for key in keys} | {"shards": len(stats_files)}
    if "masked" in total:
        total["masked_fraction"] = total["masked"] / max(total["real_tokens"], 1)
        total["random_next_share"] = total["random_next"] / max(total["instances"], 1)
    total["padding_fraction"] = total["padding"] / max(total["padding"] + total["tokens"], 1)
    with atomic_file(page) as temp:
        temp.write_text(stats_page(f"TFRecords of {Path(out).parent.parent.name}/{Path(out).parent.name}",
                                   f"The instances of {len(stats_files)} shards, added up (every shard's in "
                                   f"{Path(out).name}).", total))
    with atomic_file(out) as temp:
        temp.write_text(json.dumps({**total, "per_shard": per_shard}, indent=2) + "\n")
    return total


def add_arguments(parser) -> None:
    steps = parser.add_subparsers(dest="step", required=True)

    build = add_step(steps, "build", "one corpus shard to one TFRecord file and its stats")
    build.add_argument("--input", required=True, help="a corpus shard (.jsonl)")
    build.add_argument("--tokenizer", required=True, help="the tokenizer stage's folder")
    build.add_argument("--out", required=True, help="the TFRecord file")
    build.add_argument("--stats", required=True, help="its stats (JSON)")
    settings.add_arguments(build, InstanceSpec)
    settings.add_arguments(build, TFRecordsSettings, only=("seed",))
    # Not a run of its own: English Wikipedia makes thousands of shards. Their figures are the summary's (one run per
    # sequence length and split, with every shard's stats in its stats.json).
    build.set_defaults(run=run_build, label=None, inputs=(), tracked=False)

    packing = add_step(steps, "pack", "one corpus shard to one TFRecord file of packed sequences (recipe modern)")
    packing.add_argument("--input", required=True, help="a corpus shard (.jsonl)")
    packing.add_argument("--tokenizer", required=True, help="the tokenizer stage's folder")
    packing.add_argument("--out", required=True, help="the TFRecord file")
    packing.add_argument("--stats", required=True, help="its stats (JSON)")
    settings.add_arguments(packing, TFRecordsPhase, only=("seq_length",))
    packing.set_defaults(run=run_pack, label=None, inputs=(), tracked=False)  # as build's: the summary is the run

    index = add_step(steps, "index", "index TFRecord files made elsewhere, for pretrain and evaluate to read them")
    index.add_argument("files", nargs="+", help="TFRecord files; each gets <file>.index.npy beside it")
    index.set_defaults(run=run_index, label=None, inputs=(), tracked=False)

    summary = add_step(steps, "summarize", "add up the shards' stats")
    summary.add_argument("stats", nargs="+")
    summary.add_argument("--out", required=True, help="the totals and every shard's stats (JSON)")
    summary.add_argument("--page", required=True, help="the totals as a table (HTML), for the report")
    summary.set_defaults(run=run_summarize, label="out", inputs=("stats",))


def run_build(args, _) -> None:
    build_shard(args.input, args.tokenizer, args.out, args.stats, settings.from_args(InstanceSpec, args), args.seed)


def run_pack(args, _) -> None:
    pack_shard(args.input, args.tokenizer, args.out, args.stats, args.seq_length)


def run_index(args, _) -> None:
    for path in args.files:
        print(f"{path}: {write_index(path)}")


def run_summarize(args, _) -> Outcome:
    return Outcome(metrics=summarize(args.stats, args.out, args.page), artifacts=[(args.out, None), (args.page, None)])
