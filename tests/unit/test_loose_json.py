"""Megatron's loose-json path: lazy files, the split by document id, deterministic samples with BERT's layout."""

import json
import logging
import multiprocessing
import os
import time
import tracemalloc

import numpy as np
import pytest

from bertpipe import BertpipeError
from bertpipe.atomic import exclusive
from bertpipe.settings import InstanceSpec
from bertpipe.splits import SPLITS, parse_split, split_indices, split_of, split_point
from bertpipe.train import loose_json_samples as module
from bertpipe.train.loose_json_samples import OFFSETS, LooseJsonSamples, build_lazy

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
    offsets = np.fromfile(folder / OFFSETS, dtype="<i8")
    text = (folder / "text").read_bytes()
    documents = [json.loads(line)["text"] for line in path.read_text().splitlines()]
    assert [text[offsets[i]:offsets[i + 1]].decode() for i in range(len(documents))] == documents


def test_bad_line_names_file_line_and_key(tmp_path):
    path = tmp_path / "wiki.jsonl"
    path.write_text('{"text": "fine."}\n{"body": "wrong key"}\n')
    with pytest.raises(BertpipeError, match=r"wiki.jsonl, line 2: not a JSON object with a string 'text'"):
        build_lazy(path, "text")
    assert not (tmp_path / "wiki.jsonl.lazy").exists()


def test_invalid_utf8_names_file_and_line(tmp_path):
    path = loose_json(tmp_path / "wiki.jsonl", documents=300)
    path.write_bytes(path.read_bytes() + b'{"text": "na\xefve"}\n')
    with pytest.raises(BertpipeError, match=r"wiki.jsonl, line 301: not UTF-8 \(byte 13 of the line\); write the file "
                                            r"as UTF-8 JSON lines"):
        build_lazy(path, "text")
    assert not (tmp_path / "wiki.jsonl.lazy").exists()


def test_split_by_document_id_like_the_corpus_stage(tmp_path):
    path = loose_json(tmp_path / "wiki.jsonl", documents=200)
    train = LooseJsonSamples([path], WordTokenizer(), SPEC, "8,1,1", "train", "text", seed=1)
    valid = LooseJsonSamples([path], WordTokenizer(), SPEC, "8,1,1", "valid", "text", seed=1)
    fractions = parse_split("8,1,1")
    assert set(train.index_in_file) == {d for d in range(200) if split_of(f"doc{d}", fractions) == "train"}
    assert set(valid.index_in_file) == {d for d in range(200) if split_of(f"doc{d}", fractions) == "valid"}


def test_the_split_of_many_points_at_once_is_the_split_of_each_id():
    """The loose-json index splits millions of documents with numpy; the corpus stage splits one id at a time: the
    same rule, also at a zero weight and at the top of the range (where the weights' float sum falls short of 1)."""
    ids = [f"doc{d}" for d in range(3000)]
    for spec in ("8,1,1", "1000,1,1", "1,0,1", "0,1,0", "1,1"):
        fractions = parse_split(spec)
        indices = split_indices([split_point(i) for i in ids], fractions)
        assert [SPLITS[k] for k in indices] == [split_of(i, fractions) for i in ids], spec
    top = split_indices([2**64 - 1], parse_split("0.7,0.2,0.1"))
    assert SPLITS[int(top[0])] == "test"
    assert SPLITS[int(split_indices([2**64 - 1], parse_split("1,1,0"))[0])] == "valid"


def _open_as_a_rank(path, results):
    """A rank's start: open the train split; reports (documents, whether this process built the index)."""
    built = []
    handler = logging.Handler()
    handler.emit = lambda record: built.append(record.getMessage().startswith("indexed"))
    logging.getLogger(module.__name__).addHandler(handler)
    logging.getLogger(module.__name__).setLevel(logging.INFO)
    documents = len(LooseJsonSamples([path], WordTokenizer(), SPEC, "1", "train", "text", seed=1).file_of)
    results.put((documents, any(built)))


def blocked_on(lock_file) -> int:
    """How many processes wait for a lock on `lock_file` (/proc/locks: its waiters are the lines with '->')."""
    inode = os.stat(lock_file).st_ino
    return sum(1 for line in open("/proc/locks") if "->" in line and line.split()[-3].endswith(f":{inode}"))


def test_ranks_that_start_together_build_the_index_once_waiting_on_its_lock(tmp_path):
    """The rank that takes the lock builds; the others wait on the lock (not in a collective, whose timeout could
    run out during a long build) and then read what it built."""
    path = loose_json(tmp_path / "wiki.jsonl")
    context = multiprocessing.get_context("spawn")
    results = context.Queue()
    ranks = [context.Process(target=_open_as_a_rank, args=(path, results)) for _ in range(2)]
    with exclusive(f"{path}.lazy.lock"):  # held until both ranks wait behind it, so that they meet there
        for rank in ranks:
            rank.start()
        deadline = time.monotonic() + 120
        while blocked_on(f"{path}.lazy.lock") < 2:
            assert time.monotonic() < deadline and all(rank.is_alive() for rank in ranks), "the ranks did not wait"
            time.sleep(0.05)
    outcomes = [results.get(timeout=120) for _ in ranks]
    for rank in ranks:
        rank.join(timeout=60)
    assert sorted(outcomes) == [(60, False), (60, True)], outcomes


def test_the_index_is_built_in_bounded_memory(tmp_path, monkeypatch):
    """Python heap while indexing: flat in the number of documents (a piece of each column at a time, never a list
    of every offset or id)."""
    monkeypatch.setattr(module, "ROWS_PER_WRITE", 1000)
    peaks = []
    for documents in (5000, 50000):
        path = tmp_path / f"wiki-{documents}.jsonl"
        path.write_text("".join(json.dumps({"id": f"d{d}", "text": f"sentence {d}."}) + "\n" for d in range(documents)))
        tracemalloc.start()
        build_lazy(path, "text")
        peaks.append(tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()
    assert peaks[1] < 1.5 * peaks[0], peaks


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
