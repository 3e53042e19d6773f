"""Speed of a training step (forward, backward, AdamW) of our BERT against HuggingFace's BertForPreTraining with the
same config, batch and thread count, in one run; and how fast each loader feeds it, with and without reader
processes (`--num-workers`).

    .venv/bin/python -m bench.train_bench                    # CPU: a small BERT, float32 and bf16 autocast
    .venv/bin/python -m bench.train_bench --gpu [--compile]  # CUDA: BERT-Large, seq 128, fp16 and bf16
    .venv/bin/python -m bench.train_bench --profile          # and each step's operators by self time

Prints samples/s of each model, our rate over HuggingFace's, and achieved model FLOP/s as a fraction of a plain
matmul's FLOP/s measured in the same run and, on a GPU, of its datasheet peak (`--peak-tflops`, default the
H100/H200 SXM dense fp16/bf16 figure, 989): the model FLOP utilisation (MFU). Model FLOPs count what BERT needs: our
masked-LM head runs at the masked positions only, so HuggingFace's head over every position is extra work for the
same loss, not extra credit. Our fp16 step does the trainer's loss-scaling work too (scale, unscale, overflow check);
HuggingFace's step has none, so the comparison favours HuggingFace there.
"""

import argparse
import math
import statistics
import tempfile
import time
from pathlib import Path

import torch
import transformers

from bench.harness.corpus import sample_corpus
from bertpipe.model import BertConfig, BertForPreTraining, flops_per_sequence, pretraining_loss_sums
from bertpipe.model_loading import huggingface_config
from bertpipe.settings import TokenizerSettings
from bertpipe.train.precision import COMPUTE_DTYPES, autocast, gradients_overflow
from bertpipe.train.telemetry import measured_peak_flops

LOSS_SCALE = 2.0**16


def huggingface_model(config: BertConfig):
    return transformers.BertForPreTraining(huggingface_config(config, attn_implementation="sdpa"))


def synthetic_batch(config, batch, length, predictions, device):
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(5, config.vocab_size, (batch, length), generator=generator)
    positions = torch.sort(torch.stack([torch.randperm(length - 2, generator=generator)[:predictions] + 1
                                        for _ in range(batch)]), dim=1).values
    labels = torch.gather(ids, 1, positions)
    hf_labels = torch.full_like(ids, -100).scatter(1, positions, labels)
    tensors = {"input_ids": ids, "segment_ids": (torch.arange(length) >= length // 2).long().expand(batch, -1),
               "input_mask": torch.ones(batch, length, dtype=torch.long), "masked_lm_positions": positions,
               "masked_lm_ids": labels, "masked_lm_weights": torch.ones(batch, predictions),
               "next_sentence_labels": torch.zeros(batch, 1, dtype=torch.long), "hf_labels": hf_labels}
    return {k: v.to(device) for k, v in tensors.items()}


def ours_step(model, optimizer, batch, precision, device):
    with autocast(precision, device.type):
        mlm_logits, nsp_logits = model(batch["input_ids"], batch["segment_ids"], batch["input_mask"],
                                       batch["masked_lm_positions"])
    mlm, nsp = pretraining_loss_sums(mlm_logits, nsp_logits, batch["masked_lm_ids"], batch["masked_lm_weights"],
                                     batch["next_sentence_labels"])
    loss = mlm / batch["masked_lm_weights"].sum() + nsp / len(nsp_logits)
    if precision == "fp16":
        (loss * LOSS_SCALE).backward()
        grads = [p.grad for p in model.parameters() if p.grad is not None]
        torch._foreach_div_(grads, LOSS_SCALE)
        gradients_overflow(model.parameters())
    else:
        loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def hf_step(model, optimizer, batch, precision, device):
    with autocast(precision, device.type):
        loss = model(input_ids=batch["input_ids"], token_type_ids=batch["segment_ids"],
                     attention_mask=batch["input_mask"], labels=batch["hf_labels"],
                     next_sentence_label=batch["next_sentence_labels"][:, 0]).loss
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def seconds_per_step(step, model, batch, precision, device, warmup, repeats):
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)
    model.train()
    for _ in range(warmup):
        step(model, optimizer, batch, precision, device)
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        started = time.perf_counter()
        step(model, optimizer, batch, precision, device)
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def print_operator_times(model, batch, precision, device, steps=3, top=8):
    """The operators that take most of our step's time (self time, averaged over `steps`), and the matmuls' share."""
    from torch.profiler import ProfilerActivity, profile

    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as profiler:
        for _ in range(steps):
            ours_step(model, optimizer, batch, precision, device)
    events = sorted(profiler.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in events)
    matmuls = sum(e.self_cpu_time_total for e in events if e.key in ("aten::addmm", "aten::mm", "aten::bmm"))
    print(f"{precision}: {total / steps / 1e3:.0f} ms a step under the profiler, matmuls (addmm, mm, bmm) "
          f"{matmuls / total:.0%}; the most self time: " + ", ".join(
              f"{e.key} {e.self_cpu_time_total / total:.0%}" for e in events[:top]))


