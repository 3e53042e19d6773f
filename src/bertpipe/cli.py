"""`bertpipe <stage> ...`: one subcommand per pipeline stage; each is a thin wrapper around a library function."""

import argparse
import logging
import os
import sys
import time
from pathlib import Path

from bertpipe import BertpipeError, __version__


def _download(subparsers):
    stage = subparsers.add_parser("download", help="a Wikimedia dump's article parts, verified and resumable")
    steps = stage.add_subparsers(dest="step", required=True)

    manifest = steps.add_parser("manifest", help="resolve the dump (dumpstatus.json) into manifest.json")
    manifest.add_argument("--mirror", required=True, help="http(s) URL, file:// URL or folder of a dump mirror")
    manifest.add_argument("--wiki", required=True, help="e.g. enwiki")
    manifest.add_argument("--date", required=True, help="'latest' or YYYYMMDD")
    manifest.add_argument("--timeout", type=float, default=60, help="seconds")
    manifest.add_argument("--out", required=True, help="manifest.json to write")

    def run_manifest(args, run):
        from bertpipe.download import write_manifest

        manifest = write_manifest(args.mirror, args.wiki, args.date, args.out, timeout=args.timeout)
        run.set_tags({"dump.date": manifest["date"]})
        run.log_metrics({"parts": len(manifest["parts"]),
                         "bytes": sum(part["size"] or 0 for part in manifest["parts"].values())})
        run.log_artifact(args.out)

    manifest.set_defaults(run=run_manifest, label="out", inputs=())

    part = steps.add_parser("part", help="download one part listed in the manifest")
    part.add_argument("--manifest", required=True)
    part.add_argument("--part", required=True, help="part name: its file name without .bz2")
    part.add_argument("--out", required=True)
    part.add_argument("--retries", type=int, default=5)
    part.add_argument("--backoff", type=float, default=2.0, help="seconds before the first retry; doubles each time")
    part.add_argument("--timeout", type=float, default=60, help="seconds without data before a retry")

    def run_part(args, run):
        from bertpipe.download import download_part

        started = time.perf_counter()
        path = download_part(args.manifest, args.part, args.out, retries=args.retries, backoff=args.backoff,
                             timeout=args.timeout)
        seconds = time.perf_counter() - started
        size = path.stat().st_size
        run.log_metrics({"bytes": size, "seconds": seconds, "megabytes_per_second": size / 2**20 / max(seconds, 1e-9)})

    part.set_defaults(run=run_part, label="part", inputs=("manifest",))


def _extract(subparsers):
    stage = subparsers.add_parser("extract", help="one dump part to loose JSON with WikiExtractor")
    stage.add_argument("--input", required=True, help="a pages-articles dump part (.bz2)")
    stage.add_argument("--out", required=True, help="JSON lines: id, title, url, text")
    stage.add_argument("--processes", type=int, default=1)

    def run(args, run):
        from bertpipe.extract import extract_part

        started = time.perf_counter()
        articles = extract_part(args.input, args.out, processes=args.processes)
        run.log_metrics({"articles": articles, "seconds": time.perf_counter() - started,
                         "bytes_out": Path(args.out).stat().st_size})

    stage.set_defaults(run=run, label="input", inputs=("input",))


