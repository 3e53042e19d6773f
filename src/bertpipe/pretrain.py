"""Stage `pretrain`: BERT pretraining with the flags of Megatron-LM's `pretrain_bert.py` (March 2019), so that a
Megatron user's command runs with only its paths changed. Launch it with torchrun for several processes:

    torchrun --nproc-per-node 8 -m bertpipe pretrain --use-tfrecords --train-data 'seq128/train/*/*.tfrecord' ...

What differs from Megatron, and why:
- Data: `--use-tfrecords` reads the tfrecords stage's files (paths or globs). `--loose-json` reads one JSON
  document a line, lazily (train/loose_json.py; always lazy, so `--lazy-loader` is accepted and implied), with
  train and valid documents chosen by `--split` and a hash of the document's id.
- Tokenizer: `--tokenizer-path` names the tokenizer stage's folder; a tokenizer named by hub id
  (`--tokenizer-model-type bert-large-uncased`) cannot be fetched here: its files must be local.
  `--tokenizer-type` and `--cache-dir` are accepted for compatibility.
- fp16: autocast over float32 master weights; `--fp32-layernorm` and `--fp32-embedding` are always in effect
  (see train/precision.py). `--bf16` is the modern alternative.
- `--num-workers`: reader processes, as Megatron's DataLoader workers, but each makes a whole step's batches ahead
  of the trainer (train/data.py). Loose json, built pair by pair, needs them to feed a GPU (bench/train_bench.py).
"""

import argparse
import json
import logging

from bertpipe import BertpipeError


def at_least(minimum: int):
    """An argparse type: an integer of at least `minimum`."""

    def integer(text: str) -> int:
        value = int(text)
        if value < minimum:
            raise argparse.ArgumentTypeError(f"{text}: must be at least {minimum}")
        return value

    return integer


positive, non_negative = at_least(1), at_least(0)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    megatron = parser.add_argument_group("Megatron-LM's pretrain_bert.py flags")
    megatron.add_argument("--batch-size", type=positive, default=4, help="sequences per process and micro-batch")
    megatron.add_argument("--tokenizer-type", default="BertWordPieceTokenizer",
                          choices=["BertWordPieceTokenizer", "SentencePieceTokenizer"])
    megatron.add_argument("--cache-dir", help="accepted for compatibility; tokenizers are local files here")
    megatron.add_argument("--tokenizer-model-type", help="a hub id such as bert-large-uncased: needs --tokenizer-path")
    megatron.add_argument("--tokenizer-path", help="the tokenizer stage's folder")
    megatron.add_argument("--vocab-size", type=int, help="the model's vocab size (at least the tokenizer's)")
    megatron.add_argument("--train-data", nargs="+", required=True, help="TFRecord files or globs")
    megatron.add_argument("--loose-json", action="store_true")
    megatron.add_argument("--text-key", default="text")
    megatron.add_argument("--split", default="1000,1,1")
    megatron.add_argument("--lazy-loader", action="store_true")
    megatron.add_argument("--use-tfrecords", action="store_true")
    megatron.add_argument("--max-preds-per-seq", type=int, help="must match the records'")
    megatron.add_argument("--seq-length", type=int, help="must match the records'")
    megatron.add_argument("--max-position-embeddings", type=positive, default=512)
    megatron.add_argument("--num-layers", type=positive, default=24)
    megatron.add_argument("--hidden-size", type=positive, default=1024)
    megatron.add_argument("--intermediate-size", type=positive, default=4096)
    megatron.add_argument("--num-attention-heads", type=positive, default=16)
    megatron.add_argument("--hidden-dropout", type=float, default=0.1)
    megatron.add_argument("--attention-dropout", type=float, default=0.1)
    megatron.add_argument("--train-iters", type=positive, default=1000000)
    megatron.add_argument("--lr", type=float, default=1e-4)
    megatron.add_argument("--lr-decay-style", default="linear", choices=["linear", "cosine", "exponential",
                                                                         "constant"])
    megatron.add_argument("--lr-decay-iters", type=int, help="default: --train-iters")
    megatron.add_argument("--warmup", type=float, default=0.01, help="fraction of --lr-decay-iters")
    megatron.add_argument("--weight-decay", type=float, default=0.01)
    megatron.add_argument("--clip-grad", type=float, default=1.0)
    megatron.add_argument("--fp16", action="store_true")
    megatron.add_argument("--fp32-layernorm", action="store_true", help="always in effect with --fp16")
    megatron.add_argument("--fp32-embedding", action="store_true", help="always in effect with --fp16")
    megatron.add_argument("--hysteresis", type=positive, default=2, help="overflows tolerated before the scale halves")
    megatron.add_argument("--loss-scale", type=float, help="a fixed fp16 loss scale; default: dynamic")
    megatron.add_argument("--loss-scale-window", type=positive, default=1000)
    megatron.add_argument("--min-scale", type=float, default=1.0)
    megatron.add_argument("--num-workers", type=non_negative, default=2,
                          help="reader processes making the next steps' batches (0: the training process)")
    megatron.add_argument("--save", help="checkpoint folder")
    megatron.add_argument("--load", help="resume from the newest checkpoint here (default: --save)")
    megatron.add_argument("--save-interval", type=positive, default=5000)
    megatron.add_argument("--seed", type=int, default=1234)

    ours = parser.add_argument_group("bertpipe's own flags")
    ours.add_argument("--bf16", action="store_true", help="bfloat16 autocast, no loss scaling")
    ours.add_argument("--gradient-accumulation-steps", type=positive, default=1)
    ours.add_argument("--valid-data", nargs="+", help="TFRecord files or globs of the valid split")
    ours.add_argument("--eval-interval", type=positive, default=1000)
    ours.add_argument("--eval-iters", type=positive, default=10)
    ours.add_argument("--log-interval", type=positive, default=10)
    ours.add_argument("--keep-last", type=positive, default=2, help="checkpoints kept")
    ours.add_argument("--init-from", help="start from the weights of this checkpoint (phase 2 from phase 1)")
    ours.add_argument("--metrics", help="append each step's metrics here (JSON lines)")
    ours.add_argument("--loss-curve", help="plot the losses of --metrics into this PNG at the end")
    ours.add_argument("--layernorm-epsilon", type=float, default=1e-12)
    ours.add_argument("--deterministic", action="store_true", help="deterministic kernels (bitwise resume on CPU)")
    ours.add_argument("--done", help="write this JSON file (final checkpoint and step) once training is complete; "
                                     "a run stopped by a signal does not, so the workflow reruns and resumes it")


