"""Packed sequences (the modern recipe's data): packing checked against a token-by-token reference, masks drawn as it
trains checked for determinism and their rules, and real TFRecord files written with TensorFlow read back."""

import os
import random
import subprocess
import sys
import types

import numpy as np
import pytest

from bertpipe import BertpipeError
from bertpipe.packed_sequences import (
    KEPT,
    MASKED,
    PACKED_FEATURES,
    RANDOM,
    PackedSamples,
    draw_masks,
    masked_count,
    pack,
    serialize_sequences,
)
from bertpipe.pretraining_instances import TokenizedShard
from bertpipe.tfrecord_reader import example_class, write_index
from tests.stub_vocab import CLS, MASK, PAD, SEP, UNK, VOCAB_SIZE, vocab

SPECIALS = [PAD, UNK, CLS, SEP, MASK]


def random_documents(count, seed=0, longest=120):
    """Documents of 1 to 6 sentences of 1 to `longest` // 3 ordinary tokens."""
    rng = random.Random(seed)
    return [[[rng.randrange(5, VOCAB_SIZE) for _ in range(rng.randint(1, longest // 3))]
             for _ in range(rng.randint(1, 6))] for _ in range(count)]


def reference_pack(documents, seq_length):
    """Token by token: the sequences and each one's document pieces, as lists."""
    stream = [(token, d) for d, document in enumerate(documents)
              for token in [CLS, *(t for sentence in document for t in sentence), SEP]]
    sequences = []
    for start in range(0, len(stream), seq_length):
        chunk = stream[start:start + seq_length]
        pieces = []
        for k, (_, document) in enumerate(chunk):
            if k and chunk[k - 1][1] == document:
                pieces[-1] += 1
            else:
                pieces.append(1)
        sequences.append(([token for token, _ in chunk], pieces))
    return sequences


def packed_lists(packed):
    return [tuple(part.tolist() for part in packed.sequence(k)) for k in range(packed.sequences)]


@pytest.mark.parametrize("seq_length", [1, 2, 7, 64, 128, 1000])
def test_packing_matches_a_token_by_token_reference(seq_length):
    documents = random_documents(30, seed=seq_length)
    packed = pack(TokenizedShard.from_documents(documents), seq_length, CLS, SEP)
    assert packed_lists(packed) == reference_pack(documents, seq_length)
    lengths = np.diff(packed.sequence_starts)
    assert (lengths[:-1] == seq_length).all() and 1 <= lengths[-1] <= seq_length
    expected = [t for document in documents for t in [CLS, *(t for s in document for t in s), SEP]]
    assert packed.tokens.tolist() == expected
    for k in range(packed.sequences):
        tokens, pieces = packed.sequence(k)
        assert pieces.sum() == len(tokens) and (pieces >= 1).all()


def test_a_long_document_spans_several_sequences_as_pieces_of_its_own():
    short, long = [[5, 6]], [list(range(10, 10 + 30))]  # [CLS] 30 tokens [SEP]: 32 tokens
    packed = pack(TokenizedShard.from_documents([short, long, short]), 8, CLS, SEP)
    assert packed_lists(packed) == [
        ([CLS, 5, 6, SEP, CLS, 10, 11, 12], [4, 4]),
        (list(range(13, 21)), [8]),
        (list(range(21, 29)), [8]),
        (list(range(29, 37)), [8]),
        ([37, 38, 39, SEP, CLS, 5, 6, SEP], [4, 4]),
    ]  # 40 tokens: no sequence shorter


def test_tiny_and_empty_shards():
    empty = pack(TokenizedShard.from_documents([]), 16, CLS, SEP)
    assert empty.sequences == 0 and empty.tokens.size == 0 and serialize_sequences(empty) == []
    blank = pack(TokenizedShard.from_documents([[[]], [[], []]]), 16, CLS, SEP)  # empty documents are dropped
    assert blank.sequences == 0
    one = pack(TokenizedShard.from_documents([[[], [7]]]), 16, CLS, SEP)
    assert packed_lists(one) == [([CLS, 7, SEP], [3])]
    cut = pack(TokenizedShard.from_documents([[[7]]]), 2, CLS, SEP)
    assert packed_lists(cut) == [([CLS, 7], [2]), ([SEP], [1])]


def test_packing_keeps_the_shards_narrow_token_type():
    shard = TokenizedShard.from_arrays(np.array([60000, 5, 6], dtype=np.uint16), np.array([1, 2]), np.array([2]))
    packed = pack(shard, 4, CLS, SEP)
    assert packed.tokens.dtype == np.uint16 and packed_lists(packed) == [([CLS, 60000, 5, 6], [4]), ([SEP], [1])]


def test_records_are_examples_of_the_packed_features():
    packed = pack(TokenizedShard.from_documents(random_documents(5)), 32, CLS, SEP)
    records = serialize_sequences(packed)
    assert len(records) == packed.sequences and serialize_sequences(packed, 2, 4) == records[2:4]
    for k, record in enumerate(records):
        feature = example_class().FromString(record).features.feature
        assert sorted(feature) == sorted(PACKED_FEATURES)
        assert [list(feature[name].int64_list.value) for name in PACKED_FEATURES] == \
            [part.tolist() for part in packed.sequence(k)]


# --- masks --------------------------------------------------------------------------------------------------------

def batch_of(packed, indices):
    """The sequences at `indices`, end to end, and their lengths."""
    parts = [packed.sequence(k)[0].astype(np.int64) for k in indices]
    return np.concatenate(parts), np.array([len(p) for p in parts])


def per_sample(masks, lengths):
    """Each sample's (masked ids, predicted positions within it, labels, kinds)."""
    ends = np.cumsum(lengths)
    out = []
    for start, end in zip(ends - lengths, ends):
        inside = (masks.positions >= start) & (masks.positions < end)
        out.append((masks.input_ids[start:end].tolist(), (masks.positions[inside] - start).tolist(),
                    masks.labels[inside].tolist(), masks.kinds[inside].tolist()))
    return out


@pytest.fixture(scope="module")
def packed():
    return pack(TokenizedShard.from_documents(random_documents(200, seed=1)), 128, CLS, SEP)


@pytest.mark.parametrize("whole_word", [False, True])
def test_a_samples_masks_are_its_own_whatever_the_batch(packed, whole_word):
    words = vocab(word_start_every=3)

    def masks(indices, epochs):
        ids, lengths = batch_of(packed, indices)
        drawn = draw_masks(ids, lengths, indices, epochs, words, 0.15, seed=42, whole_word_mask=whole_word)
        return dict(zip(indices, per_sample(drawn, lengths)))

    alone = {index: masks([index], [3])[index] for index in (4, 9, 17, 30)}
    assert masks([4, 9, 17, 30], [3] * 4) == alone
    assert masks([30, 2, 17, 11, 9, 4], [3] * 6) == {**masks([2, 11], [3, 3]), **alone}
    other_epoch = masks([4, 9, 17, 30], [4] * 4)
    assert all(other_epoch[index] != alone[index] for index in alone)
    other_seed = draw_masks(*batch_of(packed, [4]), [4], [3], words, 0.15, seed=43, whole_word_mask=whole_word)
    assert per_sample(other_seed, batch_of(packed, [4])[1])[0] != alone[4]


def test_masks_are_the_same_in_another_process(packed):
    ids, lengths = batch_of(packed, [5, 6])
    here = draw_masks(ids, lengths, [5, 6], [2, 7], vocab(), 0.3, seed=9)
    script = ("import sys, types, numpy as np\n"
              "from bertpipe.packed_sequences import draw_masks\n"
              "ids, lengths = np.array(eval(sys.argv[1])), np.array(eval(sys.argv[2]))\n"
              "v = types.SimpleNamespace(cls_id=2, sep_id=3, mask_id=4, ordinary_ids=np.arange(5, 1000))\n"
              "m = draw_masks(ids, lengths, [5, 6], [2, 7], v, 0.3, seed=9)\n"
              "print(m.input_ids.tolist(), m.positions.tolist())")
    result = subprocess.run([sys.executable, "-c", script, repr(ids.tolist()), repr(lengths.tolist())],
                            capture_output=True, text=True, check=True)
    assert result.stdout.strip() == f"{here.input_ids.tolist()} {here.positions.tolist()}"


@pytest.mark.parametrize("rate", [0.15, 0.3, 0.5, 1.0])
def test_the_count_follows_the_rate_and_specials_are_never_masked(packed, rate):
    indices = list(range(packed.sequences))
    ids, lengths = batch_of(packed, indices)
    masks = draw_masks(ids, lengths, indices, [0] * len(indices), vocab(), rate, seed=1)
    for (masked, positions, labels, _), (start, end) in zip(
            per_sample(masks, lengths), zip(np.cumsum(lengths) - lengths, np.cumsum(lengths))):
        original = ids[start:end]
        maskable = int(((original != CLS) & (original != SEP)).sum())
        assert len(positions) == len(set(positions)) == max(1, round(rate * maskable))
        assert labels == original[positions].tolist() and CLS not in labels and SEP not in labels
        unmasked = np.ones(len(original), dtype=bool)
        unmasked[positions] = False
        assert (np.array(masked)[unmasked] == original[unmasked]).all()
    assert masks.positions.tolist() == sorted(masks.positions.tolist())


def test_tiny_sequences_get_one_prediction_and_specials_only_none():
    assert masked_count([0, 1, 2, 3, 10, 13, 100], 0.15).tolist() == [0, 1, 1, 1, 2, 2, 15]
    ids = np.array([CLS, 7, SEP, SEP, CLS, SEP, 8])
    masks = draw_masks(ids, [3, 1, 2, 1], [0, 1, 2, 3], [0, 0, 0, 0], vocab(), 0.15, seed=0)
    assert masks.positions.tolist() == [1, 6] and masks.labels.tolist() == [7, 8]


def test_eighty_ten_ten_and_random_tokens_are_ordinary(packed):
    words = types.SimpleNamespace(cls_id=CLS, sep_id=SEP, mask_id=MASK, ordinary_ids=np.arange(5, 25))
    indices = list(range(packed.sequences))
    ids, lengths = batch_of(packed, indices)
    drawn = [draw_masks(ids, lengths, indices, [epoch] * len(indices), words, 0.15, seed=3) for epoch in range(5)]
    kinds = np.concatenate([masks.kinds for masks in drawn])
    replaced = np.concatenate([masks.input_ids[masks.positions] for masks in drawn])
    labels = np.concatenate([masks.labels for masks in drawn])
    assert len(kinds) > 10000
    shares = np.bincount(kinds, minlength=3) / len(kinds)
    assert np.allclose(shares, [0.8, 0.1, 0.1], atol=0.02), shares
    assert (replaced[kinds == MASKED] == MASK).all()
    assert (replaced[kinds == KEPT] == labels[kinds == KEPT]).all()
    random_ids = replaced[kinds == RANDOM]
    assert ((random_ids >= 5) & (random_ids < 25)).all()
    assert len(np.unique(random_ids)) == 20  # drawn over the whole ordinary vocabulary


def test_whole_word_masks_mask_words_entirely(packed):
    words = vocab(word_start_every=4)  # words of about 4 tokens
    indices = list(range(packed.sequences))
    ids, lengths = batch_of(packed, indices)
    masks = draw_masks(ids, lengths, indices, [0] * len(indices), words, 0.15, seed=5, whole_word_mask=True)
    counts = []
    for (_, positions, _, _), (start, end) in zip(per_sample(masks, lengths),
                                                  zip(np.cumsum(lengths) - lengths, np.cumsum(lengths))):
        original = ids[start:end]
        maskable = (original != CLS) & (original != SEP)
        chosen = set(positions)
        for position in positions:  # its word: back to its start, on to the next start or special token
            first = position
            while first > 0 and not words.is_word_start[original[first]] and maskable[first - 1]:
                first -= 1
            last = position
            while last + 1 < len(original) and maskable[last + 1] and not words.is_word_start[original[last + 1]]:
                last += 1
            assert set(range(first, last + 1)) <= chosen, (position, first, last)
        counts.append((len(positions), int(masked_count(maskable.sum(), 0.15))))
    assert all(got <= wanted for got, wanted in counts)
    assert sum(got for got, _ in counts) > 0.9 * sum(wanted for _, wanted in counts)


def test_a_bad_rate_or_batch_is_refused(packed):
    ids, lengths = batch_of(packed, [0, 1])
    for rate in (0, -0.1, 1.5):
        with pytest.raises(ValueError, match="mask rate"):
            draw_masks(ids, lengths, [0, 1], [0, 0], vocab(), rate, seed=0)
    with pytest.raises(ValueError, match="one of each a sequence"):
        draw_masks(ids, lengths, [0], [0], vocab(), 0.15, seed=0)
    with pytest.raises(ValueError, match="one of each a sequence"):
        draw_masks(ids[:-1], lengths, [0, 1], [0, 0], vocab(), 0.15, seed=0)


# --- TFRecord files -----------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tf():
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import tensorflow

    return tensorflow


def write_records(tf, path, records):
    """Records with TensorFlow's writer, indexed as the tfrecords stage indexes its files."""
    with tf.io.TFRecordWriter(str(path)) as writer:
        for record in records:
            writer.write(record)
    write_index(path, lengths=[len(record) for record in records])
    return path


def example(**features):
    message = example_class()()
    for name, values in features.items():
        message.features.feature[name].int64_list.value.extend(values)
    return message.SerializeToString()


@pytest.fixture(scope="module")
def shards(tf, tmp_path_factory):
    """Two shards packed at 64 and written: [(file, PackedShard)]."""
    folder = tmp_path_factory.mktemp("packed")
    made = []
    for shard in range(2):
        packed = pack(TokenizedShard.from_documents(random_documents(15 + 10 * shard, seed=10 + shard)), 64, CLS, SEP)
        made.append((write_records(tf, folder / f"shard{shard}.tfrecord", serialize_sequences(packed)), packed))
    return made


def test_tensorflow_parses_the_records(tf, shards):
    spec = {name: tf.io.VarLenFeature(tf.int64) for name in PACKED_FEATURES}
    path, packed = shards[0]
    parsed = [tf.io.parse_single_example(record, spec) for record in tf.data.TFRecordDataset(str(path))]
    assert len(parsed) == packed.sequences
    for k, features in enumerate(parsed):
        assert [tf.sparse.to_dense(features[name]).numpy().tolist() for name in PACKED_FEATURES] == \
            [part.tolist() for part in packed.sequence(k)]


def test_packed_samples_read_back_the_sequences_masked(shards):
    samples = PackedSamples([path for path, _ in shards], vocab(), rate=0.15, seed=7)
    every = [packed.sequence(k) for _, packed in shards for k in range(packed.sequences)]
    assert len(samples) == len(every) and samples.seq_length == 64
    indices = [len(every) - 1, 0, 3, shards[0][1].sequences, 3]
    tokens, sequence_lengths, document_lengths = samples.sequences(indices)
    assert tokens.tolist() == [t for k in indices for t in every[k][0].tolist()]
    assert sequence_lengths.tolist() == [len(every[k][0]) for k in indices]
    assert document_lengths.tolist() == [n for k in indices for n in every[k][1].tolist()]

    batch = samples.read(indices, epochs=[2, 2, 2, 2, 5])
    assert {name: (tensor.dtype, tensor.dim()) for name, tensor in batch.items()} == \
        {name: (batch["input_ids"].dtype, 1) for name in
         ("input_ids", "document_lengths", "sequence_lengths", "masked_positions", "masked_lm_ids")}
    assert batch["document_lengths"].tolist() == document_lengths.tolist()
    assert batch["sequence_lengths"].tolist() == sequence_lengths.tolist()
    assert batch["masked_lm_ids"].tolist() == tokens[batch["masked_positions"].numpy()].tolist()
    expected = draw_masks(tokens, sequence_lengths, indices, [2, 2, 2, 2, 5], vocab(), 0.15, seed=7)
    assert batch["input_ids"].tolist() == expected.input_ids.tolist()
    assert batch["masked_positions"].tolist() == expected.positions.tolist()
    with pytest.raises(IndexError):
        samples.sequences([len(samples)])


def test_a_batch_feeds_the_modern_model(shards):
    import torch

    from bertpipe.modern_model import ModernBertConfig, ModernBertForMaskedLM

    samples = PackedSamples([path for path, _ in shards], vocab(), rate=0.15, seed=7)
    batch = samples.read([0, 1, 2], epochs=0)
    config = ModernBertConfig(vocab_size=VOCAB_SIZE, hidden_size=32, num_layers=2, num_attention_heads=2,
                              intermediate_size=48, max_position_embeddings=64, local_attention=8)
    with torch.no_grad():
        logits = ModernBertForMaskedLM(config)(batch["input_ids"], batch["document_lengths"],
                                               batch["masked_positions"])
    assert logits.shape == (len(batch["masked_lm_ids"]), VOCAB_SIZE)


def test_the_common_test_set_is_the_same_from_any_reader(shards):
    """The test split packed at one length with a fixed 15% mask: epoch 0 of a fixed seed, read by two readers."""
    files = [path for path, _ in shards]
    first, second = (PackedSamples(files, vocab(), rate=0.15, seed=2019) for _ in range(2))
    everything = list(range(len(first)))
    whole = first.read(everything, epochs=0)
    assert all((whole[name] == second.read(everything, epochs=0)[name]).all() for name in whole)
    backwards = second.read(everything[::-1], epochs=0)
    assert sorted(backwards["masked_lm_ids"].tolist()) == sorted(whole["masked_lm_ids"].tolist())
    assert not (first.read(everything, epochs=1)["input_ids"] == whole["input_ids"]).all()


def test_records_that_are_not_packed_sequences_are_named(tf, tmp_path):
    good = example(input_ids=[CLS, 5, SEP], document_lengths=[3])
    cases = {
        "lacks": example(input_ids=[CLS, 5, SEP]),
        "short": example(input_ids=[CLS, 5, SEP], document_lengths=[2]),
        "zero": example(input_ids=[CLS, 5, SEP], document_lengths=[3, 0]),
        "garbage": b"\xff\xff\xff not a protobuf",
    }
    messages = {"lacks": "record 1 has no int64 feature 'document_lengths'",
                "short": r"record 1: document_lengths \[2\] \(adding up to 2\) do not cut its 3 input_ids",
                "zero": r"record 1: document_lengths \[3, 0\]",
                "garbage": "record 1 is not a tf.train.Example"}
    for name, bad in cases.items():
        path = write_records(tf, tmp_path / f"{name}.tfrecord", [good, bad, good])
        samples = PackedSamples([path], vocab(), rate=0.15, seed=0)
        assert samples.sequences([0, 2])[0].tolist() == [CLS, 5, SEP] * 2
        with pytest.raises(BertpipeError, match=f"{name}.tfrecord: {messages[name]}"):
            samples.read([0, 1], epochs=0)


def test_a_damaged_file_or_the_2019_records_are_refused(tf, tmp_path):
    path = write_records(tf, tmp_path / "damaged.tfrecord", [example(input_ids=[CLS, 5, 6, SEP],
                                                                     document_lengths=[4])] * 2)
    data = bytearray(path.read_bytes())
    data[-8] ^= 0xFF  # inside the second record's data
    path.write_bytes(bytes(data))
    samples = PackedSamples([path], vocab(), rate=0.15, seed=0)
    with pytest.raises(BertpipeError, match="damaged.tfrecord: record 1 .* fails its checksum"):
        samples.read([1], epochs=0)
    google = write_records(tf, tmp_path / "google.tfrecord", [example(input_ids=[CLS, 5, SEP, 0], input_mask=[1] * 3)])
    with pytest.raises(BertpipeError, match="google.tfrecord: record 0 has no int64 feature 'document_lengths'"):
        PackedSamples([google], vocab(), rate=0.15, seed=0)


def test_files_of_different_lengths_are_refused(tf, tmp_path):
    files = []
    for seq_length in (16, 32):
        packed = pack(TokenizedShard.from_documents(random_documents(3, seed=seq_length)), seq_length, CLS, SEP)
        files.append(write_records(tf, tmp_path / f"at{seq_length}.tfrecord", serialize_sequences(packed)))
    with pytest.raises(BertpipeError, match="different lengths.*at16.tfrecord 16.*at32.tfrecord 32"):
        PackedSamples(files, vocab(), rate=0.15, seed=0)
    tail = pack(TokenizedShard.from_documents([[[5, 6]]]), 16, CLS, SEP)  # a shard of one short sequence
    files[1] = write_records(tf, tmp_path / "tail.tfrecord", serialize_sequences(tail))
    assert PackedSamples(files, vocab(), rate=0.15, seed=0).seq_length == 16
