"""Stage `extract`: one dump part to loose JSON (one article a line: id, title, url, text) with WikiExtractor 3.1.0.

WikiExtractor fails quietly on some inputs (no `<siteinfo>`: 0 articles, exit code 0) and with a traceback on others
(UTF-16, a truncated bz2), so the part is checked first, and a part that yields no articles fails the job.
WikiExtractor's `revid` carries the contributor's id for most pages, so it is not kept.

One article never fails a part. Wikitext can hold numeric character references to UTF-16 surrogates (`&#55357;`),
which WikiExtractor turns into surrogate code points: not characters, and not writable as UTF-8. A high and low pair
becomes the character it encodes, a lone one U+FFFD, and both are counted. A record that still cannot be read is
skipped, counted and named in the log.
"""

import bz2
import contextlib
import json
import logging
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bertpipe import BertpipeError, settings
from bertpipe.atomic import atomic_file
from bertpipe.settings import ExtractSettings
from bertpipe.stopping import end_with_parent
from bertpipe.tracking import Outcome

log = logging.getLogger(__name__)

HEAD_BYTES = 1 << 16  # <siteinfo> follows the <mediawiki> tag within the first few kB
CHUNK_BYTES = 1 << 22
FIELDS = ("id", "title", "url", "text")
SURROGATES = re.compile("([\ud800-\udbff][\udc00-\udfff])|[\ud800-\udfff]")


def repair_surrogates(text: str, counts: dict) -> str:
    """`text` with each surrogate pair made its character and each lone surrogate U+FFFD, counted in `counts`."""

    def repair(match):
        if match.group(1):
            counts["surrogate_pairs_joined"] += 1
            return match.group(1).encode("utf-16-le", "surrogatepass").decode("utf-16-le")
        counts["lone_surrogates_replaced"] += 1
        return "\ufffd"

    return SURROGATES.sub(repair, text)


def _open_dump(path: Path):
    return bz2.open(path, "rb") if path.suffix == ".bz2" else open(path, "rb")


def check_dump(path) -> None:
    """Read the whole part once: a clear error for a missing file, bad compression, UTF-16, no <siteinfo>."""
    path = Path(path)
    if not path.is_file():
        raise BertpipeError(f"{path}: no such file")
    try:
        with _open_dump(path) as f:
            head = f.read(HEAD_BYTES)
            if not head:
                raise BertpipeError(f"{path}: the dump part is empty; download it again "
                                    "(snakemake --forcerun download)")
            if head.startswith((b"\xff\xfe", b"\xfe\xff")) or b"\x00" in head:
                raise BertpipeError(
                    f"{path}: the XML is UTF-16 encoded; WikiExtractor reads UTF-8 dumps only: re-encode it "
                    "(bzcat FILE | iconv -f UTF-16 -t UTF-8 | bzip2 > NEW) or use the dump as Wikimedia publishes it"
                )
            if b"<siteinfo>" not in head:
                raise BertpipeError(
                    f"{path}: no <siteinfo> at the start of the XML; WikiExtractor would silently find 0 articles. "
                    "Each part of a Wikimedia dump starts with <mediawiki><siteinfo>...; is this a complete dump file?"
                )
            while f.read(CHUNK_BYTES):
                pass
    except EOFError as error:
        raise BertpipeError(
            f"{path}: the bz2 stream ends early (the file is truncated); download it again "
            "(snakemake --forcerun download)"
        ) from error
    except OSError as error:
        raise BertpipeError(f"{path}: not a readable bz2 file ({error}); download it again") from error


def extract_part(dump, out, processes: int) -> dict:
    """Run WikiExtractor on one dump part and write `out` (JSON lines with FIELDS); returns the counts of articles,
    repaired surrogates and skipped records."""
    dump, out = Path(dump), Path(out)
    check_dump(dump)
    with atomic_file(out) as temp, tempfile.TemporaryFile(dir=out.parent) as raw:
        command = [sys.executable, "-m", "wikiextractor.WikiExtractor", "--json", "--processes", str(processes),
                   "--quiet", "--output", "-", str(dump)]
        # In a session of its own, so that a stop of this stage ends WikiExtractor and its worker processes with it.
        process = subprocess.Popen(command, stdout=raw, stderr=subprocess.PIPE, text=True, start_new_session=True,
                                   preexec_fn=end_with_parent)
        try:
            log.info("running %s (pid %d)", " ".join(command), process.pid)
            _, errors = process.communicate()
        except BaseException:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()
            raise
        sys.stderr.write(errors)
        if process.returncode != 0:
            last = errors.strip().splitlines()[-1:] or ["(no message)"]
            raise BertpipeError(f"{dump}: WikiExtractor failed with exit code {process.returncode}: {last[0]}")
        raw.seek(0)
        with open(temp, "w", encoding="utf-8") as f:
            counts = write_articles(raw, f, dump)
        articles = counts["articles"]
        if articles == 0:
            raise BertpipeError(
                f"{dump}: WikiExtractor found no articles in this part (no pages in the article namespace); "
                "check that it is a pages-articles dump part"
            )
    log.info("%s: %d articles; %d surrogate pairs joined, %d lone surrogates replaced, %d records skipped", out,
             articles, counts["surrogate_pairs_joined"], counts["lone_surrogates_replaced"], counts["records_skipped"])
    return counts


def write_articles(records, out, dump) -> dict:
    """WikiExtractor's JSON lines `records` (bytes) as articles with FIELDS to the text file `out`, surrogates
    repaired; a record that does not parse is skipped, counted and named in the log. Returns the counts."""
    counts = dict.fromkeys(("articles", "surrogate_pairs_joined", "lone_surrogates_replaced", "records_skipped"), 0)
    for line_number, line in enumerate(records, 1):
        try:
            record = json.loads(line.decode("utf-8", "surrogatepass"))
            article = {key: repair_surrogates(str(record[key]), counts) for key in FIELDS}
        except (ValueError, KeyError, TypeError) as error:
            counts["records_skipped"] += 1
            log.warning("%s: skipped WikiExtractor's record %d (%s): %r", dump, line_number, _name_of(line), error)
            continue
        out.write(json.dumps(article, ensure_ascii=False) + "\n")
        counts["articles"] += 1
    return counts


def _name_of(line: bytes) -> str:
    """The page id and title of a record that did not parse, as far as they can be read."""
    found = re.search(rb'"id": "([^"]*)".*?"title": "([^"]*)"', line)
    return f"page {found.group(1).decode(errors='replace')}, {found.group(2).decode(errors='replace')!r}" if found \
        else f"{line[:60]!r}"


def add_arguments(parser) -> None:
    parser.add_argument("--input", required=True, help="a pages-articles dump part (.bz2)")
    parser.add_argument("--out", required=True, help="JSON lines: id, title, url, text")
    settings.add_arguments(parser, ExtractSettings)
    parser.set_defaults(run=run, label="input", inputs=("input",))


def run(args, _) -> Outcome:
    started = time.perf_counter()
    counts = extract_part(args.input, args.out, processes=args.threads)
    return Outcome(metrics={**counts, "seconds": time.perf_counter() - started,
                            "bytes_out": Path(args.out).stat().st_size})
