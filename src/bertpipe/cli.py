"""`bertpipe <stage> ...`: one subcommand per pipeline stage; each is a thin wrapper around a library function.

A stage's settings are flags made from their one definition (settings.py), with the same names and defaults as the
config keys. A stage returns what it measured and made (an `Outcome`); `main` logs that to the stage's MLflow run,
with the stage's flags as params and the content hashes of its inputs.
"""

import argparse
import contextlib
import logging
import os
import re
import resource
import signal
import sys
import threading
import time
from pathlib import Path

from bertpipe import BertpipeError, __version__, settings
from bertpipe.redaction import redact, redact_log_records
from bertpipe.stopping import STOP_SIGNALS, Stopped, stop_on_signals
from bertpipe.tracking import Outcome
from bertpipe.settings import (CorpusSettings, DownloadSettings, DumpSettings, EvaluateSettings, ExtractSettings,
                               InstanceSpec, MlflowSettings, PretrainSettings, SlurmPretrain, TFRecordsSettings,
                               TokenizerSettings, TrainingSettings)


def _stage(subparsers, name, help_text, **options):
    return subparsers.add_parser(name, help=help_text, description=options.pop("description", help_text),
                                 formatter_class=argparse.RawDescriptionHelpFormatter, **options)


def _download(subparsers):
    stage = _stage(subparsers, "download", "a Wikimedia dump's article parts, verified and resumable")
    steps = stage.add_subparsers(dest="step", required=True)

    manifest = _stage(steps, "manifest", "resolve the dump (dumpstatus.json) into manifest.json")
    settings.add_arguments(manifest, DumpSettings)
    settings.add_arguments(manifest, DownloadSettings, only=("timeout_seconds", "redirects_to_other_hosts",
                                                             "token_env"))
    manifest.add_argument("--out", required=True, help="manifest.json to write")

    def run_manifest(args, _):
        from bertpipe.download import write_manifest

        download = settings.from_args(DownloadSettings, args, retries=DownloadSettings.retries,
                                      backoff_seconds=DownloadSettings.backoff_seconds)
        manifest = write_manifest(args.mirror, args.wiki, args.date, args.out, download)
        return Outcome(metrics={"parts": len(manifest["parts"]),
                                "bytes": sum(part["size"] or 0 for part in manifest["parts"].values())},
                       tags={"dump.date": manifest["date"]}, artifacts=[(args.out, None)])

    manifest.set_defaults(run=run_manifest, label="out", inputs=())

    part = _stage(steps, "part", "download one part listed in the manifest")
    part.add_argument("--manifest", required=True)
    part.add_argument("--part", required=True, help="part name: its file name without .bz2")
    part.add_argument("--out", required=True)
    settings.add_arguments(part, DumpSettings, only=("mirror",))
    settings.add_arguments(part, DownloadSettings)

    def run_part(args, _):
        from bertpipe.download import download_part

        started = time.perf_counter()
        path = download_part(args.manifest, args.part, args.out, settings.from_args(DownloadSettings, args),
                             args.mirror)
        seconds = time.perf_counter() - started
        size = path.stat().st_size
        return Outcome(metrics={"bytes": size, "seconds": seconds,
                                "megabytes_per_second": size / 2**20 / max(seconds, 1e-9)})

    part.set_defaults(run=run_part, label="part", inputs=("manifest",))


def _extract(subparsers):
    stage = _stage(subparsers, "extract", "one dump part to loose JSON with WikiExtractor")
    stage.add_argument("--input", required=True, help="a pages-articles dump part (.bz2)")
    stage.add_argument("--out", required=True, help="JSON lines: id, title, url, text")
    settings.add_arguments(stage, ExtractSettings)

    def run(args, _):
        from bertpipe.extract import extract_part

        started = time.perf_counter()
        counts = extract_part(args.input, args.out, processes=args.threads)
        return Outcome(metrics={**counts, "seconds": time.perf_counter() - started,
                                "bytes_out": Path(args.out).stat().st_size})

    stage.set_defaults(run=run, label="input", inputs=("input",))