def _corpus(subparsers):
    stage = subparsers.add_parser("corpus", help="clean, sentence-split, train/valid/test split and shard")
    steps = stage.add_subparsers(dest="step", required=True)

    build = steps.add_parser("build", help="one part's articles into split shards")
    build.add_argument("--input", required=True, help="loose JSON articles of one part")
    build.add_argument("--outdir", required=True)
    build.add_argument("--split", default="1000,1,1", help="train,valid,test weights, as Megatron's --split")
    build.add_argument("--min-chars", type=int, default=200, help="drop documents with fewer characters")
    build.add_argument("--min-paragraph-words", type=int, default=5, help="drop shorter paragraphs (headings)")
    build.add_argument("--shard-max-bytes", type=int, default=256 << 20)

    def run_build(args, run):
        from bertpipe.corpus import build_part

        stats = build_part(args.input, args.outdir, split=args.split, min_chars=args.min_chars,
                           min_paragraph_words=args.min_paragraph_words, shard_max_bytes=args.shard_max_bytes)
        run.log_metrics(stats)
        run.log_artifact(Path(args.outdir) / "stats.json")

    build.set_defaults(run=run_build, label="input", inputs=("input",))

    summarize = steps.add_parser("summarize", help="add up the parts' stats")
    summarize.add_argument("parts", nargs="+", help="the parts' corpus folders")
    summarize.add_argument("--split", required=True)
    summarize.add_argument("--out", required=True)

    def run_summarize(args, run):
        from bertpipe.corpus import summarize as summarize_parts

        run.log_metrics(summarize_parts(args.parts, args.out, args.split))
        run.log_artifact(args.out)

    summarize.set_defaults(run=run_summarize, label="out", inputs=("parts",))


def _tokenizer(subparsers):
    stage = subparsers.add_parser("tokenizer", help="train SentencePiece or WordPiece on the train split")
    stage.add_argument("--corpus", nargs="+", required=True, help="the corpus parts' folders")
    stage.add_argument("--outdir", required=True)
    stage.add_argument("--kind", choices=["sentencepiece", "wordpiece"], default="sentencepiece")
    stage.add_argument("--model-type", choices=["unigram", "bpe"], default="unigram", help="sentencepiece only")
    stage.add_argument("--vocab-size", type=int, default=30522)
    stage.add_argument("--lowercase", action=argparse.BooleanOptionalAction, default=True)
    stage.add_argument("--character-coverage", type=float, default=0.9999)
    stage.add_argument("--input-sentence-size", type=int, default=10_000_000,
                       help="train on a uniform sample of at most this many sentences")
    stage.add_argument("--seed", type=int, default=12345)
    stage.add_argument("--vocab-file", help="wordpiece only: adopt this vocab.txt instead of training one")
    stage.add_argument("--threads", type=int, default=1)

    def run(args, run):
        from bertpipe.tokenizer import Tokenizer, train

        meta = train(args.corpus, args.outdir, kind=args.kind, vocab_size=args.vocab_size,
                     model_type=args.model_type, lowercase=args.lowercase,
                     character_coverage=args.character_coverage, input_sentence_size=args.input_sentence_size,
                     seed=args.seed, vocab_file=args.vocab_file, threads=args.threads)
        tokenizer = Tokenizer(args.outdir)
        run.log_metrics({**meta, "word_start_pieces": int(tokenizer.is_word_start.sum())})
        run.log_artifact(args.outdir, "tokenizer")

    stage.set_defaults(run=run, label="outdir", inputs=("corpus", "vocab_file"))


