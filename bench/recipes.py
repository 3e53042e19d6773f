"""The two recipes on the same corpus for the same CPU time: bert2019 (BERT, next-sentence pairs, static masks) and
modern (ModernBERT, packed sequences, masks drawn as it trains), with models of about the same size.

    .venv/bin/python -m bench.recipes [--seconds 150] [--records-mb 16] [--smoke]

Input: the bundled sample, extracted and split by our own stages (8,1,1), one SentencePiece tokenizer of 4,000 pieces
for both (the demo's). Then, in one run:
1. The tfrecords stage for each recipe at seq 128, as the workflow runs it (`bertpipe tfrecords build` at
   dupe_factor 10, `bertpipe tfrecords pack`), one process on one shard of `--records-mb` MB (the sample's articles
   repeated with new ids: generated input, as bench.tfrecords_bench's), and on each of the sample's split shards
   for the training below: CPU seconds of the first (wait4, imports included) and bytes on disk (records and
   indexes) per MB of shard text.
2. Training on one thread for `--seconds` of process CPU time each, AdamW, warmup then the peak LR (no decay: a
   time budget has no known end), batch 8 sequences of 128, fp32, no dropout: BERT with 2 layers of width 128 and a
   feed-forward of 512; ModernBERT with 2 layers (one global, one local with a window of 64) and a GeGLU of 340, so
   that both have about the same parameters (GeGLU's input projection is twice as wide). Real tokens per second and
   the share of padding come from the batches trained on.
3. Both models on the common test set: the test split's documents packed at 128 with one fixed 15% mask
   (evaluate.TEST_MASK_RATE and TEST_MASK_SEED), read by BERT one document piece at a time
   (objectives.packed_as_bert2019): the same tokens and masks for both. Masked-LM accuracy and loss.
`--smoke` (the test suite's): a few seconds of training, to keep the script working; its figures mean nothing.
"""

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from bench.harness import REPO
from bench.harness.corpus import sample_corpus
from bench.tfrecords_bench import repeated_corpus, run_jobs
from bertpipe.model import BertConfig
from bertpipe.modern_model import ModernBertConfig
from bertpipe.packed_sequences import PackedSamples
from bertpipe.settings import TokenizerSettings
from bertpipe.stages.evaluate import TEST_MASK_RATE, TEST_MASK_SEED
from bertpipe.stages.tokenizer import train as train_tokenizer
from bertpipe.tfrecord_reader import TFRecordSamples
from bertpipe.tokenizer_folder import Tokenizer
from bertpipe.train.batches import global_batch_indices
from bertpipe.train.evaluation import evaluation_metrics, evaluation_totals, forward_sums
from bertpipe.train.objectives import OBJECTIVES, packed_as_bert2019
from bertpipe.train.optim import adamw, learning_rate

SEQ, BATCH, LR, SEED = 128, 8, 1e-3, 1234
SIZES = {"num_layers": 2, "hidden_size": 128, "num_attention_heads": 2, "max_position_embeddings": 512,
         "hidden_dropout": 0.0, "attention_dropout": 0.0}


COMMANDS = {"bert2019": ["build", "--dupe-factor", "10", "--max-predictions", "20"], "modern": ["pack"]}


def tfrecords_job(recipe: str, shard: Path, tokenizer: Path, out: Path, name: str) -> list:
    return [str(REPO / ".venv/bin/bertpipe"), "tfrecords", *COMMANDS[recipe], "--seq-length", str(SEQ),
            "--input", str(shard), "--tokenizer", str(tokenizer), "--out", str(out / recipe / f"{name}.tfrecord"),
            "--stats", str(out / recipe / f"{name}.stats.json")]


def records(parts: Path, big_shard: Path, tokenizer: Path, out: Path) -> dict:
    """recipe -> (CPU seconds, bytes on disk) of its tfrecords job on `big_shard`, after making the records of each
    split of `parts` (named by split) for the training."""
    figures = {}
    for recipe in COMMANDS:
        run_jobs([tfrecords_job(recipe, shard, tokenizer, out, shard.parent.name)
                  for shard in sorted(parts.glob("*/shard-*.jsonl"))], jobs=1)
        _, [(cpu, _)] = run_jobs([tfrecords_job(recipe, big_shard, tokenizer, out, "big")], jobs=1)
        figures[recipe] = (cpu, sum(path.stat().st_size for path in (out / recipe).glob("big.tfrecord*")))
    return figures


