"""Masked-LM + next-sentence instances: Google's semantics, checked on a synthetic shard where every token is known."""

import math
import random

import numpy as np
import pytest

from bertpipe import BertpipeError
from bertpipe.pretraining_instances import (
    InstanceSpec,
    TokenizedShard,
    materialize,
    pair_spans,
    token_dtype,
    truncate_pairs,
)
from tests.stub_vocab import CLS, MASK, PAD, SEP, VOCAB_SIZE, vocab


def synthetic_shard(documents=40, seed=0, sentence_lengths=(3, 30)):
    rng = random.Random(seed)
    docs = [[[rng.randrange(5, VOCAB_SIZE) for _ in range(rng.randint(*sentence_lengths))]
             for _ in range(rng.randint(1, 25))] for _ in range(documents)]
    return TokenizedShard.from_documents(docs)


def make(shard, spec, seed=1, vocabulary=None):
    spans, forced = pair_spans(shard, spec, random.Random(seed))
    batch = materialize(shard.tokens, spans, spec, vocabulary or vocab(), np.random.default_rng(seed))
    return spans, forced, batch


def document_of(shard, token_index):
    sentence = np.searchsorted(shard.sentence_starts, token_index, side="right") - 1
    return np.searchsorted(shard.document_starts, sentence, side="right") - 1


SPEC = InstanceSpec(seq_length=64, max_predictions=10, dupe_factor=4)


@pytest.fixture(scope="module")
def made():
    shard = synthetic_shard()
    return (shard, *make(shard, SPEC))


def test_layout_of_every_instance(made):
    shard, spans, _, batch = made
    for row, (a0, a1, b0, b1, _) in enumerate(spans):
        la, lb = a1 - a0, b1 - b0
        assert la >= 1 and lb >= 1 and la + lb <= SPEC.seq_length - 3
        n = la + lb + 3
        original = np.concatenate([[CLS], shard.tokens[a0:a1], [SEP], shard.tokens[b0:b1], [SEP]])
        ids = batch["input_ids"][row]
        unmasked = ids.copy()
        k = int(batch["masked_lm_weights"][row].sum())
        unmasked[batch["masked_lm_positions"][row][:k]] = batch["masked_lm_ids"][row][:k]
        assert (unmasked[:n] == original).all() and (ids[n:] == PAD).all()
        assert (batch["input_mask"][row] == (np.arange(SPEC.seq_length) < n)).all()
        expected_segments = np.r_[np.zeros(la + 2), np.ones(lb + 1), np.zeros(SPEC.seq_length - n)]
        assert (batch["segment_ids"][row] == expected_segments).all()


def test_masked_positions(made):
    shard, spans, _, batch = made
    for row, (a0, a1, b0, b1, _) in enumerate(spans):
        la, n = a1 - a0, (a1 - a0) + (b1 - b0) + 3
        weights = batch["masked_lm_weights"][row]
        k = int(weights.sum())
        assert k == min(SPEC.max_predictions, max(1, round(n * SPEC.masked_lm_prob)))
        assert (weights[:k] == 1).all() and (weights[k:] == 0).all()
        positions = batch["masked_lm_positions"][row]
        assert (np.diff(positions[:k]) > 0).all(), "sorted, no position twice"
        assert not set(positions[:k].tolist()) & {0, la + 1, n - 1}, "[CLS] and [SEP] are never masked"
        assert (positions[k:] == 0).all() and (batch["masked_lm_ids"][row][k:] == 0).all()