def _corpus(subparsers):
    stage = _stage(subparsers, "corpus", "clean, sentence-split, train/valid/test split and shard")
    steps = stage.add_subparsers(dest="step", required=True)

    build = _stage(steps, "build", "one part's articles into split shards")
    build.add_argument("--input", required=True, help="loose JSON articles of one part")
    build.add_argument("--outdir", required=True)
    settings.add_arguments(build, CorpusSettings)

    def run_build(args, _):
        from bertpipe.corpus import build_part

        stats = build_part(args.input, args.outdir, settings.from_args(CorpusSettings, args))
        return Outcome(metrics=stats, artifacts=[(Path(args.outdir) / "stats.json", None)])

    build.set_defaults(run=run_build, label="input", inputs=("input",))

    summarize = _stage(steps, "summarize", "add up the parts' stats")
    summarize.add_argument("parts", nargs="+", help="the parts' corpus folders")
    settings.add_arguments(summarize, CorpusSettings, only=("split",))
    summarize.add_argument("--out", required=True, help="the stats (JSON)")
    summarize.add_argument("--page", required=True, help="the stats as tables (HTML), for the report")

    def run_summarize(args, _):
        from bertpipe.corpus import summarize as summarize_parts

        return Outcome(metrics=summarize_parts(args.parts, args.out, args.page, args.split),
                       artifacts=[(args.out, None), (args.page, None)])

    summarize.set_defaults(run=run_summarize, label="out", inputs=("parts",))


def _tokenizer(subparsers):
    stage = _stage(subparsers, "tokenizer", "train SentencePiece or WordPiece on the train split")
    stage.add_argument("--corpus", nargs="+", required=True, help="the corpus parts' folders")
    stage.add_argument("--outdir", required=True)
    settings.add_arguments(stage, TokenizerSettings)

    def run(args, _):
        from bertpipe.tokenizer import Tokenizer, train

        meta = train(args.corpus, args.outdir, settings.from_args(TokenizerSettings, args))
        tokenizer = Tokenizer(args.outdir)
        return Outcome(metrics={**meta, "word_start_pieces": int(tokenizer.is_word_start.sum())},
                       artifacts=[(args.outdir, "tokenizer")])

    stage.set_defaults(run=run, label="outdir", inputs=("corpus", "vocab_file"))


def _tfrecords(subparsers):
    stage = _stage(subparsers, "tfrecords", "masked-LM + next-sentence instances as TFRecords")
    steps = stage.add_subparsers(dest="step", required=True)

    build = _stage(steps, "build", "one corpus shard to one TFRecord file and its stats")
    build.add_argument("--input", required=True, help="a corpus shard (.jsonl)")
    build.add_argument("--tokenizer", required=True, help="the tokenizer stage's folder")
    build.add_argument("--out", required=True, help="the TFRecord file")
    build.add_argument("--stats", required=True, help="its stats (JSON)")
    settings.add_arguments(build, InstanceSpec)
    settings.add_arguments(build, TFRecordsSettings, only=("seed",))

    def run_build(args, _):
        from bertpipe.tfrecords import build_shard

        build_shard(args.input, args.tokenizer, args.out, args.stats, settings.from_args(InstanceSpec, args),
                    args.seed)

    # Not a run of its own: English Wikipedia makes thousands of shards. Their figures are the summary's (one run per
    # sequence length and split, with every shard's stats in its stats.json).
    build.set_defaults(run=run_build, label=None, inputs=(), tracked=False)

    index = _stage(steps, "index", "index TFRecord files made elsewhere, for pretrain and evaluate to read them")
    index.add_argument("files", nargs="+", help="TFRecord files; each gets <file>.index.npy beside it")

    def run_index(args, _):
        from bertpipe.records import write_index

        for path in args.files:
            print(f"{path}: {write_index(path)}")

    index.set_defaults(run=run_index, label=None, inputs=(), tracked=False)

    summarize = _stage(steps, "summarize", "add up the shards' stats")
    summarize.add_argument("stats", nargs="+")
    summarize.add_argument("--out", required=True, help="the totals and every shard's stats (JSON)")
    summarize.add_argument("--page", required=True, help="the totals as a table (HTML), for the report")

    def run_summarize(args, _):
        from bertpipe.tfrecords import summarize as summarize_shards

        return Outcome(metrics=summarize_shards(args.stats, args.out, args.page),
                       artifacts=[(args.out, None), (args.page, None)])

    summarize.set_defaults(run=run_summarize, label="out", inputs=("stats",))


