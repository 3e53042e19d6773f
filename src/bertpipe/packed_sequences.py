"""Packed masked-LM sequences, the data of the "modern" recipe (ModernBERT's): documents laid end to end in
sequences of one length, no next-sentence pairs, masks drawn as the model trains.

Packing (`pack`, for the tfrecords job): every document of a shard becomes [CLS] its tokens [SEP]; the documents are
laid end to end in the shard's order and cut every `seq_length` tokens, so that every sequence is exactly
`seq_length` long but the shard's last, the only one shorter: nothing is padded. A document cut at a sequence's end
goes on at the start of the next as a piece of its own (without another [CLS]). Every sequence records the lengths of
its document pieces, in order, so that the model keeps attention and positions within a piece
(modern_model.Documents).

A sequence is one TFRecord record, a tf.train.Example with the features PACKED_FEATURES, both int64 lists:
- `input_ids`: the sequence's tokens, unmasked and unpadded (`seq_length` of them, fewer in a shard's last);
- `document_lengths`: the lengths of its document pieces, in order; they add up to len(input_ids).
`serialize_sequences` makes the records without TensorFlow: the writer hands them to TensorFlow's TFRecordWriter and
indexes them with tfrecord_reader.write_index.

Masks are not in the records (the 2019 recipe writes `dupe_factor` masked copies): `draw_masks` draws a sample's
masks when it is read, from a generator of its own seeded by (seed, epoch, sample index), so that each epoch sees
other masks, and a sample's masks are the same in any process, any batch and any order. Of a sequence's maskable
tokens (all but [CLS] and [SEP]) round(rate x their number), at least one, are predicted: 80% become [MASK], 10% stay,
10% become a random ordinary token (pretraining_instances' rule); with whole-word masking, whole words in random order
until the count is reached, skipping a word that would overshoot it (pretraining_instances' too: a sequence may then
get fewer).

`PackedSamples` reads the records by index, as tfrecord_reader.TFRecordSamples does, and masks them into an unpadded
batch for modern_model (`PackedSamples.read`). The common test set is the test split's records masked at epoch 0
with rate 0.15 and a fixed seed: `PackedSamples(files, tokenizer, rate=0.15, seed=SEED).read(indices, epochs=0)`.
"""

import dataclasses

import numpy as np

from bertpipe import BertpipeError
from bertpipe.pretraining_instances import KEEP_SHARE, MASK_SHARE, TokenizedShard
from bertpipe.tfrecord_reader import IndexedRecords, example_class

PACKED_FEATURES = ("input_ids", "document_lengths")  # a record's features, both int64 lists
MASKED, KEPT, RANDOM = 0, 1, 2  # what became of a predicted token (pretraining_instances' masked_lm_kind)


@dataclasses.dataclass
class PackedShard:
    """A shard's packed sequences as flat arrays: sequence k is tokens[sequence_starts[k]:sequence_starts[k + 1]],
    and its document pieces are document_lengths[piece_starts[k]:piece_starts[k + 1]] long."""

    tokens: np.ndarray
    sequence_starts: np.ndarray
    document_lengths: np.ndarray
    piece_starts: np.ndarray

    @property
    def sequences(self) -> int:
        return len(self.sequence_starts) - 1

    def sequence(self, k: int) -> tuple:
        """(tokens, document piece lengths) of sequence k."""
        return (self.tokens[self.sequence_starts[k]:self.sequence_starts[k + 1]],
                self.document_lengths[self.piece_starts[k]:self.piece_starts[k + 1]])


def pack(shard: TokenizedShard, seq_length: int, cls_id: int, sep_id: int) -> PackedShard:
    """The shard's documents, each [CLS] its tokens [SEP], end to end in sequences of `seq_length` tokens (the last
    one shorter), with the lengths of every sequence's document pieces. The tokens keep the shard's type."""
    if seq_length < 1:
        raise ValueError(f"sequences of {seq_length} tokens: at least 1")
    document_token_starts = shard.sentence_starts[shard.document_starts]  # and where the last document ends
    lengths = np.diff(document_token_starts) + 2
    ends = np.cumsum(lengths, dtype=np.int64)
    total = int(ends[-1]) if len(ends) else 0
    tokens = np.empty(total, dtype=shard.tokens.dtype)
    is_text = np.ones(total, dtype=bool)
    is_text[ends - lengths] = is_text[ends - 1] = False
    tokens[ends - lengths] = cls_id
    tokens[ends - 1] = sep_id
    tokens[is_text] = shard.tokens[:document_token_starts[-1]]
    sequence_starts = np.append(np.arange(0, total, seq_length, dtype=np.int64), total)
    # A piece ends where its document does or where its sequence does.
    boundaries = np.union1d(np.append(0, ends), sequence_starts)
    return PackedShard(tokens, sequence_starts, np.diff(boundaries), np.searchsorted(boundaries, sequence_starts))


