"""Stage `corpus`: clean articles, split them into sentences, assign each to train/valid/test, write bounded shards.

The split follows Megatron's `--split 1000,1,1` (weights normalised to fractions, by document), but a document's
split is decided by a hash of its id alone, not by its position: reruns, a different order of parts, or parts added
later never move a document from one split to another. Each dump part is processed on its own (one job per part);
`summarize` adds up the parts' stats.

Output of one part, `<outdir>/`: `{train,valid,test}/shard-NNNN.jsonl` (one document a line: id, title, url, and
`text` with one sentence a line, the format Megatron's `--loose-json --text-key text` reads) and `stats.json`.
"""

import json
import logging
import unicodedata
from pathlib import Path

import blingfire

from bertpipe import BertpipeError, settings
from bertpipe.atomic import atomic_dir, atomic_file
from bertpipe.pages import stats_page
from bertpipe.settings import CorpusSettings
from bertpipe.splits import SPLITS, parse_split, split_of
from bertpipe.stages import add_step
from bertpipe.tracking import Outcome

log = logging.getLogger(__name__)

def _zero_counts() -> dict:
    return {name: {"documents": 0, "sentences": 0, "characters": 0, "shards": 0} for name in SPLITS}


def sentences_of(text: str, min_paragraph_words: int) -> list:
    """Sentences of an article, whitespace normalised; paragraphs under `min_paragraph_words` words are dropped
    (WikiExtractor keeps section headings such as "Early life." as paragraphs of their own)."""
    sentences = []
    for paragraph in text.split("\n"):
        words = unicodedata.normalize("NFC", paragraph).split()
        if len(words) < min_paragraph_words:
            continue
        sentences.extend(s for s in blingfire.text_to_sentences(" ".join(words)).split("\n") if s)
    return sentences


class _ShardWriter:
    """Writes `<folder>/shard-NNNN.jsonl` files, starting a new one when the current one reaches `max_bytes`."""

    def __init__(self, folder: Path, max_bytes: int):
        self.folder, self.max_bytes = folder, max_bytes
        self.shards, self.file, self.size = 0, None, 0

    def write(self, line: str) -> None:
        data = line.encode("utf-8")
        if self.file is None or (self.size and self.size + len(data) > self.max_bytes):
            self.close()
            self.folder.mkdir(exist_ok=True)
            self.file = open(self.folder / f"shard-{self.shards:04d}.jsonl", "wb")
            self.shards, self.size = self.shards + 1, 0
        self.file.write(data)
        self.size += len(data)

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
            self.file = None