def _samples(args, tokenizer):
    """(train, valid or None, seq length) from TFRecords or, Megatron's way, loose json."""
    import math

    from bertpipe.instances import InstanceSpec
    from bertpipe.train.data import TFRecordSamples
    from bertpipe.train.distributed import barrier, init
    from bertpipe.train.loose_json import LooseJsonSamples, build_lazy

    if args.use_tfrecords:
        train = TFRecordSamples(args.train_data)
        valid = TFRecordSamples(args.valid_data) if args.valid_data else None
        seq_length, predictions = train.shape
        for flag, given, found in (("--seq-length", args.seq_length, seq_length),
                                   ("--max-preds-per-seq", args.max_preds_per_seq, predictions)):
            if given is not None and given != found:
                raise BertpipeError(f"{flag} {given}, but the records in --train-data have {found}")
        if valid and valid.shape != train.shape:
            raise BertpipeError(f"--valid-data records have (length, predictions) {valid.shape}, "
                                f"--train-data records {train.shape}")
        return train, valid, seq_length
    if not args.loose_json:
        raise BertpipeError("say what --train-data holds: --use-tfrecords (the tfrecords stage's files) or "
                            "--loose-json (one JSON document a line)")
    seq_length = args.seq_length or 512
    predictions = args.max_preds_per_seq or math.ceil(seq_length * 0.15 / 10) * 10  # Megatron's default
    spec = InstanceSpec(seq_length=seq_length, max_predictions=predictions)
    rank, _, _ = init()
    if rank == 0:  # one process builds the lazy files, the others wait for them
        for path in args.train_data:
            build_lazy(path, args.text_key)
    barrier()
    train = LooseJsonSamples(args.train_data, tokenizer, spec, args.split, "train", args.text_key, args.seed,
                             build=False)
    try:
        valid = LooseJsonSamples(args.train_data, tokenizer, spec, args.split, "valid", args.text_key, args.seed,
                                 build=False)
    except BertpipeError as error:
        logging.getLogger(__name__).warning("%s: no validation", error)
        valid = None
    return train, valid, seq_length


