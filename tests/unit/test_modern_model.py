"""Our ModernBERT against HuggingFace's ModernBertForMaskedLM: the same state dict, the same logits and gradients on
each document, and packed documents computed as if each were alone."""

import dataclasses

import numpy as np
import pytest
import torch
import transformers

from bertpipe.modern_model import (
    Documents,
    ModernBertConfig,
    ModernBertForMaskedLM,
    flops_per_token,
    mlm_loss_sum,
    to_transformers_config,
)

# 4 layers: global, local, local, global. Documents of 40-70 tokens outreach the window (8 positions either way).
CONFIG = ModernBertConfig(vocab_size=300, hidden_size=64, num_layers=4, num_attention_heads=4, intermediate_size=96,
                          max_position_embeddings=256, hidden_dropout=0.0, attention_dropout=0.0,
                          layernorm_epsilon=1e-5, local_attention=16)
SPECIAL_IDS = dict(pad_token_id=0, cls_token_id=2, sep_token_id=3)
LENGTHS = [40, 70, 3, 55]  # the 3-token document leaves padded queries beyond any key's window on the padded path
# Weights 10x ModernBERT's: attention peaks sharply enough that positions, windows and rotary bases show in the logits
# (at 0.02 attention is near uniform, and swapping the two rotary bases moves the logits by less than 1e-4).
SHARP = dataclasses.replace(CONFIG, initializer_range=0.2)


def huggingface_twin(config: ModernBertConfig, attention="eager"):
    hf_config = transformers.ModernBertConfig(**to_transformers_config(config, **SPECIAL_IDS))
    return transformers.ModernBertForMaskedLM._from_config(hf_config, attn_implementation=attention)


