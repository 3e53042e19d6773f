"""The tokenizer stage's folder, read: its kind, BERT's special tokens and their ids, the vocab, and encoding text
into ids (`Tokenizer`), for every stage after the tokenizer and for the export.

The folder holds a `bertpipe-tokenizer.json` that says what it is (kind, vocab size, casing, special ids, files):

- sentencepiece: `spm.model`, `spm.vocab`; [PAD] 0, [UNK] 1, [CLS] 2, [SEP] 3, [MASK] 4 (pad, unk and control
  symbols, so that the text "[MASK]" in an article never becomes the mask id).
- wordpiece: `vocab.txt` (BERT's format) and `tokenizer.json` (HuggingFace tokenizers); trained vocabularies have the
  special tokens at 0-4, a given `vocab.txt` keeps its own ids (Google's: [PAD] 0, [UNK] 100, [CLS] 101, ...).
"""

import itertools
import json
from pathlib import Path

import numpy as np

from bertpipe import BertpipeError

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
META = "bertpipe-tokenizer.json"


def read_vocab(path: Path) -> dict:
    """BERT's vocab.txt: one distinct token a line, its id the line's index; every special token must be in it. A
    repeated or empty line would leave ids without a token of their own, so it is refused, naming the lines."""
    vocab, faults = {}, []
    with open(path, encoding="utf-8") as f:
        for index, line in enumerate(f):
            token = line.rstrip("\r\n")
            if not token.strip():
                faults.append(f"line {index + 1} is empty")
            elif token in vocab:
                faults.append(f"line {index + 1} repeats {token!r} of line {vocab[token] + 1}")
            else:
                vocab[token] = index
    if faults:
        more = f" and {len(faults) - 10} more" if len(faults) > 10 else ""
        raise BertpipeError(f"{path}: {'; '.join(faults[:10])}{more}; a vocab.txt has one distinct token a line (its "
                            "id is the line's index): fix the file")
    missing = [token for token in SPECIAL_TOKENS if token not in vocab]
    if missing:
        raise BertpipeError(f"{path}: the vocab lacks the special token(s) {', '.join(missing)}; "
                            "BERT needs all of " + " ".join(SPECIAL_TOKENS))
    return vocab