class MetricsToTracking:
    """Step metrics go to the tracking run in batches of `every` steps (one request, not one per step);
    validation metrics at once."""

    def __init__(self, run, every: int):
        self.run, self.every, self.pending = run, every, []

    def __call__(self, metrics: dict):
        step = metrics["step"]
        self.pending.append((step, {k: v for k, v in metrics.items() if k != "step"}))
        if "valid_mlm_loss" in metrics or len(self.pending) >= self.every:
            self.flush()

    def flush(self):
        if self.pending:
            self.run.log_metric_history(self.pending)
            self.pending = []


def run(args, tracking_run) -> str:
    from bertpipe.model import BertConfig
    from bertpipe.tokenizer import Tokenizer
    from bertpipe.train.loop import Trainer, TrainSettings

    if not args.tokenizer_path:
        hint = f" (a hub id such as {args.tokenizer_model_type} cannot be fetched here)" if args.tokenizer_model_type else ""
        raise BertpipeError(f"--tokenizer-path is required: the tokenizer stage's folder{hint}; its files must be local")
    if args.fp16 and args.bf16:
        raise BertpipeError("--fp16 and --bf16 exclude each other")
    if args.loose_json and args.valid_data:
        raise BertpipeError("--valid-data goes with --use-tfrecords; loose json takes its valid split by --split")
    tokenizer = Tokenizer(args.tokenizer_path)
    vocab_size = args.vocab_size or tokenizer.vocab_size
    if vocab_size < tokenizer.vocab_size:
        raise BertpipeError(f"--vocab-size {vocab_size} is smaller than the tokenizer's {tokenizer.vocab_size}")
    train_samples, valid_samples, seq_length = _samples(args, tokenizer)
    if seq_length > args.max_position_embeddings:
        raise BertpipeError(f"sequences of length {seq_length} need --max-position-embeddings >= {seq_length}")
    try:
        model_config = BertConfig(
            vocab_size=vocab_size, hidden_size=args.hidden_size, num_layers=args.num_layers,
            num_attention_heads=args.num_attention_heads, intermediate_size=args.intermediate_size,
            max_position_embeddings=args.max_position_embeddings, hidden_dropout=args.hidden_dropout,
            attention_dropout=args.attention_dropout, layernorm_epsilon=args.layernorm_epsilon)
    except ValueError as error:
        raise BertpipeError(str(error)) from None
    settings = TrainSettings(
        train_data=args.train_data, valid_data=args.valid_data, micro_batch=args.batch_size,
        accumulation=args.gradient_accumulation_steps, train_iters=args.train_iters, lr=args.lr,
        lr_decay_style=args.lr_decay_style, lr_decay_iters=args.lr_decay_iters, warmup=args.warmup,
        weight_decay=args.weight_decay, clip_grad=args.clip_grad,
        precision="fp16" if args.fp16 else "bf16" if args.bf16 else "fp32", loss_scale=args.loss_scale,
        loss_scale_window=args.loss_scale_window, min_scale=args.min_scale, hysteresis=args.hysteresis,
        seed=args.seed, save=args.save, save_interval=args.save_interval, keep_last=args.keep_last, load=args.load,
        init_from=args.init_from, eval_interval=args.eval_interval, eval_iters=args.eval_iters,
        log_interval=args.log_interval, metrics=args.metrics, deterministic=args.deterministic,
        num_workers=args.num_workers)
    if tracking_run.enabled:
        from bertpipe.tracking import content_hash

        tracking_run.log_params({"input_hash.train_data": content_hash(*train_samples.files)} | (
            {"input_hash.valid_data": content_hash(*valid_samples.files)} if args.valid_data else {}))
    to_tracking = MetricsToTracking(tracking_run, args.log_interval)
    trainer = Trainer(model_config, settings, train_samples, valid_samples, on_metrics=to_tracking)
    outcome = trainer.train()
    to_tracking.flush()
    if trainer.rank != 0:
        return outcome
    from bertpipe.train import checkpoint

    final = checkpoint.latest(args.save) if args.save else None
    if final:
        tracking_run.set_tags({"checkpoint": final.resolve()})
    if args.metrics and args.loss_curve:
        from bertpipe.plot import loss_curve

        loss_curve(args.metrics, args.loss_curve, title=f"{args.save or ''} (seq {seq_length})")
        tracking_run.log_artifact(args.loss_curve)
    if args.metrics:
        tracking_run.log_artifact(args.metrics)
    if outcome == "done" and args.done:
        from bertpipe.atomic import atomic_file

        with atomic_file(args.done) as temp:
            temp.write_text(json.dumps({"step": trainer.iteration, "checkpoint": str(final) if final else None,
                                        "mlflow_run_id": tracking_run.run_id}) + "\n")
    return outcome
