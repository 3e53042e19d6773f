"""AdamW with BERT's weight-decay groups, and Megatron's learning-rate schedule."""

import math

import torch
from torch import nn

DECAY_STYLES = ("linear", "cosine", "exponential", "constant")


def adamw(model: nn.Module, lr: float, weight_decay: float, betas=(0.9, 0.999), eps=1e-8) -> torch.optim.AdamW:
    """AdamW where LayerNorm weights and all biases get no weight decay (as Megatron and Google), fused: one kernel
    updates every parameter (on a GPU, and on a CPU too), instead of a dozen small ones per parameter."""
    decay, no_decay = [], []
    for module in model.modules():
        for name, parameter in module.named_parameters(recurse=False):
            if isinstance(module, nn.LayerNorm) or name == "bias":
                no_decay.append(parameter)
            else:
                decay.append(parameter)
    # Tied parameters appear once per module that holds them; keep each once.
    decay = list({id(p): p for p in decay}.values())
    no_decay = list({id(p): p for p in no_decay}.values())
    return torch.optim.AdamW([{"params": decay, "weight_decay": weight_decay},
                              {"params": no_decay, "weight_decay": 0.0}], lr=lr, betas=betas, eps=eps, fused=True)


def learning_rate(step: int, max_lr: float, decay_iters: int, warmup: float, style: str) -> float:
    """Megatron's AnnealingLR: linear warmup over `warmup * decay_iters` steps, then `style` decay over
    `decay_iters` steps counted from the end of warmup (linear and cosine reach 0, exponential halves)."""
    if style not in DECAY_STYLES:
        raise ValueError(f"lr decay style {style!r}: expected one of {', '.join(DECAY_STYLES)}")
    warmup_steps = warmup * decay_iters
    if warmup_steps > 0 and step <= warmup_steps:
        return max_lr * step / warmup_steps
    progress = (step - warmup_steps) / decay_iters
    if style == "linear":
        return max(max_lr * (1.0 - progress), 0.0)
    if style == "cosine":
        return max_lr / 2.0 * (math.cos(math.pi * min(progress, 1.0)) + 1.0)
    if style == "exponential":
        return max_lr * math.exp(-0.693 * progress)
    return max_lr
