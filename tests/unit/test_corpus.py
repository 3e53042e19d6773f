"""Corpus: the split's ratios and stability, cleaning, sentence splitting, shard bounds, bad input."""

import json
import math
import random

import pytest

from bertpipe import BertpipeError
from bertpipe.settings import CorpusSettings
from bertpipe.splits import SPLITS, parse_split, split_of
from bertpipe.stages.corpus import build_part, sentences_of, summarize

SENTENCE = "The quick brown fox jumps over the lazy dog near the river bank."


def article(doc_id, sentences=8):
    return {"id": str(doc_id), "title": f"T{doc_id}", "url": f"u{doc_id}", "text": " ".join([SENTENCE] * sentences)}


def write_articles(path, articles):
    path.write_text("".join(json.dumps(a) + "\n" for a in articles))
    return path


def read_split_of_ids(outdir):
    assignment = {}
    for name in SPLITS:
        for shard in sorted((outdir / name).glob("shard-*.jsonl")):
            for line in shard.read_text().splitlines():
                assignment[json.loads(line)["id"]] = name
    return assignment


@pytest.mark.parametrize(
    "spec, expected",
    [("1000,1,1", (1000 / 1002, 1 / 1002, 1 / 1002)), ("98/1/1", (0.98, 0.01, 0.01)), ("1", (1.0, 0.0, 0.0)),
     ("9,1", (0.9, 0.1, 0.0))],
)
def test_parse_split_follows_megatron(spec, expected):
    assert parse_split(spec) == pytest.approx(expected)


@pytest.mark.parametrize("spec", ["", "a,b", "1,1,1,1", "0,0,0", "-1,2,1"])
def test_parse_split_rejects_nonsense(spec):
    with pytest.raises(BertpipeError, match="split"):
        parse_split(spec)


@pytest.mark.parametrize("spec", ["1000,1,1", "8,1,1", "1,0,1"])
def test_split_ratios_within_sampling_error(spec):
    fractions = parse_split(spec)
    n = 200_000
    counts = dict.fromkeys(SPLITS, 0)
    for doc_id in range(n):
        counts[split_of(str(doc_id), fractions)] += 1
    for name, fraction in zip(SPLITS, fractions):
        sigma = math.sqrt(n * fraction * (1 - fraction))
        assert abs(counts[name] - n * fraction) <= 5 * sigma + 1e-9, (name, counts)


def test_split_depends_on_the_id_only():
    fractions = parse_split("8,1,1")
    first = {str(i): split_of(str(i), fractions) for i in range(1000)}
    again = {str(i): split_of(str(i), fractions) for i in reversed(range(1000))}
    assert first == again
    assert set(first.values()) == set(SPLITS)


def test_split_is_stable_across_input_order_and_parts(tmp_path):
    articles = [article(i) for i in range(300)]
    whole = build_part(write_articles(tmp_path / "all.jsonl", articles), tmp_path / "whole",
                       CorpusSettings(split="8,1,1"))
    shuffled = articles[:]
    random.Random(0).shuffle(shuffled)
    write_articles(tmp_path / "a.jsonl", shuffled[:120])
    write_articles(tmp_path / "b.jsonl", shuffled[120:])
    build_part(tmp_path / "a.jsonl", tmp_path / "a", CorpusSettings(split="8,1,1"))
    build_part(tmp_path / "b.jsonl", tmp_path / "b", CorpusSettings(split="8,1,1"))
    parts = {**read_split_of_ids(tmp_path / "a"), **read_split_of_ids(tmp_path / "b")}
    assert read_split_of_ids(tmp_path / "whole") == parts
    total = summarize([tmp_path / "a", tmp_path / "b"], tmp_path / "stats.json", tmp_path / "stats.html",
                      tmp_path / "manifest.json", "8,1,1")
    assert total["splits"] == whole["splits"] | {n: {**whole["splits"][n], "shards": total["splits"][n]["shards"]}
                                                 for n in SPLITS}
    page = (tmp_path / "stats.html").read_text()  # the same figures as tables, for the report
    assert f"<tr><td>documents_in</td><td>{total['documents_in']:,}</td></tr>" in page
    train = total["splits"]["train"]
    assert (f"<tr><td>train</td><td>{train['documents']:,}</td><td>{train['sentences']:,}</td>"
            f"<td>{train['characters']:,}</td><td>{train['shards']}</td></tr>") in page