def _pretrain(subparsers):
    from bertpipe import pretrain

    stage = _stage(subparsers, "pretrain", "BERT pretraining with Megatron's flags (torchrun for DDP)",
                   description=pretrain.__doc__)
    pretrain.add_arguments(stage)
    # Its input hashes are logged by pretrain.run, which computes them for its checkpoints anyway.
    stage.set_defaults(run=pretrain.run, label="save", inputs=(), system_metrics=True)


def _launch(subparsers):
    from bertpipe import launch

    stage = _stage(subparsers, "launch", "a bertpipe command under torchrun, on one machine or on Slurm nodes",
                   description=launch.__doc__)
    settings.add_arguments(stage, PretrainSettings, only=("nodes", "nproc_per_node"))
    settings.add_arguments(stage, SlurmPretrain, only=("cpus_per_node", "gpus_per_node"))
    stage.add_argument("--done", help="the launched pretrain's --done file (given to it): a run that ends without "
                                      f"it stopped early, and launch exits {launch.STOPPED}")
    stage.add_argument("command", nargs=argparse.REMAINDER, help="the bertpipe command, e.g. pretrain ...")

    def run(args, run):
        if not args.command:
            raise BertpipeError("name the command to launch, e.g. `bertpipe launch --nodes 2 pretrain ...`")
        # The launched command is tracked as this one would be, with this job's log.
        command = [*run.target.arguments(), *(["--log-file", args.log_file] if args.log_file else []),
                   *(["--run-name", args.run_name] if args.run_name else []), *args.command,
                   *(["--done", args.done] if args.done else [])]
        raise SystemExit(launch.run(args.nodes, args.nproc_per_node, command, cpus_per_node=args.cpus_per_node,
                                    gpus_per_node=args.gpus_per_node, done=args.done))

    # Not a run of its own: the command it launches is tracked (by its rank 0).
    stage.set_defaults(run=run, label=None, inputs=(), tracked=False)


def _evaluate(subparsers):
    stage = _stage(subparsers, "evaluate", "perplexity, masked-LM and next-sentence accuracy on the test split")
    stage.add_argument("--checkpoint", required=True, help="a checkpoint folder, or a folder of checkpoints (newest)")
    stage.add_argument("--test-data", nargs="+", required=True, help="TFRecord files or globs of the test split")
    stage.add_argument("--tokenizer", required=True, help="the tokenizer stage's folder (to show the fill-mask table)")
    settings.add_arguments(stage, EvaluateSettings)
    settings.add_arguments(stage, TrainingSettings, only=("precision",))
    stage.add_argument("--out", required=True, help="metrics (JSON)")
    stage.add_argument("--fill-mask", required=True, help="the fill-mask table (HTML) to write")

    def run(args, _):
        from bertpipe.evaluate import evaluate
        from bertpipe.memory import fix_mmap_threshold

        fix_mmap_threshold()
        metrics = evaluate(args.checkpoint, args.test_data, args.tokenizer, args.out, args.fill_mask,
                           args.batch_size, args.precision)
        return Outcome(metrics=metrics, tags={"checkpoint": metrics["checkpoint"]},
                       artifacts=[(args.out, None), (args.fill_mask, None)])

    stage.set_defaults(run=run, label="out", inputs=("test_data",), system_metrics=True)


