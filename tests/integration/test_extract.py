"""The extract stage with the real WikiExtractor 3.1.0, on the bundled sample and on broken parts made from it."""

import bz2
import json

import pytest

from bertpipe import BertpipeError
from bertpipe.extract import extract_part
from tests.conftest import SAMPLE, SAMPLE_ARTICLES, run_bertpipe, split_pages, write_part


def test_sample_yields_every_article_without_revid(tmp_path):
    out = tmp_path / "part.jsonl"
    assert extract_part(SAMPLE, out, processes=2) == SAMPLE_ARTICLES
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