def serialize_sequences(packed: PackedShard, start: int = 0, stop: int | None = None) -> list:
    """Sequences `start` to `stop` (default: the last) as serialised tf.train.Example records (bytes), features
    PACKED_FEATURES. Through protobuf, one message a sequence: without `dupe_factor` copies, a shard has only a few
    thousand sequences."""
    example = example_class()
    records = []
    for k in range(packed.sequences)[start:stop]:
        message = example()
        for name, values in zip(PACKED_FEATURES, packed.sequence(k)):
            message.features.feature[name].int64_list.value.extend(values.tolist())
        records.append(message.SerializeToString(deterministic=True))
    return records


@dataclasses.dataclass
class Masks:
    """A batch's masks: `input_ids` the batch's tokens end to end, masked; `positions` the predicted ones (indices
    into input_ids, in order), `labels` their true tokens, `kinds` what became of them (MASKED, KEPT or RANDOM)."""

    input_ids: np.ndarray
    positions: np.ndarray
    labels: np.ndarray
    kinds: np.ndarray


def sample_generator(seed: int, epoch: int, index: int) -> np.random.Generator:
    """The random stream of one sample's masks in one epoch: a function of (seed, epoch, index) alone."""
    return np.random.Generator(np.random.Philox(np.random.SeedSequence([seed, epoch, index])))


def masked_count(maskable, rate: float):
    """Predictions of a sequence of `maskable` maskable tokens: round(rate x maskable), at least 1 unless there is
    none (round half to even, as pretraining_instances)."""
    maskable = np.asarray(maskable, dtype=np.int64)
    return np.where(maskable > 0, np.maximum(1, np.rint(rate * maskable).astype(np.int64)), 0)


def _check_rate(rate: float) -> None:
    if not 0 < rate <= 1:
        raise ValueError(f"mask rate {rate}: a share of the tokens, above 0 and at most 1")


def draw_masks(input_ids, sequence_lengths, indices, epochs, vocab, rate: float, seed: int,
               whole_word_mask: bool = False) -> Masks:
    """The masks of a batch of sequences, `input_ids` their tokens end to end (`sequence_lengths` long), sample
    `indices[k]` of its data set at `epochs[k]`: each sequence's from its own sample_generator.

    `vocab` is a tokenizer_folder.Tokenizer, or anything with its cls_id, sep_id, mask_id, ordinary_ids (the ids a
    random replacement may take) and, for whole-word masking, is_word_start (per id)."""
    _check_rate(rate)
    input_ids = np.asarray(input_ids, dtype=np.int64)
    ends = np.cumsum(sequence_lengths, dtype=np.int64)
    if len(ends) != len(indices) or len(indices) != len(epochs) or (len(ends) and ends[-1] != len(input_ids)):
        raise ValueError(f"{len(indices)} indices, {len(epochs)} epochs and sequences of lengths {sequence_lengths} "
                         f"for {len(input_ids)} tokens: one of each a sequence, the lengths adding up to the tokens")
    maskable = (input_ids != vocab.cls_id) & (input_ids != vocab.sep_id)
    positions, draws, random_choices = [np.zeros(0, np.int64)], [np.zeros(0)], [np.zeros(0, np.int64)]
    for start, end, index, epoch in zip((ends - sequence_lengths).tolist(), ends.tolist(), np.asarray(indices).tolist(),
                                        np.asarray(epochs).tolist()):
        gen = sample_generator(seed, epoch, index)
        candidates = start + np.flatnonzero(maskable[start:end])
        wanted = int(masked_count(len(candidates), rate))
        if whole_word_mask:
            chosen = _whole_words(candidates, vocab.is_word_start[input_ids[candidates]], wanted, gen)
        else:
            chosen = np.sort(gen.choice(candidates, size=wanted, replace=False, shuffle=False))
        positions.append(chosen)
        draws.append(gen.random(len(chosen)))
        random_choices.append(gen.integers(0, len(vocab.ordinary_ids), size=len(chosen)))
    positions = np.concatenate(positions)
    draw = np.concatenate(draws)
    kinds = np.where(draw < MASK_SHARE, MASKED, np.where(draw < MASK_SHARE + KEEP_SHARE, KEPT, RANDOM))
    labels = input_ids[positions]
    masked = input_ids.copy()
    masked[positions] = np.where(kinds == MASKED, vocab.mask_id,
                                 np.where(kinds == KEPT, labels, vocab.ordinary_ids[np.concatenate(random_choices)]))
    return Masks(masked, positions, labels, kinds)


def _whole_words(candidates: np.ndarray, starts_word: np.ndarray, wanted: int, gen: np.random.Generator):
    """Whole-word masking of one sequence, as pretraining_instances': whole words in random order, skipping a word
    that would overshoot `wanted` tokens (so a sequence may get fewer). A word is a word-start token and the
    non-word-start tokens after it; a piece of a word cut off by the sequence's start, or after [CLS] or [SEP], is one
    of its own. `candidates` are the maskable positions, in order; `starts_word`, whether each is a word-start token."""
    follows = np.zeros(len(candidates), dtype=bool)
    follows[1:] = np.diff(candidates) == 1
    new_word = starts_word | ~follows
    word_of = np.cumsum(new_word) - 1
    word_lengths = np.bincount(word_of, minlength=int(new_word.sum())).tolist()
    picked, count = np.zeros(len(word_lengths), dtype=bool), 0
    for word in gen.permutation(len(word_lengths)).tolist():
        if count >= wanted:
            break
        if count + word_lengths[word] <= wanted:
            picked[word] = True
            count += word_lengths[word]
    return candidates[picked[word_of]]


