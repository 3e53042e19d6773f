"""What unpadding buys: the training step (forward, backward, AdamW) of our BERT on seq-512 TFRecords of the bundled
sample, with the encoder on real tokens only (the model's default) and with padding computed like real tokens (as
under torch.compile), on the same batches, in one run, alternating.

    .venv/bin/python -m bench.unpad_bench [--batch 16] [--repeats 5]

Prints the batches' padding fraction, each variant's seconds per step and their ratio.
"""

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from bench.train_bench import ours_step, sample_records
from bertpipe.model import BertConfig, BertForPreTraining
from bertpipe.settings import InstanceSpec
from bertpipe.tfrecord_reader import TFRecordSamples
from bertpipe.train.optim import adamw

VOCAB = 4000  # the demo's


def seq512_batches(folder: Path, batch_size: int, count: int) -> list:
    """`count` batches of the sample's seq-512 TFRecords as the demo makes them (4k vocab, 80 predictions,
    dupe_factor 5, 1 MB corpus shards)."""
    samples = TFRecordSamples(sample_records(folder, VOCAB, InstanceSpec(seq_length=512, max_predictions=80,
                                                                         dupe_factor=5), shard_max_mb=1))
    order = torch.randperm(len(samples), generator=torch.Generator().manual_seed(0))
    return [samples.read(order[i * batch_size:(i + 1) * batch_size].tolist()) for i in range(count)]


def main():
    parser = argparse.ArgumentParser(prog=".venv/bin/python -m bench.unpad_bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=5, help="timed steps of each variant")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as temp:
        batches = seq512_batches(Path(temp), args.batch, args.repeats + 1)
    config = BertConfig(vocab_size=VOCAB, hidden_size=256, num_layers=4, num_attention_heads=4, intermediate_size=1024)
    padding = 1 - float(torch.cat([b["input_mask"] for b in batches[1:]]).float().mean())  # of the timed batches
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, layers {config.num_layers}, hidden "
          f"{config.hidden_size}, batch {args.batch}, seq 512; padding {padding:.1%} of the batches' tokens")
    torch.manual_seed(0)
    model = BertForPreTraining(config).train()
    optimizer = adamw(model, 1e-5, 0.01)
    times = {True: [], False: []}
    for index, batch in enumerate(batches):
        for unpad in (True, False):
            model.bert.encoder.unpad = unpad
            started = time.perf_counter()
            ours_step(model, optimizer, batch, "fp32", torch.device("cpu"))
            if index:  # the first batch warms up
                times[unpad].append(time.perf_counter() - started)
    unpadded, padded = statistics.median(times[True]), statistics.median(times[False])
    print(f"unpadded {unpadded:.3f} s/step, padded {padded:.3f} s/step: {padded / unpadded:.2f}x "
          f"(padding {padding:.1%}: at most {1 / (1 - padding):.2f}x if padding cost as much as real tokens)")


if __name__ == "__main__":
    main()