def stream_rate(samples, batch_size, workers, seconds) -> float:
    """Samples/s that `rank_batch_stream` delivers to a trainer that takes no time, after its first batch (the
    reader processes' start)."""
    from bertpipe.train.batches import RankBatches, rank_batch_stream

    stream = rank_batch_stream(RankBatches(samples, batch_size, 1, 0, 1, seed=0), range(10**9), workers)
    next(stream)
    read, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        read += sum(len(b["input_ids"]) for b in next(stream))
    return read / (time.perf_counter() - started)


def sample_records(folder: Path, vocab_size: int, spec, shard_max_mb: float = 64) -> list:
    """The bundled sample made into TFRecords under `folder` as the workflow makes them (extract, one split, corpus
    shards of `shard_max_mb`, a `vocab_size` WordPiece tokenizer in `folder/tokenizer`, instances of `spec`): the
    TFRecord files, one per corpus shard."""
    from bertpipe.stages.tfrecords import build_shard
    from bertpipe.stages.tokenizer import train

    corpus = sample_corpus(folder, "1", shard_max_mb, part="corpus")
    train([corpus], folder / "tokenizer", TokenizerSettings(vocab_size=vocab_size))
    records = []
    for shard in sorted((corpus / "train").glob("shard-*.jsonl")):
        records.append(folder / f"{shard.stem}.tfrecord")
        build_shard(shard, folder / "tokenizer", records[-1], folder / f"{shard.stem}.stats.json", spec, 1)
    return records


def loader_rates(batch_size, workers=2, seconds=5.0) -> dict:
    """Samples/s of both loaders on the bundled sample at seq 128, in the trainer's process and with `workers`
    reader processes: TFRecords (built here) and loose json (Megatron's path: pairs and masks made per sample)."""
    from bertpipe.settings import InstanceSpec
    from bertpipe.tfrecord_reader import TFRecordSamples
    from bertpipe.tokenizer_folder import Tokenizer
    from bertpipe.train.loose_json_samples import LooseJsonSamples

    with tempfile.TemporaryDirectory() as temp:
        temp = Path(temp)
        records = sample_records(temp, 8000, InstanceSpec(dupe_factor=2))
        loaders = {"TFRecords": TFRecordSamples(records),
                   "loose json": LooseJsonSamples([temp / "corpus/train/shard-0000.jsonl"],
                                                  Tokenizer(temp / "tokenizer"), InstanceSpec(), "1", "train", "text",
                                                  seed=0)}
        return {f"{name}, {count} reader processes": stream_rate(samples, batch_size, count, seconds)
                for name, samples in loaders.items() for count in (0, workers)}