def _export(subparsers):
    stage = _stage(subparsers, "export", "a checkpoint as a HuggingFace transformers folder, with its model card")
    stage.add_argument("--checkpoint", required=True, help="a checkpoint folder, or a folder of checkpoints (newest)")
    stage.add_argument("--tokenizer", required=True, help="the tokenizer stage's folder")
    stage.add_argument("--out", required=True, help="the transformers folder to write")
    card = stage.add_argument_group("the model card's facts (the workflow gives them all; each is optional)")
    settings.add_arguments(card, MlflowSettings, only=("registered_model",))
    card.add_argument("--manifest", help="the download stage's manifest.json (the dump)")
    card.add_argument("--corpus-stats", help="the corpus stage's stats.json (articles and splits)")
    card.add_argument("--training-done", nargs="+", help="each phase's done.json, in order")
    card.add_argument("--tfrecords-stats", nargs="+", help="each phase's train TFRecords stats.json, in order")
    card.add_argument("--evaluation", help="the evaluate stage's metrics.json")

    def run(args, _):
        import json

        from bertpipe.export import export
        from bertpipe.hashing import content_hash

        def read(path):
            if not path:
                return None
            try:
                return json.loads(Path(path).read_text())
            except (OSError, ValueError) as error:
                raise BertpipeError(f"{path}: not a readable JSON file for the model card ({error}); run the stage "
                                    "that writes it, or leave the flag out") from None

        phases = [read(path) for path in args.training_done or []]
        facts = {"name": args.registered_model, "dump": read(args.manifest), "corpus": read(args.corpus_stats),
                 "evaluation": read(args.evaluation), "phases": phases,
                 "tfrecords": [read(path) for path in args.tfrecords_stats or []],
                 "lineage": {"tokenizer content hash": content_hash(args.tokenizer),
                             **({"code commit": args.git_commit} if args.git_commit else {}),
                             **({"training runs (MLflow)": ", ".join(str(p["mlflow_run_id"]) for p in phases)}
                                if phases else {})}}
        summary = export(args.checkpoint, args.tokenizer, args.out, facts)
        return Outcome(metrics=summary, tags={"checkpoint": summary["checkpoint"]},
                       artifacts=[(Path(args.out) / "config.json", None), (Path(args.out) / "README.md", None)])

    stage.set_defaults(run=run, label="out", inputs=("tokenizer",))


def _register(subparsers):
    stage = _stage(subparsers, "register", "log the exported folder and register it in MLflow's registry")
    stage.add_argument("--model", required=True, help="the export stage's folder")
    settings.add_arguments(stage, MlflowSettings, only=("registered_model", "upload_timeout_seconds"))
    stage.add_argument("--evaluation", required=True, help="the evaluate stage's metrics")
    stage.add_argument("--manifest", required=True, help="the dump's manifest.json (lineage)")
    stage.add_argument("--tokenizer", required=True, help="the tokenizer stage's folder (lineage)")
    stage.add_argument("--train-data", nargs="+", required=True, help="the TFRecords trained on (lineage)")
    stage.add_argument("--training-done", nargs="+", required=True, help="each phase's done.json (lineage)")
    stage.add_argument("--out", required=True, help="what was registered (JSON)")

    def run(args, run):
        from bertpipe.register import lineage, register

        if not run.enabled:
            raise BertpipeError("no MLflow tracking URI: give `bertpipe --tracking-uri URI register ...` (the "
                                "workflow gives config mlflow.tracking_uri) to register a model")
        origin = lineage(args.manifest, args.tokenizer, args.train_data, args.training_done, run.target.commit)
        record = register(run, args.model, args.registered_model, origin, args.evaluation, args.out,
                          args.upload_timeout_seconds)
        return Outcome(tags={"registered_version": record["version"]})

    stage.set_defaults(run=run, label="registered_model", inputs=("model",))


