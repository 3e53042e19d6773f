"""Megatron's dynamic loss scaler, step by step, with forced overflows."""

import pytest
import torch

from bertpipe.train.precision import ConstantLossScaler, DynamicLossScaler, autocast, gradients_overflow


def run(scaler, overflows):
    seen = []
    for overflow in overflows:
        scaler.update(overflow)
        seen.append((scaler.scale, scaler.hysteresis_left))
    return seen


def test_hysteresis_two_halves_on_the_second_overflow():
    scaler = DynamicLossScaler(initial_scale=2.0**16, window=1000, hysteresis=2)
    assert run(scaler, [True, True, True, False, True]) == [
        (2.0**16, 1),  # first overflow: only the counter goes down
        (2.0**15, 1),  # counter at 1: halve
        (2.0**14, 1),  # no reset without a scale increase (Megatron's default, not consecutive hysteresis)
        (2.0**14, 1),
        (2.0**13, 1),
    ]
    assert scaler.skipped == 4


def test_hysteresis_one_halves_at_once():
    scaler = DynamicLossScaler(initial_scale=8.0, hysteresis=1)
    assert [s for s, _ in run(scaler, [True, True, True])] == [4.0, 2.0, 1.0]


def test_scale_never_goes_below_the_minimum():
    scaler = DynamicLossScaler(initial_scale=4.0, min_scale=2.0, hysteresis=1)
    assert [s for s, _ in run(scaler, [True] * 4)] == [2.0, 2.0, 2.0, 2.0]


def test_scale_doubles_after_a_window_without_overflow_and_resets_hysteresis():
    scaler = DynamicLossScaler(initial_scale=2.0**10, window=4, hysteresis=3)
    seen = run(scaler, [True, False, False, False, False, False, False, False])
    # overflow at iteration 0; then iterations 1..3 make 4 - the window counts from the overflow
    assert seen == [(2.0**10, 2), (2.0**10, 2), (2.0**10, 2), (2.0**10, 2), (2.0**11, 3), (2.0**11, 3),
                    (2.0**11, 3), (2.0**11, 3)]


def test_first_window_counts_from_the_start():
    scaler = DynamicLossScaler(initial_scale=1.0, window=3, hysteresis=2)
    assert [s for s, _ in run(scaler, [False] * 7)] == [1.0, 1.0, 2.0, 2.0, 2.0, 4.0, 4.0]


def test_constant_scale_skips_but_never_changes():
    scaler = ConstantLossScaler(initial_scale=128.0)
    assert [s for s, _ in run(scaler, [True, False, True])] == [128.0] * 3 and scaler.skipped == 2


def test_state_round_trip_keeps_this_runs_settings():
    scaler = DynamicLossScaler(initial_scale=64.0, window=5, hysteresis=2)
    run(scaler, [True, False, True])
    restored = DynamicLossScaler(window=5, hysteresis=2)
    restored.load_state_dict(scaler.state_dict())
    assert run(restored, [False] * 6) == run(scaler, [False] * 6)
    longer_window = DynamicLossScaler(window=1000, hysteresis=2)
    longer_window.load_state_dict(scaler.state_dict())
    assert longer_window.window == 1000 and longer_window.scale == scaler.scale


def test_constant_scale_comes_from_the_command_line_on_resume():
    saved = DynamicLossScaler(initial_scale=2.0**20)
    run(saved, [True, True])
    fixed = ConstantLossScaler(initial_scale=8.0)
    fixed.load_state_dict(saved.state_dict())
    assert fixed.scale == 8.0 and fixed.skipped == 2


def test_overflow_detection_on_real_gradients():
    layer = torch.nn.Linear(4, 4)
    layer(torch.ones(1, 4)).sum().backward()
    assert not gradients_overflow(layer.parameters())
    layer.weight.grad[0, 0] = float("inf")
    assert gradients_overflow(layer.parameters())
    layer.weight.grad[0, 0] = float("nan")
    assert gradients_overflow(layer.parameters())


def test_fp16_overflow_is_caught_through_a_real_backward():
    layer = torch.nn.Linear(8, 8)
    scaler = DynamicLossScaler(initial_scale=2.0**40, hysteresis=1)
    with autocast("fp16", "cpu"):
        loss = layer(torch.full((2, 8), 100.0)).float().pow(2).sum()
    (loss * scaler.scale).backward()
    overflow = gradients_overflow(layer.parameters())
    scaler.update(overflow)
    assert overflow and scaler.scale == 2.0**39


@pytest.mark.parametrize("precision, dtype", [("fp16", torch.float16), ("bf16", torch.bfloat16),
                                              ("fp32", torch.float32)])
def test_autocast_modes(precision, dtype):
    with autocast(precision, "cpu"):
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == dtype
