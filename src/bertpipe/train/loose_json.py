"""Megatron's loose-json path (`--train-data X.jsonl --loose-json --text-key text --lazy-loader`): documents from
a file of one JSON object a line, read lazily through a memory map, made into masked sentence pairs on the fly.

The lazy form of `X.jsonl` is a folder `X.jsonl.lazy/` (as Megatron's `X.lazy/`) holding every document's text
concatenated as UTF-8 (`text`) and the byte offsets of the documents (`offsets.npy`), built once by rank 0 while the
other ranks wait. Documents are assigned to train/valid/test by `--split` with the corpus stage's hash of their id
(or of their line number when they have none), so the same document is in the same split in both paths.

Sample `i` is a function of `i` and the seed alone: a document drawn with probability proportional to its length,
a random starting sentence, then Google's pair construction and masking (bertpipe.instances) over just the
sentences it needs, with a random next segment from another drawn document. Text holds one sentence a line (the
corpus stage's format); a document without line breaks is one sentence.
"""

import dataclasses
import json
import random
from pathlib import Path

import numpy as np
import torch

from bertpipe import BertpipeError
from bertpipe.atomic import atomic_dir
from bertpipe.splits import parse_split, split_of
from bertpipe.instances import InstanceSpec, TokenizedShard, document_pairs, materialize

TOKENS_PER_BYTE = 0.25  # for the number of samples an epoch holds: about four bytes of English text per token


def build_lazy(path, text_key: str) -> Path:
    """Write `<path>.lazy/` (text, offsets.npy, ids.json, source.json) unless it is there for this file and key;
    returns the folder."""
    path = Path(path)
    folder = Path(f"{path}.lazy")
    origin = {"text_key": text_key, "size": path.stat().st_size, "mtime_ns": path.stat().st_mtime_ns}
    if (folder / "source.json").is_file() and json.loads((folder / "source.json").read_text()) == origin:
        return folder  # built before, from this very file and key
    with atomic_dir(folder) as temp, open(path, encoding="utf-8") as source, open(temp / "text", "wb") as text:
        offsets, ids = [0], []
        for line_number, line in enumerate(source, 1):
            try:
                record = json.loads(line)
                data = record[text_key].encode("utf-8")
            except (ValueError, KeyError, TypeError, AttributeError) as error:
                raise BertpipeError(f"{path}, line {line_number}: not a JSON object with a string {text_key!r} "
                                    f"({error!r}); check --text-key") from None
            text.write(data)
            offsets.append(offsets[-1] + len(data))
            ids.append(str(record.get("id", line_number)))
        np.save(temp / "offsets.npy", np.asarray(offsets, dtype=np.int64))
        (temp / "ids.json").write_text(json.dumps(ids))
        (temp / "source.json").write_text(json.dumps(origin))
    return folder


class LooseJsonSamples:
    """Masked sentence pairs made on the fly from the documents of one split of loose-json files."""

    def __init__(self, files, tokenizer, spec: InstanceSpec, split: str, which: str, text_key: str, seed: int,
                 build=True):
        self.tokenizer, self.spec, self.seed = tokenizer, spec, seed
        self.files = [str(path) for path in files]  # as TFRecordSamples: what the run read (its input hash)
        fractions = parse_split(split)
        self.texts, self.documents = [], []  # (memory map, offsets) per file; (file, document) per kept document
        for file_index, path in enumerate(map(Path, files)):
            folder = build_lazy(path, text_key) if build else Path(f"{path}.lazy")
            offsets = np.load(folder / "offsets.npy")
            ids = json.loads((folder / "ids.json").read_text())
            self.texts.append((np.memmap(folder / "text", dtype=np.uint8, mode="r") if offsets[-1] else None,
                               offsets))
            self.documents.extend((file_index, d) for d, doc_id in enumerate(ids)
                                  if offsets[d + 1] > offsets[d] and split_of(doc_id, fractions) == which)
        if not self.documents:
            raise BertpipeError(f"no documents of the {which} split in {', '.join(map(str, files))} "
                                f"with --split {split}")
        lengths = np.asarray([self.texts[f][1][d + 1] - self.texts[f][1][d] for f, d in self.documents], dtype=float)
        self.cumulative = np.cumsum(lengths) / lengths.sum()
        self.samples = max(1, int(lengths.sum() * TOKENS_PER_BYTE / spec.seq_length))

    def __len__(self) -> int:
        return self.samples

    def _sentences(self, document: int) -> list:
        file_index, d = self.documents[document]
        text, offsets = self.texts[file_index]
        return bytes(text[offsets[d]:offsets[d + 1]]).decode("utf-8").split("\n")

    def _draw_document(self, rng: random.Random, avoid=None) -> int:
        for _ in range(10):
            document = min(int(np.searchsorted(self.cumulative, rng.random(), side="right")),
                           len(self.documents) - 1)
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
        spans, forced = [], []
        if shard.documents:
            document_pairs(shard, 0, shard.sentence_starts.tolist(), spec, rng, spans, forced)
        return (shard.tokens, np.asarray([spans[0]], dtype=np.int64)) if spans else None

    def read(self, indices) -> dict:
        """Samples `indices` as a batch of torch tensors, with the TFRecords' feature names."""
        rows = []
        for index in indices:
            tokens, span = self._pair(int(index))
            gen = np.random.default_rng([self.seed, int(index)])
            rows.append(materialize(tokens, span, self.spec, self.tokenizer, gen))
        batch = {name: np.concatenate([row[name] for row in rows]) for name in rows[0] if name != "masked_lm_kind"}
        return {name: torch.from_numpy(values) for name, values in batch.items()}
