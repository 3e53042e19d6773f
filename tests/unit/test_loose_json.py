"""Megatron's loose-json path: lazy files, the split by document id, deterministic samples with BERT's layout."""

import json

import numpy as np
import pytest

from bertpipe import BertpipeError
from bertpipe.splits import parse_split, split_of
from bertpipe.instances import InstanceSpec
from bertpipe.train.loose_json import LooseJsonSamples, build_lazy

PAD, UNK, CLS, SEP, MASK = range(5)


class WordTokenizer:
    """Each word is an id: enough to check layout and determinism without a trained tokenizer."""

    cls_id, sep_id, mask_id, pad_id = CLS, SEP, MASK, PAD
    ordinary_ids = np.arange(5, 500)
    is_word_start = np.ones(500, dtype=bool)

    def encode(self, sentences):
        return [[5 + hash(word) % 495 for word in sentence.split()] for sentence in sentences]


def loose_json(path, documents=60):
    lines = []
    for d in range(documents):
        sentences = [f"document {d} sentence {s} " + "word " * (3 + (d + s) % 9) for s in range(2 + d % 7)]
        lines.append(json.dumps({"id": f"doc{d}", "text": "\n".join(sentences)}))
    path.write_text("\n".join(lines) + "\n")
    return path


SPEC = InstanceSpec(seq_length=48, max_predictions=8)


def test_lazy_files_hold_every_document(tmp_path):
    path = loose_json(tmp_path / "wiki.jsonl")
    folder = build_lazy(path, "text")
    offsets = np.load(folder / "offsets.npy")
    text = (folder / "text").read_bytes()
    documents = [json.loads(line)["text"] for line in path.read_text().splitlines()]
    assert [text[offsets[i]:offsets[i + 1]].decode() for i in range(len(documents))] == documents


def test_bad_line_names_file_line_and_key(tmp_path):
    path = tmp_path / "wiki.jsonl"
    path.write_text('{"text": "fine."}\n{"body": "wrong key"}\n')
    with pytest.raises(BertpipeError, match=r"wiki.jsonl, line 2: not a JSON object with a string 'text'"):
        build_lazy(path, "text")
    assert not (tmp_path / "wiki.jsonl.lazy").exists()


def test_split_by_document_id_like_the_corpus_stage(tmp_path):
    path = loose_json(tmp_path / "wiki.jsonl", documents=200)
    train = LooseJsonSamples([path], WordTokenizer(), SPEC, "8,1,1", "train", "text", seed=1)
    valid = LooseJsonSamples([path], WordTokenizer(), SPEC, "8,1,1", "valid", "text", seed=1)
    fractions = parse_split("8,1,1")
    assert {d for _, d in train.documents} == {d for d in range(200) if split_of(f"doc{d}", fractions) == "train"}
    assert not {d for _, d in train.documents} & {d for _, d in valid.documents}


def test_samples_are_deterministic_and_laid_out_like_tfrecords(tmp_path):
    path = loose_json(tmp_path / "wiki.jsonl")
    samples = LooseJsonSamples([path], WordTokenizer(), SPEC, "1", "train", "text", seed=3)
    batch = samples.read(range(40))
    again = LooseJsonSamples([path], WordTokenizer(), SPEC, "1", "train", "text", seed=3).read(range(40))
    assert all(np.array_equal(batch[k], again[k]) for k in batch)
    assert batch["input_ids"].shape == (40, 48) and batch["masked_lm_ids"].shape == (40, 8)
    labels = batch["next_sentence_labels"][:, 0].numpy()
    assert 0 < labels.mean() < 1
    for row in range(40):
        n = int(batch["input_mask"][row].sum())
        ids = batch["input_ids"][row].numpy()
        assert ids[0] == CLS and ids[n - 1] == SEP and (ids[n:] == PAD).all()
        assert (batch["segment_ids"][row][n:] == 0).all()
    other_seed = LooseJsonSamples([path], WordTokenizer(), SPEC, "1", "train", "text", seed=4).read(range(40))
    assert not np.array_equal(batch["input_ids"], other_seed["input_ids"])
