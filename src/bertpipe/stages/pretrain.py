"""Stage `pretrain`: BERT pretraining with the flags of Megatron-LM's `pretrain_bert.py` (March 2019), so that a
Megatron user's command runs with only its paths changed. Launch it with torchrun for several processes:

    torchrun --nproc-per-node 8 -m bertpipe pretrain --use-tfrecords --train-data 'seq128/train/*/*.tfrecord' ...

The flags are the settings of settings.py (ModelSettings, PhaseSettings, TrainingSettings: config `model`, a phase
of `pretrain.phases`, and `pretrain`), with the config's defaults, so a command with no flags trains as the
workflow's first phase does. What differs from Megatron, and why:
- Defaults: the full-scale config's (BERT-Large, phase 1: batch 32, 900,000 steps, fp16), not Megatron's.
  Precision is `--precision`; Megatron's `--fp16` means `--precision fp16`, and `--bf16` is the modern alternative.
- Data: `--use-tfrecords` reads the tfrecords stage's files (paths or globs). `--loose-json` reads one JSON
  document a line, lazily (train/loose_json_samples.py; always lazy, so `--lazy-loader` is accepted and implied), with
  train and valid documents chosen by `--split` and a hash of the document's id.
- Tokenizer: `--tokenizer-path` names the tokenizer stage's folder; a tokenizer named by hub id
  (`--tokenizer-model-type bert-large-uncased`) cannot be fetched here: its files must be local.
  `--tokenizer-type` and `--cache-dir` are accepted for compatibility.
- fp16: autocast over float32 master weights; `--fp32-layernorm` and `--fp32-embedding` are always in effect
  (see train/precision.py).
- `--num-workers`: reader processes, as Megatron's DataLoader workers, but each makes a whole step's batches ahead
  of the trainer (train/batches.py). Loose json, built pair by pair, needs them to feed a GPU (bench/train_bench.py).
"""

import argparse
import dataclasses
import json
import math
import time

