"""The trainer itself on a GPU, for both recipes: `bertpipe pretrain` on TFRecords of the bundled sample, with its
reader processes, at BERT-Large's size (bert2019) and ModernBERT-large's (modern), eager (unpadded) and compiled.

    python -m bench.gpu_recipes [--steps 40] [--batch 64] [--precision bf16]   # on a machine with a GPU
    .venv/bin/python -m bench.gpu_recipes --smoke                              # CPU: a tiny model, a few steps

It installs nothing: the project's pinned packages (`pip install -e .` in a venv with torch==2.13.0, which on a GPU
machine is the CUDA build). Data: the sample extracted and split by our stages, one SentencePiece tokenizer of
8,000 pieces (the model's vocabulary padded to 30,522, BERT's), the train split at seq 128 as each recipe's
tfrecords job writes it (`tfrecords build` at dupe_factor 5, `tfrecords pack`). Each run is one `bertpipe pretrain`
process of `--steps` steps; the figures are the medians over its steps after the first quarter (warmup, compiling)
of what the trainer itself records in metrics.jsonl: samples/s, real tokens/s and MFU (against square matmuls timed
on the device at start-up; `mfu_datasheet` where torch names a known GPU). `--smoke` runs the eager runs on a CPU
with a 2-layer model and fp32 (compiling on a CPU would take minutes; tests/integration/test_pretrain.py trains both
recipes compiled), so that the script cannot rot (the test suite runs it); its figures mean nothing.
"""

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from bench.harness.corpus import sample_corpus
from bertpipe.settings import InstanceSpec, TokenizerSettings
from bertpipe.stages.tfrecords import build_shard, pack_shard
from bertpipe.stages.tokenizer import train as train_tokenizer

SEQ = 128
SIZES = {  # (model flags, the modern recipe's own) at full size and for the smoke run
    "bert2019": (["--num-layers", 24, "--hidden-size", 1024, "--num-attention-heads", 16, "--intermediate-size",
                  4096], []),
    "modern": (["--num-layers", 28, "--hidden-size", 1024, "--num-attention-heads", 16, "--intermediate-size", 2624,
                "--layernorm-epsilon", 1e-5], ["--local-attention", 128, "--global-attn-every-n-layers", 3]),
}
SMOKE = ["--num-layers", 2, "--hidden-size", 64, "--num-attention-heads", 2, "--intermediate-size", 128]
RUNS = [(recipe, mode) for recipe in SIZES for mode in ("eager", "compiled")]


def data(folder: Path) -> tuple:
    """(tokenizer folder, {recipe: train TFRecord file}) of the sample at seq 128."""
    parts = sample_corpus(folder, "8,1,1")
    train_tokenizer([parts], folder / "tokenizer", TokenizerSettings(vocab_size=8000))
    shard = parts / "train/shard-0000.jsonl"
    build_shard(shard, folder / "tokenizer", folder / "bert2019.tfrecord", folder / "bert2019.stats.json",
                InstanceSpec(seq_length=SEQ, max_predictions=20, dupe_factor=5), seed=1)
    pack_shard(shard, folder / "tokenizer", folder / "modern.tfrecord", folder / "modern.stats.json", seq_length=SEQ)
    return folder / "tokenizer", {recipe: folder / f"{recipe}.tfrecord" for recipe in SIZES}


def run(recipe: str, mode: str, tokenizer: Path, records: Path, out: Path, args) -> dict:
    """The medians of one `bertpipe pretrain` run's step records after its first quarter."""
    model, modern = SIZES[recipe]
    command = [sys.executable, "-m", "bertpipe", "pretrain", "--recipe", recipe, *modern,
               *(SMOKE if args.smoke else model), "--use-tfrecords", "--train-data", records,
               "--tokenizer-path", tokenizer, "--vocab-size", 30522, "--seq-length", SEQ,
               "--batch-size", args.batch, "--train-iters", args.steps, "--precision", args.precision,
               "--compile" if mode == "compiled" else "--no-compile", "--num-workers", 0 if args.smoke else 2,
               "--hidden-dropout", 0, "--attention-dropout", 0, "--log-interval", max(1, args.steps // 4),
               "--eval-interval", 10**9, "--save-interval", 10**9, "--metrics", out / "metrics.jsonl"]
    subprocess.run([str(word) for word in command], check=True, stdout=subprocess.DEVNULL)
    steps = [json.loads(line) for line in open(out / "metrics.jsonl") if '"loss"' in line]
    timed = steps[len(steps) // 4:] or steps
    return {key: statistics.median(step[key] for step in timed) for key in ("samples_per_second", "tokens_per_s",
                                                                              "mfu")} | {
        "mfu_datasheet": statistics.median(step["mfu_datasheet"] for step in timed) if "mfu_datasheet" in timed[0]
        else None}


def main() -> None:
    parser = argparse.ArgumentParser(prog=".venv/bin/python -m bench.gpu_recipes", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=40, help="steps of each run (a quarter of them untimed)")
    parser.add_argument("--batch", type=int, default=64, help="sequences per step")
    parser.add_argument("--precision", default="bf16", choices=["fp32", "fp16", "bf16"])
    parser.add_argument("--smoke", action="store_true", help="CPU, a tiny model, a few steps: checks the script")
    args = parser.parse_args()
    if args.smoke:
        args.steps, args.batch, args.precision = 4, 4, "fp32"
    with tempfile.TemporaryDirectory() as temp:
        temp = Path(temp)
        tokenizer, records = data(temp)
        print(f"seq {SEQ}, batch {args.batch}, {args.precision}, {args.steps} steps a run"
              + (" (smoke: a 2-layer model on the CPU)" if args.smoke else ""))
        print("| recipe | mode | samples/s | real tokens/s | MFU (measured peak) | MFU (datasheet) |")
        print("|---|---|---|---|---|---|")
        for recipe, mode in RUNS:
            if args.smoke and mode == "compiled":
                print(f"| {recipe} | {mode} | not run in the smoke mode | | | |")
                continue
            out = temp / f"{recipe}-{mode}"
            out.mkdir()
            figures = run(recipe, mode, tokenizer, records[recipe], out, args)
            datasheet = f"{figures['mfu_datasheet']:.1%}" if figures["mfu_datasheet"] is not None else "-"
            print(f"| {recipe} | {mode} | {figures['samples_per_second']:,.1f} | {figures['tokens_per_s']:,.0f} | "
                  f"{figures['mfu']:.1%} | {datasheet} |", flush=True)


if __name__ == "__main__":
    main()
