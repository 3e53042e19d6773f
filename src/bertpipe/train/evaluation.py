"""A model's losses and accuracies on batches: the trainer's step and validation, and the evaluate stage, compute them
here, one way."""

import math

import torch

from bertpipe.model import pretraining_loss_sums
from bertpipe.train.precision import autocast


def forward_sums(model, batch: dict, device, precision: str):
    """(batch on `device`, masked-LM logits, next-sentence logits, (masked-LM loss sum, next-sentence loss sum))."""
    batch = {name: tensor.to(device, non_blocking=True) for name, tensor in batch.items()}
    with autocast(precision, device.type):
        mlm_logits, nsp_logits = model(batch["input_ids"], batch["segment_ids"], batch["input_mask"],
                                       batch["masked_lm_positions"])
    return batch, mlm_logits, nsp_logits, pretraining_loss_sums(
        mlm_logits, nsp_logits, batch["masked_lm_ids"], batch["masked_lm_weights"], batch["next_sentence_labels"])


@torch.no_grad()
def evaluation_totals(model, batches, device, precision: str) -> dict:
    """Sums over `batches` of the masked-LM loss, real predictions, correct predictions (argmax, as MLPerf's
    masked-LM accuracy), correct next-sentence labels and sequences."""
    totals = dict.fromkeys(("mlm", "predictions", "mlm_correct", "nsp_correct", "sequences"), 0.0)
    for batch in batches:
        batch, mlm_logits, nsp_logits, (mlm, _) = forward_sums(model, batch, device, precision)
        weights = batch["masked_lm_weights"]
        totals["mlm"] += mlm.item()
        totals["predictions"] += float(weights.sum())
        totals["mlm_correct"] += float(((mlm_logits.argmax(-1) == batch["masked_lm_ids"]) * weights).sum())
        totals["nsp_correct"] += float((nsp_logits.argmax(-1) == batch["next_sentence_labels"][:, 0]).sum())
        totals["sequences"] += len(weights)
    return totals


def evaluation_metrics(totals: dict, prefix: str) -> dict:
    mlm_loss = totals["mlm"] / max(totals["predictions"], 1)
    return {f"{prefix}mlm_loss": mlm_loss, f"{prefix}perplexity": math.exp(min(mlm_loss, 50)),
            f"{prefix}mlm_accuracy": totals["mlm_correct"] / max(totals["predictions"], 1),
            f"{prefix}nsp_accuracy": totals["nsp_correct"] / max(totals["sequences"], 1)}
