"""A model's losses and accuracies on batches: the trainer's step and validation, and the evaluate stage, compute them
here, one way, for either recipe (objectives.py)."""

import math

import torch

from bertpipe.train.objectives import on_device
from bertpipe.train.precision import autocast


def forward_sums(objective, model, batch: dict, device, precision: str):
    """(batch on `device`, logits by loss, loss sums by loss) of `objective`'s model on a batch."""
    batch = on_device(batch, device)
    with autocast(precision, device.type):
        logits, sums = objective.forward(model, batch)
    return batch, logits, sums


@torch.no_grad()
def evaluation_totals(objective, model, batches, device, precision: str) -> dict:
    """Sums over `batches`, for each of the objective's losses: the loss (`<loss>`), its count (`<loss>_count`: real
    predictions, or sequences for next-sentence) and its right predictions (`<loss>_correct`: argmax, as MLPerf's
    masked-LM accuracy); and the sequences."""
    totals = {f"{loss}{part}": 0.0 for loss in objective.losses for part in ("", "_count", "_correct")}
    totals["sequences"] = 0.0
    for batch in batches:
        batch, logits, sums = forward_sums(objective, model, batch, device, precision)
        counts, correct = objective.counts(batch), objective.correct(logits, batch)
        for loss in objective.losses:
            totals[loss] += sums[loss].item()
            totals[f"{loss}_count"] += counts[loss]
            totals[f"{loss}_correct"] += correct[loss]
        totals["sequences"] += counts["sequences"]
    return totals


def evaluation_metrics(totals: dict, prefix: str) -> dict:
    """Masked-LM loss, perplexity and accuracy, and next-sentence accuracy where the objective has it."""
    mlm_loss = totals["mlm"] / max(totals["mlm_count"], 1)
    metrics = {f"{prefix}mlm_loss": mlm_loss, f"{prefix}perplexity": math.exp(min(mlm_loss, 50)),
               f"{prefix}mlm_accuracy": totals["mlm_correct"] / max(totals["mlm_count"], 1)}
    if "nsp_count" in totals:
        metrics[f"{prefix}nsp_accuracy"] = totals["nsp_correct"] / max(totals["nsp_count"], 1)
    return metrics
