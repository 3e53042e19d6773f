"""Each recipe's objective, and the common test set's bridge: a packed batch read by BERT piece by piece."""

import torch

from bertpipe.model import BertConfig, BertForPreTraining
from bertpipe.train.objectives import Bert2019, packed_as_bert2019


def test_a_packed_batch_becomes_one_bert_sequence_per_document_piece_with_its_masks():
    # Two packed sequences: [5 6 7 | 8 9 10 11 12] and [13 14 15 16]; tokens 6, 9, 12 and 16 predicted.
    batch = {"input_ids": torch.arange(5, 17), "document_lengths": torch.tensor([3, 5, 4]),
             "sequence_lengths": torch.tensor([8, 4]), "masked_positions": torch.tensor([1, 4, 7, 11]),
             "masked_lm_ids": torch.tensor([60, 90, 120, 160])}
    bert = packed_as_bert2019(batch)
    assert bert["input_ids"].tolist() == [[5, 6, 7, 0, 0], [8, 9, 10, 11, 12], [13, 14, 15, 16, 0]]
    assert bert["input_mask"].tolist() == [[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 1, 1, 1, 0]]
    assert bert["masked_lm_positions"].tolist() == [[1, 0], [1, 4], [3, 0]]
    assert bert["masked_lm_ids"].tolist() == [[60, 0], [90, 120], [160, 0]]
    assert bert["masked_lm_weights"].tolist() == [[1, 0], [1, 1], [1, 0]]
    assert Bert2019.counts(bert)["mlm"] == 4.0


def test_bert_reads_each_piece_as_it_would_read_it_alone():
    torch.manual_seed(0)
    model = BertForPreTraining(BertConfig(vocab_size=30, hidden_size=16, num_layers=2, num_attention_heads=2,
                                          intermediate_size=32, max_position_embeddings=16)).eval()
    batch = {"input_ids": torch.randint(5, 30, (9,)), "document_lengths": torch.tensor([4, 5]),
             "sequence_lengths": torch.tensor([9]), "masked_positions": torch.tensor([2, 6]),
             "masked_lm_ids": torch.tensor([7, 8])}
    bert = packed_as_bert2019(batch)
    with torch.no_grad():
        together, _ = model(bert["input_ids"], bert["segment_ids"], bert["input_mask"], bert["masked_lm_positions"])
        alone, _ = model(batch["input_ids"][4:][None], torch.zeros(1, 5, dtype=torch.long),
                         torch.ones(1, 5, dtype=torch.long), torch.tensor([[2]]))
    assert torch.allclose(together[1, 0], alone[0, 0], atol=1e-5)
