"""Masked-LM + next-sentence instances, with the semantics of google-research/bert's `create_pretraining_data.py`.

Same as Google's: documents shuffled once, then `dupe_factor` passes over them; per document a target length
(`seq_length - 3`, or with probability `short_seq_prob` a random length from 2 up); sentences gathered up to it;
segment A a random number of them; B the true continuation or, half of the time and always when only one sentence was
gathered, a span of a random other document (the unused sentences are put back); the longer segment truncated one token
at a time from a random end; `round(len * masked_lm_prob)` predictions (at least 1, at most `max_predictions`),
never [CLS] or [SEP]; 80% [MASK], 10% kept, 10% a random token; optional whole-word masking; all instances shuffled.

Different from Google's, on purpose:
- Memory is bounded by the shard, not the corpus: a shard's tokens are one flat array (two bytes a token while the
  vocabulary has at most 65,536 ids), an instance is five int32 (A and B as spans of it, the label) until it is
  written, and masking is done a batch at a time, vectorised.
- The random token of the 10% is drawn from the ordinary vocabulary, never a special token.
- Truncation cuts all pairs at once (truncate_pairs): the same lengths as Google's token-by-token loop, and the same
  fair coin for each cut's end, drawn as one binomial per segment.
- A shard of a single document cannot give a random next segment: it yields only true-continuation pairs (chunks of
  one sentence are skipped), and its stats show the share of random next segments it got.
"""

import array
import dataclasses
import random

import numpy as np

from bertpipe import BertpipeError
from bertpipe.settings import InstanceSpec

SPAN_FIELDS = 5  # a_start, a_end, b_start, b_end, is_random_next
SPAN_TYPECODE = "i"  # array.array's int32: spans index a shard's tokens, fewer than 2**31 (pair_spans checks)
MASK_SHARE, KEEP_SHARE = 0.8, 0.1  # the rest, 10%, becomes a random token


def token_dtype(vocab_size: int) -> np.dtype:
    """The narrowest type of a shard's token ids: uint16 while the vocabulary fits (BERT's 30,522 does)."""
    return np.dtype(np.uint16) if vocab_size <= 2**16 else np.dtype(np.int32)


def span_array(spans: array.array) -> np.ndarray:
    """The spans appended by document_pairs as an array of shape (pairs, SPAN_FIELDS), sharing their buffer."""
    return np.frombuffer(spans, dtype=np.int32).reshape(-1, SPAN_FIELDS)


@dataclasses.dataclass
class TokenizedShard:
    """A shard's documents as flat arrays: sentence k is tokens[sentence_starts[k]:sentence_starts[k + 1]], and
    document d is sentences document_starts[d] to document_starts[d + 1] - 1."""

    tokens: np.ndarray
    sentence_starts: np.ndarray
    document_starts: np.ndarray

    @classmethod
    def from_documents(cls, documents) -> "TokenizedShard":
        """From documents, each a list of sentences, each a list of token ids; empty ones dropped."""
        documents = list(documents)
        sentences = [s for document in documents for s in document]
        tokens = np.fromiter((t for s in sentences for t in s), dtype=np.int32)
        return cls.from_arrays(tokens, np.fromiter(map(len, sentences), dtype=np.int64, count=len(sentences)),
                               np.fromiter(map(len, documents), dtype=np.int64, count=len(documents)))

    @classmethod
    def from_arrays(cls, tokens: np.ndarray, sentence_lengths: np.ndarray, document_sentences: np.ndarray):
        """From all the token ids in order (kept in their type if uint16, else int32), each sentence's number of them
        and each document's number of sentences; empty sentences, and documents left without any, dropped."""
        kept = sentence_lengths > 0
        document_of = np.repeat(np.arange(len(document_sentences)), document_sentences)
        per_document = np.bincount(document_of[kept], minlength=len(document_sentences))
        per_document = per_document[per_document > 0]
        return cls(tokens if tokens.dtype == np.uint16 else np.asarray(tokens, dtype=np.int32),
                   np.concatenate([[0], np.cumsum(sentence_lengths[kept], dtype=np.int64)]),
                   np.concatenate([[0], np.cumsum(per_document, dtype=np.int64)]))

    @property
    def documents(self) -> int:
        return len(self.document_starts) - 1


