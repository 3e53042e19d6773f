"""Megatron's LR schedule, BERT's weight-decay groups, fused AdamW and NVIDIA's LAMB."""

import math

import numpy as np
import pytest
import torch

from bertpipe.model import BertConfig, BertForPreTraining
from bertpipe.train.optim import adamw, lamb, learning_rate


def test_warmup_is_a_fraction_of_the_decay_iterations():
    assert learning_rate(0, 1e-4, 1000, 0.01, "linear") == 0.0
    assert learning_rate(5, 1e-4, 1000, 0.01, "linear") == pytest.approx(0.5e-4)
    assert learning_rate(10, 1e-4, 1000, 0.01, "linear") == pytest.approx(1e-4)


@pytest.mark.parametrize("style, end", [("linear", 0.0), ("cosine", 0.0), ("exponential", math.exp(-0.693)),
                                        ("constant", 1.0), ("wsd", 0.0)])
def test_decay_styles(style, end):
    lr = [learning_rate(step, 1.0, 100, 0.1, style) for step in range(0, 131)]
    assert lr[10] == pytest.approx(1.0)
    assert lr[110] == pytest.approx(end, abs=1e-9)
    after_warmup = lr[10:111]
    assert all(a >= b for a, b in zip(after_warmup, after_warmup[1:]))


def test_wsd_holds_the_peak_then_decays_as_one_minus_sqrt_over_its_last_fraction():
    # 10 warmup steps, then 100 decay steps of which the last 20% decay: steps 10 to 90 at the peak.
    lr = [learning_rate(step, 2.0, 100, 0.1, "wsd", decay_fraction=0.2) for step in range(0, 131)]
    assert lr[5] == pytest.approx(1.0) and all(value == 2.0 for value in lr[10:91])
    assert lr[95] == pytest.approx(2.0 * (1 - math.sqrt(0.25)))  # a quarter of the decay done: 1 - sqrt drops fast
    assert lr[110] == pytest.approx(0.0, abs=1e-12) and lr[130] == 0.0
    assert learning_rate(50, 2.0, 100, 0.0, "wsd", decay_fraction=0.0) == 2.0, "no decay phase: constant"


def test_unknown_style_is_refused():
    with pytest.raises(ValueError, match="decay style"):
        learning_rate(1, 1.0, 10, 0.0, "step")


def test_no_weight_decay_on_layernorm_and_biases():
    model = BertForPreTraining(BertConfig(vocab_size=50, hidden_size=16, num_layers=2, num_attention_heads=2,
                                          intermediate_size=32, max_position_embeddings=16))
    decay, no_decay = adamw(model, 1e-3, 0.01).param_groups
    names = {id(p): n for n, p in model.named_parameters()}
    assert decay["weight_decay"] == 0.01 and no_decay["weight_decay"] == 0.0
    assert all("LayerNorm" in names[id(p)] or names[id(p)].endswith("bias") for p in no_decay["params"])
    assert not any("LayerNorm" in names[id(p)] or names[id(p)].endswith("bias") for p in decay["params"])
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))


def test_fused_adamw_takes_the_steps_of_the_reference_adamw():
    """The fused kernel against torch's single-tensor AdamW, with the same groups, on a few steps of a tiny BERT."""
    config = BertConfig(vocab_size=50, hidden_size=16, num_layers=1, num_attention_heads=2, intermediate_size=32,
                        max_position_embeddings=16)
    torch.manual_seed(0)
    fused_model = BertForPreTraining(config)
    reference_model = BertForPreTraining(config)
    reference_model.load_state_dict(fused_model.state_dict())
    fused = adamw(fused_model, 1e-2, 0.01)
    parameters = dict(reference_model.named_parameters())
    reference = torch.optim.AdamW([{"params": [parameters[name] for name in names], "weight_decay": decay}
                                   for decay, names in zip((0.01, 0.0), _names(fused_model, fused))],
                                  lr=1e-2, foreach=False, fused=False)
    for step in range(3):
        for model, optimizer in ((fused_model, fused), (reference_model, reference)):
            torch.manual_seed(step)
            for parameter in model.parameters():
                parameter.grad = torch.randn_like(parameter)
            optimizer.step()
    assert fused.defaults["fused"] and not reference.param_groups[0]["fused"]
    for (name, a), (_, b) in zip(fused_model.named_parameters(), reference_model.named_parameters()):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-7), name


def _names(model, optimizer):
    by_id = {id(p): n for n, p in model.named_parameters()}
    return [[by_id[id(p)] for p in group["params"]] for group in optimizer.param_groups]


def _tiny_bert(seed=0):
    torch.manual_seed(seed)
    return BertForPreTraining(BertConfig(vocab_size=50, hidden_size=16, num_layers=2, num_attention_heads=2,
                                         intermediate_size=32, max_position_embeddings=16))


def _gradients(model, step):
    """Random gradients whose global norm is above 1 on some steps and below it on others, so clipping matters."""
    generator = torch.Generator().manual_seed(100 + step)
    scale = (3.0, 0.02, 1.5, 0.05, 8.0, 0.01)[step % 6]
    return {name: torch.randn(p.shape, generator=generator) * scale / p.numel() ** 0.5
            for name, p in model.named_parameters()}


