"""Masked-LM + next-sentence instances, with the semantics of google-research/bert's `create_pretraining_data.py`.

Same as Google's: documents shuffled once, then `dupe_factor` passes over them; per document a target length
(`seq_length - 3`, or with probability `short_seq_prob` a random length from 2 up); sentences gathered up to it;
segment A a random number of them; B the true continuation or, half of the time and always when only one sentence was
gathered, a span of a random other document (the unused sentences are put back); the longer segment truncated one token
at a time from a random end; `round(len * masked_lm_prob)` predictions (at least 1, at most `max_predictions`),
never [CLS] or [SEP]; 80% [MASK], 10% kept, 10% a random token; optional whole-word masking; all instances shuffled.

Different from Google's, on purpose:
- Memory is bounded by the shard, not the corpus: a shard's tokens are one flat array, an instance is five numbers
  (A and B as spans of it, the label) until it is written, and masking is done a batch at a time, vectorised.
- The random token of the 10% is drawn from the ordinary vocabulary, never a special token.
- A shard of a single document cannot give a random next segment: it yields only true-continuation pairs (chunks of
  one sentence are skipped), and its stats show the share of random next segments it got.
"""

import dataclasses
import random

import numpy as np

from bertpipe.settings import InstanceSpec  # noqa: F401 (the instances' settings, for the modules that make them)

SPAN_FIELDS = 5  # a_start, a_end, b_start, b_end, is_random_next
MASK_SHARE, KEEP_SHARE = 0.8, 0.1  # the rest, 10%, becomes a random token


@dataclasses.dataclass
class TokenizedShard:
    """A shard's documents as flat arrays: sentence k is tokens[sentence_starts[k]:sentence_starts[k + 1]], and
    document d is sentences document_starts[d] to document_starts[d + 1] - 1."""

    tokens: np.ndarray
    sentence_starts: np.ndarray
    document_starts: np.ndarray

    @classmethod
    def from_documents(cls, documents) -> "TokenizedShard":
        """From an iterable of documents, each a list of sentences, each a list of token ids; empty ones dropped."""
        pieces, sentence_lengths, document_starts = [], [], [0]
        for document in documents:
            sentences = [s for s in document if len(s)]
            if sentences:
                # One int32 array per document: a Python int costs 28 bytes, an int32 four.
                pieces.append(np.fromiter((t for s in sentences for t in s), dtype=np.int32))
                sentence_lengths.extend(len(s) for s in sentences)
                document_starts.append(document_starts[-1] + len(sentences))
        tokens = np.concatenate(pieces) if pieces else np.zeros(0, dtype=np.int32)
        sentence_starts = np.concatenate([[0], np.cumsum(sentence_lengths, dtype=np.int64)])
        return cls(tokens, sentence_starts, np.asarray(document_starts, dtype=np.int64))

    @property
    def documents(self) -> int:
        return len(self.document_starts) - 1


def _truncate(a0, a1, b0, b1, max_tokens, rng):
    """Google's truncate_seq_pair on spans: drop a token from the longer segment, front or back at random."""
    while (a1 - a0) + (b1 - b0) > max_tokens:
        if a1 - a0 > b1 - b0:
            if rng.random() < 0.5:
                a0 += 1
            else:
                a1 -= 1
        elif rng.random() < 0.5:
            b0 += 1
        else:
            b1 -= 1
    return a0, a1, b0, b1


def document_pairs(shard, document, starts, spec, rng, out, forced):
    """Append the (A, B, label) spans of one document to `out`, as Google's create_instances_from_document;
    append to `forced` the index of each whose B is random because A's chunk was a single sentence."""
    first, last = int(shard.document_starts[document]), int(shard.document_starts[document + 1])
    documents = shard.documents
    max_tokens = spec.seq_length - 3
    target = max_tokens if rng.random() >= spec.short_seq_prob else rng.randint(2, max_tokens)
    chunk_start, length, i = first, 0, first
    while i < last:
        length += starts[i + 1] - starts[i]
        if i == last - 1 or length >= target:
            chunk = i + 1 - chunk_start
            a_end = chunk_start + (1 if chunk < 2 else rng.randint(1, chunk - 1))
            a0, a1 = starts[chunk_start], starts[a_end]
            if chunk == 1 and documents > 1:
                forced.append(len(out))
            if (chunk == 1 or rng.random() < 0.5) and documents > 1:
                for _ in range(10):
                    other = rng.randint(0, documents - 1)
                    if other != document:
                        break
                o_first, o_last = int(shard.document_starts[other]), int(shard.document_starts[other + 1])
                j = rng.randint(o_first, o_last - 1)
                b0, target_b = starts[j], target - (a1 - a0)
                while j < o_last - 1 and starts[j + 1] - b0 < target_b:
                    j += 1
                b1, label = starts[j + 1], 1
                i -= i + 1 - a_end  # the sentences after A go back to the document
            elif chunk == 1:  # one sentence and no other document: no pair can be made
                b1 = None
            else:
                b0, b1, label = a1, starts[i + 1], 0
            if b1 is not None:
                out.append((*_truncate(a0, a1, b0, b1, max_tokens, rng), label))
            chunk_start, length = i + 1, 0
        i += 1


def pair_spans(shard: TokenizedShard, spec: InstanceSpec, rng: random.Random) -> tuple:
    """Every instance's (a_start, a_end, b_start, b_end, is_random_next) over all passes, shuffled; and how many of
    them got a random next segment without a coin flip (a one-sentence chunk, as in Google's code)."""
    order = list(range(shard.documents))
    rng.shuffle(order)
    starts = shard.sentence_starts.tolist()
    spans, forced = [], []
    for _ in range(spec.dupe_factor):
        for document in order:
            document_pairs(shard, document, starts, spec, rng, spans, forced)
    spans = np.asarray(spans, dtype=np.int64).reshape(-1, SPAN_FIELDS)
    if len(spans):
        spans = spans[np.asarray(_permutation(len(spans), rng), dtype=np.int64)]
    return spans, len(forced)


def _permutation(n, rng):
    order = list(range(n))
    rng.shuffle(order)
    return order


def materialize(tokens: np.ndarray, spans: np.ndarray, spec: InstanceSpec, vocab, gen: np.random.Generator) -> dict:
    """Google's features for a batch of spans, masked: arrays of shape (batch, seq_length) or (batch, max_predictions).

    `vocab` is a tokenizer.Tokenizer, or anything with its cls_id, sep_id, mask_id, pad_id, ordinary_ids (the ids a
    random replacement may take) and is_word_start (per id, for whole-word masking).

    Also returns `masked_lm_kind` (0 [MASK], 1 kept, 2 random, -1 padding) for the stats."""
    batch, length, predictions = len(spans), spec.seq_length, spec.max_predictions
    a_len = spans[:, 1] - spans[:, 0]
    b_len = spans[:, 3] - spans[:, 2]
    total = a_len + b_len + 3
    input_ids = np.full((batch, length), vocab.pad_id, dtype=np.int64)
    input_ids[:, 0] = vocab.cls_id
    for row, (a0, a1, b0, b1, _) in enumerate(spans.tolist()):
        la = a1 - a0
        input_ids[row, 1:1 + la] = tokens[a0:a1]
        input_ids[row, 1 + la] = vocab.sep_id
        input_ids[row, 2 + la:2 + la + b1 - b0] = tokens[b0:b1]
        input_ids[row, 2 + la + b1 - b0] = vocab.sep_id
    position = np.arange(length)
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
        lowest = np.argsort(scores, axis=1, kind="stable")[:, :predictions]
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
