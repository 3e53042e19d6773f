"""`bertpipe <stage> ...`: one subcommand per pipeline stage; each is a thin wrapper around a library function."""

import argparse
import logging
import sys

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

    def run_manifest(args):
        from bertpipe.download import write_manifest

        write_manifest(args.mirror, args.wiki, args.date, args.out, timeout=args.timeout)

    manifest.set_defaults(run=run_manifest)

    part = steps.add_parser("part", help="download one part listed in the manifest")
    part.add_argument("--manifest", required=True)
    part.add_argument("--part", required=True, help="part name: its file name without .bz2")
    part.add_argument("--out", required=True)
    part.add_argument("--retries", type=int, default=5)
    part.add_argument("--backoff", type=float, default=2.0, help="seconds before the first retry; doubles each time")
    part.add_argument("--timeout", type=float, default=60, help="seconds without data before a retry")

    def run_part(args):
        from bertpipe.download import download_part

        download_part(args.manifest, args.part, args.out, retries=args.retries, backoff=args.backoff,
                      timeout=args.timeout)

    part.set_defaults(run=run_part)


def _extract(subparsers):
    stage = subparsers.add_parser("extract", help="one dump part to loose JSON with WikiExtractor")
    stage.add_argument("--input", required=True, help="a pages-articles dump part (.bz2)")
    stage.add_argument("--out", required=True, help="JSON lines: id, title, url, text")
    stage.add_argument("--processes", type=int, default=1)

    def run(args):
        from bertpipe.extract import extract_part

        extract_part(args.input, args.out, processes=args.processes)

    stage.set_defaults(run=run)


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

    def run_build(args):
        from bertpipe.corpus import build_part

        build_part(args.input, args.outdir, split=args.split, min_chars=args.min_chars,
                   min_paragraph_words=args.min_paragraph_words, shard_max_bytes=args.shard_max_bytes)

    build.set_defaults(run=run_build)

    summarize = steps.add_parser("summarize", help="add up the parts' stats")
    summarize.add_argument("parts", nargs="+", help="the parts' corpus folders")
    summarize.add_argument("--split", required=True)
    summarize.add_argument("--out", required=True)

    def run_summarize(args):
        from bertpipe.corpus import summarize as summarize_parts

        summarize_parts(args.parts, args.out, args.split)

    summarize.set_defaults(run=run_summarize)


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

    def run(args):
        from bertpipe.tokenizer import train

        train(args.corpus, args.outdir, kind=args.kind, vocab_size=args.vocab_size, model_type=args.model_type,
              lowercase=args.lowercase, character_coverage=args.character_coverage,
              input_sentence_size=args.input_sentence_size, seed=args.seed, vocab_file=args.vocab_file,
              threads=args.threads)

    stage.set_defaults(run=run)


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

    def run_build(args):
        from bertpipe.instances import InstanceSpec
        from bertpipe.tfrecords import build_shard

        spec = InstanceSpec(seq_length=args.seq_length, max_predictions=args.max_predictions,
                            dupe_factor=args.dupe_factor, short_seq_prob=args.short_seq_prob,
                            masked_lm_prob=args.masked_lm_prob, whole_word_mask=args.whole_word_mask)
        build_shard(args.input, args.tokenizer, args.out, args.stats, spec, args.seed)

    build.set_defaults(run=run_build)

    summarize = steps.add_parser("summarize", help="add up the shards' stats")
    summarize.add_argument("stats", nargs="+")
    summarize.add_argument("--out", required=True)

    def run_summarize(args):
        from bertpipe.tfrecords import summarize as summarize_shards

        summarize_shards(args.stats, args.out)

    summarize.set_defaults(run=run_summarize)


def _pretrain(subparsers):
    from bertpipe import pretrain

    stage = subparsers.add_parser("pretrain", help="BERT pretraining with Megatron's flags (torchrun for DDP)",
                                  description=pretrain.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    pretrain.add_arguments(stage)
    stage.set_defaults(run=pretrain.run)


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

    def run(args):
        if not args.command:
            raise BertpipeError("name the command to launch, e.g. `bertpipe launch --nodes 2 pretrain ...`")
        raise SystemExit(launch.run(args.nodes, args.nproc_per_node, args.command, cpus_per_node=args.cpus_per_node,
                                    gpus_per_node=args.gpus_per_node))

    stage.set_defaults(run=run)


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="bertpipe", description=__doc__)
    top.add_argument("--version", action="version", version=f"bertpipe {__version__}")
    subparsers = top.add_subparsers(dest="stage", required=True)
    for add in (_download, _extract, _corpus, _tokenizer, _tfrecords, _pretrain, _launch):
        add(subparsers)
    return top


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s", stream=sys.stderr)
    try:
        args.run(args)
    except BertpipeError as error:
        print(f"bertpipe {args.stage}: error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