def _tracking(subparsers):
    stage = _stage(subparsers, "tracking", "what tracking could not send when it was written")
    steps = stage.add_subparsers(dest="step", required=True)
    replay = _stage(steps, "replay", "send the offline records of --tracking-dir to --tracking-uri, each once",
                    description="When MLflow cannot be reached, jobs keep what they would have logged in "
                                "<tracking-dir>/offline/. Once it is back, this sends it there, to the runs it "
                                "belongs to, and remembers what it sent: run it again and nothing is sent twice. "
                                "A record MLflow refuses (its run was deleted, say) is reported and kept, with the "
                                "rest of its file, for the next replay; the other files go on. It exits with status 1 "
                                "when something is kept so, or when MLflow cannot be reached. (The workflow runs it "
                                "at the start of each pipeline run.) E.g. bertpipe --tracking-uri "
                                "http://127.0.0.1:5000 --tracking-dir results/mlflow tracking replay")

    def run(args, _):
        from bertpipe import tracking

        if not args.tracking_uri:
            raise BertpipeError("no MLflow tracking URI: give `bertpipe --tracking-uri URI --tracking-dir "
                                "results/mlflow tracking replay` (for the SQLite default, sqlite:///<absolute path "
                                "of results>/mlflow/mlflow.db)")
        counts = tracking.replay(tracking.target_of(args))
        print(f"replayed {counts['records']} records of {counts['files']} files ({counts['runs_created']} runs "
              f"created, {counts['skipped']} records not for replay) to {redact(args.tracking_uri)}")
        if counts["refused"] or counts["waiting"]:
            raise BertpipeError(f"{counts['refused']} records were refused by MLflow and {counts['waiting']} more "
                                f"wait behind them or for their run: they are kept in {args.tracking_dir}/offline "
                                "for the next replay; the warnings above say which and what to do")

    replay.set_defaults(run=run, label=None, inputs=(), tracked=False)


def _settings(subparsers):
    stage = _stage(subparsers, "settings", "the config's schema, its documentation, or a config's faults",
                   description="Every setting is defined once, in src/bertpipe/settings.py; this writes what is "
                               "derived from it.")
    stage.add_argument("what", choices=["schema", "docs"],
                       help="schema: workflow/schemas/config.schema.yaml; docs: docs/settings.md")

    def run(args, _):
        import yaml

        if args.what == "schema":
            sys.stdout.write("# Generated from src/bertpipe/settings.py by `make settings`: edit that file, not "
                             "this one.\n" + yaml.safe_dump(settings.config_schema(), sort_keys=False, width=120))
        else:
            sys.stdout.write(settings.settings_table())

    stage.set_defaults(run=run, label=None, inputs=(), tracked=False)


def parser() -> argparse.ArgumentParser:
    from bertpipe import tracking

    top = argparse.ArgumentParser(prog="bertpipe", description=__doc__,
                                  formatter_class=argparse.RawDescriptionHelpFormatter)
    top.add_argument("--version", action="version", version=f"bertpipe {__version__}")
    # Not --log: torchrun reads the launched command's flags too, and takes --log for an abbreviation of its own.
    top.add_argument("--log-file", help="this job's log (the rule's): logged with its run at the end")
    top.add_argument("--run-name", help="this job's MLflow run name, what it worked on in a few words (the workflow "
                                        "names each job, e.g. 'pretrain phase 1'; default: the stage and its output)")
    tracking.add_arguments(top)
    subparsers = top.add_subparsers(dest="stage", required=True)
    for add in (_download, _extract, _corpus, _tokenizer, _tfrecords, _pretrain, _launch, _evaluate, _export,
                _register, _tracking, _settings):
        add(subparsers)
    return top


def _inputs(args) -> dict:
    """The stage's declared `inputs` that were given, for Run.log_inputs."""
    from bertpipe.hashing import described_input

    return {name: described_input(value if isinstance(value, list) else [value])
            for name in args.inputs if (value := getattr(args, name))}


TRACKING_FLAGS = ("log_file", "run_name", "tracking_uri", "tracking_dir", "experiment", "git_commit")