def test_mask_keep_random_shares_and_masked_fraction(made):
    shard, spans, _, batch = made
    kinds = batch["masked_lm_kind"][batch["masked_lm_kind"] >= 0]
    total = len(kinds)
    for kind, share in ((0, 0.8), (1, 0.1), (2, 0.1)):
        assert abs((kinds == kind).sum() - total * share) <= 4 * math.sqrt(total * share * (1 - share))
    masked_ids = np.take_along_axis(batch["input_ids"], batch["masked_lm_positions"], axis=1)
    chosen = batch["masked_lm_weights"] == 1
    assert ((masked_ids == MASK) == (batch["masked_lm_kind"] == 0))[chosen].all()
    random_tokens = masked_ids[batch["masked_lm_kind"] == 2]
    assert (random_tokens >= 5).all(), "a random replacement is never a special token"
    # Google's count, round(0.15 * length with [CLS] and [SEP]), is a little over 15% of the real tokens.
    lengths = batch["input_mask"].sum(axis=1)
    expected = np.minimum(SPEC.max_predictions, np.maximum(1, np.rint(lengths * SPEC.masked_lm_prob))).sum()
    assert total == expected
    assert 0.15 <= total / (lengths - 3).sum() < 0.15 * 64 / 61 + 0.01


def test_next_sentence_labels(made):
    shard, spans, forced, batch = made
    labels = batch["next_sentence_labels"][:, 0]
    for (a0, a1, b0, b1, label) in spans:
        same_document = document_of(shard, a0) == document_of(shard, b0)
        if label:
            assert not same_document
        else:
            assert same_document and b0 >= a1
    flips = len(spans) - forced
    random_by_flip = labels.sum() - forced
    assert abs(random_by_flip - flips / 2) <= 4 * math.sqrt(flips / 4)


def test_same_seed_same_instances_other_seed_other_instances():
    shard = synthetic_shard()
    first, again, other = make(shard, SPEC, seed=7), make(shard, SPEC, seed=7), make(shard, SPEC, seed=8)
    for name in first[2]:
        assert (first[2][name] == again[2][name]).all()
    assert not np.array_equal(first[2]["input_ids"], other[2]["input_ids"])


def test_whole_word_masking_masks_whole_words():
    shard = synthetic_shard()
    spec = InstanceSpec(seq_length=64, max_predictions=10, dupe_factor=2, whole_word_mask=True)
    vocabulary = vocab(word_start_every=3)  # two of three ids continue a word
    spans, _, batch = make(shard, spec, vocabulary=vocabulary)
    for row, (a0, a1, b0, b1, _) in enumerate(spans):
        la = a1 - a0
        k = int(batch["masked_lm_weights"][row].sum())
        positions = batch["masked_lm_positions"][row][:k]
        masked = set(positions.tolist())
        unmasked = batch["input_ids"][row].copy()
        unmasked[positions] = batch["masked_lm_ids"][row][:k]
        for position in masked:
            continues_word = not vocabulary.is_word_start[unmasked[position]]
            if continues_word and position not in (1, la + 2):
                assert position - 1 in masked, "a word's pieces are masked together"
            following = position + 1
            boundaries = (la + 1, la + 2, la + (b1 - b0) + 2)
            if following not in boundaries and not vocabulary.is_word_start[unmasked[following]]:
                assert following in masked, "a word's pieces are masked together"


def test_single_document_shard_gives_only_true_continuations():
    shard = synthetic_shard(documents=1, seed=3, sentence_lengths=(3, 10))
    spans, forced, batch = make(shard, SPEC)
    assert len(spans) > 0 and forced == 0
    assert (batch["next_sentence_labels"] == 0).all()


def test_empty_shard_gives_no_instances():
    shard = TokenizedShard.from_documents([[], [[]]])
    spans, forced = pair_spans(shard, SPEC, random.Random(0))
    assert shard.documents == 0 and spans.shape == (0, 5) and forced == 0


def test_ids_take_two_bytes_while_the_vocabulary_fits_and_spans_four():
    assert token_dtype(30522) == np.uint16 and token_dtype(2**16) == np.uint16 and token_dtype(2**16 + 1) == np.int32
    ids = np.array([5, 65535, 7, 8], dtype=np.uint16)  # the largest id two bytes hold
    shard = TokenizedShard.from_arrays(ids, np.array([2, 2]), np.array([1, 1]))
    spec = InstanceSpec(seq_length=16, max_predictions=2, dupe_factor=4, short_seq_prob=0.0)
    spans, _, batch = make(shard, spec, vocabulary=vocab())
    assert shard.tokens.dtype == np.uint16 and spans.dtype == np.int32
    assert 65535 in batch["input_ids"] or 65535 in batch["masked_lm_ids"], "the id is read back whole"


