"""The trainer against its own step: `Trainer` (the code `bertpipe pretrain` runs) on TFRecords of the bundled
sample, in the training process and with reader processes, against the bare training step (train_bench.ours_step:
forward, backward, AdamW) of the same model on batches of the same records, same batch, precision and threads, in
one run; and where the trainer's step time goes, from torch.profiler's record of its named parts.

    .venv/bin/python -m bench.trainer_bench [--steps 20] [--rounds 3] [--batch 32]

Prints samples/s of the bare step and of the trainer with 0 and 2 reader processes (the median of `rounds` rounds,
the three taking turns, as this machine's speed drifts), their ratio, and the trainer's step broken into data wait,
forward/backward, optimizer (unscale, overflow check, clipping, AdamW) and the rest (metrics, telemetry, and the
sinks: a log line and metrics.jsonl).
"""

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

from bench.train_bench import ours_step, sample_records
from bertpipe.model import BertConfig, BertForPreTraining
from bertpipe.settings import InstanceSpec, PhaseSettings, TrainingSettings
from bertpipe.tfrecord_reader import TFRecordSamples
from bertpipe.train.batches import RankBatches
from bertpipe.train.loop import Trainer
from bertpipe.train.metrics import ConsoleSink, JsonLinesSink
from bertpipe.train.optim import adamw

PARTS = ("bertpipe.data", "bertpipe.forward_backward", "bertpipe.optimizer")
WARMUP = 3  # steps before timing: reader processes starting, first allocations


class StepClock:
    """A sink that notes when each step's metrics arrive."""

    def __init__(self):
        self.times = []

    def __call__(self, metrics):
        if "loss" in metrics:
            self.times.append(time.perf_counter())

    def close(self):
        pass


def trainer_run(config, samples, batch, steps, workers, folder, profiled=False):
    """(samples/s after WARMUP steps, {part: seconds per step} or None) of a Trainer run of WARMUP + `steps`."""
    training = TrainingSettings(precision="fp32", num_workers=workers, compile=False, log_interval=10, seed=0)
    phase = PhaseSettings(seq_length=128, batch_size=batch, train_iters=WARMUP + steps, lr=1e-4)
    clock = StepClock()
    sinks = [ConsoleSink(training.log_interval, phase.train_iters), JsonLinesSink(folder / f"metrics-{workers}.jsonl"),
             clock]
    trainer = Trainer(config, training, phase, samples, sinks=sinks)
    if not profiled:
        trainer.train()
        return batch * steps / (clock.times[-1] - clock.times[WARMUP - 1]), None
    with profile(activities=[ProfilerActivity.CPU]) as profiler:
        started = time.perf_counter()
        trainer.train()
    seconds = (clock.times[-1] - started) / phase.train_iters  # the parts' average is over every step too
    events = {e.key: e.cpu_time_total / 1e6 / phase.train_iters for e in profiler.key_averages() if e.key in PARTS}
    return batch / seconds, {"step": seconds, **events}


def bare_rate(config, batches) -> float:
    """Samples/s of train_bench's step over `batches` after WARMUP of them."""
    torch.manual_seed(0)
    model = BertForPreTraining(config).train()
    optimizer = adamw(model, 1e-4, 0.01)
    for index, batch in enumerate(batches):
        if index == WARMUP:
            started = time.perf_counter()
        ours_step(model, optimizer, batch, "fp32", torch.device("cpu"))
    return len(batches[0]["input_ids"]) * (len(batches) - WARMUP) / (time.perf_counter() - started)


def main():
    parser = argparse.ArgumentParser(prog=".venv/bin/python -m bench.trainer_bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=20, help="timed steps of each run")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch", type=int, default=32)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as temp:
        temp = Path(temp)
        samples = TFRecordSamples(sample_records(temp, 8000, InstanceSpec(dupe_factor=2)))
        config = BertConfig(vocab_size=8000, hidden_size=256, num_layers=4, num_attention_heads=4,
                            intermediate_size=1024, hidden_dropout=0.0, attention_dropout=0.0)
        print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, layers {config.num_layers}, hidden "
              f"{config.hidden_size}, batch {args.batch}, seq 128, fp32, {len(samples)} records")
        # The bare step on the trainer's own batches (seed 0), step by step: the unpadded step's time follows the
        # real tokens of each batch.
        steps = RankBatches(samples, args.batch, 1, 0, 1, seed=0)
        batches = [steps[step][0] for step in range(WARMUP + args.steps)]
        rounds = {"bare": [], 0: [], 2: []}
        for _ in range(args.rounds):
            rounds["bare"].append(bare_rate(config, batches))
            for workers in (0, 2):
                rounds[workers].append(trainer_run(config, samples, args.batch, args.steps, workers, temp)[0])
        _, parts = trainer_run(config, samples, args.batch, args.steps, 0, temp, profiled=True)
    bare, rates = statistics.median(rounds.pop("bare")), {k: statistics.median(v) for k, v in rounds.items()}
    print(f"bare step: {bare:.1f} samples/s")
    for workers, rate in rates.items():
        print(f"trainer, {workers} reader processes: {rate:.1f} samples/s = {rate / bare:.1%} of the bare step")
    step = parts.pop("step")
    named = sum(parts.values())
    print(f"trainer's step under the profiler (0 readers): {step * 1000:.1f} ms: " + ", ".join(
        f"{name.split('.')[1]} {seconds * 1000:.1f} ms ({seconds / step:.0%})" for name, seconds in parts.items())
          + f", the rest {(step - named) * 1000:.1f} ms ({(step - named) / step:.0%})")


if __name__ == "__main__":
    main()