def apex_fused_lamb_reference(weights, gradients, decays, lr, steps, betas=(0.9, 0.999), eps=1e-6,
                              max_grad_norm=1.0, trust_ratio=True):
    """apex's FusedLAMB (csrc/multi_tensor_lamb.cu, adam_w_mode, grad_averaging, bias_correction, use_nvlamb=False,
    as NVIDIA's BERT recipe calls it), transcribed in float64 numpy: `weights` {name: array}, `gradients(step)`
    {name: array}, `decays` {name: weight decay}. Returns the weights after `steps` steps (without the trust
    ratio: AdamW's steps with apex's eps and clipping)."""
    beta1, beta2 = betas
    w = {name: value.astype(np.float64) for name, value in weights.items()}
    m = {name: np.zeros_like(value) for name, value in w.items()}
    v = {name: np.zeros_like(value) for name, value in w.items()}
    for step in range(1, steps + 1):
        g = {name: value.astype(np.float64) for name, value in gradients(step - 1).items()}
        global_norm = np.sqrt(sum((value ** 2).sum() for value in g.values()))
        clipped = global_norm / max_grad_norm if global_norm > max_grad_norm else 1.0
        for name in w:
            scaled = g[name] / clipped
            m[name] = m[name] * beta1 + (1 - beta1) * scaled
            v[name] = v[name] * beta2 + (1 - beta2) * scaled * scaled
            update = (m[name] / (1 - beta1 ** step)) / (np.sqrt(v[name] / (1 - beta2 ** step)) + eps)
            update = update + decays[name] * w[name]
            ratio = lr
            if trust_ratio and decays[name] != 0.0:
                param_norm, update_norm = np.linalg.norm(w[name]), np.linalg.norm(update)
                ratio = lr * param_norm / update_norm if param_norm != 0 and update_norm != 0 else lr
            w[name] = w[name] - ratio * update
    return w


def _trainer_steps(model, optimizer, steps, first=0):
    """What Trainer._optimizer_step does around the optimizer: clip by the global norm (clip_grad 1.0), step."""
    for step in range(first, first + steps):
        for name, p in model.named_parameters():
            p.grad = _gradients(model, step)[name].clone()
        torch.nn.utils.clip_grad_norm_(list(model.parameters()), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)


def test_lamb_takes_the_steps_of_apex_fused_lamb_with_nvidias_bert_settings():
    """Six steps of a tiny BERT with lr 6e-3 (phase 1's) against the float64 transcription of apex's kernel. One
    weight starts at zero (its trust ratio falls back to 1), one has a norm above 10 (which other LAMBs clamp at 10),
    and the no-decay groups take no trust ratio: each would move the weights away from the reference if handled
    otherwise."""
    model = _tiny_bert()
    with torch.no_grad():
        model.bert.encoder.layer[0].attention.self.query.weight.zero_()
        model.bert.encoder.layer[1].attention.self.key.weight.mul_(200.0)
    assert model.bert.encoder.layer[1].attention.self.key.weight.norm() > 10
    optimizer = lamb(model, 6e-3, 0.01)
    decay_of = {id(p): group["weight_decay"] for group in optimizer.param_groups for p in group["params"]}
    weights = {name: p.detach().numpy().copy() for name, p in model.named_parameters()}
    decays = {name: decay_of[id(p)] for name, p in model.named_parameters()}
    gradients = lambda step: {name: g.numpy() for name, g in _gradients(model, step).items()}  # noqa: E731
    expected = apex_fused_lamb_reference(weights, gradients, decays, 6e-3, 6)
    _trainer_steps(model, optimizer, 6)
    for name, p in model.named_parameters():
        moved = np.abs(expected[name] - weights[name]).max()
        assert moved > 0, name
        np.testing.assert_allclose(p.detach().numpy(), expected[name], rtol=1e-5, atol=1e-6 * moved, err_msg=name)
    # The trust ratio is what makes it LAMB: without it (plain Adam-W steps) the decayed weights end elsewhere.
    adam_like = apex_fused_lamb_reference(weights, gradients, decays, 6e-3, 6, trust_ratio=False)
    decayed = [name for name in decays if decays[name]]
    assert max(np.abs(adam_like[name] - expected[name]).max() for name in decayed) > 1e-3


def test_lamb_resumes_from_its_state_dict_exactly():
    """Three steps, a checkpoint of the optimizer (saved and loaded as the trainer does), three more: bitwise the
    six steps of an uninterrupted run."""
    import io

    straight = _tiny_bert()
    _trainer_steps(straight, lamb(straight, 6e-3, 0.01), 6)
    interrupted = _tiny_bert()
    optimizer = lamb(interrupted, 6e-3, 0.01)
    _trainer_steps(interrupted, optimizer, 3)
    saved = io.BytesIO()
    torch.save({"model": interrupted.state_dict(), "optimizer": optimizer.state_dict()}, saved)
    saved.seek(0)
    state = torch.load(saved, weights_only=True)
    resumed = _tiny_bert(seed=1)
    resumed.load_state_dict(state["model"])
    optimizer = lamb(resumed, 6e-3, 0.01)
    optimizer.load_state_dict(state["optimizer"])
    _trainer_steps(resumed, optimizer, 3, first=3)
    for (name, a), (_, b) in zip(straight.named_parameters(), resumed.named_parameters()):
        assert torch.equal(a, b), name