from bertpipe import BertpipeError, settings
from bertpipe.settings import (
    EXECUTION,
    IDENTITY,
    STALE_POLICIES,
    Config,
    InstanceSpec,
    ModelSettings,
    ModernSettings,
    PhaseSettings,
    TrainingSettings,
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = __doc__
    recipe = parser.add_argument_group("the recipe (config recipe, and the modern recipe's own: config modern)")
    settings.add_arguments(recipe, Config, only=("recipe",))
    settings.add_arguments(recipe, ModernSettings)
    model = parser.add_argument_group("the model (config model)")
    settings.add_arguments(model, ModelSettings)
    phase = parser.add_argument_group("the phase (an item of config pretrain.phases)")
    settings.add_arguments(phase, PhaseSettings)
    training = parser.add_argument_group("training (config pretrain)")
    settings.add_arguments(training, TrainingSettings, skip=("precision",))
    precision = training.add_mutually_exclusive_group()
    settings.add_arguments(precision, TrainingSettings, only=("precision",))
    precision.add_argument("--fp16", dest="precision", action="store_const", const="fp16",
                           help="Megatron's: --precision fp16")
    precision.add_argument("--bf16", dest="precision", action="store_const", const="bf16", help="--precision bf16")

    megatron = parser.add_argument_group("Megatron-LM's other pretrain_bert.py flags")
    megatron.add_argument("--tokenizer-type", default="BertWordPieceTokenizer",
                          choices=["BertWordPieceTokenizer", "SentencePieceTokenizer"],
                          help="accepted for compatibility; the tokenizer folder says its kind")
    megatron.add_argument("--cache-dir", help="accepted for compatibility; tokenizers are local files here")
    megatron.add_argument("--tokenizer-model-type", help="a hub id such as bert-large-uncased: needs --tokenizer-path")
    megatron.add_argument("--tokenizer-path", help="the tokenizer stage's folder")
    megatron.add_argument("--vocab-size", type=int, help="the model's vocab size (default: the tokenizer's)")
    megatron.add_argument("--train-data", nargs="+", required=True, help="TFRecord files or globs, or loose json")
    megatron.add_argument("--loose-json", action="store_true")
    megatron.add_argument("--text-key", default="text", help="loose json: the text's key (default: text)")
    megatron.add_argument("--split", default=settings.CorpusSettings.split,
                          help="loose json: train,valid,test weights (default: %(default)s)")
    megatron.add_argument("--lazy-loader", action="store_true", help="always in effect")
    megatron.add_argument("--use-tfrecords", action="store_true")
    megatron.add_argument("--max-preds-per-seq", type=int,
                          help="TFRecords: must match the records' (default: theirs); loose json: default "
                               "15%% of --seq-length, rounded up to tens")
    megatron.add_argument("--fp32-layernorm", action="store_true", help="always in effect with fp16")
    megatron.add_argument("--fp32-embedding", action="store_true", help="always in effect with fp16")
    megatron.add_argument("--save", help="checkpoint folder")
    megatron.add_argument("--load", help="resume from the newest checkpoint here (default: --save)")

    ours = parser.add_argument_group("bertpipe's own flags")
    ours.add_argument("--valid-data", nargs="+", help="TFRecord files or globs of the valid split")
    ours.add_argument("--init-from", help="start from the weights of this checkpoint (phase 2 from phase 1)")
    ours.add_argument("--stale-checkpoints", choices=STALE_POLICIES, default="refuse",
                      help="a checkpoint in --save of another run (other tokenizer, data, settings or model): "
                           "refuse to start (default), or set-aside: move the folder aside and start afresh (the "
                           "workflow's choice)")
    ours.add_argument("--metrics", help="append each step's metrics here (JSON lines)")
    ours.add_argument("--loss-curve", help="plot the losses of --metrics into this PNG at the end")
    ours.add_argument("--done", help="write this JSON file (final checkpoint and step) once training is complete; "
                                     "a run stopped by a signal does not, so the workflow reruns and resumes it")
    # Its input hashes are logged by `run`, which computes them for its checkpoints anyway.
    parser.set_defaults(run=run, label="save", inputs=(), system_metrics=True)


# How each of this command's flags that is not a setting of settings.py bears on the run (the settings say it where
# they are defined; a test requires one or the other of every flag): IDENTITY, its value is part of the run's
# identity; CONTENT, what it names is (the content hash of the tokenizer and the training data, the model's vocab
# size, the identity of the --init-from checkpoint); EXECUTION, it changes nothing of what the run computes.
CONTENT = "content"
FLAG_PARTS = {"recipe": IDENTITY, "loose_json": IDENTITY, "use_tfrecords": IDENTITY, "text_key": IDENTITY,
              "split": IDENTITY, "max_preds_per_seq": IDENTITY, "tokenizer_path": CONTENT, "train_data": CONTENT,
              "vocab_size": CONTENT, "init_from": CONTENT, "tokenizer_type": EXECUTION, "cache_dir": EXECUTION,
              "tokenizer_model_type": EXECUTION, "lazy_loader": EXECUTION, "fp32_layernorm": EXECUTION,
              "fp32_embedding": EXECUTION, "save": EXECUTION, "load": EXECUTION, "valid_data": EXECUTION,
              "stale_checkpoints": EXECUTION, "metrics": EXECUTION, "loss_curve": EXECUTION, "done": EXECUTION}


def _samples(args, tokenizer, phase: PhaseSettings, seed: int, modern: ModernSettings) -> tuple:
    """(train, valid or None) from TFRecords or, Megatron's way, loose json; under the modern recipe, packed
    sequences (TFRecords of `bertpipe tfrecords pack`) masked as they are read."""
    from bertpipe.train import samples

    if args.recipe == "modern":
        if not args.use_tfrecords:
            raise BertpipeError("--recipe modern trains on packed sequences: --use-tfrecords with the files of "
                                "`bertpipe tfrecords pack`")
        return samples.packed_samples(args.train_data, args.valid_data, phase.seq_length, tokenizer, modern, seed)
    if args.use_tfrecords:
        return samples.tfrecord_samples(args.train_data, args.valid_data, phase.seq_length, args.max_preds_per_seq)
    if not args.loose_json:
        raise BertpipeError("say what --train-data holds: --use-tfrecords (the tfrecords stage's files) or "
                            "--loose-json (one JSON document a line)")
    predictions = args.max_preds_per_seq or math.ceil(phase.seq_length * 0.15 / 10) * 10  # Megatron's default
    spec = InstanceSpec(seq_length=phase.seq_length, max_predictions=predictions)
    return samples.loose_json_samples(args.train_data, tokenizer, spec, args.split, args.text_key, seed)


def run(args, tracking_run):
    from bertpipe.train.distributed import StopRequest

    # From the start: a stop during start-up (imports, hashing, the process group's collectives) is taken at the first
    # step by every rank together; a rank that left on its own would leave the others waiting in a collective.
    stop = StopRequest()
    try:
        return _train(args, tracking_run, stop)
    finally:
        stop.release()


def _train(args, tracking_run, stop):
    from bertpipe.hashing import content_hash, described_input
    from bertpipe.tokenizer_folder import Tokenizer
    from bertpipe.tracking import MetricSink, Outcome
    from bertpipe.train.checkpoint import CheckpointManager
    from bertpipe.train.distributed import init
    from bertpipe.train.loop import Trainer
    from bertpipe.train.metrics import ConsoleSink, JsonLinesSink
    from bertpipe.train.objectives import OBJECTIVES

    if not args.tokenizer_path:
        hint = (f" (a hub id such as {args.tokenizer_model_type} cannot be fetched here)"
                if args.tokenizer_model_type else "")
        raise BertpipeError(f"--tokenizer-path is required: the tokenizer stage's folder{hint}; its files must be "
                            "local")
    if args.loose_json and args.valid_data:
        raise BertpipeError("--valid-data goes with --use-tfrecords; loose json takes its valid split by --split")
    training = settings.from_args(TrainingSettings, args)
    phase = settings.from_args(PhaseSettings, args)
    rank, _, _ = init(training.dist_timeout_minutes)
    tokenizer = Tokenizer(args.tokenizer_path)
    vocab_size = args.vocab_size or tokenizer.vocab_size
    if vocab_size < tokenizer.vocab_size:
        raise BertpipeError(f"--vocab-size {vocab_size} is smaller than the tokenizer's {tokenizer.vocab_size}")
    objective = OBJECTIVES[args.recipe]
    modern = settings.from_args(ModernSettings, args)
    # Of the modern recipe's settings, those of its architecture go to the model (the masks are the samples')
    architecture = {name: getattr(modern, name) for name in ("local_attention", "global_attn_every_n_layers",
                                                             "global_rope_theta", "local_rope_theta")
                    if args.recipe == "modern"}
    try:
        model_config = objective.config_class(**dataclasses.asdict(settings.from_args(ModelSettings, args)),
                                              vocab_size=vocab_size, **architecture)
    except ValueError as error:
        raise BertpipeError(str(error)) from None
    if phase.seq_length > model_config.max_position_embeddings:
        raise BertpipeError(f"--seq-length {phase.seq_length} is above --max-position-embeddings "
                            f"{model_config.max_position_embeddings}")
    train_samples, valid_samples = _samples(args, tokenizer, phase, training.seed, modern)
    inputs = {}
    if rank == 0:  # rank 0 checks checkpoints against them and saves them
        inputs = {"tokenizer": content_hash(args.tokenizer_path), "train_data": content_hash(*train_samples.files)}
    if tracking_run.enabled:  # the hashes the checkpoints record, as the run's inputs
        tracking_run.log_inputs({"tokenizer_path": described_input([args.tokenizer_path], inputs["tokenizer"]),
                                 "train_data": described_input(train_samples.files, inputs["train_data"])} | (
            {"valid_data": described_input(valid_samples.files)} if args.valid_data else {}))

    sinks = [ConsoleSink(training.log_interval, phase.train_iters), MetricSink(tracking_run, training.log_interval)]
    metrics = JsonLinesSink(args.metrics) if args.metrics else None
    sinks += [metrics] if metrics else []
    checkpoints = CheckpointManager(args.save, args.load, args.init_from, training.save_interval, training.keep_last,
                                    args.stale_checkpoints)
    flags = {name: getattr(args, name) for name, part in FLAG_PARTS.items() if part == IDENTITY}
    if args.recipe == "modern":  # how its masks are drawn (its architecture is in the model's config)
        flags["masks"] = {"mask_rate": modern.mask_rate, "whole_word_mask": modern.whole_word_mask}
    trainer = Trainer(model_config, training, phase, train_samples, valid_samples, checkpoints, sinks, inputs, flags,
                      stop, recipe=args.recipe)
    if metrics and trainer.rank == 0:  # the steps of another run (set aside, or past a checkpoint) are not this one's
        metrics.keep_until(trainer.iteration)
    started = time.monotonic()
    finished = trainer.train() == "done"
    if trainer.rank != 0:
        return Outcome(stopped=not finished, signal=trainer.stopped_by)
    return _publish(args, trainer, tracking_run.run_id, finished, time.monotonic() - started)


def _publish(args, trainer, run_id, finished: bool, seconds: float):
    """The phase's outputs: once training is complete the done file (what the phase was, for the model card), then
    the loss curve (a plot must never hold back a finished phase)."""
    from bertpipe.tracking import Outcome
    from bertpipe.train import checkpoint

    final = checkpoint.latest(args.save) if args.save else None
    tags = {"checkpoint": final.resolve()} if final else {}
    if trainer.checkpoints.set_aside:
        tags["checkpoints_set_aside"] = ", ".join(trainer.checkpoints.set_aside)
    outcome = Outcome(tags=tags, stopped=not finished, signal=trainer.stopped_by)
    if finished and args.done:
        from bertpipe.atomic import atomic_file
        from bertpipe.train.telemetry import device_name

        done = {"step": trainer.iteration, "checkpoint": str(final) if final else None, "mlflow_run_id": run_id,
                "phase": dataclasses.asdict(trainer.phase), "precision": trainer.training.precision,
                "processes": trainer.world, "device": device_name(trainer.device),
                "seconds": round(seconds, 1)}  # this run's: a phase resumed after a stop took longer in all
        with atomic_file(args.done) as temp:
            temp.write_text(json.dumps(done) + "\n")
    if args.metrics and args.loss_curve:
        from bertpipe.plot import loss_curve

        loss_curve(args.metrics, args.loss_curve, title=f"{args.save or ''} (seq {trainer.phase.seq_length})")
        outcome.artifacts.append((args.loss_curve, None))
    if args.metrics:
        outcome.artifacts.append((args.metrics, None))
    return outcome