def _tfrecords(subparsers):
    stage = subparsers.add_parser("tfrecords", help="masked-LM + next-sentence instances as TFRecords")
    steps = stage.add_subparsers(dest="step", required=True)

    build = steps.add_parser("build", help="one corpus shard to one TFRecord file and its stats")
    build.add_argument("--input", required=True, help="a corpus shard (.jsonl)")
    build.add_argument("--tokenizer", required=True, help="the tokenizer stage's folder")
    build.add_argument("--out", required=True, help="the TFRecord file")
    build.add_argument("--stats", required=True, help="its stats (JSON)")
    build.add_argument("--seq-length", type=int, default=128)
    build.add_argument("--max-predictions", type=int, default=20)
    build.add_argument("--dupe-factor", type=int, default=10)
    build.add_argument("--short-seq-prob", type=float, default=0.1)
    build.add_argument("--masked-lm-prob", type=float, default=0.15)
    build.add_argument("--whole-word-mask", action=argparse.BooleanOptionalAction, default=False)
    build.add_argument("--seed", type=int, default=12345)

    def run_build(args, run):
        from bertpipe.instances import InstanceSpec
        from bertpipe.tfrecords import build_shard

        spec = InstanceSpec(seq_length=args.seq_length, max_predictions=args.max_predictions,
                            dupe_factor=args.dupe_factor, short_seq_prob=args.short_seq_prob,
                            masked_lm_prob=args.masked_lm_prob, whole_word_mask=args.whole_word_mask)
        run.log_metrics(build_shard(args.input, args.tokenizer, args.out, args.stats, spec, args.seed))
        run.log_artifact(args.stats)

    build.set_defaults(run=run_build, label="out", inputs=("input", "tokenizer"))

    summarize = steps.add_parser("summarize", help="add up the shards' stats")
    summarize.add_argument("stats", nargs="+")
    summarize.add_argument("--out", required=True)

    def run_summarize(args, run):
        from bertpipe.tfrecords import summarize as summarize_shards

        run.log_metrics(summarize_shards(args.stats, args.out))
        run.log_artifact(args.out)

    summarize.set_defaults(run=run_summarize, label="out", inputs=("stats",))


