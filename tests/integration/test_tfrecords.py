"""The tfrecords stage: real TFRecords from the bundled sample, parsed back with TensorFlow and Google's spec."""

import hashlib
import math

import numpy as np
import pytest

from bertpipe import BertpipeError
from bertpipe.settings import InstanceSpec, TokenizerSettings
from bertpipe.stages.tfrecords import build_shard, feature_spec
from bertpipe.stages.tokenizer import train
from bertpipe.tfrecord_reader import FEATURES, TFRecordSamples, index_path
from tests.conftest import bertpipe_in_process, run_bertpipe

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module", params=["sentencepiece", "wordpiece"])
def tokenizer_dir(request, sample_corpus, tmp_path_factory):
    folder = tmp_path_factory.mktemp("tok") / request.param
    train([sample_corpus], folder, TokenizerSettings(kind=request.param, vocab_size=4000, input_sentence_size=20000))
    return folder


def parse(path, spec):
    """The file's records as TensorFlow parses them with Google's feature spec: a list of {feature: array}."""
    import tensorflow as tf

    serialized = list(tf.data.TFRecordDataset(str(path)).as_numpy_iterator())
    # All at once (parse_example parses each record as parse_single_example does, in one call instead of thousands)
    parsed = {name: tensor.numpy() for name, tensor in
              tf.io.parse_example(serialized, feature_spec(spec.seq_length, spec.max_predictions)).items()}
    return [{name: values[index] for name, values in parsed.items()} for index in range(len(serialized))]


@pytest.mark.parametrize("spec", [InstanceSpec(seq_length=128, max_predictions=20, dupe_factor=3),
                                  InstanceSpec(seq_length=512, max_predictions=80, dupe_factor=2)],
                         ids=["seq128", "seq512"])
def test_records_parse_with_googles_spec_and_hold_bert_semantics(tmp_path, sample_corpus, tokenizer_dir, spec):
    from bertpipe.tokenizer_folder import Tokenizer

    tokenizer = Tokenizer(tokenizer_dir)
    out = tmp_path / "shard-0000.tfrecord"
    stats = build_shard(sample_corpus / "train/shard-0000.jsonl", tokenizer_dir, out, tmp_path / "stats.json", spec,
                        seed=12345)
    records = parse(out, spec)
    assert len(records) == stats["instances"] > 500
    # Our reader (no TensorFlow: the protobuf runtime, through the index) gives TensorFlow's values.
    ours = TFRecordSamples([out]).read(range(len(records)))
    for name in FEATURES:
        assert np.array_equal(ours[name].numpy(), np.stack([r[name] for r in records])), name
    masked = real = 0
    for r in records:
        assert r["input_ids"].shape == (spec.seq_length,) and r["masked_lm_ids"].shape == (spec.max_predictions,)
        n = int(r["input_mask"].sum())
        assert (r["input_mask"][:n] == 1).all() and (r["input_mask"][n:] == 0).all()
        assert (r["input_ids"][n:] == tokenizer.pad_id).all() and (r["segment_ids"][n:] == 0).all()
        seps = np.flatnonzero(r["input_ids"][:n] == tokenizer.sep_id)
        k = int(r["masked_lm_weights"].sum())
        positions = r["masked_lm_positions"][:k]
        assert r["input_ids"][0] == tokenizer.cls_id
        assert len(seps) == 2 and seps[1] == n - 1, "two [SEP], never inserted by a random replacement"
        first_sep = seps[0]
        assert (r["segment_ids"][:first_sep + 1] == 0).all() and (r["segment_ids"][first_sep + 1:n] == 1).all()
        assert not set(positions.tolist()) & {0, first_sep, n - 1}, "[CLS] and [SEP] are never masked"
        assert not set(r["masked_lm_ids"][:k].tolist()) & {tokenizer.cls_id, tokenizer.sep_id, tokenizer.pad_id}
        assert r["next_sentence_labels"][0] in (0, 1)
        masked += k
        real += n - 3
    assert masked / real == pytest.approx(0.15, abs=0.01)
    flips = stats["instances"] - stats["random_next_forced"]
    by_flip = stats["random_next"] - stats["random_next_forced"]
    assert abs(by_flip - flips / 2) <= 4 * math.sqrt(flips / 4)
    for kind, share in (("mask", 0.8), ("kept", 0.1), ("random", 0.1)):
        assert abs(stats[kind] - stats["masked"] * share) <= 4 * math.sqrt(stats["masked"] * share * (1 - share))


