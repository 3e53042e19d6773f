"""Our BERT against HuggingFace's BertForPreTraining: same parameter names, same losses on the same batch."""

import pytest
import torch
import transformers

from bertpipe.model import BertConfig, BertForPreTraining, pretraining_loss_sums
from bertpipe.model_loading import huggingface_config

CONFIG = BertConfig(vocab_size=300, hidden_size=64, num_layers=3, num_attention_heads=4, intermediate_size=128,
                    max_position_embeddings=64)


def huggingface_twin(config: BertConfig):
    return transformers.BertForPreTraining(huggingface_config(config))


def batch(config, size=6, length=40, predictions=6, seed=0):
    generator = torch.Generator().manual_seed(seed)
    lengths = torch.randint(12, length + 1, (size,), generator=generator)
    mask = (torch.arange(length) < lengths[:, None]).long()
    ids = torch.randint(5, config.vocab_size, (size, length), generator=generator) * mask
    segments = ((torch.arange(length) >= (lengths // 2)[:, None]) & mask.bool()).long()
    positions = torch.stack([torch.randperm(int(n) - 2, generator=generator)[:predictions] + 1 for n in lengths])
    weights = torch.ones(size, predictions)
    weights[0, -2:] = 0  # padding predictions
    labels = torch.randint(5, config.vocab_size, (size, predictions), generator=generator)
    nsp = torch.randint(0, 2, (size, 1), generator=generator)
    return ids, segments, mask, positions, labels, weights, nsp


def test_parameter_names_match_huggingface_one_to_one():
    ours = BertForPreTraining(CONFIG).state_dict()
    theirs = huggingface_twin(CONFIG).state_dict()
    assert set(ours) <= set(theirs)
    assert set(theirs) - set(ours) <= {"cls.predictions.decoder.bias", "bert.embeddings.position_ids",
                                      "bert.embeddings.token_type_ids"}
    assert all(ours[name].shape == theirs[name].shape for name in ours)


def test_same_losses_as_huggingface_in_float32():
    torch.manual_seed(0)
    ours = BertForPreTraining(CONFIG).eval()
    theirs = huggingface_twin(CONFIG).eval()
    missing, unexpected = theirs.load_state_dict(ours.state_dict(), strict=False)
    assert not unexpected and set(missing) <= {"cls.predictions.decoder.bias"}
    ids, segments, mask, positions, labels, weights, nsp = batch(CONFIG)
    with torch.no_grad():
        mlm_logits, nsp_logits = ours(ids, segments, mask, positions)
        our_mlm, our_nsp = pretraining_loss_sums(mlm_logits, nsp_logits, labels, weights, nsp)
        out = theirs(input_ids=ids, token_type_ids=segments, attention_mask=mask)
        hf_logits = torch.gather(out.prediction_logits, 1,
                                 positions[:, :, None].expand(-1, -1, CONFIG.vocab_size))
        hf_mlm, hf_nsp = pretraining_loss_sums(hf_logits, out.seq_relationship_logits, labels, weights, nsp)
    # mean masked-LM loss over real predictions, mean next-sentence loss over sequences
    assert (our_mlm / weights.sum()).item() == pytest.approx((hf_mlm / weights.sum()).item(), abs=1e-5)
    assert (our_nsp / len(ids)).item() == pytest.approx((hf_nsp / len(ids)).item(), abs=1e-5)
    torch.testing.assert_close(mlm_logits, hf_logits, atol=1e-5, rtol=1e-5)
    # HuggingFace's own loss: labels at the masked positions, -100 elsewhere (and on padding predictions).
    hf_labels = torch.full_like(ids, -100)
    real = weights.bool()
    hf_labels[torch.arange(len(ids))[:, None].expand_as(positions)[real], positions[real]] = labels[real]
    with torch.no_grad():
        hf_loss = theirs(input_ids=ids, token_type_ids=segments, attention_mask=mask, labels=hf_labels,
                         next_sentence_label=nsp.flatten()).loss
    assert (our_mlm / weights.sum() + our_nsp / len(ids)).item() == pytest.approx(hf_loss.item(), abs=1e-5)


def test_masked_positions_head_equals_the_full_head():
    torch.manual_seed(1)
    model = BertForPreTraining(CONFIG).eval()
    ids, segments, mask, positions, labels, weights, nsp = batch(CONFIG, seed=3)
    with torch.no_grad():
        mlm_logits, _ = model(ids, segments, mask, positions)
        hidden, _ = model.bert(ids, segments, mask)
        everywhere = model.cls.predictions(hidden)
    torch.testing.assert_close(mlm_logits, torch.gather(everywhere, 1, positions[:, :, None].expand(
        -1, -1, CONFIG.vocab_size)), atol=1e-6, rtol=1e-6)


def test_mlm_head_is_tied_to_the_word_embeddings():
    model = BertForPreTraining(CONFIG)
    assert model.cls.predictions.decoder.weight is model.bert.embeddings.word_embeddings.weight


def test_initialisation_is_berts():
    model = BertForPreTraining(BertConfig(vocab_size=2000, hidden_size=128, num_layers=2, num_attention_heads=2,
                                          intermediate_size=256))
    query = model.bert.encoder.layer[0].attention.self.query
    assert query.weight.std().item() == pytest.approx(0.02, rel=0.1) and (query.bias == 0).all()
    norm = model.bert.encoder.layer[1].output.LayerNorm
    assert (norm.weight == 1).all() and (norm.bias == 0).all()


def test_unpadded_encoder_gives_the_padded_models_losses_and_gradients():
    """Our encoder computes on the real tokens alone; HuggingFace's computes every position, padding included.
    Same losses, and the same gradient for every parameter, on a batch that is a third padding."""
    torch.manual_seed(2)
    ours, theirs = BertForPreTraining(CONFIG).eval(), huggingface_twin(CONFIG).eval()  # eval: no dropout draws
    theirs.load_state_dict(ours.state_dict(), strict=False)
    ids, segments, mask, positions, labels, weights, nsp = batch(CONFIG, seed=5)
    assert 0.2 < 1 - mask.float().mean() < 0.5
    mlm_logits, nsp_logits = ours(ids, segments, mask, positions)
    our_mlm, our_nsp = pretraining_loss_sums(mlm_logits, nsp_logits, labels, weights, nsp)
    (our_mlm / weights.sum() + our_nsp / len(ids)).backward()
    out = theirs(input_ids=ids, token_type_ids=segments, attention_mask=mask)
    hf_logits = torch.gather(out.prediction_logits, 1, positions[:, :, None].expand(-1, -1, CONFIG.vocab_size))
    hf_mlm, hf_nsp = pretraining_loss_sums(hf_logits, out.seq_relationship_logits, labels, weights, nsp)
    (hf_mlm / weights.sum() + hf_nsp / len(ids)).backward()
    assert our_mlm.item() == pytest.approx(hf_mlm.item(), rel=1e-5) and our_nsp.item() == pytest.approx(hf_nsp.item(),
                                                                                                      rel=1e-5)
    their_parameters = dict(theirs.named_parameters())
    for name, parameter in ours.named_parameters():
        torch.testing.assert_close(parameter.grad, their_parameters[name].grad, atol=1e-6, rtol=1e-4, msg=name)


def test_attention_per_sequence_equals_the_batch_with_padding_masked():
    """The CPU's attention (a call per sequence at its real length) against the GPU's (one call for the batch, its
    packed tokens put back in place and the padding masked, as the padded model computes it), on packed tokens."""
    from bertpipe.model import Tokens

    generator = torch.Generator().manual_seed(4)
    mask = (torch.arange(16) < torch.tensor([16, 9, 3, 12])[:, None]).long()
    tokens = Tokens(mask)
    assert tokens.unpadded and tokens.per_sequence and tokens.lengths == [16, 9, 3, 12]
    query, key, value = (torch.randn(int(mask.sum()), 32, generator=generator) for _ in range(3))
    per_sequence = tokens.attention(query, key, value, heads=4, dropout=0.0)
    tokens.per_sequence = False
    masked = tokens.attention(query, key, value, heads=4, dropout=0.0)
    assert per_sequence.shape == (40, 32)
    torch.testing.assert_close(per_sequence, masked, atol=1e-6, rtol=1e-5)
