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