def test_same_settings_and_seed_give_identical_bytes_in_another_process(tmp_path, sample_corpus, tokenizer_dir):
    spec = InstanceSpec(seq_length=128, max_predictions=20, dupe_factor=2)
    shard = sample_corpus / "valid/shard-0000.jsonl"
    build_shard(shard, tokenizer_dir, tmp_path / "first.tfrecord", tmp_path / "first.json", spec, 7)
    # Another process: its hash seed differs, which once reordered the features inside each record.
    result = run_bertpipe("tfrecords", "build", "--input", shard, "--tokenizer", tokenizer_dir, "--out",
                          tmp_path / "second.tfrecord", "--stats", tmp_path / "second.json", "--dupe-factor", 2,
                          "--seed", 7)
    assert result.returncode == 0, result.stderr
    build_shard(shard, tokenizer_dir, tmp_path / "other.tfrecord", tmp_path / "other.json", spec, 8)
    first = hashlib.sha256((tmp_path / "first.tfrecord").read_bytes()).hexdigest()
    assert hashlib.sha256((tmp_path / "second.tfrecord").read_bytes()).hexdigest() == first
    assert hashlib.sha256((tmp_path / "other.tfrecord").read_bytes()).hexdigest() != first


def test_malformed_corpus_line_fails_with_its_line_and_leaves_nothing(tmp_path, sample_corpus, tokenizer_dir, capsys):
    shard = tmp_path / "corpus/train/shard-0000.jsonl"
    shard.parent.mkdir(parents=True)
    lines = (sample_corpus / "valid/shard-0000.jsonl").read_text().splitlines()
    shard.write_text("\n".join(lines[:2] + ["{oops"]) + "\n")
    out = tmp_path / "out" / "shard-0000.tfrecord"
    status, _, err = bertpipe_in_process(capsys, "tfrecords", "build", "--input", shard, "--tokenizer", tokenizer_dir,
                                         "--out", out, "--stats", tmp_path / "out" / "stats.json")
    assert status == 1 and f"{shard}, line 3: malformed corpus record" in err and "Traceback" not in err
    assert not out.parent.exists() or not list(out.parent.iterdir())


def test_empty_shard_gives_an_empty_file_and_zero_stats(tmp_path, tokenizer_dir):
    shard = tmp_path / "corpus/train/shard-0000.jsonl"
    shard.parent.mkdir(parents=True)
    shard.write_text("")
    spec = InstanceSpec(seq_length=128, max_predictions=20, dupe_factor=2)
    stats = build_shard(shard, tokenizer_dir, tmp_path / "x.tfrecord", tmp_path / "x.json", spec, 1)
    assert stats["instances"] == 0 and (tmp_path / "x.tfrecord").stat().st_size == 0


def test_missing_tokenizer_is_a_clear_error(tmp_path, sample_corpus):
    with pytest.raises(BertpipeError, match="not a bertpipe tokenizer folder"):
        build_shard(sample_corpus / "valid/shard-0000.jsonl", tmp_path, tmp_path / "x", tmp_path / "y",
                    InstanceSpec(), 1)


@pytest.fixture(scope="module")
def shard(tmp_path_factory, sample_corpus, tokenizer_dir):
    """A TFRecord file of the valid split and its index, as the stage writes them."""
    out = tmp_path_factory.mktemp("records") / "shard-0000.tfrecord"
    build_shard(sample_corpus / "valid/shard-0000.jsonl", tokenizer_dir, out, out.with_suffix(".json"),
                InstanceSpec(seq_length=128, max_predictions=20, dupe_factor=2), 3)
    return out


def test_index_holds_16_bytes_a_record_mapped_not_loaded_and_equals_what_tfrecords_index_makes(shard, tmp_path,
                                                                                              capsys):
    samples = TFRecordSamples([shard])
    index = samples.indexes[0]
    assert isinstance(index, np.memmap) and index.dtype == np.int64 and index.shape == (len(samples), 2)
    assert index_path(shard).stat().st_size - index.nbytes < 256, "16 bytes a record and the .npy header"
    copy = tmp_path / "copy.tfrecord"
    copy.write_bytes(shard.read_bytes())
    status, out, _ = bertpipe_in_process(capsys, "tfrecords", "index", copy)
    assert status == 0 and index_path(copy).read_bytes() == index_path(shard).read_bytes()