class PackedSamples(IndexedRecords):
    """Random access to the packed sequences of a list of TFRecord files, through their record indexes, masked as
    they are read: `read(indices, epochs)` is a batch for modern_model; `sequences` gives the records unmasked."""

    def __init__(self, files, vocab, rate: float, seed: int, whole_word_mask: bool = False):
        """`vocab`: as draw_masks'; `rate`: the share of maskable tokens predicted; `seed`: the masks' (with the epoch
        and the sample's index)."""
        _check_rate(rate)
        self.vocab, self.rate, self.seed, self.whole_word_mask = vocab, rate, seed, whole_word_mask
        super().__init__(files)
        # A file's first sequence is a whole one unless it is the file's only one (its shard's last): those of files
        # of several sequences must agree, and none may be longer.
        first = {path: len(self.sequences([start])[0])
                 for path, start, index in zip(self.files, self.starts[:-1].tolist(), self.indexes) if len(index)}
        whole = {first[path] for path, index in zip(self.files, self.indexes) if len(index) > 1}
        self.seq_length = max(first.values())
        if len(whole) > 1 or (whole and self.seq_length not in whole):
            raise BertpipeError("packed sequences of different lengths in one data set (the first of each file): "
                                + ", ".join(f"{path} {length}" for path, length in first.items()))

    def sequences(self, indices) -> tuple:
        """The sequences at `indices`, unmasked: their tokens end to end, each one's length and the lengths of all
        their document pieces in order (int64 arrays)."""
        tokens, pieces = [], []
        for file_id, record, data in self.records(indices):
            sequence, lengths = self._parse(data, file_id, record)
            tokens.append(sequence)
            pieces.append(lengths)
        return (np.concatenate([np.zeros(0, np.int64), *tokens]), np.array(list(map(len, tokens)), dtype=np.int64),
                np.concatenate([np.zeros(0, np.int64), *pieces]))

    def _parse(self, data: bytes, file_id: int, record: int) -> tuple:
        """A record's (input_ids, document_lengths), which must make a packed sequence."""
        from google.protobuf.message import DecodeError

        where = f"{self.files[file_id]}: record {record}"
        try:
            feature = example_class().FromString(data).features.feature
        except DecodeError as error:
            raise BertpipeError(f"{where} is not a tf.train.Example ({error}): the file is damaged; rebuild it "
                                "(the tfrecords stage)") from None
        missing = [name for name in PACKED_FEATURES
                   if name not in feature or feature[name].WhichOneof("kind") != "int64_list"]
        if missing:
            raise BertpipeError(f"{where} has no int64 feature {' or '.join(map(repr, missing))}: not a packed "
                                f"sequence (features {', '.join(PACKED_FEATURES)}; packed_sequences.pack)")
        tokens, lengths = (np.array(feature[name].int64_list.value, dtype=np.int64) for name in PACKED_FEATURES)
        if not len(tokens) or lengths.sum() != len(tokens) or lengths.min(initial=1) < 1:
            shown = lengths[:20].tolist() + (["..."] if len(lengths) > 20 else [])
            raise BertpipeError(f"{where}: document_lengths {shown} (adding up to {lengths.sum()}) do not cut its "
                                f"{len(tokens)} input_ids into document pieces: not a packed sequence; rebuild it "
                                "(the tfrecords stage)")
        return tokens, lengths

    def read(self, indices, epochs) -> dict:
        """The samples at `indices`, masked as in epoch(s) `epochs` (one, or one a sample), as an unpadded batch of
        int64 torch tensors: `input_ids` (every token, masked), `document_lengths` (every document piece, in order),
        `sequence_lengths`, `masked_positions` (indices into input_ids) and `masked_lm_ids` (the true tokens there).
        The masks of a sample depend on its index, its epoch and the seed only."""
        import torch  # here, not above: the tfrecords stage packs with this module and needs no torch

        indices = np.asarray(indices, dtype=np.int64)
        input_ids, sequence_lengths, document_lengths = self.sequences(indices)
        masks = draw_masks(input_ids, sequence_lengths, indices, np.broadcast_to(epochs, indices.shape), self.vocab,
                           self.rate, self.seed, self.whole_word_mask)
        return {name: torch.from_numpy(np.ascontiguousarray(values, dtype=np.int64)) for name, values in (
            ("input_ids", masks.input_ids), ("document_lengths", document_lengths),
            ("sequence_lengths", sequence_lengths), ("masked_positions", masks.positions),
            ("masked_lm_ids", masks.labels))}
