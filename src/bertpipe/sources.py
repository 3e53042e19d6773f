"""The corpus's input files and their documents: which files there are, which corpus job reads each, and the
documents in a file (loose JSON lines, plain text, or WikiExtractor's JSON for a Wikipedia dump).

Jobs: a file of at least `source.group_mb` is a job of its own; smaller files share jobs with their neighbours in path
order, a group holding at most `group_mb`. A group ends after a file chosen by a hash of its path, with odds of three
times its size over `group_mb` (groups of about a third of `group_mb` on average, so that few fill up), or where the
next file would pass `group_mb`: which group a file joins depends on the files around it, not on the whole list, so
adding a file changes its own group's job and no other, but where it ends its group (splitting it in two) or fills it
up (its last file moving on to the next group). A job is named by its first file.

Files ending in .gz, .bz2, .xz or .zst are read decompressed. Bad input (a line that is not JSON or has no text,
text that is not UTF-8, an empty file) stops the job with the file and line (`bad_input: stop`), or is left out and
counted (`skip`); a compressed file that does not decompress always stops it.
"""

import bz2
import contextlib
import glob
import gzip
import hashlib
import io
import json
import logging
import lzma
import math
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
        if os.path.isfile(expanded):  # a file's own name may hold [ ] * ?
            matches = [expanded]
        elif any(character in expanded for character in "*?["):
            matches = [path for path in glob.glob(expanded, recursive=True) if os.path.isfile(path)]
            if not matches:
                raise BertpipeError(f"source.files: {pattern!r} matches no file (looked in {os.getcwd()}); fix the "
                                    "pattern or remove it")
        else:
            raise BertpipeError(f"source.files: {pattern!r}: no such file (looked in {os.getcwd()}); fix the path "
                                "or remove it")
        files.update(os.path.normpath(path) for path in matches)
    return sorted(files)


def _point(path: str) -> int:
    return int.from_bytes(hashlib.blake2b(path.encode("utf-8"), digest_size=8).digest(), "big")


def job_name(path: str) -> str:
    """A job's name from its first file: the file's name (as a wildcard may hold it) and a hash of its path."""
    return f"{re.sub(r'[^A-Za-z0-9._-]+', '_', Path(path).name)[:60]}-{_point(path):016x}"


def corpus_jobs(patterns, group_mb: float) -> dict:
    """{job name: its files} for the files `patterns` name (module docstring)."""
    group_bytes = group_mb * 2**20
    jobs, group, grouped = {}, [], 0

    def close(files):
        name = job_name(files[0])
        if name in jobs:  # two paths with one 64-bit hash: never silently one job
            raise BertpipeError(f"source.files: {jobs[name][0]} and {files[0]} give the same job name {name}; "
                                "rename one of them")
        jobs[name] = files

    for path in input_files(patterns):
        size = os.path.getsize(path)
        if size >= group_bytes:
            close([path])
            continue
        if group and grouped + size > group_bytes:  # a group holds at most group_mb
            close(group)
            group, grouped = [], 0
        group.append(path)
        grouped += size
        if _point(path) < min(1.0, 3 * size / group_bytes) * 2**64:
            close(group)
            group, grouped = [], 0
    if group:
        close(group)
    return jobs


class ZstdFile(io.RawIOBase):
    """A .zst file's decompressed bytes, frame after frame (`zstd -T` and many writers make several), and an error
    where zstandard's own stream reader would stop without one: a file cut off within a frame (EOFError, as gzip's),
    bytes that are not zstd (OSError). The compressed bytes go to the decompressor a KiB at a time: a block of four
    bytes can stand for 128 KiB, so a larger piece of a very repetitive file could stand for gigabytes."""

    PIECE = 1024

    def __init__(self, path):
        import zstandard  # here: the Snakefile imports this module, and only a .zst input needs it

        self._errors = zstandard.ZstdError
        self._file = open(path, "rb")
        self._context = zstandard.ZstdDecompressor()
        self._frame = self._context.decompressobj()
        self._in_frame = False  # bytes of a frame read, its end not yet
        self._compressed, self._read = memoryview(b""), 0
        self._out, self._at = b"", 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        while self._at == len(self._out):
            if self._read == len(self._compressed):
                self._compressed, self._read = memoryview(self._file.read(1 << 20)), 0
                if not self._compressed:
                    if self._in_frame:
                        raise EOFError("the file ends within a zstd frame")
                    return 0
            piece = self._compressed[self._read:self._read + self.PIECE]
            self._read += len(piece)
            self._out, self._at = self._decompress(bytes(piece)), 0
        size = min(len(buffer), len(self._out) - self._at)
        buffer[:size] = self._out[self._at:self._at + size]
        self._at += size
        return size

    def _decompress(self, compressed: bytes) -> bytes:
        out = []
        while compressed:
            self._in_frame = True
            try:
                out.append(self._frame.decompress(compressed))
            except self._errors as error:
                raise OSError(str(error)) from None
            compressed = b""
            if self._frame.eof:  # the frame ended: what follows it starts the next
                compressed, self._frame = self._frame.unused_data, self._context.decompressobj()
                self._in_frame = False
        return b"".join(out)

    def close(self) -> None:
        self._file.close()
        super().close()


OPENERS = {".gz": gzip.open, ".bz2": bz2.open, ".xz": lzma.open,
           ".zst": lambda path, mode: io.BufferedReader(ZstdFile(path), 1 << 20)}


@contextlib.contextmanager
def lines_of(path):
    """The lines of `path` as bytes (decompressed for .gz, .bz2, .xz, .zst), its first without a UTF-8 byte-order
    mark; a compressed file that does not decompress is an error naming it."""
    opener = OPENERS.get(Path(path).suffix.lower(), open)
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
            try:
                text.encode("utf-8")
            except UnicodeEncodeError as error:
                bad("not_utf8", f"{path}, line {number}: not UTF-8 text (a lone surrogate, "
                                f"\\u{ord(text[error.start]):04x}, at character {error.start + 1} of the text)")
                continue
            yield _document_id(record.get(id_key) if id_key else None), text, record
    if empty:
        bad("empty_files", f"{path}: an empty file")


def _document_id(value):
    """A record's id as the split reads it; None (the text's hash decides) for one that names nothing: null, empty,
    true or false, not a finite number, a list or an object."""
    if isinstance(value, bool) or value is None or isinstance(value, (list, dict)):
        return None
    if isinstance(value, float) and not math.isfinite(value):
        return None
    text = str(value)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return None
    return text or None


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
    if source.format == "wikipedia":  # WikiExtractor's keys, whatever the settings for your own files say
        return loose_json_documents(path, "text", "id", bad)
    return loose_json_documents(path, source.text_key, source.id_key, bad)


# The source settings each format reads, in a corpus job (what its rule passes, so that a setting of another format
# reruns nothing).
BUILD_SETTINGS = {"wikipedia": ("format", "bad_input"), "loose_json": ("format", "text_key", "id_key", "bad_input"),
                  "plain_text": ("format", "documents", "bad_input")}


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