def test_sentences_drop_headings_and_normalise_whitespace():
    text = ("Early life.\nShe was born in  Paris\u00a0in 1900. Her teacher was Dr. Smith, who lived in the U.S. "
            "for years.\n\n")
    assert sentences_of(text, min_paragraph_words=5) == [
        "She was born in Paris in 1900.",
        "Her teacher was Dr. Smith, who lived in the U.S. for years.",
    ]


def test_short_documents_are_dropped(tmp_path):
    articles = [article(1), {"id": "2", "title": "stub", "url": "", "text": "Too short to keep."}, article(3)]
    stats = build_part(write_articles(tmp_path / "in.jsonl", articles), tmp_path / "out",
                       CorpusSettings(split="1", min_chars=200))
    assert stats["documents_in"] == 3 and stats["documents_dropped"] == 1
    assert sorted(read_split_of_ids(tmp_path / "out")) == ["1", "3"]


def test_documents_are_one_sentence_a_line(tmp_path):
    build_part(write_articles(tmp_path / "in.jsonl", [article(7, sentences=3)]), tmp_path / "out",
               CorpusSettings(split="1", min_chars=0))
    document = json.loads((tmp_path / "out/train/shard-0000.jsonl").read_text())
    assert document["text"].split("\n") == [SENTENCE] * 3
    assert document["id"] == "7" and document["title"] == "T7"


def test_shards_stay_under_the_size_bound(tmp_path):
    stats = build_part(write_articles(tmp_path / "in.jsonl", [article(i) for i in range(200)]), tmp_path / "out",
                       CorpusSettings(split="1", shard_max_mb=20_000 / 2**20))
    shards = sorted((tmp_path / "out/train").glob("shard-*.jsonl"))
    assert len(shards) == stats["splits"]["train"]["shards"] > 5
    assert all(shard.stat().st_size <= 20_000 for shard in shards)
    assert sum(len(s.read_text().splitlines()) for s in shards) == 200


@pytest.mark.parametrize("bad_line", ["{not json", "[1, 2]", '{"id": "9"}', '{"id": "9", "text": 5}'])
def test_malformed_line_names_file_and_line_and_leaves_no_output(tmp_path, bad_line):
    source = tmp_path / "in.jsonl"
    source.write_text(json.dumps(article(1)) + "\n" + json.dumps(article(2)) + "\n" + bad_line + "\n")
    with pytest.raises(BertpipeError, match=rf"{source}, line 3: (not JSON|a JSON list|no text)") as error:
        build_part(source, tmp_path / "out", CorpusSettings(split="1"))
    assert "forcerun extract" in str(error.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.jsonl"], "no output folder, not even a temporary one"


def test_invalid_utf8_names_file_and_line_and_leaves_no_output(tmp_path):
    """Far enough into the file that a text reader, decoding ahead in blocks, would fail before the line is read."""
    source = tmp_path / "in.jsonl"
    good = "".join(json.dumps(article(n)) + "\n" for n in range(200))
    source.write_bytes(good.encode() + b'{"id": "x", "text": "caf\xe9 au lait"}\n' + json.dumps(article(201)).encode())
    with pytest.raises(BertpipeError, match=rf"{source}, line 201: not UTF-8 \(byte 25 of the line\)") as error:
        build_part(source, tmp_path / "out", CorpusSettings(split="1"))
    assert "forcerun extract" in str(error.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.jsonl"], "no output folder, not even a temporary one"


def test_summarize_refuses_an_empty_split(tmp_path):
    build_part(write_articles(tmp_path / "in.jsonl", [article(1), article(2)]), tmp_path / "out",
               CorpusSettings(split="1000,1,1"))
    with pytest.raises(BertpipeError, match="got no document"):
        summarize([tmp_path / "out"], tmp_path / "stats.json", tmp_path / "stats.html", tmp_path / "manifest.json",
                  "1000,1,1")
    assert not (tmp_path / "stats.json").exists()