def trained(recipe: str, train_samples, vocab_size: int, seconds: float) -> tuple:
    """(model, steps, real tokens per second, padding share) after `seconds` of this process's CPU time."""
    objective = OBJECTIVES[recipe]
    config = (BertConfig(vocab_size=vocab_size, intermediate_size=512, **SIZES) if recipe == "bert2019" else
              ModernBertConfig(vocab_size=vocab_size, intermediate_size=340, local_attention=64,
                               global_attn_every_n_layers=2, layernorm_epsilon=1e-5, **SIZES))
    torch.manual_seed(SEED)
    model = objective.model_class(config).train()
    optimizer = adamw(model, LR, 0.01)
    device, step, tokens, slots = torch.device("cpu"), 0, 0.0, 0.0
    started = time.process_time()
    while time.process_time() - started < seconds:
        batch = train_samples.read(*global_batch_indices(step, BATCH, len(train_samples), SEED))
        counts = objective.counts(batch)
        batch, _, sums = forward_sums(objective, model, batch, device, "fp32")
        sum(sums[name] / counts[name] for name in objective.losses).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(step, LR, 1000, 0.1, "constant")
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        tokens += counts["tokens"]
        slots += counts["sequences"] * SEQ
    return model.eval(), step, tokens / (time.process_time() - started), 1 - tokens / slots


def common_test(recipe: str, model, test: PackedSamples) -> dict:
    batches = (test.read(range(begin, min(begin + 32, len(test))), 0) for begin in range(0, len(test), 32))
    if recipe == "bert2019":
        batches = map(packed_as_bert2019, batches)
    return evaluation_metrics(evaluation_totals(OBJECTIVES[recipe], model, batches, torch.device("cpu"), "fp32"),
                              "test_")


def main() -> None:
    parser = argparse.ArgumentParser(prog=".venv/bin/python -m bench.recipes", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=150.0, help="CPU seconds of training for each recipe")
    parser.add_argument("--records-mb", type=float, default=16.0, help="the tfrecords jobs' shard (MB of text)")
    parser.add_argument("--smoke", action="store_true", help="a few seconds: checks the script, not the recipes")
    args = parser.parse_args()
    seconds, records_mb = (3.0, 1.0) if args.smoke else (args.seconds, args.records_mb)
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as temp:
        temp = Path(temp)
        parts = sample_corpus(temp / "corpus", "8,1,1", shard_max_mb=16)
        train_tokenizer([parts], temp / "tokenizer", TokenizerSettings(vocab_size=4000, input_sentence_size=100000))
        tokenizer = Tokenizer(temp / "tokenizer")
        documents = [json.loads(line) for line in (parts / "train/shard-0000.jsonl").read_text().splitlines()]
        (big_shard,) = repeated_corpus(documents, temp / "big", int(records_mb * 2**20), int(records_mb * 2**20) + 1)
        text_mb = big_shard.stat().st_size / 2**20
        figures = records(parts, big_shard, temp / "tokenizer", temp / "records")
        test = PackedSamples([str(temp / "records/modern/test.tfrecord")], tokenizer, TEST_MASK_RATE, TEST_MASK_SEED)
        train_data = {"bert2019": TFRecordSamples([str(temp / "records/bert2019/train.tfrecord")]),
                      "modern": PackedSamples([str(temp / "records/modern/train.tfrecord")], tokenizer, 0.3, SEED)}
        print(f"tfrecords: one shard of {text_mb:.1f} MB; {seconds:.0f} CPU s of training each, one thread; common "
              f"test set: {len(test)} packed sequences, 15% masked")
        print("| recipe | parameters | steps | tokens/s | padding | test masked-LM accuracy | test masked-LM loss "
              "| tfrecords CPU s / MB | tfrecords on disk / MB |")
        print("|---|---|---|---|---|---|---|---|---|")
        for recipe in ("bert2019", "modern"):
            model, steps, tokens_per_second, padding = trained(recipe, train_data[recipe], tokenizer.vocab_size,
                                                               seconds)
            metrics = common_test(recipe, model, test)
            cpu, disk = figures[recipe]
            print(f"| {recipe} | {sum(p.numel() for p in model.parameters()):,} | {steps:,} | "
                  f"{tokens_per_second:,.0f} | {padding:.1%} | {metrics['test_mlm_accuracy']:.4f} | "
                  f"{metrics['test_mlm_loss']:.3f} | {cpu / text_mb:.2f} | {disk / 2**20 / text_mb:.2f} MB |",
                  flush=True)


if __name__ == "__main__":
    main()
