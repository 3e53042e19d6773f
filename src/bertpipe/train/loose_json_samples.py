"""Megatron's loose-json path (`--train-data X.jsonl --loose-json --text-key text --lazy-loader`): documents from
a file of one JSON object a line, read lazily through a memory map, made into masked sentence pairs on the fly.

The lazy form of `X.jsonl` is a folder `X.jsonl.lazy/` (as Megatron's `X.lazy/`) holding every document's text
concatenated as UTF-8 (`text`), the byte offsets of the documents (`offsets.int64`) and each document's split point
(`split_points.uint64`, splits.split_point of its id, or of its line number when it has none), so that `--split`
assigns documents to train/valid/test as the corpus stage does, without the ids. It is built in one streaming pass
whose memory does not grow with the file (a document and a piece of each column at a time), by the first process
to take its lock; the others wait on that lock, not in a collective, so no process group's timeout can run out
however long the build takes. Readers memory-map all three files and keep 20 bytes per document of their split.

Sample `i` is a function of `i` and the seed alone: a document drawn with probability proportional to its length,
a random starting sentence, then Google's pair construction and masking (bertpipe.pretraining_instances) over just the
sentences it needs, with a random next segment from another drawn document. Text holds one sentence a line (the
corpus stage's format); a document without line breaks is one sentence.
"""

import array
import dataclasses
import json
import logging
import random
import time
from pathlib import Path

import numpy as np
import torch

from bertpipe import BertpipeError
from bertpipe.atomic import atomic_dir, exclusive
from bertpipe.pretraining_instances import (
    SPAN_TYPECODE,
    InstanceSpec,
    TokenizedShard,
    document_pairs,
    materialize,
    span_array,
    truncate_pairs,
)
from bertpipe.splits import SPLITS, parse_split, split_indices, split_point

TOKENS_PER_BYTE = 0.25  # for the number of samples an epoch holds: about four bytes of English text per token
ROWS_PER_WRITE = 1 << 16  # offsets and split points are written this many documents at a time
OFFSETS, SPLIT_POINTS = "offsets.int64", "split_points.uint64"  # raw little-endian columns, one row a document

log = logging.getLogger(__name__)


class _Column:
    """A file of little-endian numbers of one type, appended in pieces of ROWS_PER_WRITE (the build never holds a
    column whole), read back as a memory map."""

    def __init__(self, path: Path, dtype: str):
        self.file, self.dtype, self.pending = open(path, "wb"), dtype, []

    def append(self, value: int):
        self.pending.append(value)
        if len(self.pending) == ROWS_PER_WRITE:
            self.flush()

    def flush(self):
        self.file.write(np.asarray(self.pending, dtype=self.dtype).tobytes())
        self.pending = []

    @staticmethod
    def read(path: Path, dtype: str) -> np.ndarray:
        return np.memmap(path, dtype=dtype, mode="r") if path.stat().st_size else np.zeros(0, dtype)


def build_lazy(path, text_key: str) -> Path:
    """Write `<path>.lazy/` (text, offsets, split points, source.json) unless it is there for this file and
    key; returns the folder. One process at a time builds it (the lock `<path>.lazy.lock`); the others find it
    built."""
    path = Path(path)
    folder = Path(f"{path}.lazy")
    with exclusive(f"{folder}.lock"):
        origin = {"text_key": text_key, "size": path.stat().st_size, "mtime_ns": path.stat().st_mtime_ns}
        if (folder / "source.json").is_file() and json.loads((folder / "source.json").read_text()) == origin:
            return folder  # built before, from this very file and key
        started = time.monotonic()
        # Bytes, decoded a line at a time: a text file's reader decodes ahead in blocks, and its error names no line.
        with atomic_dir(folder) as temp, open(path, "rb") as source, open(temp / "text", "wb") as text:
            offsets, points = _Column(temp / OFFSETS, "<i8"), _Column(temp / SPLIT_POINTS, "<u8")
            end, line_number = 0, 0
            offsets.append(end)
            for line_number, raw in enumerate(source, 1):
                try:
                    line = raw.decode("utf-8")
                except UnicodeDecodeError as error:
                    raise BertpipeError(f"{path}, line {line_number}: not UTF-8 (byte {error.start + 1} of the "
                                        "line); write the file as UTF-8 JSON lines") from None
                try:
                    record = json.loads(line)
                    data = record[text_key].encode("utf-8")
                except (ValueError, KeyError, TypeError, AttributeError) as error:
                    raise BertpipeError(f"{path}, line {line_number}: not a JSON object with a string {text_key!r} "
                                        f"({error!r}); check --text-key") from None
                text.write(data)
                end += len(data)
                offsets.append(end)
                points.append(split_point(str(record.get("id", line_number))))
            for column in (offsets, points):
                column.flush()
                column.file.close()
            (temp / "source.json").write_text(json.dumps(origin))
        seconds = time.monotonic() - started
        log.info("indexed %s: %d documents, %.1f MB in %.1f s (%.1f MB/s)", path, line_number, origin["size"] / 1e6,
                 seconds, origin["size"] / 1e6 / max(seconds, 1e-9))
    return folder


