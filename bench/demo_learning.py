"""How far below the unigram entropy the demo's model gets, and whether the limit is ours or BERT's.

Trains our BERT and HuggingFace's `BertForPreTraining` with the demo's phase-1 recipe (`config.demo.yaml` over
`config.yaml`: model sizes, batch, steps, lr, warmup, weight decay, clipping) on the demo's TFRecords, both with
the same batches in the same order, the same AdamW and schedule, and prints each model's validation masked-LM loss at
thirds of the run next to two baselines: the unigram entropy of the train split's masked tokens (what the workflow
test compares with) and the unigram model's cross-entropy on the valid split's masked tokens.

    make demo && .venv/bin/python -m bench.demo_learning               # the demo's recipe, both models
    .venv/bin/python -m bench.demo_learning --steps 9600 --ours-only  # four times the steps, our model only
"""

import argparse
import math
import time
from pathlib import Path

import numpy as np
import torch
import yaml
from torch import nn

from bench.harness import REPO
from bench.train_bench import huggingface_model
from bertpipe.model import BertConfig, BertForPreTraining
from bertpipe.tfrecord_reader import TFRecordSamples
from bertpipe.tokenizer_folder import Tokenizer
from bertpipe.train.batches import global_batch_indices
from bertpipe.train.evaluation import evaluation_metrics, evaluation_totals, forward_sums
from bertpipe.train.objectives import Bert2019
from bertpipe.train.optim import adamw, learning_rate

SEED = 1234


class HuggingFaceBert(nn.Module):
    """transformers.BertForPreTraining behind our model's call: logits at the masked positions, next-sentence logits."""

    def __init__(self, config: BertConfig):
        super().__init__()
        self.model = huggingface_model(config)

    def forward(self, input_ids, token_type_ids, attention_mask, masked_lm_positions):
        out = self.model(input_ids=input_ids, token_type_ids=token_type_ids, attention_mask=attention_mask)
        index = masked_lm_positions[:, :, None].expand(-1, -1, out.prediction_logits.shape[-1])
        return torch.gather(out.prediction_logits, 1, index), out.seq_relationship_logits


def merged_config() -> dict:
    def merge(base, overlay):
        for key, value in overlay.items():
            base[key] = merge(base.get(key, {}), value) if isinstance(value, dict) else value
        return base

    return merge(yaml.safe_load((REPO / "config.yaml").read_text()),
                 yaml.safe_load((REPO / "config.demo.yaml").read_text()))


def masked_tokens(samples: TFRecordSamples) -> np.ndarray:
    batch = samples.read(range(len(samples)))
    return batch["masked_lm_ids"][batch["masked_lm_weights"] > 0].numpy()


def unigram_baselines(train: TFRecordSamples, valid: TFRecordSamples, vocab_size: int) -> tuple:
    """(entropy of the train masks' token frequencies, cross-entropy of the valid masks under those frequencies
    with add-0.5 smoothing, so that a token unseen in train costs a finite loss)."""
    train_counts = np.bincount(masked_tokens(train), minlength=vocab_size)
    frequencies = train_counts[train_counts > 0] / train_counts.sum()
    entropy = float(-(frequencies * np.log(frequencies)).sum())
    smoothed = (train_counts + 0.5) / (train_counts.sum() + 0.5 * vocab_size)
    return entropy, float(-np.log(smoothed[masked_tokens(valid)]).mean())


def train(model, train_samples, valid_batches, recipe: dict, steps: int) -> list:
    """[(step, validation masked-LM loss, next-sentence accuracy)] at each third of `steps`."""
    torch.manual_seed(SEED)  # the trainer's dropout stream on rank 0
    optimizer = adamw(model, recipe["lr"], recipe["weight_decay"])
    device, results = torch.device("cpu"), []
    model.train()
    for step in range(steps):
        batch = train_samples.read(*global_batch_indices(step, recipe["batch_size"], len(train_samples), SEED))
        batch, _, sums = forward_sums(Bert2019, model, batch, device, "fp32")
        (sums["mlm"] / batch["masked_lm_weights"].sum() + sums["nsp"] / len(batch["input_ids"])).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), recipe["clip_grad"])
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(step, recipe["lr"], steps, recipe["warmup"], recipe["lr_decay_style"])
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if (step + 1) % max(1, steps // 3) == 0:
            model.eval()
            metrics = evaluation_metrics(evaluation_totals(Bert2019, model, valid_batches, device, "fp32"), "valid_")
            model.train()
            results.append((step + 1, metrics["valid_mlm_loss"], metrics["valid_nsp_accuracy"]))
    return results


def main():
    parser = argparse.ArgumentParser(prog=".venv/bin/python -m bench.demo_learning", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--results", type=Path, default=REPO / "results", help="the demo's results folder")
    parser.add_argument("--steps", type=int, help="phase-1 steps (default: the demo's)")
    parser.add_argument("--ours-only", action="store_true", help="skip HuggingFace's model")
    args = parser.parse_args()

    config = merged_config()
    phase = config["pretrain"]["phases"][0]
    recipe = {**{key: config["pretrain"][key] for key in ("weight_decay", "clip_grad", "warmup", "lr_decay_style")},
              "lr": phase["lr"], "batch_size": phase["batch_size"]}
    steps = args.steps or phase["train_iters"]
    folder = args.results / f"tfrecords/seq{phase['seq_length']}"
    train_samples = TFRecordSamples([folder / "train/*/*.tfrecord"])
    valid_samples = TFRecordSamples([folder / "valid/*/*.tfrecord"])
    model_config = BertConfig(vocab_size=Tokenizer(args.results / "tokenizer").vocab_size, **config["model"])
    # The trainer's validation batches: the first eval_iters global batches of the seeded valid order.
    valid_batches = [valid_samples.read(*global_batch_indices(i, phase["batch_size"], len(valid_samples), seed=0))
                     for i in range(config["pretrain"]["eval_iters"])]
    entropy, cross_entropy = unigram_baselines(train_samples, valid_samples, model_config.vocab_size)

    print(f"demo phase 1: {steps} steps of {phase['batch_size']} x {phase['seq_length']}, lr {phase['lr']}, "
          f"{model_config.num_layers} layers x {model_config.hidden_size}, vocab {model_config.vocab_size}, "
          f"{torch.get_num_threads()} threads")
    print(f"unigram entropy of the train masks {entropy:.3f} nats; unigram cross-entropy on the valid masks "
          f"{cross_entropy:.3f}")
    models = {"ours": BertForPreTraining} | ({} if args.ours_only else {"huggingface": HuggingFaceBert})
    for name, model_class in models.items():
        started = time.perf_counter()
        torch.manual_seed(SEED)  # the trainer's initial weights
        model = model_class(model_config)
        for step, loss, nsp_accuracy in train(model, train_samples, valid_batches, recipe, steps):
            print(f"{name:12s} step {step:6d}: valid masked-LM loss {loss:.3f} "
                  f"({entropy - loss:.3f} under the entropy, "
                  f"perplexity x{math.exp(loss - entropy):.2f} of the unigram model's), "
                  f"next-sentence accuracy {nsp_accuracy:.3f}")
        print(f"{name:12s} {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