def _pretrain(subparsers):
    from bertpipe import pretrain

    stage = subparsers.add_parser("pretrain", help="BERT pretraining with Megatron's flags (torchrun for DDP)",
                                  description=pretrain.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    pretrain.add_arguments(stage)
    stage.set_defaults(run=pretrain.run, label="save", inputs=("tokenizer_path",))


def _evaluate(subparsers):
    stage = subparsers.add_parser("evaluate", help="perplexity, masked-LM and next-sentence accuracy on the test split")
    stage.add_argument("--checkpoint", required=True, help="a checkpoint folder, or a folder of checkpoints (newest)")
    stage.add_argument("--test-data", nargs="+", required=True, help="TFRecord files or globs of the test split")
    stage.add_argument("--batch-size", type=int, default=32)
    stage.add_argument("--precision", choices=["fp32", "fp16", "bf16"], default="fp32")
    stage.add_argument("--out", required=True, help="metrics (JSON)")

    def run(args, run):
        from bertpipe.evaluate import evaluate

        metrics = evaluate(args.checkpoint, args.test_data, args.out, args.batch_size, args.precision)
        run.log_metrics(metrics)
        run.set_tags({"checkpoint": metrics["checkpoint"]})
        run.log_artifact(args.out)

    stage.set_defaults(run=run, label="out", inputs=("test_data",))


def _export(subparsers):
    stage = subparsers.add_parser("export", help="a checkpoint as a HuggingFace transformers folder")
    stage.add_argument("--checkpoint", required=True, help="a checkpoint folder, or a folder of checkpoints (newest)")
    stage.add_argument("--tokenizer", required=True, help="the tokenizer stage's folder")
    stage.add_argument("--out", required=True, help="the transformers folder to write")

    def run(args, run):
        from bertpipe.export import export

        summary = export(args.checkpoint, args.tokenizer, args.out)
        run.log_metrics(summary)
        run.set_tags({"checkpoint": summary["checkpoint"]})
        run.log_artifact(Path(args.out) / "config.json")

    stage.set_defaults(run=run, label="out", inputs=("tokenizer",))


def _register(subparsers):
    stage = subparsers.add_parser("register", help="log the exported folder and register it in MLflow's registry")
    stage.add_argument("--model", required=True, help="the export stage's folder")
    stage.add_argument("--name", required=True, help="the registered model's name")
    stage.add_argument("--evaluation", required=True, help="the evaluate stage's metrics")
    stage.add_argument("--manifest", required=True, help="the dump's manifest.json (lineage)")
    stage.add_argument("--tokenizer", required=True, help="the tokenizer stage's folder (lineage)")
    stage.add_argument("--train-data", nargs="+", required=True, help="the TFRecords trained on (lineage)")
    stage.add_argument("--training-done", nargs="+", required=True, help="each phase's done.json (lineage)")
    stage.add_argument("--out", required=True, help="what was registered (JSON)")

    def run(args, run):
        from bertpipe.register import lineage, register

        if not run.enabled:
            raise BertpipeError("no MLflow tracking URI: set MLFLOW_TRACKING_URI (the workflow sets it from "
                                "config mlflow.tracking_uri) to register a model")
        origin = lineage(args.manifest, args.tokenizer, args.train_data, args.training_done)
        run.log_metrics(register(run, args.model, args.name, origin, args.evaluation, args.out))

    stage.set_defaults(run=run, label="name", inputs=("model",))


def _launch(subparsers):
    from bertpipe import launch
    from bertpipe.pretrain import positive

    stage = subparsers.add_parser("launch", help="a bertpipe command under torchrun, on one machine or on Slurm nodes",
                                  description=launch.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    stage.add_argument("--nodes", type=positive, default=1, help="nodes (more than one: in a Slurm job only)")
    stage.add_argument("--nproc-per-node", type=positive, default=1, help="torchrun processes per node")
    stage.add_argument("--cpus-per-node", type=positive, default=1, help="CPUs of each node's srun task")
    stage.add_argument("--gpus-per-node", type=int, default=0, help="GPUs of each node's srun task")
    stage.add_argument("command", nargs=argparse.REMAINDER, help="the bertpipe command, e.g. pretrain ...")

    def run(args, _):
        if not args.command:
            raise BertpipeError("name the command to launch, e.g. `bertpipe launch --nodes 2 pretrain ...`")
        raise SystemExit(launch.run(args.nodes, args.nproc_per_node, args.command, cpus_per_node=args.cpus_per_node,
                                    gpus_per_node=args.gpus_per_node))

    # Not a run of its own: the command it launches is tracked (by its rank 0).
    stage.set_defaults(run=run, label=None, inputs=(), tracked=False)


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="bertpipe", description=__doc__)
    top.add_argument("--version", action="version", version=f"bertpipe {__version__}")
    subparsers = top.add_subparsers(dest="stage", required=True)
    for add in (_download, _extract, _corpus, _tokenizer, _tfrecords, _pretrain, _launch, _evaluate, _export,
                _register):
        add(subparsers)
    return top


def _stderr_file():
    """The file this process's stderr goes to (the rule's log), if it is a file."""
    try:
        target = Path(os.readlink("/proc/self/fd/2"))
    except OSError:
        return None
    return target if target.is_file() else None


def _input_hashes(args) -> dict:
    from bertpipe.tracking import content_hash

    hashes = {}
    for name in args.inputs:
        value = getattr(args, name)
        if value:
            hashes[f"input_hash.{name}"] = content_hash(*(value if isinstance(value, list) else [value]))
    return hashes


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s", stream=sys.stderr)
    from bertpipe import tracking

    stage = " ".join(filter(None, (args.stage, getattr(args, "step", None))))
    label = getattr(args, args.label) if args.label else None
    run = tracking.stage_run(f"{stage} {label}" if label else stage, args.stage, enabled=getattr(args, "tracked", True))
    status = "FAILED"
    try:
        if run.enabled:
            run.log_params({key: value for key, value in vars(args).items()
                            if key not in ("run", "label", "inputs") and not callable(value)})
            run.log_params(_input_hashes(args))
        outcome = args.run(args, run)
        status = "KILLED" if outcome == "stopped" else "FINISHED"
    except BertpipeError as error:
        print(f"bertpipe {args.stage}: error: {error}", file=sys.stderr)
        return 1
    finally:
        log_file = _stderr_file()
        if log_file:
            run.log_artifact(log_file, "logs")
        run.end(status)
    return 0


if __name__ == "__main__":
    sys.exit(main())
