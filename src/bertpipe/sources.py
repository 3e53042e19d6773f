"""The corpus's input files and their documents: which files there are, which corpus job reads each, and the
documents in a file (loose JSON lines, plain text, or WikiExtractor's JSON for a Wikipedia dump).

Jobs: a file of at least `source.group_mb` is a job of its own; smaller files share jobs with their neighbours in path
order. A group ends after a file chosen by a hash of its path, with odds of its size over `group_mb`: groups hold
about `group_mb` of text, and which group a file joins depends on the files around it only, so adding a file changes
its own group's job and no other (a file that ends a group splits its group in two; one in `group_mb` / its size
does). A job is named by its first file.

Files ending in .gz, .bz2 or .xz are read decompressed. Bad input (a line that is not JSON or has no text, text that
is not UTF-8, an empty file) stops the job with the file and line (`bad_input: stop`), or is left out and counted
(`skip`); a compressed file that does not decompress always stops it.
"""

import bz2
import contextlib
import glob
import gzip
import hashlib
import json
import logging
import lzma
import os
import re
import zlib
from pathlib import Path

from bertpipe import BertpipeError

log = logging.getLogger(__name__)

# The kinds of bad input, counted in the corpus stage's stats and metrics (bad_input.<kind>).
BAD_INPUT = ("not_json", "no_text", "not_utf8", "empty_files")


def input_files(patterns) -> list:
    """The files that `source.files` names (paths and glob patterns, `**` for any folders below), sorted, each once;
    a path that is not a file, or a pattern that matches none, is an error that names it."""
    files = set()
    for pattern in patterns:
        expanded = os.path.expanduser(pattern)
        if any(character in expanded for character in "*?["):
            matches = [path for path in glob.glob(expanded, recursive=True) if os.path.isfile(path)]
            if not matches:
                raise BertpipeError(f"source.files: {pattern!r} matches no file (looked in {os.getcwd()}); fix the "
                                    "pattern or remove it")
        elif not os.path.isfile(expanded):
            raise BertpipeError(f"source.files: {pattern!r}: no such file (looked in {os.getcwd()}); fix the path "
                                "or remove it")
        else:
            matches = [expanded]
        files.update(os.path.normpath(path) for path in matches)
    return sorted(files)


def _point(path: str) -> int:
    return int.from_bytes(hashlib.blake2b(path.encode("utf-8"), digest_size=8).digest(), "big")


def job_name(path: str) -> str:
    """A job's name from its first file: the file's name (as a wildcard may hold it) and a hash of its path."""
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(path).name)[:60]
    return f"{stem}-{_point(path):016x}"[: len(stem) + 9]


def corpus_jobs(patterns, group_mb: float) -> dict:
    """{job name: its files} for the files `patterns` name (module docstring)."""
    group_bytes = group_mb * 2**20
    jobs, group = {}, []
    for path in input_files(patterns):
        size = os.path.getsize(path)
        if size >= group_bytes:
            jobs[job_name(path)] = [path]
            continue
        group.append(path)
        if _point(path) < size / group_bytes * 2**64:
            jobs[job_name(group[0])] = group
            group = []
    if group:
        jobs[job_name(group[0])] = group
    return jobs


OPENERS = {".gz": gzip.open, ".bz2": bz2.open, ".xz": lzma.open}


@contextlib.contextmanager
def lines_of(path):
    """The lines of `path` as bytes (decompressed for .gz, .bz2, .xz), its first without a UTF-8 byte-order mark;
    a compressed file that does not decompress is an error naming it."""
    opener = OPENERS.get(Path(path).suffix, open)
    try:
        with opener(path, "rb") as f:
            yield _without_bom(f)
    except (OSError, EOFError, lzma.LZMAError, zlib.error) as error:
        if opener is open:
            raise
        raise BertpipeError(f"{path}: does not decompress as {Path(path).suffix} ({error}); the file is damaged or "
                            "misnamed: replace it, or remove it from source.files") from None


def _without_bom(lines):
    for number, raw in enumerate(lines):
        yield raw.removeprefix(b"\xef\xbb\xbf") if number == 0 else raw


class BadInput:
    """What to do with bad input: stop with its place and `remedy`, or (`skip`) count it."""

    def __init__(self, skip: bool, remedy: str):
        self.skip, self.remedy = skip, remedy
        self.counts = dict.fromkeys(BAD_INPUT, 0)

    def __call__(self, kind: str, where: str) -> None:
        if not self.skip:
            raise BertpipeError(f"{where}; {self.remedy}")
        if not self.counts[kind]:
            log.warning("%s; left out (source.bad_input skip), and so is any more such input, counted as "
                        "bad_input.%s", where, kind)
        self.counts[kind] += 1


def loose_json_documents(path, text_key: str, id_key, bad: BadInput):
    """(id or None, text, record) of each JSON line of `path`; blank lines are passed over."""
    with lines_of(path) as f:  # bytes decoded a line at a time: a text reader decodes ahead and names no line
        empty = True
        for number, raw in enumerate(f, 1):
            if not raw.strip():
                continue
            empty = False
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as error:
                bad("not_utf8", f"{path}, line {number}: not UTF-8 (byte {error.start + 1} of the line)")
                continue
            try:
                record = json.loads(line)
            except ValueError as error:
                bad("not_json", f"{path}, line {number}: not JSON ({error})")
                continue
            if not isinstance(record, dict):
                bad("not_json", f"{path}, line {number}: a JSON {type(record).__name__}, not an object")
                continue
            text = record.get(text_key)
            if not isinstance(text, str):
                bad("no_text", f"{path}, line {number}: no text (a string under {text_key!r})")
                continue
            doc_id = record.get(id_key) if id_key else None
            yield (None if doc_id is None else str(doc_id)), text, record
    if empty:
        bad("empty_files", f"{path}: an empty file")


def plain_text_documents(path, by_blank_line: bool, bad: BadInput):
    """(None, text, {}) of each document of a text file: the whole file, or (`by_blank_line`) each run of lines
    between blank lines. A document with a line that is not UTF-8 is left out whole."""
    lines, damaged, empty = [], False, True
    with lines_of(path) as f:
        for number, raw in enumerate(f, 1):
            if not raw.strip():
                if by_blank_line:
                    if lines and not damaged:
                        yield None, "".join(lines), {}
                    lines, damaged = [], False
                else:
                    lines.append("\n")
                continue
            empty = False
            try:
                lines.append(raw.decode("utf-8"))
            except UnicodeDecodeError as error:
                bad("not_utf8", f"{path}, line {number}: not UTF-8 (byte {error.start + 1} of the line)")
                damaged = True
    if lines and not damaged and not empty:
        yield None, "".join(lines), {}
    if empty:
        bad("empty_files", f"{path}: an empty file")


def documents(path, source, bad: BadInput):
    """The documents of one input file under `source` (settings.SourceSettings): (id or None, text, record)."""
    if source.format == "plain_text":
        return plain_text_documents(path, source.documents == "blank_line", bad)
    return loose_json_documents(path, source.text_key, source.id_key, bad)


def remedy(source) -> str:
    """What to do about bad input of `source`."""
    if source.format == "wikipedia":
        return ("the file is damaged or not WikiExtractor --json output: rerun its extraction (snakemake --forcerun "
                "extract)")
    return ("fix or remove it, or set source.bad_input to skip to leave such input out (counted in the corpus "
            "stage's metrics)")


def text_id(text: str) -> str:
    """The id of a document without one: a hash of its text (the same text always lands in the same split)."""
    return "text-" + hashlib.blake2b(text.encode("utf-8"), digest_size=12).hexdigest()
