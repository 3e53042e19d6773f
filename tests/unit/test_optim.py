"""Megatron's LR schedule and BERT's weight-decay groups."""

import math

import pytest

from bertpipe.model import BertConfig, BertForPreTraining
from bertpipe.train.optim import adamw, learning_rate


def test_warmup_is_a_fraction_of_the_decay_iterations():
    assert learning_rate(0, 1e-4, 1000, 0.01, "linear") == 0.0
    assert learning_rate(5, 1e-4, 1000, 0.01, "linear") == pytest.approx(0.5e-4)
    assert learning_rate(10, 1e-4, 1000, 0.01, "linear") == pytest.approx(1e-4)


@pytest.mark.parametrize("style, end", [("linear", 0.0), ("cosine", 0.0), ("exponential", math.exp(-0.693)),
                                        ("constant", 1.0)])
def test_decay_styles(style, end):
    lr = [learning_rate(step, 1.0, 100, 0.1, style) for step in range(0, 131)]
    assert lr[10] == pytest.approx(1.0)
    assert lr[110] == pytest.approx(end, abs=1e-9)
    after_warmup = lr[10:111]
    assert all(a >= b for a, b in zip(after_warmup, after_warmup[1:]))


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
    import torch

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
