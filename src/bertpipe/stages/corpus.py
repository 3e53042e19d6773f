"""Stage `corpus`: clean documents, split them into sentences, assign each to train/valid/test, write bounded shards.

The documents come from a Wikimedia dump's extracted parts or from your own files (`source` settings, sources.py),
one job per dump part or per group of files. The split follows Megatron's `--split 1000,1,1` (weights normalised to
fractions, by document), but a document's split is decided by a hash of its id alone (of its text where it has no
id), not by its position: reruns, a different order of parts, or files added later never move a document from one
split to another. `summarize` adds up the jobs' stats and writes the corpus's manifest.

Output of one job, `<outdir>/`: `{train,valid,test}/shard-NNNN.jsonl` (one document a line: id, title, url, and
`text` with one sentence a line, the format Megatron's `--loose-json --text-key text` reads) and `stats.json`.
"""

import json
import logging
import re
import unicodedata
from pathlib import Path

import blingfire

from bertpipe import BertpipeError, settings
from bertpipe.atomic import atomic_dir, atomic_file
from bertpipe.hashing import file_hash, hash_of_hashes
from bertpipe.pages import stats_page
from bertpipe.settings import CorpusSettings, SourceSettings
from bertpipe.sources import BAD_INPUT, BUILD_SETTINGS, BadInput, documents, remedy, text_id
from bertpipe.splits import SPLITS, parse_split, split_of
from bertpipe.stages import add_step
from bertpipe.tracking import Outcome

log = logging.getLogger(__name__)


def _zero_counts() -> dict:
    return {name: {"documents": 0, "sentences": 0, "characters": 0, "shards": 0} for name in SPLITS}


def sentences_of(text: str, min_paragraph_words: int = 0, blank_line_paragraphs: bool = False) -> list:
    """Sentences of a document, whitespace normalised. Paragraphs are its lines (WikiExtractor's and a loose-JSON
    record's), or (plain text, often wrapped) runs of lines between blank lines; paragraphs under
    `min_paragraph_words` words are dropped (WikiExtractor keeps section headings such as "Early life." as paragraphs
    of their own)."""
    sentences = []
    for paragraph in re.split(r"\n\s*\n", text) if blank_line_paragraphs else text.split("\n"):
        words = unicodedata.normalize("NFC", paragraph).split()
        if not words or len(words) < min_paragraph_words:
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


def build_part(inputs, outdir, settings, source=SourceSettings()) -> dict:
    """Clean, sentence-split and shard the documents of the files `inputs` (a path, or a list) into `outdir` with
    `settings` (settings.CorpusSettings) and `source` (settings.SourceSettings: the files' format and what to do with
    bad input); returns its stats."""
    inputs = [Path(path) for path in (inputs if isinstance(inputs, (list, tuple)) else [inputs])]
    outdir, wikipedia = Path(outdir), source.format == "wikipedia"
    split, min_chars = settings.split, settings.min_chars
    min_paragraph_words = settings.min_paragraph_words if wikipedia else 0  # the headings rule is WikiExtractor's
    shard_max_bytes = int(settings.shard_max_mb * 2**20)
    fractions = parse_split(split)
    bad = BadInput(source.bad_input == "skip", remedy(source))
    stats = {
        "inputs": len(inputs),
        "split": split,
        "documents_in": 0,
        "documents_dropped": 0,
        "splits": _zero_counts(),
        "bad_input": bad.counts,
        "files": [],
    }
    with atomic_dir(outdir) as temp:
        writers = {name: _ShardWriter(temp / name, shard_max_bytes) for name in SPLITS}
        try:
            for path in inputs:
                documents_before = stats["documents_in"]
                for doc_id, text, record in documents(path, source, bad):
                    stats["documents_in"] += 1
                    sentences = sentences_of(text, min_paragraph_words,
                                             blank_line_paragraphs=source.format == "plain_text")
                    characters = sum(len(s) for s in sentences)
                    if characters < min_chars:
                        stats["documents_dropped"] += 1
                        continue
                    cleaned = "\n".join(sentences)
                    doc_id = doc_id if doc_id is not None else text_id(cleaned)
                    name = split_of(doc_id, fractions)
                    document = {"id": doc_id, "title": record.get("title", "") if wikipedia else "",
                                "url": record.get("url", "") if wikipedia else "", "text": cleaned}
                    writers[name].write(json.dumps(document, ensure_ascii=False) + "\n")
                    counts = stats["splits"][name]
                    counts["documents"] += 1
                    counts["sentences"] += len(sentences)
                    counts["characters"] += characters
                stats["files"].append({"path": str(path), "bytes": path.stat().st_size, "blake2b": file_hash(path),
                                       "documents": stats["documents_in"] - documents_before})
        finally:
            for writer in writers.values():
                writer.close()
        for name in SPLITS:
            stats["splits"][name]["shards"] = writers[name].shards
        (temp / "stats.json").write_text(json.dumps(stats, indent=2) + "\n")
    log.info("%s: %s", outdir, {name: s["documents"] for name, s in stats["splits"].items()})
    return stats


def corpus_name(source) -> str:
    """What the model card and MLflow call the corpus: `source.name`, else its format."""
    return source.name or ("Wikipedia" if source.format == "wikipedia" else f"your {source.format} files")


