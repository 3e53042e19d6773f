"""How well a training step uses the machine: model FLOP utilisation (MFU) against a peak measured on the device at
start-up, and against the datasheet's where the device is known; the share of the step spent waiting for data; and
how much of each batch is padding.

Model FLOPs are the recipe's count (objectives.py): under bert2019 model.flops_per_sequence's (the matmuls BERT
needs, forward and backward) over whole sequences, padding included, as NVIDIA's and Megatron's counts are:
comparable between runs and with published figures. The eager model does not compute the padding (model.py), so
there MFU over-counts by about `padding_fraction`; under torch.compile the padding is computed, and
`padding_fraction` says how much of that work is waste. Under modern, modern_model.flops_per_token's over the real
tokens: nothing is padded but a shard's last sequence.
"""

import functools
import time

import torch

# Dense fp16/bf16 tensor-core peaks from the vendors' datasheets, TFLOP/s, by a word of torch's device name.
DATASHEET_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0}
MATMUL_SIZE = {"cuda": 8192, "cpu": 1024}  # big enough to reach the device's rate, small enough to time in a second


def measured_peak_flops(dtype: torch.dtype, device: torch.device, seconds: float = 0.25, size: int = None) -> float:
    """FLOP/s of square matmuls of `dtype` on `device`: what this device reaches on the work a model is made of.
    The size doubles from 256 up to `size` (MATMUL_SIZE's by default) while one matmul takes under 50 ms, then
    matmuls of that size run for about `seconds`: a second at most, also where a dtype has no fast kernel (float16
    on most CPUs runs at a hundredth of float32)."""
    largest = size or MATMUL_SIZE.get(device.type, MATMUL_SIZE["cpu"])

    def timed(n: int, repeats: int = 1) -> float:
        a = torch.randn(n, n, device=device).to(dtype)
        b = torch.randn(n, n, device=device).to(dtype)
        a @ b  # the first call pays for kernel selection and allocation
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        started = time.perf_counter()
        for _ in range(repeats):
            a @ b
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return (time.perf_counter() - started) / repeats

    n = 256
    while n < largest and timed(n) < 0.05:
        n *= 2
    repeats = max(2, int(seconds / max(timed(n), 1e-6)))
    return 2 * n**3 / timed(n, repeats)


def device_name(device: torch.device) -> str:
    """What the device is, for a model card: the GPU's name, or the CPU's model."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        lines = open("/proc/cpuinfo").read().splitlines()
        return next(line.split(":", 1)[1].strip() for line in lines if line.startswith("model name"))
    except (OSError, StopIteration):
        import platform

        return platform.processor() or platform.machine() or "CPU"


def datasheet_peak_flops(device: torch.device):
    """The datasheet's dense fp16/bf16 FLOP/s of a known GPU, or None."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((tflops * 1e12 for word, tflops in DATASHEET_TFLOPS.items() if word in name), None)


@functools.cache
def _peak_in_this_process(dtype: torch.dtype, device: torch.device, threads: int) -> float:
    """measured_peak_flops once a process for each dtype, device and number of threads: a process that builds
    several trainers (a test's) does not measure the same device again."""
    return measured_peak_flops(dtype, device)


class StepTelemetry:
    """The utilisation figures of a step, from what the trainer measured of it."""

    def __init__(self, dtype: torch.dtype, device: torch.device, world: int):
        """Measures this rank's device's peak for `dtype` (about a second), once a process."""
        self.world = world
        self.peak = _peak_in_this_process(dtype, device, torch.get_num_threads())
        self.datasheet_peak = datasheet_peak_flops(device)

    def __call__(self, flops: float, sequences: int, seq_length: int, real_tokens: float, seconds: float,
                 waiting: float) -> dict:
        """The model FLOPs of `sequences` of `seq_length` tokens made by all ranks in `seconds`, `real_tokens` of them
        not padding; `waiting`: the seconds this rank waited for its batches."""
        flops_per_device = flops / self.world / seconds
        metrics = {"tokens_per_s": real_tokens / seconds,
                   "padding_fraction": 1 - real_tokens / (sequences * seq_length),
                   "data_wait_fraction": waiting / seconds, "mfu": flops_per_device / self.peak}
        if self.datasheet_peak:
            metrics["mfu_datasheet"] = flops_per_device / self.datasheet_peak
        return metrics
