"""Mixed precision: Megatron's dynamic loss scaler with hysteresis (fp16), and the autocast context of each mode.

fp16 here is autocast to float16 over float32 parameters: the float32 parameters are the master weights, so no
separate copy is kept. Under autocast, LayerNorm runs in float32 and the embedding tables stay float32, which is what
Megatron's `--fp32-layernorm` and `--fp32-embedding` ask for; our fp16 therefore always behaves as if both were given
(the flags are accepted, so that a Megatron command runs unchanged). Logits are cast to float32 before the loss.
bf16 is autocast to bfloat16, with no loss scaling: its exponent range is float32's.
"""

import contextlib

import torch


class DynamicLossScaler:
    """Megatron's DynamicLossScaler: the loss is multiplied by `scale` before backward.

    On an overflow (inf or nan in any gradient) the step is skipped; the scale is halved (not below `min_scale`) only
    when the hysteresis counter is at 1, otherwise the counter goes down by one. After `window` iterations without an
    overflow since the last one, the scale doubles and the counter is reset to `hysteresis`.
    """

    def __init__(self, initial_scale=2.0**32, factor=2.0, window=1000, min_scale=1.0, hysteresis=2):
        self.scale = float(initial_scale)
        self.factor, self.window, self.min_scale, self.hysteresis = factor, window, min_scale, hysteresis
        self.hysteresis_left = hysteresis
        self.iteration = 0
        self.last_overflow = -1
        self.skipped = 0

    def update(self, overflow: bool) -> None:
        if overflow:
            if self.hysteresis == 1 or self.hysteresis_left == 1:
                self.scale = max(self.scale / self.factor, self.min_scale)
            else:
                self.hysteresis_left -= 1
            self.last_overflow = self.iteration
            self.skipped += 1
        elif (self.iteration - self.last_overflow) % self.window == 0:
            self.hysteresis_left = self.hysteresis
            self.scale *= self.factor
        self.iteration += 1

    RUNNING_STATE = ("scale", "hysteresis_left", "iteration", "last_overflow", "skipped")

    def state_dict(self) -> dict:
        return {key: getattr(self, key) for key in self.RUNNING_STATE}

    def load_state_dict(self, state: dict) -> None:
        """Restore the running state; the settings (window, minimum, hysteresis) stay those of this run."""
        for key in self.RUNNING_STATE:
            setattr(self, key, state[key])


class ConstantLossScaler(DynamicLossScaler):
    """Megatron's `--loss-scale S`: a fixed scale; overflowing steps are still skipped."""

    RUNNING_STATE = ("iteration", "skipped")  # the scale is the one given on this run's command line

    def update(self, overflow: bool) -> None:
        self.skipped += int(overflow)
        self.iteration += 1


def gradients_overflow(parameters) -> bool:
    """Whether any gradient holds an inf or a nan (one fused check, one synchronisation)."""
    grads = [p.grad for p in parameters if p.grad is not None]
    if not grads:
        return False
    norms = torch._foreach_norm(grads, ord=float("inf"))
    return not bool(torch.isfinite(torch.stack(norms)).all())


COMPUTE_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}  # the matmuls' type


def autocast(precision: str, device_type: str):
    """The forward's autocast context for 'fp32', 'fp16' or 'bf16'."""
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type, dtype=COMPUTE_DTYPES[precision])