def _records(path: Path):
    # Bytes, decoded a line at a time: a text file's reader decodes ahead in blocks, and its error names no line.
    with open(path, "rb") as f:
        for line_number, raw in enumerate(f, 1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as error:
                raise BertpipeError(
                    f"{path}, line {line_number}: not UTF-8 (byte {error.start + 1} of the line); the file is "
                    "damaged: rerun its extraction (snakemake --forcerun extract)"
                ) from None
            try:
                record = json.loads(line)
                if not isinstance(record, dict) or not isinstance(record.get("text"), str) or "id" not in record:
                    raise ValueError("not an object with 'id' and a string 'text'")
            except ValueError as error:
                raise BertpipeError(
                    f"{path}, line {line_number}: malformed record ({error}); the file is damaged or not "
                    "WikiExtractor --json output: rerun its extraction (snakemake --forcerun extract)"
                ) from None
            yield record


def build_part(articles, outdir, settings) -> dict:
    """Clean, sentence-split and shard one part's articles (loose JSON) into `outdir` with `settings`
    (settings.CorpusSettings); returns its stats."""
    articles, outdir = Path(articles), Path(outdir)
    split, min_chars, min_paragraph_words = settings.split, settings.min_chars, settings.min_paragraph_words
    shard_max_bytes = int(settings.shard_max_mb * 2**20)
    fractions = parse_split(split)
    stats = {
        "input": str(articles),
        "split": split,
        "documents_in": 0,
        "documents_dropped": 0,
        "splits": _zero_counts(),
    }
    with atomic_dir(outdir) as temp:
        writers = {name: _ShardWriter(temp / name, shard_max_bytes) for name in SPLITS}
        try:
            for record in _records(articles):
                stats["documents_in"] += 1
                sentences = sentences_of(record["text"], min_paragraph_words)
                characters = sum(len(s) for s in sentences)
                if characters < min_chars:
                    stats["documents_dropped"] += 1
                    continue
                doc_id = str(record["id"])
                name = split_of(doc_id, fractions)
                document = {"id": doc_id, "title": record.get("title", ""), "url": record.get("url", ""),
                            "text": "\n".join(sentences)}
                writers[name].write(json.dumps(document, ensure_ascii=False) + "\n")
                counts = stats["splits"][name]
                counts["documents"] += 1
                counts["sentences"] += len(sentences)
                counts["characters"] += characters
        finally:
            for writer in writers.values():
                writer.close()
        for name in SPLITS:
            stats["splits"][name]["shards"] = writers[name].shards
        (temp / "stats.json").write_text(json.dumps(stats, indent=2) + "\n")
    log.info("%s: %s", outdir, {name: s["documents"] for name, s in stats["splits"].items()})
    return stats


def summarize(part_dirs, out, page, split: str) -> dict:
    """Add up the parts' stats into `out` (JSON) and `page` (HTML tables, for the report); fail if a split with a
    positive weight got no document."""
    fractions = parse_split(split)
    total = {
        "split": split,
        "parts": len(part_dirs),
        "documents_in": 0,
        "documents_dropped": 0,
        "splits": _zero_counts(),
    }
    for folder in part_dirs:
        stats = json.loads((Path(folder) / "stats.json").read_text())
        if stats["split"] != split:
            raise BertpipeError(f"{folder}: built with split {stats['split']!r}, not {split!r}; rerun corpus")
        total["documents_in"] += stats["documents_in"]
        total["documents_dropped"] += stats["documents_dropped"]
        for name in SPLITS:
            for key, value in stats["splits"][name].items():
                total["splits"][name][key] += value
    documents = sum(s["documents"] for s in total["splits"].values())
    for name, fraction in zip(SPLITS, fractions):
        if fraction > 0 and total["splits"][name]["documents"] == 0:
            raise BertpipeError(
                f"split {split!r}: '{name}' got no document of {documents} "
                f"(expected about {fraction * documents:.1f}); "
                "give it a larger weight in corpus.split or use more data"
            )
    with atomic_file(page) as temp:
        temp.write_text(stats_page("The corpus", f"Documents read and dropped over {len(part_dirs)} dump parts, "
                                                 f"and each split's size (corpus.split {split}).", total))
    with atomic_file(out) as temp:
        temp.write_text(json.dumps(total, indent=2) + "\n")
    return total


def add_arguments(parser) -> None:
    steps = parser.add_subparsers(dest="step", required=True)

    build = add_step(steps, "build", "one part's articles into split shards")
    build.add_argument("--input", required=True, help="loose JSON articles of one part")
    build.add_argument("--outdir", required=True)
    settings.add_arguments(build, CorpusSettings)
    build.set_defaults(run=run_build, label="input", inputs=("input",))

    summary = add_step(steps, "summarize", "add up the parts' stats")
    summary.add_argument("parts", nargs="+", help="the parts' corpus folders")
    settings.add_arguments(summary, CorpusSettings, only=("split",))
    summary.add_argument("--out", required=True, help="the stats (JSON)")
    summary.add_argument("--page", required=True, help="the stats as tables (HTML), for the report")
    summary.set_defaults(run=run_summarize, label="out", inputs=("parts",))


def run_build(args, _) -> Outcome:
    stats = build_part(args.input, args.outdir, settings.from_args(CorpusSettings, args))
    return Outcome(metrics=stats, artifacts=[(Path(args.outdir) / "stats.json", None)])


def run_summarize(args, _) -> Outcome:
    return Outcome(metrics=summarize(args.parts, args.out, args.page, args.split),
                   artifacts=[(args.out, None), (args.page, None)])
