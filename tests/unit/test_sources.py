"""Your own corpus: which files and jobs (`source.files`, `source.group_mb`), the documents of loose JSON and plain
text, each kind of bad input stopped with its file and line or skipped and counted, and the corpus's manifest."""

import json
import os
import random
import re
from pathlib import Path

import pytest

from bertpipe import BertpipeError
from bertpipe.hashing import content_hash
from bertpipe.settings import CorpusSettings, SourceSettings
from bertpipe.sources import corpus_jobs, input_files
from bertpipe.stages.corpus import build_part, summarize

SENTENCE = "The committee met on Tuesday to discuss the budget for the coming year."
LOOSE_JSON = SourceSettings(format="loose_json", files=["x"])
SKIP = SourceSettings(format="loose_json", files=["x"], bad_input="skip")
ANY_LENGTH = CorpusSettings(split="1", min_chars=0)


def write(path, data):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data if isinstance(data, bytes) else data.encode())
    return path


def json_lines(*records):
    return "".join(json.dumps(record) + "\n" for record in records)


def shard_documents(outdir):
    return [json.loads(line) for shard in sorted(outdir.glob("*/shard-*.jsonl")) for line in shard.open()]


# -- which files, which jobs -------------------------------------------------------------------------------------
def test_paths_and_patterns_name_each_file_once_in_order(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for name in ("a/1.jsonl", "a/2.jsonl", "a/deep/3.jsonl", "b.jsonl", "a/notes.txt"):
        write(tmp_path / name, "{}\n")
    assert input_files(["a/**/*.jsonl", "b.jsonl", "a/1.jsonl"]) == ["a/1.jsonl", "a/2.jsonl", "a/deep/3.jsonl",
                                                                   "b.jsonl"]
    assert input_files([str(tmp_path / "a/*.jsonl")]) == [str(tmp_path / "a/1.jsonl"), str(tmp_path / "a/2.jsonl")]


@pytest.mark.parametrize("missing", ["no-such.jsonl", "a/*.json", "nowhere/**/*.jsonl"])
def test_a_path_or_pattern_that_names_no_file_is_an_error_naming_it(tmp_path, monkeypatch, missing):
    monkeypatch.chdir(tmp_path)
    write(tmp_path / "a/1.jsonl", "{}\n")
    with pytest.raises(BertpipeError, match=rf"source.files: '{re.escape(missing)}'.*(no such file|matches no file)"):
        input_files(["a/1.jsonl", missing])


def corpus_of(folder, sizes, monkeypatch):
    """Files of the given sizes, named in path order, under `folder` as the working folder: the same relative paths,
    and so the same jobs, in every run."""
    monkeypatch.chdir(folder)
    for index, size in enumerate(sizes):
        write(Path(f"f{index:05d}.txt"), b"x" * size)
    return ["*.txt"]


def test_a_file_a_job_with_group_mb_0_and_for_each_file_of_at_least_group_mb(tmp_path, monkeypatch):
    patterns = corpus_of(tmp_path, [10, 2**20, 30], monkeypatch)
    assert sorted(map(len, corpus_jobs(patterns, 0).values())) == [1, 1, 1]
    jobs = corpus_jobs(patterns, 1)  # the 1 MB file alone; the two small ones together (a 1-in-30000 boundary)
    assert sorted(jobs.values()) == [["f00000.txt", "f00002.txt"], ["f00001.txt"]]
    assert all(name.startswith(os.path.basename(files[0])) for name, files in jobs.items())


def test_small_files_make_groups_of_at_most_group_mb(tmp_path, monkeypatch):
    sizes = [random.Random(index).randint(1_000, 20_000) for index in range(3000)]
    jobs = corpus_jobs(corpus_of(tmp_path, sizes, monkeypatch), 0.5)
    group_bytes = [sum(os.path.getsize(path) for path in files) for files in jobs.values()]
    assert sum(group_bytes) == sum(sizes) and sorted(sum(jobs.values(), [])) == sorted(
        path.name for path in tmp_path.glob("*.txt"))
    assert max(group_bytes) <= 0.5 * 2**20 and 0.5 * 2**20 / 4 < sum(group_bytes) / len(group_bytes), group_bytes
    assert all(files == sorted(files) for files in jobs.values()), "neighbours in path order"


def test_adding_a_file_changes_its_own_group_and_rarely_the_next(tmp_path, monkeypatch):
    """Whichever file is added: every group before the one it joins keeps its name and files; the group it joins
    changes, and the next ones only where the new file ends or fills up its group; the groups after are as they
    were."""
    sizes = [random.Random(index).randint(1_000, 20_000) for index in range(400)]
    patterns = corpus_of(tmp_path, sizes, monkeypatch)
    before = corpus_jobs(patterns, 0.2)
    order = sorted(before, key=lambda name: before[name][0])
    assert len(before) > 10
    changed_counts = []
    for trial in range(40):
        added = Path(f"f{random.Random(trial).randint(0, 400):05d}-new{trial}.txt")
        write(added, b"y" * random.Random(trial).randint(1_000, 20_000))
        after = corpus_jobs(patterns, 0.2)
        added.unlink()
        joined = max((index for index, name in enumerate(order) if before[name][0] < str(added)), default=0)
        changed = [index for index, name in enumerate(order) if after.get(name) != before[name]]
        # (none where the new file, after a group's end, ends a group of its own)
        assert changed in ([], list(range(joined, joined + len(changed))),
                           list(range(joined + 1, joined + 1 + len(changed)))), (trial, changed)
        assert len(changed) <= 3 and sum(str(added) in files for files in after.values()) == 1
        changed_counts.append(len(changed))
    assert sum(count > 1 for count in changed_counts) <= len(changed_counts) / 4, changed_counts


# -- documents -----------------------------------------------------------------------------------------------------
def test_loose_json_takes_the_text_and_id_keys_and_splits_a_record_without_id_by_its_text(tmp_path):
    text = " ".join([SENTENCE] * 3)
    source = write(tmp_path / "in.jsonl", json_lines({"key": "a1", "body": text, "extra": 1}, {"body": text},
                                                     {"key": None, "body": text}) + "\n")
    stats = build_part(source, tmp_path / "out", ANY_LENGTH,
                       SourceSettings(format="loose_json", files=["x"], text_key="body", id_key="key"))
    documents = shard_documents(tmp_path / "out")
    assert [d["id"] for d in documents][0] == "a1" and documents[1]["id"] == documents[2]["id"] != "a1"
    assert documents[1]["id"].startswith("text-") and stats["documents_in"] == 3
    assert all(d["text"].split("\n") == [SENTENCE] * 3 for d in documents)


@pytest.mark.parametrize("source, expected", [
    (LOOSE_JSON, ["Summary", "The committee met on Tuesday", "to discuss the budget.", "It agreed.", "Next steps."]),
    (SourceSettings(format="plain_text", files=["x"]),
     ["Summary", "The committee met on Tuesday to discuss the budget.", "It agreed.", "Next steps."])])
def test_own_text_keeps_short_paragraphs_and_plain_text_joins_wrapped_lines(tmp_path, source, expected):
    """WikiExtractor's headings rule is Wikipedia's: a loose-JSON record's lines are its paragraphs, plain text's are
    runs of lines between blank lines (wrapped lines joined)."""
    text = "Summary\n\nThe committee met on Tuesday\nto discuss the budget.   It agreed.\n \nNext steps."
    data = json_lines({"id": "1", "text": text}) if source.format == "loose_json" else text
    build_part(write(tmp_path / "in.txt", data), tmp_path / "out", ANY_LENGTH, source)
    (document,) = shard_documents(tmp_path / "out")
    assert document["text"].split("\n") == expected


@pytest.mark.parametrize("documents, expected", [
    ("file", [["First one.", "Second one.", "Third one."], ["Only one here."]]),
    ("blank_line", [["First one."], ["Second one."], ["Third one."], ["Only one here."]])])
def test_plain_text_is_a_document_a_file_or_a_document_a_blank_line(tmp_path, documents, expected):
    files = [write(tmp_path / "a.txt", "First one.\n\n\nSecond one.\n\nThird one.\n"),
             write(tmp_path / "b.txt", "Only one here.")]
    stats = build_part(files, tmp_path / "out", ANY_LENGTH,
                       SourceSettings(format="plain_text", files=["x"], documents=documents))
    assert sorted(d["text"].split("\n") for d in shard_documents(tmp_path / "out")) == sorted(expected)
    assert [(f["path"], f["documents"]) for f in stats["files"]] == [
        (str(files[0]), len(expected) - 1), (str(files[1]), 1)]


# -- bad input -----------------------------------------------------------------------------------------------------
GOOD = json_lines({"id": "1", "text": SENTENCE}, {"id": "2", "text": SENTENCE})
BAD_JSON = {
    "not_json": (GOOD + '{"id": "3", "text": "unfinished\n', ", line 3: not JSON"),
    "not_json ": (GOOD + "[1, 2]\n", ", line 3: a JSON list, not an object"),
    "no_text": (GOOD + '{"id": "3", "body": "x"}\n', ", line 3: no text \\(a string under 'text'\\)"),
    "no_text ": (GOOD + '{"id": "3", "text": 5}\n', ", line 3: no text"),
    "not_utf8": (GOOD.encode() + b'{"id": "3", "text": "caf\xe9"}\n', r", line 3: not UTF-8 \(byte 25 of the line\)"),
    "empty_files": ("\n\n", ": an empty file"),
}


@pytest.mark.parametrize("case", BAD_JSON)
def test_bad_loose_json_stops_naming_file_and_line_and_leaves_no_output(tmp_path, case):
    data, message = BAD_JSON[case]
    source = write(tmp_path / "in.jsonl", data)
    with pytest.raises(BertpipeError, match=rf"{source}{message}.*source.bad_input to skip"):
        build_part([write(tmp_path / "good.jsonl", GOOD), source], tmp_path / "out", ANY_LENGTH, LOOSE_JSON)
    assert not (tmp_path / "out").exists() and sorted(p.name for p in tmp_path.iterdir()) == ["good.jsonl",
                                                                                               "in.jsonl"]


@pytest.mark.parametrize("case", BAD_JSON)
def test_bad_loose_json_skipped_is_counted(tmp_path, case):
    data, _ = BAD_JSON[case]
    stats = build_part([write(tmp_path / "good.jsonl", GOOD), write(tmp_path / "in.jsonl", data)],
                       tmp_path / "out", ANY_LENGTH, SKIP)
    kind = case.strip()
    assert stats["bad_input"] == {"not_json": 0, "no_text": 0, "not_utf8": 0, "empty_files": 0} | {kind: 1}
    assert stats["documents_in"] == (2 if kind == "empty_files" else 4)
    assert len(shard_documents(tmp_path / "out")) == stats["documents_in"]


@pytest.mark.parametrize("documents", ["file", "blank_line"])
def test_plain_text_not_utf8_stops_naming_the_line_or_skips_its_document(tmp_path, documents):
    source = write(tmp_path / "in.txt", b"A good one.\n\nA bad \xff one.\nstill bad.\n\nAnother good one.\n")
    settings = SourceSettings(format="plain_text", files=["x"], documents=documents)
    with pytest.raises(BertpipeError, match=rf"{source}, line 3: not UTF-8 \(byte 7 of the line\)"):
        build_part(source, tmp_path / "stopped", ANY_LENGTH, settings)
    stats = build_part([source, write(tmp_path / "empty.txt", " \n")], tmp_path / "out", ANY_LENGTH,
                       SourceSettings(format="plain_text", files=["x"], documents=documents, bad_input="skip"))
    assert stats["bad_input"] == {"not_json": 0, "no_text": 0, "not_utf8": 1, "empty_files": 1}
    kept = sorted(d["text"] for d in shard_documents(tmp_path / "out"))
    assert kept == ([] if documents == "file" else ["A good one.", "Another good one."])


# -- the manifest ------------------------------------------------------------------------------------------------
def test_the_manifest_lists_every_file_and_the_corpus_hash_is_their_content_hash(tmp_path):
    files = [write(tmp_path / f"in/{name}.jsonl", json_lines(*({"id": f"{name}{n}", "text": SENTENCE}
                                                              for n in range(30)))) for name in "cab"]
    settings = CorpusSettings(split="8,1,1", min_chars=0)
    build_part(files[:2], tmp_path / "job1", settings, LOOSE_JSON)
    build_part(files[2:], tmp_path / "job2", settings, LOOSE_JSON)
    source = SourceSettings(format="loose_json", files=["x"], name="Meeting notes", license="cc-by-4.0")
    total = summarize([tmp_path / "job1", tmp_path / "job2"], tmp_path / "stats.json", tmp_path / "stats.html",
                      tmp_path / "manifest.json", "8,1,1", source)
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    ordered = sorted(files)
    assert [(f["path"], f["bytes"], f["documents"]) for f in manifest["files"]] == [
        (str(path), path.stat().st_size, 30) for path in ordered]
    assert manifest["corpus_hash"] == total["corpus_hash"] == content_hash(*ordered)
    assert manifest["source"] == total["source"] == {"format": "loose_json", "name": "Meeting notes",
                                                     "license": "cc-by-4.0"}
    assert (total["files"], total["documents_in"]) == (3, 90)
    files[0].write_text(json_lines({"id": "c0", "text": SENTENCE + " Changed."}))
    build_part(files[:2], tmp_path / "job1", settings, LOOSE_JSON)
    again = summarize([tmp_path / "job1", tmp_path / "job2"], tmp_path / "stats.json", tmp_path / "stats.html",
                      tmp_path / "manifest.json", "8,1,1", source)
    assert again["corpus_hash"] != total["corpus_hash"], "a changed file changes the corpus's hash"


def test_compressed_files_are_read_decompressed_and_a_byte_order_mark_is_no_fault(tmp_path):
    import bz2
    import gzip
    import lzma

    import zstandard

    records = json_lines({"id": "1", "text": SENTENCE}, {"id": "2", "text": SENTENCE + " Again."})
    # zstd in two frames, as a multi-threaded `zstd -T` or an appending writer makes them
    frames = [zstandard.ZstdCompressor().compress(json_lines({"id": str(n), "text": SENTENCE}).encode() * 3000)
              for n in (6, 7)]
    files = [write(tmp_path / "a.jsonl.gz", gzip.compress(records.encode())),
             write(tmp_path / "b.jsonl.bz2", bz2.compress(records.replace('"1"', '"3"').replace('"2"', '"4"')
                                                          .encode())),
             write(tmp_path / "c.jsonl.xz", lzma.compress(b"\xef\xbb\xbf" + json_lines({"id": "5", "text": SENTENCE})
                                                          .encode())),
             write(tmp_path / "d.jsonl.zst", b"".join(frames))]
    stats = build_part(files, tmp_path / "out", ANY_LENGTH, LOOSE_JSON)
    assert sorted(set(d["id"] for d in shard_documents(tmp_path / "out"))) == ["1", "2", "3", "4", "5", "6", "7"]
    assert [f["documents"] for f in stats["files"]] == [2, 2, 1, 6000] and stats["bad_input"]["not_json"] == 0


def test_a_very_repetitive_zst_file_is_read_in_bounded_memory(tmp_path):
    """64 MB of one line, compressed 10,000 times to a few KB, whose every KB stands for some 10 MB: read a KB of
    compressed input at a time, it never holds much more than that, nor the whole file."""
    import tracemalloc

    import zstandard

    from bertpipe.sources import lines_of

    line = json_lines({"id": "1", "text": SENTENCE}).encode()
    count = 64 * 2**20 // len(line)
    path = write(tmp_path / "a.jsonl.zst", zstandard.ZstdCompressor().compress(line * count))
    tracemalloc.start()
    try:
        with lines_of(path) as lines:
            assert sum(1 for _ in lines) == count
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 32 * 2**20, f"{peak / 2**20:.0f} MB"


def compressed_damaged(suffix: str, data: bytes) -> bytes:
    """`data` compressed as `suffix` says, cut off before its end."""
    import gzip

    import zstandard

    compress = {".gz": gzip.compress, ".zst": zstandard.ZstdCompressor().compress}[suffix]
    whole = compress(data)
    return whole[:len(whole) // 2]


@pytest.mark.parametrize("name, content", [
    ("a.jsonl.gz", lambda: compressed_damaged(".gz", GOOD.encode() * 50)),
    ("a.jsonl.zst", lambda: compressed_damaged(".zst", GOOD.encode() * 5000)),
    ("a.jsonl.zst", lambda: GOOD.encode()),  # not zstd at all
])
def test_a_compressed_file_that_does_not_decompress_stops_naming_it_even_when_skipping(tmp_path, name, content):
    damaged = write(tmp_path / name, content())
    with pytest.raises(BertpipeError, match=rf"{damaged}: does not decompress as {damaged.suffix}"):
        build_part(damaged, tmp_path / "out", ANY_LENGTH, SKIP)
    assert not (tmp_path / "out").exists()


def test_a_file_whose_name_looks_like_a_pattern_is_that_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write(tmp_path / "papers [2024].jsonl", "{}\n")
    assert input_files(["papers [2024].jsonl"]) == ["papers [2024].jsonl"]


def test_an_id_that_names_nothing_is_replaced_by_the_texts_hash(tmp_path):
    lines = ('{"id": "", "text": "A first text here."}\n{"id": NaN, "text": "A second text here."}\n'
             '{"id": true, "text": "A third text here."}\n{"id": [1], "text": "A fourth text here."}\n'
             '{"id": 7, "text": "A fifth text here."}\n')
    build_part(write(tmp_path / "in.jsonl", lines), tmp_path / "out", ANY_LENGTH, LOOSE_JSON)
    ids = sorted(d["id"] for d in shard_documents(tmp_path / "out"))
    assert ids[0] == "7" and len(set(ids)) == 5 and all(i.startswith("text-") for i in ids[1:])


def test_a_lone_surrogate_in_a_record_is_bad_utf8_named_or_counted(tmp_path):
    source = write(tmp_path / "in.jsonl", GOOD + '{"id": "3", "text": "broken \\ud83d emoji"}\n')
    with pytest.raises(BertpipeError, match=rf"{source}, line 3: not UTF-8 text \(a lone surrogate, \\ud83d"):
        build_part(source, tmp_path / "stopped", ANY_LENGTH, LOOSE_JSON)
    stats = build_part(source, tmp_path / "out", ANY_LENGTH, SKIP)
    assert stats["bad_input"]["not_utf8"] == 1 and stats["documents_in"] == 2


def test_a_null_id_key_reaches_the_command_as_null(capsys):
    from bertpipe import cli, settings

    flags = settings.flags(SourceSettings, {"format": "loose_json", "id_key": None}, only=("format", "id_key"))
    assert flags == "--format loose_json --id-key ''"
    argv = ["corpus", "build", "--input", "a.jsonl", "--outdir", "o", "--format", "loose_json", "--id-key", ""]
    assert cli.parser(argv).parse_args(argv).id_key is None
