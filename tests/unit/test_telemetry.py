"""The trainer's utilisation figures: MFU against a peak measured on the device, the data wait, the padding."""

import pytest
import torch

from bertpipe.model import BertConfig, flops_per_sequence
from bertpipe.train.telemetry import StepTelemetry, datasheet_peak_flops, measured_peak_flops

CONFIG = BertConfig(num_layers=2, hidden_size=64, intermediate_size=128, num_attention_heads=2,
                    max_position_embeddings=128, vocab_size=1000)


def test_the_measured_peak_is_a_matmul_rate_of_the_runs_dtype_in_about_a_second_at_most():
    """float16 and bfloat16 have no fast kernel on many CPUs (a hundredth of float32's rate): the measurement takes
    smaller matmuls there instead of a minute."""
    import time

    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        started = time.perf_counter()
        assert 1e8 < measured_peak_flops(dtype, torch.device("cpu")) < 1e14
        assert time.perf_counter() - started < 5, dtype
    assert datasheet_peak_flops(torch.device("cpu")) is None


def test_step_figures_from_what_the_step_did():
    telemetry = StepTelemetry(torch.float32, torch.device("cpu"), world=2)
    # 16 sequences of 128 tokens with 20 prediction slots over both ranks, 1536 of the 2048 tokens real, in 0.5 s,
    # 0.1 s of it waiting for data.
    flops = flops_per_sequence(CONFIG, 128, 20) * 16
    figures = telemetry(flops, sequences=16, seq_length=128, real_tokens=1536, seconds=0.5, waiting=0.1)
    assert figures["tokens_per_s"] == 3072 and figures["padding_fraction"] == 0.25
    assert figures["data_wait_fraction"] == pytest.approx(0.2)
    per_device = flops / 2 / 0.5
    assert figures["mfu"] == pytest.approx(per_device / telemetry.peak) and "mfu_datasheet" not in figures
