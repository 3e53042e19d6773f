"""The extract stage with the real WikiExtractor 3.1.0, on the bundled sample and on broken parts made from it."""

import bz2
import io
import json

import pytest

from bench.harness import SAMPLE
from bench.harness.mirror import split_pages
from bertpipe import BertpipeError
from bertpipe.stages.extract import extract_part
from tests.conftest import SAMPLE_ARTICLES, run_bertpipe, write_part


def test_sample_yields_every_article_without_revid(tmp_path):
    out = tmp_path / "part.jsonl"
    assert extract_part(SAMPLE, out, processes=2)["articles"] == SAMPLE_ARTICLES
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(records) == SAMPLE_ARTICLES
    assert all(list(r) == ["id", "title", "url", "text"] for r in records)
    anarchism = next(r for r in records if r["title"] == "Anarchism")
    assert anarchism["id"] == "12" and anarchism["url"].endswith("curid=12")
    assert anarchism["text"].startswith("Anarchism is a political philosophy")


def assert_fails_cleanly(tmp_path, dump, message):
    out = tmp_path / "out" / "part.jsonl"
    result = run_bertpipe("extract", "--input", dump, "--out", out)
    assert result.returncode == 1, result.stderr
    assert message in result.stderr and str(dump) in result.stderr
    assert "Traceback" not in result.stderr
    assert not out.parent.exists() or not list(out.parent.iterdir()), "no output, not even a temporary file"


def test_dump_without_siteinfo_fails(tmp_path, sample_xml):
    header, pages, footer = split_pages(sample_xml)
    header = header[: header.index(b"<siteinfo>")]
    dump = tmp_path / "nositeinfo.xml.bz2"
    write_part(dump, header, pages, footer)
    assert_fails_cleanly(tmp_path, dump, "no <siteinfo>")


def test_utf16_dump_fails(tmp_path, sample_xml):
    dump = tmp_path / "utf16.xml.bz2"
    dump.write_bytes(bz2.compress(sample_xml.decode("utf-8").encode("utf-16")))
    assert_fails_cleanly(tmp_path, dump, "UTF-16")


def test_truncated_bz2_fails(tmp_path):
    dump = tmp_path / "truncated.xml.bz2"
    data = SAMPLE.read_bytes()
    dump.write_bytes(data[: len(data) // 2])
    assert_fails_cleanly(tmp_path, dump, "truncated")


def test_part_without_articles_fails(tmp_path, sample_xml):
    header, pages, footer = split_pages(sample_xml)
    dump = tmp_path / "nopages.xml.bz2"
    write_part(dump, header, [], footer)
    assert_fails_cleanly(tmp_path, dump, "no articles")


def test_empty_file_fails(tmp_path):
    dump = tmp_path / "empty.xml.bz2"
    dump.write_bytes(b"")
    assert_fails_cleanly(tmp_path, dump, "empty")


def test_not_bz2_fails(tmp_path, sample_xml):
    dump = tmp_path / "plain.xml.bz2"
    dump.write_bytes(sample_xml[:5000])
    assert_fails_cleanly(tmp_path, dump, "not a readable bz2 file")


def test_missing_input_is_a_clear_error(tmp_path):
    with pytest.raises(BertpipeError, match="no such file"):
        extract_part(tmp_path / "absent.bz2", tmp_path / "out.jsonl", processes=1)


def test_surrogate_entities_are_repaired_counted_and_the_part_extracts_whole(tmp_path, sample_xml):
    # Numeric references to UTF-16 surrogates, as some real articles hold: a pair (U+1F600) and a lone one.
    header, pages, footer = split_pages(sample_xml)
    anarchism = next(i for i, page in enumerate(pages) if b"<title>Anarchism</title>" in page)
    pages[anarchism] = pages[anarchism].replace(
        b"</text>", b"\n\nA smile &amp;#55357;&amp;#56832; and a lone &amp;#xD800; here.</text>", 1)
    dump = tmp_path / "surrogates.xml.bz2"
    write_part(dump, header, pages, footer)
    out = tmp_path / "part.jsonl"
    counts = extract_part(dump, out, processes=2)
    assert counts["articles"] == SAMPLE_ARTICLES and counts["records_skipped"] == 0
    assert counts["lone_surrogates_replaced"] == 1
    records = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    text = next(r["text"] for r in records if r["title"] == "Anarchism")
    assert text.startswith("Anarchism is a political philosophy")
    assert "A smile \U0001F600 and a lone \ufffd here." in text


def test_a_record_that_does_not_parse_is_skipped_counted_and_named(caplog):
    """WikiExtractor's output read line by line: a torn record, one without text and one that is not an object are
    skipped and named (page id and title where they can be read); the articles around them are kept."""
    from bertpipe.stages.extract import write_articles

    good = json.dumps({"id": "12", "url": "u", "title": "Anarchism", "text": "Anarchism is."}).encode()
    records = [good + b"\n", b'{"id": "25", "url": "u", "title": "Autism", "text": "Autism is a\n',
               json.dumps({"id": "39", "url": "u", "title": "Albedo"}).encode() + b"\n", b"[1, 2]\n", good + b"\n"]
    out = io.StringIO()
    counts = write_articles(records, out, "part.bz2")
    assert counts["articles"] == 2 and counts["records_skipped"] == 3
    assert [json.loads(line)["title"] for line in out.getvalue().splitlines()] == ["Anarchism", "Anarchism"]
    assert "record 2 (page 25, 'Autism')" in caplog.text and "record 3 (page 39, 'Albedo')" in caplog.text
    assert "record 4 (b'[1, 2]" in caplog.text


def test_surrogates_left_by_any_path_are_joined_or_replaced():
    from bertpipe.stages.extract import repair_surrogates

    counts = {"surrogate_pairs_joined": 0, "lone_surrogates_replaced": 0}
    assert repair_surrogates("a\ud83d\ude00b\udc00c\ud800", counts) == "a\U0001F600b\ufffdc\ufffd"
    assert counts == {"surrogate_pairs_joined": 1, "lone_surrogates_replaced": 2}