def packed_batch(lengths=LENGTHS, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(5, CONFIG.vocab_size, (sum(lengths),), generator=generator)


def everywhere(ids):
    return torch.arange(len(ids))


def test_state_dict_is_huggingfaces_key_for_key():
    ours = ModernBertForMaskedLM(CONFIG).state_dict()
    theirs = huggingface_twin(CONFIG).state_dict()
    assert list(ours) == list(theirs)
    assert all(ours[name].shape == theirs[name].shape for name in ours)
    assert "model.layers.0.attn_norm.weight" not in ours and "model.layers.1.attn_norm.weight" in ours
    assert [name for name in ours if name.endswith(".bias")] == ["decoder.bias"]


def test_decoder_is_tied_to_the_token_embeddings():
    model = ModernBertForMaskedLM(CONFIG)
    assert model.decoder.weight is model.model.embeddings.tok_embeddings.weight


def test_layer_kinds_and_rotary_bases_are_huggingfaces():
    hf_config = transformers.ModernBertConfig(**to_transformers_config(CONFIG, **SPECIAL_IDS))
    assert hf_config.layer_types == ["full_attention", "sliding_attention", "sliding_attention", "full_attention"]
    assert hf_config.sliding_window == 8
    assert hf_config.rope_parameters["full_attention"]["rope_theta"] == CONFIG.global_rope_theta == 160000.0
    assert hf_config.rope_parameters["sliding_attention"]["rope_theta"] == CONFIG.local_rope_theta == 10000.0
    ours = ModernBertForMaskedLM(CONFIG).model.layers
    assert [layer.attn.max_distance for layer in ours] == [None, 8, 8, None]
    assert [layer.attn.rope_theta for layer in ours] == [160000.0, 10000.0, 10000.0, 160000.0]


@pytest.mark.parametrize("attention", ["eager", "sdpa"])
def test_same_logits_as_huggingface_on_each_document(attention):
    torch.manual_seed(0)
    ours, theirs = ModernBertForMaskedLM(SHARP).eval(), huggingface_twin(SHARP, attention).eval()
    theirs.load_state_dict(ours.state_dict(), strict=True)
    ids = packed_batch()
    with torch.no_grad():
        logits = ours(ids, LENGTHS, everywhere(ids))
        hf_logits = torch.cat([theirs(input_ids=document[None]).logits[0] for document in ids.split(LENGTHS)])
    assert logits.shape == (sum(LENGTHS), CONFIG.vocab_size)
    torch.testing.assert_close(logits, hf_logits, atol=1e-4, rtol=1e-4)


def test_same_loss_and_gradients_as_huggingface():
    """Our loss over the masked positions of the packed batch against HuggingFace's, each document alone, summed."""
    torch.manual_seed(1)
    ours, theirs = ModernBertForMaskedLM(SHARP), huggingface_twin(SHARP)
    theirs.load_state_dict(ours.state_dict(), strict=True)
    ids = packed_batch(seed=1)
    generator = torch.Generator().manual_seed(2)
    masked = torch.randperm(len(ids), generator=generator)[:30].sort().values
    labels = torch.randint(5, CONFIG.vocab_size, (len(masked),), generator=generator)
    loss = mlm_loss_sum(ours(ids, LENGTHS, masked), labels)
    loss.backward()
    hf_labels = torch.full_like(ids, -100)
    hf_labels[masked] = labels
    hf_loss = sum(theirs(input_ids=document[None], labels=document_labels[None]).loss * (document_labels >= 0).sum()
                  for document, document_labels in zip(ids.split(LENGTHS), hf_labels.split(LENGTHS))
                  if (document_labels >= 0).any())
    hf_loss.backward()
    assert loss.item() == pytest.approx(hf_loss.item(), rel=1e-5)
    their_parameters = dict(theirs.named_parameters())
    for name, parameter in ours.named_parameters():
        torch.testing.assert_close(parameter.grad, their_parameters[name].grad, atol=1e-5, rtol=1e-4, msg=name)


def test_a_document_is_computed_as_if_alone():
    torch.manual_seed(3)
    model = ModernBertForMaskedLM(CONFIG).eval()
    ids = packed_batch(seed=3)
    with torch.no_grad():
        packed = model(ids, LENGTHS, everywhere(ids)).split(LENGTHS)
        for document, logits in zip(ids.split(LENGTHS), packed):
            torch.testing.assert_close(logits, model(document, [len(document)], everywhere(document)),
                                       atol=1e-6, rtol=1e-6)


def test_changing_one_document_leaves_the_others_alone():
    torch.manual_seed(4)
    model = ModernBertForMaskedLM(CONFIG).eval()
    ids = packed_batch(seed=4)
    changed = ids.clone()
    changed[LENGTHS[0]:sum(LENGTHS[:2])] = packed_batch([LENGTHS[1]], seed=5)  # the second document
    with torch.no_grad():
        before = model(ids, LENGTHS, everywhere(ids)).split(LENGTHS)
        after = model(changed, LENGTHS, everywhere(ids)).split(LENGTHS)
    assert not torch.allclose(before[1], after[1])
    for index in (0, 2, 3):
        torch.testing.assert_close(before[index], after[index], atol=1e-6, rtol=1e-6)


def test_padded_attention_equals_attention_per_document():
    """The GPU's attention (one call on the documents padded to the longest) against the CPU's (one call per
    document): the same logits and gradients, queries at padding beyond any key's window included."""
    torch.manual_seed(6)
    model = ModernBertForMaskedLM(CONFIG)
    ids = packed_batch(seed=6)
    masked = torch.arange(0, len(ids), 5)
    results = []
    for per_document in (True, False):
        model.zero_grad()
        model.model.attention_per_document = per_document
        logits = model(ids, LENGTHS, masked)
        logits.square().mean().backward()
        results.append((logits.detach(), {name: p.grad.clone() for name, p in model.named_parameters()}))
    (per_document_logits, per_document_grads), (padded_logits, padded_grads) = results
    torch.testing.assert_close(padded_logits, per_document_logits, atol=1e-5, rtol=1e-5)
    for name, grad in per_document_grads.items():
        torch.testing.assert_close(padded_grads[name], grad, atol=1e-6, rtol=1e-4, msg=name)


def test_masked_positions_head_equals_the_full_head():
    torch.manual_seed(7)
    model = ModernBertForMaskedLM(CONFIG).eval()
    ids = packed_batch(seed=7)
    masked = torch.tensor([0, 17, 41, 110, 112, sum(LENGTHS) - 1])
    with torch.no_grad():
        torch.testing.assert_close(model(ids, LENGTHS, masked), model(ids, LENGTHS, everywhere(ids))[masked],
                                   atol=1e-6, rtol=1e-6)


def test_positions_restart_with_each_document():
    """Invisible in the logits (rotary attention sees only offsets), so checked here."""
    documents = Documents(torch.tensor([3, 1, 2]), 6, torch.device("cpu"), 256, per_document=False)
    assert documents.positions.tolist() == [0, 1, 2, 0, 0, 1]
    assert documents.index.tolist() == [0, 1, 2, 3, 6, 7]  # rows of the padded (3 documents x 3 tokens) layout


def test_lengths_must_cut_the_tokens_into_documents_the_model_takes():
    model = ModernBertForMaskedLM(CONFIG)
    ids = packed_batch()
    with pytest.raises(ValueError, match="do not cut"):
        model(ids, LENGTHS[:-1], everywhere(ids))
    with pytest.raises(ValueError, match="the model takes 256"):
        model(torch.zeros(257, dtype=torch.long), [257], torch.arange(3))


def test_initialisation_is_huggingfaces():
    """Each parameter drawn as HF draws it: the same spread and the same cut (2 standard deviations)."""
    config = ModernBertConfig(vocab_size=2000, hidden_size=128, num_layers=4, num_attention_heads=2,
                              intermediate_size=192, local_attention=16)
    torch.manual_seed(8)
    ours = ModernBertForMaskedLM(config).state_dict()
    theirs = huggingface_twin(config).state_dict()
    for name, parameter in ours.items():
        if name.endswith("norm.weight"):
            assert (parameter == 1).all() and (theirs[name] == 1).all(), name
        elif name == "decoder.bias":
            assert (parameter == 0).all() and (theirs[name] == 0).all()
        else:
            assert parameter.std().item() == pytest.approx(theirs[name].std().item(), rel=0.05), name
            assert parameter.abs().max() <= theirs[name].abs().max() * 1.01, name
    out_std = 0.02 / (2 * 4) ** 0.5
    assert ours["model.layers.2.mlp.Wo.weight"].abs().max() <= 2 * out_std
    assert ours["model.embeddings.tok_embeddings.weight"].abs().max() > 2 * out_std


def test_flops_count_local_layers_within_the_window():
    per_token = flops_per_token(CONFIG, 100, mask_rate=0.3)
    # beyond the window (17 keys) only the 2 global layers see more keys: 3 x 2 x 2 x width FLOPs per key
    assert flops_per_token(CONFIG, 200, mask_rate=0.3) - per_token == pytest.approx(3 * 2 * 4 * 64 * 100)
    head = 2 * 64 * 64 + 2 * 64 * CONFIG.vocab_size
    assert per_token - flops_per_token(CONFIG, 100, mask_rate=0.1) == pytest.approx(3 * 0.2 * head)
    # a batch's documents at once (the trainer's telemetry): each length's own figure
    lengths = np.array([5, 17, 100, 200])
    assert flops_per_token(CONFIG, lengths, mask_rate=0.3).tolist() == pytest.approx(
        [flops_per_token(CONFIG, int(n), mask_rate=0.3) for n in lengths])
    assert flops_per_token(CONFIG, 5, 0.3) < flops_per_token(CONFIG, 17, 0.3), "keys grow with a short document"