def damaged(shard, folder, change) -> str:
    """A copy of `shard` and its index in `folder`, with `change(bytearray of the records)` applied to the copy."""
    data = bytearray(shard.read_bytes())
    change(data)
    copy = folder / "shard.tfrecord"
    copy.write_bytes(bytes(data))
    index_path(copy).write_bytes(index_path(shard).read_bytes())
    return str(copy)


def test_a_damaged_record_is_refused_naming_the_file_and_the_record(shard, tmp_path):
    samples = TFRecordSamples([shard])
    offset, length = (int(v) for v in samples.indexes[0][7])

    def flip_a_byte_of_record_7(data):
        data[offset + length // 2] ^= 0x01

    copy = damaged(shard, tmp_path, flip_a_byte_of_record_7)
    damaged_samples = TFRecordSamples([copy])
    assert damaged_samples.read([6])["input_ids"].shape == (1, 128)
    with pytest.raises(BertpipeError, match=rf"{copy}: record 7 \(byte {offset - 12}\) fails its checksum"):
        damaged_samples.read([5, 7])


@pytest.mark.parametrize("change, message", [
    (lambda data: data.__delitem__(slice(-10, None)), "does not describe"),
    (lambda data: data.extend(b"\0" * 16), "does not describe"),
], ids=["truncated", "appended"])
def test_a_file_that_changed_after_its_index_is_refused(shard, tmp_path, change, message):
    copy = damaged(shard, tmp_path, change)
    with pytest.raises(BertpipeError, match=message):
        TFRecordSamples([copy])


def test_records_without_an_index_or_with_a_damaged_header_say_what_to_run(shard, tmp_path, capsys):
    copy = tmp_path / "elsewhere.tfrecord"
    copy.write_bytes(shard.read_bytes())
    with pytest.raises(BertpipeError, match=f"run `bertpipe tfrecords index {copy}`"):
        TFRecordSamples([copy])
    data = bytearray(shard.read_bytes())
    data[3] ^= 0x01  # the first record's length
    copy.write_bytes(bytes(data))
    status, _, err = bertpipe_in_process(capsys, "tfrecords", "index", copy)
    assert status == 1 and f"{copy}: record 0 (byte 0) has a damaged or truncated header" in err
    assert not index_path(copy).exists()


def test_serialized_examples_are_protobufs_deterministic_bytes():
    """serialize_examples writes, byte for byte, what protobuf's SerializeToString(deterministic=True) writes for
    the same features: varints of one to three bytes (vocabularies past 16k and 2M ids, positions past 127), floats."""
    import numpy as np
    import tensorflow as tf

    from bertpipe.stages.tfrecords import serialize_examples
    from bertpipe.tfrecord_reader import INT_FEATURES

    rng = np.random.default_rng(0)
    for rows, seq, predictions, vocab in [(7, 128, 20, 30522), (5, 512, 80, 3_000_000), (3, 16, 2, 100), (1, 8, 1, 5)]:
        batch = {"input_ids": rng.integers(0, vocab, (rows, seq)), "input_mask": rng.integers(0, 2, (rows, seq)),
                 "segment_ids": rng.integers(0, 2, (rows, seq)),
                 "masked_lm_positions": rng.integers(0, seq, (rows, predictions)),
                 "masked_lm_ids": rng.integers(0, vocab, (rows, predictions)),
                 "masked_lm_weights": rng.integers(0, 2, (rows, predictions)).astype(np.float32),
                 "next_sentence_labels": rng.integers(0, 2, (rows, 1))}
        expected = []
        for row in range(rows):
            example = tf.train.Example()
            for name in INT_FEATURES:
                example.features.feature[name].int64_list.value.extend(batch[name][row].tolist())
            example.features.feature["masked_lm_weights"].float_list.value.extend(
                batch["masked_lm_weights"][row].tolist())
            expected.append(example.SerializeToString(deterministic=True))
        records, lengths = serialize_examples(batch)
        assert records == b"".join(expected) and lengths.tolist() == [len(e) for e in expected], (seq, vocab)