def main():
    parser = argparse.ArgumentParser(prog=".venv/bin/python -m bench.train_bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gpu", action="store_true", help="BERT-Large on CUDA, fp16 and bf16")
    parser.add_argument("--batch", type=int, help="default: 32 on CPU, 64 on GPU")
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--peak-tflops", type=float, default=989.0, help="GPU dense fp16/bf16 peak")
    parser.add_argument("--compile", action="store_true", help="torch.compile both models before timing")
    parser.add_argument("--profile", action="store_true",
                        help="and where our step's time goes: its operators by self time, under torch.profiler")
    args = parser.parse_args()

    if args.gpu:
        device = torch.device("cuda")
        config = BertConfig(vocab_size=30522, hidden_size=1024, num_layers=24, num_attention_heads=16,
                            intermediate_size=4096)
        precisions, batch_size = ("fp16", "bf16"), args.batch or 64
    else:
        device = torch.device("cpu")
        config = BertConfig(vocab_size=30522, hidden_size=256, num_layers=4, num_attention_heads=4,
                            intermediate_size=1024)
        precisions, batch_size = ("fp32", "bf16"), args.batch or 32
    predictions = math.ceil(args.seq * 0.15 / 10) * 10  # Megatron's default max predictions
    batch = synthetic_batch(config, batch_size, args.seq, predictions, device)
    flops = flops_per_sequence(config, args.seq, predictions) * batch_size
    print(f"device {torch.cuda.get_device_name() if args.gpu else 'cpu'}, torch {torch.__version__}, "
          f"threads {torch.get_num_threads()}, layers {config.num_layers}, hidden {config.hidden_size}, "
          f"batch {batch_size}, seq {args.seq}, predictions {predictions}, compile {args.compile}")
    for precision in precisions:
        torch.manual_seed(0)
        with device:  # parameters are made where they are used: BERT-Large's initialisation is slow on a CPU
            ours, theirs = BertForPreTraining(config), huggingface_model(config)
        warmup = 3 if args.gpu else 1
        if args.compile:  # the eager step too, in the same run: what compiling buys, and what its compile costs
            eager_s = seconds_per_step(ours_step, ours, batch, precision, device, warmup, args.repeats)
            ours, theirs = torch.compile(ours), torch.compile(theirs)
            started = time.perf_counter()
        ours_s = seconds_per_step(ours_step, ours, batch, precision, device, warmup, args.repeats)
        if args.compile:
            compiling = time.perf_counter() - started - ours_s * (warmup + args.repeats)
            print(f"{precision}: ours compiled {batch_size / ours_s:.1f} samples/s against eager "
                  f"{batch_size / eager_s:.1f}: {eager_s / ours_s:.2f}x, after {compiling:.0f} s of compiling")
        hf_s = seconds_per_step(hf_step, theirs, batch, precision, device, warmup, args.repeats)
        matmul = measured_peak_flops(COMPUTE_DTYPES[precision], device, seconds=1.0,
                                     size=8192 if args.gpu else 2048)
        utilisation = f"{flops / ours_s / matmul:.0%} of matmul ({matmul / 1e12:.1f} T)"
        if args.gpu:
            peak = args.peak_tflops * 1e12
            utilisation += (f", MFU {flops / ours_s / peak:.0%} of peak {peak / 1e12:.0f} T "
                            f"(HF {flops / hf_s / peak:.0%})")
        else:
            utilisation += f" (HF {flops / hf_s / matmul:.0%})"
        print(f"{precision}: ours {batch_size / ours_s:8.1f} samples/s, HF {batch_size / hf_s:8.1f} samples/s, "
              f"ours/HF {hf_s / ours_s:.2f}x; model FLOP/s ours {flops / ours_s / 1e12:.2f} T = {utilisation}")
        if args.profile:
            print_operator_times(ours, batch, precision, device)
        del ours, theirs
    if not args.gpu:
        for name, rate in loader_rates(batch_size).items():
            print(f"loader: {name}: {rate:.0f} samples/s")


if __name__ == "__main__":
    main()