class Tokenizer:
    """A trained tokenizer folder behind one small interface: encode sentences, special ids, word starts."""

    def __init__(self, folder, tensorflow_text: bool = False):
        """`tensorflow_text`: encode_flat takes TensorFlow Text's FastBertTokenizer for the sentences it tokenises as
        HuggingFace does (see encode_flat); for a stage that has TensorFlow loaded anyway (tfrecords)."""
        self.folder = Path(folder)
        try:
            self.meta = json.loads((self.folder / META).read_text())
        except (OSError, ValueError) as error:
            raise BertpipeError(f"{self.folder}: not a bertpipe tokenizer folder ({error}); run the tokenizer stage")
        self.kind = self.meta["kind"]
        self.vocab_size = self.meta["vocab_size"]
        ids = self.meta["special_ids"]
        self.pad_id, self.unk_id, self.cls_id, self.sep_id, self.mask_id = (ids[t] for t in SPECIAL_TOKENS)
        self._fast = None
        if self.kind == "sentencepiece":
            import sentencepiece as spm

            self._spm = spm.SentencePieceProcessor(model_file=str(self.folder / "spm.model"))
            pieces = [self._spm.id_to_piece(i) for i in range(self.vocab_size)]
            self.is_word_start = np.array([p.startswith("\u2581") for p in pieces])
        else:
            from tokenizers import Tokenizer as HFTokenizer
            from tokenizers import decoders, models, normalizers, pre_tokenizers

            vocab = read_vocab(self.folder / "vocab.txt")
            # tokenizer.json's pipeline without its added special tokens: as with Google's BERT tokenizer, the text
            # "[MASK]" in an article is "[", "mask", "]", never the mask id.
            lowercase = self.meta["lowercase"]
            self._hf = HFTokenizer(models.WordPiece(vocab, unk_token="[UNK]"))
            self._hf.normalizer = normalizers.BertNormalizer(lowercase=lowercase, strip_accents=lowercase)
            self._hf.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
            self._hf.decoder = decoders.WordPiece()
            starts = np.ones(self.vocab_size, dtype=bool)
            for token, index in vocab.items():
                starts[index] = not token.startswith("##")
            self.is_word_start = starts
            if tensorflow_text:
                self._fast = _fast_bert_tokenizer(vocab, lowercase)
        special = np.zeros(self.vocab_size, dtype=bool)
        special[list(ids.values())] = True
        # Ids a random replacement may take: the 10% "random token" of masking never inserts [CLS], [MASK], ...
        self.ordinary_ids = np.flatnonzero(~special)

    def encode(self, sentences: list) -> list:
        """Token ids of each sentence, without special tokens."""
        if self.kind == "sentencepiece":
            return self._spm.encode(sentences, out_type=int)
        return [e.ids for e in self._hf.encode_batch_fast(sentences)]  # the same ids, without the offsets

    def encode_flat(self, sentences: list) -> tuple:
        """The token ids of all the sentences, concatenated (int32), and each sentence's number of ids: encode's
        output without a Python object per token, for a stage that holds a whole shard's ids.

        With `tensorflow_text`, WordPiece sentences of printable ASCII only go to TensorFlow Text's FastBertTokenizer
        (Google's linear-time WordPiece, about ten times HuggingFace's speed per core), the rest to HuggingFace. On
        printable ASCII both do the same thing: lowercasing (accents, NFD, control and Chinese characters cannot
        occur), splitting on spaces and ASCII punctuation, the longest-match-first WordPiece with [UNK] for a word of
        over 100 characters or without pieces; tests/integration/test_tokenizer.py holds them equal. Other text is
        where their normalisers differ (FastBertTokenizer maps "…" to "...", for one), so it stays with HuggingFace's,
        which is Google's BERT normaliser."""
        if self._fast is not None:
            plain = np.fromiter((s.isascii() and s.isprintable() for s in sentences), dtype=bool,
                                count=len(sentences))
            return _merge_in_order(plain, self._fast_encode([s for s, p in zip(sentences, plain) if p]),
                                   _flat(self.encode([s for s, p in zip(sentences, plain) if not p])))
        return _flat(self.encode(sentences))

    def _fast_encode(self, sentences: list) -> tuple:
        import tensorflow as tf

        if not sentences:
            return np.zeros(0, dtype=np.int32), np.zeros(0, dtype=np.int64)
        ragged = self._fast.tokenize(tf.constant(sentences))
        return ragged.flat_values.numpy().astype(np.int32), np.diff(ragged.row_splits.numpy()).astype(np.int64)

    def decode(self, ids: list) -> str:
        """The text of ordinary token ids."""
        if self.kind == "sentencepiece":
            return self._spm.decode([int(i) for i in ids])
        return self._hf.decode([int(i) for i in ids])

    def token(self, token_id: int) -> str:
        """A token as the vocabulary spells it ("\u2581" starts a SentencePiece word, "##" goes on a WordPiece one)."""
        if self.kind == "sentencepiece":
            return self._spm.id_to_piece(int(token_id))
        return self._hf.id_to_token(int(token_id))


def _fast_bert_tokenizer(vocab: dict, lowercase: bool):
    import tensorflow as tf
    import tensorflow_text

    tokens = sorted(vocab, key=vocab.get)  # read_vocab's ids are the line indexes 0..n-1
    return tensorflow_text.FastBertTokenizer(tokens, suffix_indicator="##", max_bytes_per_word=100,
                                             token_out_type=tf.int64, unknown_token="[UNK]",
                                             support_detokenization=False, lower_case_nfd_strip_accents=lowercase)


def _flat(ids: list) -> tuple:
    lengths = np.fromiter(map(len, ids), dtype=np.int64, count=len(ids))
    return np.fromiter(itertools.chain.from_iterable(ids), dtype=np.int32, count=int(lengths.sum())), lengths


def _merge_in_order(first: np.ndarray, ours: tuple, others: tuple) -> tuple:
    """Two encode_flat results back in sentence order: `ours` of the sentences where `first` is true, `others` of
    the rest."""
    (ids_a, lengths_a), (ids_b, lengths_b) = ours, others
    lengths = np.zeros(len(first), dtype=np.int64)
    lengths[first], lengths[~first] = lengths_a, lengths_b
    starts = np.cumsum(lengths) - lengths
    ids = np.empty(int(lengths.sum()), dtype=np.int32)
    for part_ids, part_lengths, rows in ((ids_a, lengths_a, first), (ids_b, lengths_b, ~first)):
        within = np.arange(len(part_ids)) - np.repeat(np.cumsum(part_lengths) - part_lengths, part_lengths)
        ids[np.repeat(starts[rows], part_lengths) + within] = part_ids
    return ids, lengths