def truncate_pairs(spans: np.ndarray, max_tokens: int, gen: np.random.Generator) -> None:
    """Google's truncate_seq_pair on every pair at once, in place: while a pair is longer than `max_tokens`, its
    longer segment (B on a tie) loses one token, from its front or its back by a fair coin. Which segment loses how
    many follows from the lengths alone (the loop evens them out, then alternates), and the coins of a segment's
    cuts, from one binomial draw: the same distribution as Google's token-by-token loop, without a Python step per
    token."""
    a_len, b_len = spans[:, 1] - spans[:, 0], spans[:, 3] - spans[:, 2]
    a_kept = np.minimum(a_len, np.maximum(max_tokens - b_len, (max_tokens + 1) // 2))
    b_kept = np.minimum(b_len, max_tokens - a_kept)
    for start, end, kept in ((0, 1, a_kept), (2, 3, b_kept)):
        cut = spans[:, end] - spans[:, start] - kept
        from_front = gen.binomial(cut, 0.5)
        spans[:, start] += from_front
        spans[:, end] -= cut - from_front


def _uniform(rng: random.Random, low: int, high: int) -> int:
    """An int in [low, high], as rng.randint, from one float draw (randint's own path costs several Python calls)."""
    return low + int(rng.random() * (high - low + 1))


def document_pairs(shard, document, starts, spec, rng, out, forced):
    """Append the untruncated (A, B, label) spans of one document to `out` (an array.array of SPAN_TYPECODE, five
    numbers a pair: truncate_pairs cuts them down), as Google's create_instances_from_document; count in `forced[0]`
    the pairs whose B is random because A's chunk was a single sentence."""
    first, last = int(shard.document_starts[document]), int(shard.document_starts[document + 1])
    documents = shard.documents
    max_tokens = spec.seq_length - 3
    target = max_tokens if rng.random() >= spec.short_seq_prob else _uniform(rng, 2, max_tokens)
    chunk_start, length, i = first, 0, first
    while i < last:
        length += starts[i + 1] - starts[i]
        if i == last - 1 or length >= target:
            chunk = i + 1 - chunk_start
            a_end = chunk_start + (1 if chunk < 2 else _uniform(rng, 1, chunk - 1))
            a0, a1 = starts[chunk_start], starts[a_end]
            if chunk == 1 and documents > 1:
                forced[0] += 1
            if (chunk == 1 or rng.random() < 0.5) and documents > 1:
                for _ in range(10):
                    other = _uniform(rng, 0, documents - 1)
                    if other != document:
                        break
                o_first, o_last = int(shard.document_starts[other]), int(shard.document_starts[other + 1])
                j = _uniform(rng, o_first, o_last - 1)
                b0, target_b = starts[j], target - (a1 - a0)
                while j < o_last - 1 and starts[j + 1] - b0 < target_b:
                    j += 1
                out.extend((a0, a1, b0, starts[j + 1], 1))
                i -= i + 1 - a_end  # the sentences after A go back to the document
            elif chunk > 1:  # (one sentence and no other document: no pair can be made)
                out.extend((a0, a1, a1, starts[i + 1], 0))
            chunk_start, length = i + 1, 0
        i += 1


def pair_spans(shard: TokenizedShard, spec: InstanceSpec, rng: random.Random) -> tuple:
    """Every instance's (a_start, a_end, b_start, b_end, is_random_next) over all passes, truncated and shuffled; and
    how many of them got a random next segment without a coin flip (a one-sentence chunk, as in Google's code)."""
    if len(shard.tokens) >= 2**31:
        raise BertpipeError(f"a shard of {len(shard.tokens):,} tokens: instances index them with int32; "
                            "lower corpus.shard_max_mb")
    order = list(range(shard.documents))
    rng.shuffle(order)
    starts = shard.sentence_starts.tolist()
    spans, forced = array.array(SPAN_TYPECODE), [0]
    for _ in range(spec.dupe_factor):
        for document in order:
            document_pairs(shard, document, starts, spec, rng, spans, forced)
    gen = np.random.default_rng(rng.getrandbits(64))
    # Shuffled into a copy, which frees the buffer appended to, then cut in place: one copy of the spans at a time.
    spans = span_array(spans)[gen.permutation(len(spans) // SPAN_FIELDS)]
    truncate_pairs(spans, spec.seq_length - 3, gen)
    return spans, forced[0]


def materialize(tokens: np.ndarray, spans: np.ndarray, spec: InstanceSpec, vocab, gen: np.random.Generator) -> dict:
    """Google's features for a batch of spans, masked: arrays of shape (batch, seq_length) or (batch, max_predictions).

    `vocab` is a tokenizer_folder.Tokenizer, or anything with its cls_id, sep_id, mask_id, pad_id, ordinary_ids (the
    ids a random replacement may take) and is_word_start (per id, for whole-word masking).

    Also returns `masked_lm_kind` (0 [MASK], 1 kept, 2 random, -1 padding) for the stats."""
    batch, length, predictions = len(spans), spec.seq_length, spec.max_predictions
    a_len = spans[:, 1] - spans[:, 0]
    b_len = spans[:, 3] - spans[:, 2]
    total = a_len + b_len + 3
    position = np.arange(length)
    # [CLS] A [SEP] B [SEP] [PAD]...: each position's source in `tokens`, gathered at once
    in_a = (position >= 1) & (position <= a_len[:, None])
    in_b = (position >= (a_len + 2)[:, None]) & (position < (total - 1)[:, None])
    source = np.where(in_a, spans[:, 0:1] - 1 + position, spans[:, 2:3] - (a_len + 2)[:, None] + position)
    input_ids = np.where(in_a | in_b, tokens[np.where(in_a | in_b, source, 0)], vocab.pad_id).astype(np.int64)
    input_ids[:, 0] = vocab.cls_id
    input_ids[(position == (a_len + 1)[:, None]) | (position == (total - 1)[:, None])] = vocab.sep_id
    input_mask = position < total[:, None]
    segment_ids = (position >= (a_len + 2)[:, None]) & input_mask
    candidates = input_mask & (position != 0) & (position != (a_len + 1)[:, None]) & (position != (total - 1)[:, None])
    wanted = np.minimum(predictions, np.maximum(1, np.rint(total * spec.masked_lm_prob).astype(np.int64)))
    wanted = np.minimum(wanted, candidates.sum(axis=1))  # never more than there are tokens to mask

    if spec.whole_word_mask:
        positions, chosen = _whole_word_positions(input_ids, candidates, wanted, a_len, vocab, gen, predictions)
    else:
        scores = gen.random((batch, length))
        scores[~candidates] = 2.0  # never picked before a candidate
        # the `predictions` lowest scores of each row, in order (a partition, then a sort of those only)
        lowest = np.argpartition(scores, predictions - 1, axis=1)[:, :predictions]
        lowest = np.take_along_axis(lowest, np.argsort(np.take_along_axis(scores, lowest, axis=1), axis=1), axis=1)
        chosen = np.arange(predictions) < wanted[:, None]
        # The chosen are the first `wanted` of each row; sorting keeps them first (the others sort last).
        positions = np.sort(np.where(chosen, lowest, length), axis=1)
    positions = np.where(chosen, positions, 0)
    originals = np.take_along_axis(input_ids, positions, axis=1)
    draw = gen.random((batch, predictions))
    kind = np.where(draw < MASK_SHARE, 0, np.where(draw < MASK_SHARE + KEEP_SHARE, 1, 2))
    random_ids = vocab.ordinary_ids[gen.integers(0, len(vocab.ordinary_ids), size=(batch, predictions))]
    replaced = np.where(kind == 0, vocab.mask_id, np.where(kind == 1, originals, random_ids))
    np.put_along_axis(input_ids, positions, np.where(chosen, replaced, originals), axis=1)
    return {
        "input_ids": input_ids,
        "input_mask": input_mask.astype(np.int64),
        "segment_ids": segment_ids.astype(np.int64),
        "masked_lm_positions": positions.astype(np.int64),
        "masked_lm_ids": np.where(chosen, originals, 0).astype(np.int64),
        "masked_lm_weights": chosen.astype(np.float32),
        "next_sentence_labels": spans[:, 4:5].astype(np.int64),
        "masked_lm_kind": np.where(chosen, kind, -1),
    }


def _whole_word_positions(input_ids, candidates, wanted, a_len, vocab, gen, predictions):
    """Google's whole-word masking: whole words in random order, skipping a word that would overshoot the count."""
    batch = len(input_ids)
    positions = np.zeros((batch, predictions), dtype=np.int64)
    chosen = np.zeros((batch, predictions), dtype=bool)
    for row in range(batch):
        words = []
        for position in np.flatnonzero(candidates[row]).tolist():
            segment_start = position in (1, int(a_len[row]) + 2)
            if words and not segment_start and not vocab.is_word_start[input_ids[row, position]]:
                words[-1].append(position)
            else:
                words.append([position])
        picked = []
        for index in gen.permutation(len(words)).tolist():
            if len(picked) >= wanted[row]:
                break
            if len(picked) + len(words[index]) <= wanted[row]:
                picked.extend(words[index])
        picked.sort()
        positions[row, :len(picked)] = picked
        chosen[row, :len(picked)] = True
    return positions, chosen
