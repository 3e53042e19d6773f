"""The optimizers (AdamW, and NVIDIA's LAMB for very large batches) with BERT's weight-decay groups, and Megatron's
learning-rate schedule with ModernBERT's warmup-stable-decay among its styles."""

import math

import torch
from torch import nn

DECAY_STYLES = ("linear", "cosine", "exponential", "constant", "wsd")


def weight_decay_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Two parameter groups: LayerNorm weights and all biases get no weight decay (as Megatron, Google and NVIDIA),
    the rest `weight_decay`."""
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
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def adamw(model: nn.Module, lr: float, weight_decay: float, betas=(0.9, 0.999), eps=1e-8) -> torch.optim.AdamW:
    """AdamW on BERT's weight-decay groups (Megatron's betas and eps), fused: one kernel updates every parameter (on a
    GPU, and on a CPU too), instead of a dozen small ones per parameter."""
    return torch.optim.AdamW(weight_decay_groups(model, weight_decay), lr=lr, betas=betas, eps=eps, fused=True)


def lamb(model: nn.Module, lr: float, weight_decay: float) -> "Lamb":
    """LAMB on BERT's weight-decay groups, with apex FusedLAMB's defaults as NVIDIA's BERT recipe uses them."""
    return Lamb(weight_decay_groups(model, weight_decay), lr=lr)


class Lamb(torch.optim.Optimizer):
    """LAMB (You et al. 2019, "Large Batch Optimization for Deep Learning: Training BERT in 76 minutes") with the
    semantics of apex's FusedLAMB as NVIDIA's BERT recipe runs it (DeepLearningExamples, global batches of 64K and
    32K): Adam's moments with bias correction, the decoupled weight decay added to the update, and the layer-wise
    trust ratio ||w|| / ||update|| (1 where either norm is 0) on the groups that have weight decay; the groups
    without it (biases, LayerNorm) take plain Adam-W steps (apex's `use_nvlamb=False`, its default).

    Ours because no maintained implementation with these semantics runs on both a CPU and a GPU here: apex's and
    DeepSpeed's are CUDA kernels, timm's needs torchvision, and pytorch_optimizer's and torch_optimizer's drop the
    bias correction and clamp ||w|| at 10. FusedLAMB's own clipping (`max_grad_norm=1.0`, by the global norm) is the
    trainer's `clip_grad`, which runs before every step; tests/unit/test_optim.py checks both against a float64
    transcription of apex's kernel."""

    def __init__(self, params, lr: float, betas=(0.9, 0.999), eps: float = 1e-6, weight_decay: float = 0.0):
        super().__init__(params, {"lr": lr, "betas": betas, "eps": eps, "weight_decay": weight_decay})

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            (beta1, beta2), eps, decay = group["betas"], group["eps"], group["weight_decay"]
            for p in params:
                if not self.state[p]:
                    self.state[p] = {"step": torch.tensor(0.0), "exp_avg": torch.zeros_like(p),
                                     "exp_avg_sq": torch.zeros_like(p)}
            states = [self.state[p] for p in params]
            grads = [p.grad for p in params]
            exp_avgs, exp_avg_sqs = [s["exp_avg"] for s in states], [s["exp_avg_sq"] for s in states]
            torch._foreach_add_([s["step"] for s in states], 1.0)
            step = states[0]["step"].item()  # a CPU tensor, as in torch's Adam: no device sync
            torch._foreach_lerp_(exp_avgs, grads, 1.0 - beta1)
            torch._foreach_mul_(exp_avg_sqs, beta2)
            torch._foreach_addcmul_(exp_avg_sqs, grads, grads, value=1.0 - beta2)
            # update = (m / (1 - beta1^t)) / (sqrt(v / (1 - beta2^t)) + eps) + decay * w
            denominators = torch._foreach_div(exp_avg_sqs, 1.0 - beta2 ** step)
            torch._foreach_sqrt_(denominators)
            torch._foreach_add_(denominators, eps)
            updates = torch._foreach_div(exp_avgs, 1.0 - beta1 ** step)
            torch._foreach_div_(updates, denominators)
            if decay != 0.0:
                torch._foreach_add_(updates, params, alpha=decay)
                weight_norms, update_norms = torch._foreach_norm(params), torch._foreach_norm(updates)
                torch._foreach_mul_(updates, [torch.where((w > 0) & (u > 0), w / u, 1.0)
                                              for w, u in zip(weight_norms, update_norms)])
            torch._foreach_add_(params, updates, alpha=-group["lr"])
        return loss


OPTIMIZERS = {"adam": adamw, "lamb": lamb}


def learning_rate(step: int, max_lr: float, decay_iters: int, warmup: float, style: str,
                  decay_fraction: float = 0.1) -> float:
    """Megatron's AnnealingLR: linear warmup over `warmup * decay_iters` steps, then `style` decay over
    `decay_iters` steps counted from the end of warmup (linear and cosine reach 0, exponential halves). `wsd`
    (warmup-stable-decay, the trapezoid ModernBERT trains with) holds the peak until the last `decay_fraction` of
    those steps, then decays as 1 - sqrt of the decay's progress to 0 (Hägele et al., 2024)."""
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
    if style == "wsd":
        decaying = progress - (1.0 - decay_fraction)
        return max_lr if decaying <= 0 else max_lr * max(1.0 - math.sqrt(min(decaying / decay_fraction, 1.0)), 0.0)
    return max_lr