def summarize(part_dirs, out, page, manifest, split: str, source=SourceSettings(), dump_manifest=None) -> dict:
    """Add up the jobs' stats into `out` (JSON) and `page` (HTML tables, for the report), and list the input files
    with their sizes and hashes in `manifest` (JSON), with the corpus's content hash (hashing.content_hash of the
    files in path order) and, for Wikipedia, the dump (`dump_manifest`, the download stage's); fail if a split with
    a positive weight got no document."""
    fractions = parse_split(split)
    described = {"format": source.format, "name": corpus_name(source), "license": source.license}
    if dump_manifest:
        dump = json.loads(Path(dump_manifest).read_text())
        described.update(name=source.name or f"Wikipedia {dump['wiki']} {dump['date']}",
                         license=source.license or "cc-by-sa-4.0", dump=f"{dump['wiki']}/{dump['date']}")
    total = {
        "source": described,
        "split": split,
        "parts": len(part_dirs),
        "files": 0,
        "bytes": 0,
        "documents_in": 0,
        "documents_dropped": 0,
        "splits": _zero_counts(),
        "bad_input": dict.fromkeys(BAD_INPUT, 0),
    }
    files = []
    for folder in part_dirs:
        stats = json.loads((Path(folder) / "stats.json").read_text())
        if stats["split"] != split or "files" not in stats:
            raise BertpipeError(f"{folder}: built with split {stats['split']!r}, not {split!r}, or by an older "
                                "bertpipe; rerun corpus (snakemake --forcerun corpus)")
        total["documents_in"] += stats["documents_in"]
        total["documents_dropped"] += stats["documents_dropped"]
        for name in SPLITS:
            for key, value in stats["splits"][name].items():
                total["splits"][name][key] += value
        for kind in BAD_INPUT:
            total["bad_input"][kind] += stats["bad_input"][kind]
        files += stats["files"]
    files.sort(key=lambda file: file["path"])
    total["files"], total["bytes"] = len(files), sum(file["bytes"] for file in files)
    total["corpus_hash"] = hash_of_hashes(file["blake2b"] for file in files)
    documents = sum(s["documents"] for s in total["splits"].values())
    for name, fraction in zip(SPLITS, fractions):
        if fraction > 0 and total["splits"][name]["documents"] == 0:
            raise BertpipeError(
                f"split {split!r}: '{name}' got no document of {documents} "
                f"(expected about {fraction * documents:.1f}); "
                "give it a larger weight in corpus.split or use more data"
            )
    with atomic_file(manifest) as temp:
        temp.write_text(json.dumps({"source": total["source"], "corpus_hash": total["corpus_hash"],
                                    "files": files}, indent=2) + "\n")
    with atomic_file(page) as temp:
        temp.write_text(stats_page(f"The corpus: {total['source']['name']}",
                                   f"Documents read and dropped from {len(files)} files in {len(part_dirs)} corpus "
                                   f"jobs, and each split's size (corpus.split {split}).", total))
    with atomic_file(out) as temp:
        temp.write_text(json.dumps(total, indent=2) + "\n")
    return total


def add_arguments(parser) -> None:
    steps = parser.add_subparsers(dest="step", required=True)

    build = add_step(steps, "build", "one job's input files into split shards")
    build.add_argument("--input", nargs="+", required=True,
                       help="the input files (WikiExtractor's JSON of a dump part, or your own files), or @FILE: "
                            "those FILE lists, one a line")
    build.add_argument("--outdir", required=True)
    settings.add_arguments(build, CorpusSettings)
    settings.add_arguments(build, SourceSettings, only={name for names in BUILD_SETTINGS.values() for name in names})
    build.set_defaults(run=run_build, label="outdir", inputs=())  # logged from the hashes the job takes as it reads

    summary = add_step(steps, "summarize", "add up the jobs' stats; the corpus's manifest")
    summary.add_argument("parts", nargs="+", help="the jobs' corpus folders, or @FILE: those FILE lists, one a line")
    settings.add_arguments(summary, CorpusSettings, only=("split",))
    settings.add_arguments(summary, SourceSettings, only=SUMMARY_SOURCE_SETTINGS)
    summary.add_argument("--out", required=True, help="the stats (JSON)")
    summary.add_argument("--page", required=True, help="the stats as tables (HTML), for the report")
    summary.add_argument("--manifest", required=True, help="the input files with their sizes and hashes (JSON)")
    summary.add_argument("--dump-manifest", help="Wikipedia: the download stage's manifest.json (the dump)")
    summary.set_defaults(run=run_summarize, label="out", inputs=())


SUMMARY_SOURCE_SETTINGS = ("format", "name", "license")  # the summary's source settings (its rule passes these)


def run_build(args, tracking_run) -> Outcome:
    source = settings.from_args(SourceSettings, args, only=BUILD_SETTINGS[args.format])
    stats = build_part(args.input, args.outdir, settings.from_args(CorpusSettings, args), source)
    tracking_run.log_inputs({"input": ([file["path"] for file in stats["files"]],
                                       hash_of_hashes(file["blake2b"] for file in stats["files"]),
                                       stats["documents_in"], None)})
    return Outcome(metrics=stats, artifacts=[(Path(args.outdir) / "stats.json", None)])


def run_summarize(args, tracking_run) -> Outcome:
    source = settings.from_args(SourceSettings, args, only=SUMMARY_SOURCE_SETTINGS)
    total = summarize(args.parts, args.out, args.page, args.manifest, args.split, source, args.dump_manifest)
    # The corpus as one MLflow dataset: its input files, digested as their content hash.
    files = [file["path"] for file in json.loads(Path(args.manifest).read_text())["files"]]
    tracking_run.log_inputs({"corpus": (files, total["corpus_hash"], total["documents_in"], None)})
    return Outcome(metrics=total, tags={"corpus_hash": total["corpus_hash"]},
                   artifacts=[(args.out, None), (args.page, None), (args.manifest, None)])