def job_usage() -> dict:
    """This process's CPU seconds with those of its children that ended (WikiExtractor's, torchrun's), and the peak
    RSS of the largest of them (getrusage: exact, where sampling misses short peaks and processes that end early)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return {"job_cpu_seconds": own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime,
            "job_peak_rss_mb": max(own.ru_maxrss, children.ru_maxrss) / 1024}


def _exit_status_of_stop(number) -> int:
    """For a trainer that checkpointed on a stop: 128 + the signal, as a shell reports a process a signal ended; 0 for
    a torchrun worker, which reports to its launcher (`bertpipe launch`) by its --done file, so that torchrun ends
    cleanly and not with a traceback."""
    return 0 if "TORCHELASTIC_RUN_ID" in os.environ else 128 + number


def main(argv=None) -> int:
    started = time.perf_counter()
    args = parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s", stream=sys.stderr)
    redact_log_records()
    # (Only the main thread may set a signal's handler: main run by a test's thread leaves them as they are.)
    previous = stop_on_signals() if threading.current_thread() is threading.main_thread() else {}
    from bertpipe import tracking

    stage = " ".join(filter(None, (args.stage, getattr(args, "step", None))))
    label = getattr(args, args.label) if args.label else None
    target = tracking.target_of(args)
    run, status, times, exit_status = None, "FAILED", {"stage": 0.0}, 0
    try:
        run = tracking.Run(target, args.run_name or (f"{stage} {label}" if label else stage), args.stage,
                           parent_id=target.pipeline_parent(), enabled=getattr(args, "tracked", True))
        if run.enabled:
            run.log_params({key: value for key, value in vars(args).items()
                            if key not in ("run", "label", "inputs", "system_metrics", *TRACKING_FLAGS)
                            and not callable(value)})
            run.log_inputs(_inputs(args))
        with (run.system_metrics() if getattr(args, "system_metrics", False) else contextlib.nullcontext(),
              _timed(times)):
            outcome = args.run(args, run) or Outcome()
        run.log_metrics({**outcome.metrics, **job_usage()})
        run.set_tags(outcome.tags)
        for path, folder in outcome.artifacts:
            run.log_artifact(path, folder)
        status = "KILLED" if outcome.stopped else "FINISHED"
        if outcome.signal in STOP_SIGNALS:
            exit_status = _exit_status_of_stop(outcome.signal)
    except BertpipeError as error:
        print(f"bertpipe {args.stage}: error: {redact(str(error))}", file=sys.stderr)
        exit_status = 1
    except Stopped as stop:
        status = "KILLED"
        print(f"bertpipe {stage}: stopped by {stop}; its unfinished output was removed and nothing is published: "
              "rerun to do it again", file=sys.stderr)
        exit_status = 128 + stop.number  # under torchrun too: torchrun then ends the other ranks, which would wait
    finally:
        for number in previous:  # the run's record is finished whatever comes now
            signal.signal(number, signal.SIG_IGN)
        if run is not None:
            if args.log_file:
                run.log_artifact(args.log_file, "logs")
            run.end(status)
        if args.log_file:  # a workflow job: its cost, last in its log
            _print_job_usage(stage, time.perf_counter() - started, times["stage"])
        for number, handler in previous.items():
            signal.signal(number, handler)
    return exit_status


@contextlib.contextmanager
def _timed(times: dict):
    """times["stage"]: the seconds of the block, however it ends (launch ends with its command's exit status)."""
    started = time.perf_counter()
    try:
        yield
    finally:
        times["stage"] = time.perf_counter() - started


# The last line of a workflow job's log (bench/scale_rehearsal.py reads it).
JOB_USAGE_LINE = re.compile(r"bertpipe (?P<stage>[a-z_]+(?: [a-z_]+)?): job usage: (?P<cpu>[\d.]+) CPU s, largest "
                            r"process (?P<rss>[\d.]+) MB peak RSS, (?P<seconds>[\d.]+) s, of which "
                            r"(?P<outside>[\d.]+) s outside the stage \(tracking\)")


def _print_job_usage(stage: str, seconds: float, stage_seconds: float) -> None:
    """The time outside the stage is tracking's share: MLflow's import, params, inputs, metrics, artifacts, the
    run's end."""
    usage = job_usage()
    print(f"bertpipe {stage}: job usage: {usage['job_cpu_seconds']:.1f} CPU s, largest process "
          f"{usage['job_peak_rss_mb']:.0f} MB peak RSS, {seconds:.1f} s, of which {seconds - stage_seconds:.1f} s "
          "outside the stage (tracking)", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