def test_a_shard_beyond_int32_spans_is_refused_naming_the_setting_to_lower():
    tokens = np.broadcast_to(np.uint16(7), (2**31,))  # 2^31 ids without the memory: one element, stride 0
    shard = TokenizedShard(tokens, np.array([0, 2**30, 2**31]), np.array([0, 2]))
    with pytest.raises(BertpipeError, match="corpus.shard_max_mb"):
        pair_spans(shard, SPEC, random.Random(0))


def test_sentence_longer_than_the_sequence_is_truncated():
    long_document = [[7] * 1000, [8] * 900]
    shard = TokenizedShard.from_documents([long_document, [[9] * 5, [10] * 5]])
    spans, _, batch = make(shard, SPEC)
    lengths = (spans[:, 1] - spans[:, 0]) + (spans[:, 3] - spans[:, 2])
    assert len(spans) and (lengths <= SPEC.seq_length - 3).all()
    assert (batch["input_mask"].sum(axis=1) <= SPEC.seq_length).all()


def test_high_masking_rate_on_short_pairs_never_masks_cls_or_sep():
    shard = TokenizedShard.from_documents([[[7, 8], [9, 10]], [[11, 12], [13, 14]]])
    spec = InstanceSpec(seq_length=16, max_predictions=10, dupe_factor=20, masked_lm_prob=0.9, short_seq_prob=0.0)
    spans, _, batch = make(shard, spec)
    for row, (a0, a1, b0, b1, _) in enumerate(spans):
        la, n = a1 - a0, (a1 - a0) + (b1 - b0) + 3
        k = int(batch["masked_lm_weights"][row].sum())
        assert k == n - 3, "every real token, and nothing more"
        assert not set(batch["masked_lm_positions"][row][:k].tolist()) & {0, la + 1, n - 1}


def google_truncate_seq_pair(a_len, b_len, max_tokens):
    """Google's loop, on lengths: the longer segment (B on a tie) loses a token until the pair fits."""
    while a_len + b_len > max_tokens:
        if a_len > b_len:
            a_len -= 1
        else:
            b_len -= 1
    return a_len, b_len


def test_truncation_keeps_googles_lengths_and_cuts_either_end_by_a_fair_coin():
    rng = np.random.default_rng(5)
    a_len, b_len = rng.integers(1, 300, 4000), rng.integers(1, 300, 4000)
    a0 = rng.integers(0, 10_000, 4000)
    b0 = a0 + a_len + rng.integers(0, 50, 4000)
    spans = np.stack([a0, a0 + a_len, b0, b0 + b_len, rng.integers(0, 2, 4000)], axis=1)
    for max_tokens in (125, 126, 509, 7):
        cut = spans.copy()
        truncate_pairs(cut, max_tokens, np.random.default_rng(max_tokens))
        expected = [google_truncate_seq_pair(a, b, max_tokens) for a, b in zip(a_len.tolist(), b_len.tolist())]
        assert (np.stack([cut[:, 1] - cut[:, 0], cut[:, 3] - cut[:, 2]], axis=1) == expected).all()
        assert (cut[:, 0] >= spans[:, 0]).all() and (cut[:, 1] <= spans[:, 1]).all(), "inside the original spans"
        assert (cut[:, 2] >= spans[:, 2]).all() and (cut[:, 3] <= spans[:, 3]).all()
        assert (cut[:, 4] == spans[:, 4]).all()
        cuts = (a_len - (cut[:, 1] - cut[:, 0])).sum() + (b_len - (cut[:, 3] - cut[:, 2])).sum()
        front = (cut[:, 0] - spans[:, 0]).sum() + (cut[:, 2] - spans[:, 2]).sum()
        assert abs(front - cuts / 2) <= 4 * math.sqrt(cuts / 4), "each cut is at the front half of the time"