class LooseJsonSamples:
    """Masked sentence pairs made on the fly from the documents of one split of loose-json files."""

    def __init__(self, files, tokenizer, spec: InstanceSpec, split: str, which: str, text_key: str, seed: int):
        self.tokenizer, self.spec, self.seed = tokenizer, spec, seed
        self.files = [str(path) for path in files]  # as TFRecordSamples: what the run read (its input hash)
        fractions, wanted = parse_split(split), SPLITS.index(which)
        # Per file: (text memory map, offsets); per kept document: its file and its index there, as arrays.
        self.texts, file_of, index_in_file, lengths = [], [], [], []
        for file_index, path in enumerate(map(Path, files)):
            folder = build_lazy(path, text_key)
            offsets = _Column.read(folder / OFFSETS, "<i8")
            sizes = np.diff(offsets)
            splits = split_indices(_Column.read(folder / SPLIT_POINTS, "<u8"), fractions)
            kept = np.flatnonzero((sizes > 0) & (splits == wanted))
            self.texts.append((np.memmap(folder / "text", dtype=np.uint8, mode="r") if offsets[-1] else None,
                               offsets))
            file_of.append(np.full(len(kept), file_index, dtype=np.int32))
            index_in_file.append(kept)
            lengths.append(sizes[kept])
        self.file_of, self.index_in_file = np.concatenate(file_of), np.concatenate(index_in_file)
        if not len(self.file_of):
            raise BertpipeError(f"no documents of the {which} split in {', '.join(map(str, files))} "
                                f"with --split {split}")
        lengths = np.concatenate(lengths).astype(np.float64)
        self.cumulative = np.cumsum(lengths) / lengths.sum()
        self.samples = max(1, int(lengths.sum() * TOKENS_PER_BYTE / spec.seq_length))

    def __len__(self) -> int:
        return self.samples

    def _sentences(self, document: int) -> list:
        text, offsets = self.texts[self.file_of[document]]
        d = self.index_in_file[document]
        return bytes(text[offsets[d]:offsets[d + 1]]).decode("utf-8").split("\n")

    def _draw_document(self, rng: random.Random, avoid=None) -> int:
        for _ in range(10):
            document = min(int(np.searchsorted(self.cumulative, rng.random(), side="right")),
                           len(self.file_of) - 1)
            if document != avoid:
                break
        return document

    def _encode_until(self, sentences: list, start: int, tokens: int) -> list:
        """Token ids of sentences from `start` on, just enough of them to hold `tokens` tokens."""
        encoded, count, end = [], 0, start
        while end < len(sentences) and count < tokens:
            window = self.tokenizer.encode(sentences[end:end + 8])
            for ids in window:
                encoded.append(ids)
                count += len(ids)
                end += 1
                if count >= tokens:
                    break
        return encoded

    def _pair(self, index: int) -> tuple:
        """(tokens, span) of sample `index`: the two documents' needed sentences as flat tokens, and one span."""
        for attempt in range(100):  # a draw of documents with no tokens gives no pair: draw again
            found = self._try_pair(f"{self.seed}:{index}:{attempt}")
            if found:
                return found
        raise BertpipeError(f"sample {index}: 100 draws gave no sentence pair; are the documents empty?")

    def _try_pair(self, seed: str):
        rng = random.Random(seed)
        first = self._draw_document(rng)
        sentences = self._sentences(first)
        start = rng.randrange(len(sentences))
        target = self.spec.seq_length - 3
        a_side = self._encode_until(sentences, start, target)
        other = self._sentences(self._draw_document(rng, avoid=first))
        other_start = rng.randrange(len(other))
        b_side = self._encode_until(other, other_start, target)
        shard = TokenizedShard.from_documents([a_side, b_side])
        spec = dataclasses.replace(self.spec, dupe_factor=1)
        spans = array.array(SPAN_TYPECODE)
        if shard.documents:
            document_pairs(shard, 0, shard.sentence_starts.tolist(), spec, rng, spans, [0])
        if not spans:
            return None
        first = span_array(spans)[:1]
        truncate_pairs(first, spec.seq_length - 3, np.random.default_rng(rng.getrandbits(64)))
        return shard.tokens, first

    def read(self, indices, epochs=None) -> dict:
        """Samples `indices` as a batch of torch tensors, with the TFRecords' feature names. `epochs` is not used: a
        sample is a function of its index and the seed alone, in every epoch, as Megatron's."""
        rows = []
        for index in indices:
            tokens, span = self._pair(int(index))
            gen = np.random.default_rng([self.seed, int(index)])
            rows.append(materialize(tokens, span, self.spec, self.tokenizer, gen))
        batch = {name: np.concatenate([row[name] for row in rows]) for name in rows[0] if name != "masked_lm_kind"}
        return {name: torch.from_numpy(values) for name, values in batch.items()}
