"""`bertpipe <command> ...`: one command per pipeline stage (src/bertpipe/stages/), and two that serve the pipeline
(commands.py).

A stage's settings are flags made from their one definition (settings.py), with the same names and defaults as the
config keys. A stage returns what it measured and made (an `Outcome`); `main` logs that to the stage's MLflow run,
with the stage's flags as params and the content hashes of its inputs. An argument @FILE stands for FILE's lines, an
argument a line.
"""

import argparse
import contextlib
import importlib
import logging
import os
import re
import resource
import signal
import sys
import threading
import time

from bertpipe import BertpipeError, __version__
from bertpipe.redaction import redact, redact_log_records
from bertpipe.stopping import STOP_SIGNALS, Stopped, stop_on_signals
from bertpipe.tracking import Outcome

# Each command: its one line of help, and the function that adds its flags (and its `run`) to its parser. Only the
# command that runs is imported, so that a job starts with no module it does not use.
COMMANDS = {
    "download": ("a Wikimedia dump's article parts, verified and resumable", "bertpipe.stages.download"),
    "extract": ("one dump part to loose JSON with WikiExtractor", "bertpipe.stages.extract"),
    "corpus": ("clean, sentence-split, train/valid/test split and shard", "bertpipe.stages.corpus"),
    "tokenizer": ("train SentencePiece or WordPiece on the train split", "bertpipe.stages.tokenizer"),
    "tfrecords": ("masked-LM + next-sentence instances as TFRecords", "bertpipe.stages.tfrecords"),
    "pretrain": ("BERT pretraining with Megatron's flags (torchrun for DDP)", "bertpipe.stages.pretrain"),
    "launch": ("a bertpipe command under torchrun, on one machine or on Slurm nodes", "bertpipe.stages.launch"),
    "evaluate": ("perplexity, masked-LM and next-sentence accuracy on the test split", "bertpipe.stages.evaluate"),
    "export": ("a checkpoint as a HuggingFace transformers folder, with its model card", "bertpipe.stages.export"),
    "register": ("log the exported folder and register it in MLflow's registry", "bertpipe.stages.register"),
    "tracking": ("what tracking could not send when it was written", "bertpipe.commands:add_tracking_arguments"),
    "settings": ("the config's schema or its documentation", "bertpipe.commands:add_settings_arguments"),
}


def parser(argv=None) -> argparse.ArgumentParser:
    """bertpipe's parser, with the flags of the command that `argv` names (of none for `bertpipe --help`)."""
    named = _parser(None).parse_known_args(argv)[0].stage if argv else None
    return _parser(named)


def _parser(named) -> argparse.ArgumentParser:
    """The parser with the flags of command `named` only; with None, a parser that finds which command is named."""
    from bertpipe import tracking

    # @FILE: FILE's lines, an argument each; the workflow passes lists of files that a command line could not hold.
    # launch hands its command's @FILE on unread: the trainers read it, so the list stays off torchrun's and srun's
    # command lines too.
    top = argparse.ArgumentParser(prog="bertpipe", description=__doc__,
                                  fromfile_prefix_chars=None if named == "launch" else "@",
                                  formatter_class=argparse.RawDescriptionHelpFormatter)
    top.add_argument("--version", action="version", version=f"bertpipe {__version__}")
    # Not --log: torchrun reads the launched command's flags too, and takes --log for an abbreviation of its own.
    top.add_argument("--log-file", help="this job's log (the rule's): logged with its run at the end")
    top.add_argument("--run-name", help="this job's MLflow run name, what it worked on in a few words (the workflow "
                                        "names each job, e.g. 'pretrain phase 1'; default: the stage and its output)")
    tracking.add_arguments(top)
    subparsers = top.add_subparsers(dest="stage", required=True)
    for name, (help_text, where) in COMMANDS.items():
        command = subparsers.add_parser(name, help=help_text, description=help_text, add_help=name == named,
                                        formatter_class=argparse.RawDescriptionHelpFormatter)
        if name == named:
            module, _, function = where.partition(":")
            getattr(importlib.import_module(module), function or "add_arguments")(command)
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
    argv = sys.argv[1:] if argv is None else argv
    args = parser(argv).parse_args(argv)
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
        # While a pipeline's process sends its jobs' runs (tracking.Sender), a run MLflow need not answer while the
        # job works is written to the offline file alone.
        live = getattr(args, "system_metrics", False) or getattr(args, "calls_mlflow", False)
        run = tracking.Run(target, args.run_name or (f"{stage} {label}" if label else stage), args.stage,
                           parent_id=target.pipeline_parent(), enabled=getattr(args, "tracked", True),
                           spooled=target.pipeline_sends() and not live)
        if run.enabled:
            run.log_params({key: value for key, value in vars(args).items()
                            if key not in ("run", "label", "inputs", "system_metrics", "calls_mlflow", *TRACKING_FLAGS)
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
