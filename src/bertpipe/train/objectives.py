"""What each recipe trains: its model, the losses of a batch and the counts each loss is normalised by. The trainer's
step and validation (loop.py), evaluation.py and the evaluate stage go through `OBJECTIVES[recipe]`, so that both
recipes are trained, validated and evaluated one way.

A loss is a sum over the batch (`losses`), divided by the count of the whole global batch (`counts`): masked-LM by
its real predictions, next-sentence (bert2019) by its sequences. So one process and N processes with the same global
batch compute the same loss and gradients, under either recipe.
"""

import torch

from bertpipe.model import BertConfig, BertForPreTraining, flops_per_sequence, pretraining_loss_sums
from bertpipe.modern_model import ModernBertConfig, ModernBertForMaskedLM, flops_per_token, mlm_loss_sum


class Bert2019:
    """BERT with next-sentence prediction, on google-research/bert's records (static masks, padded to the phase's
    length): tfrecord_reader.TFRecordSamples."""

    name = "bert2019"
    losses = ("mlm", "nsp")
    model_class, config_class = BertForPreTraining, BertConfig

    @staticmethod
    def forward(model, batch: dict) -> tuple:
        """(logits by loss, loss sums by loss) of a batch on the model's device."""
        mlm_logits, nsp_logits = model(batch["input_ids"], batch["segment_ids"], batch["input_mask"],
                                       batch["masked_lm_positions"])
        mlm, nsp = pretraining_loss_sums(mlm_logits, nsp_logits, batch["masked_lm_ids"], batch["masked_lm_weights"],
                                         batch["next_sentence_labels"])
        return {"mlm": mlm_logits, "nsp": nsp_logits}, {"mlm": mlm, "nsp": nsp}

    @staticmethod
    def counts(batch: dict) -> dict:
        """Each loss's count, and the batch's sequences and real tokens (floats, for all_sums)."""
        return {"mlm": float(batch["masked_lm_weights"].sum()), "nsp": float(len(batch["input_ids"])),
                "sequences": float(len(batch["input_ids"])), "tokens": float(batch["input_mask"].sum())}

    @staticmethod
    def correct(logits: dict, batch: dict) -> dict:
        """Right predictions (argmax) of each loss: masked tokens at real predictions, next-sentence labels."""
        weights = batch["masked_lm_weights"]
        return {"mlm": float(((logits["mlm"].argmax(-1) == batch["masked_lm_ids"]) * weights).sum()),
                "nsp": float((logits["nsp"].argmax(-1) == batch["next_sentence_labels"][:, 0]).sum())}

    @staticmethod
    def flops(config: BertConfig, batch: dict, sequences: float) -> float:
        """Model FLOPs of a step on `sequences` sequences shaped as `batch`'s, padding included (as NVIDIA's and
        Megatron's counts)."""
        return flops_per_sequence(config, batch["input_ids"].shape[1], batch["masked_lm_positions"].shape[1]) \
            * sequences


class Modern:
    """ModernBERT, masked-LM only, on packed sequences whose masks are drawn as they are read:
    packed_sequences.PackedSamples (unpadded batches)."""

    name = "modern"
    losses = ("mlm",)
    model_class, config_class = ModernBertForMaskedLM, ModernBertConfig

    @staticmethod
    def forward(model, batch: dict) -> tuple:
        logits = model(batch["input_ids"], batch["document_lengths"], batch["masked_positions"])
        return {"mlm": logits}, {"mlm": mlm_loss_sum(logits, batch["masked_lm_ids"])}

    @staticmethod
    def counts(batch: dict) -> dict:
        return {"mlm": float(len(batch["masked_positions"])), "sequences": float(len(batch["sequence_lengths"])),
                "tokens": float(len(batch["input_ids"]))}

    @staticmethod
    def correct(logits: dict, batch: dict) -> dict:
        return {"mlm": float((logits["mlm"].argmax(-1) == batch["masked_lm_ids"]).sum())}

    @staticmethod
    def flops(config: ModernBertConfig, batch: dict, sequences: float) -> float:
        """Model FLOPs of a step on `sequences` sequences shaped as `batch`'s, at its rate of predictions, each
        document's attention over its own length (the batch's documents stand for the step's)."""
        lengths = batch["document_lengths"].cpu().numpy()
        rate = len(batch["masked_positions"]) / max(len(batch["input_ids"]), 1)
        per_sequence = float((flops_per_token(config, lengths, rate) * lengths).sum()) \
            / max(len(batch["sequence_lengths"]), 1)
        return per_sequence * sequences


OBJECTIVES = {objective.name: objective for objective in (Bert2019, Modern)}


def packed_as_bert2019(batch: dict) -> dict:
    """A packed, masked batch (packed_sequences.PackedSamples.read) as bert2019's: each document piece a sequence of
    its own, padded to the longest, token type 0, its masked positions as predictions (the next-sentence labels are
    0 and mean nothing). So BERT reads the same tokens under the same masks as ModernBERT: the common test set."""
    lengths = batch["document_lengths"]
    pieces, longest = len(lengths), int(lengths.max())
    starts = lengths.cumsum(0) - lengths
    piece_of = torch.arange(pieces).repeat_interleave(lengths)
    column = torch.arange(len(piece_of)) - starts[piece_of]
    input_ids = torch.zeros(pieces, longest, dtype=torch.long)
    input_ids[piece_of, column] = batch["input_ids"]
    input_mask = torch.zeros(pieces, longest, dtype=torch.long)
    input_mask[piece_of, column] = 1
    masked_piece = piece_of[batch["masked_positions"]]
    per_piece = torch.bincount(masked_piece, minlength=pieces)
    slots = max(int(per_piece.max()), 1) if len(masked_piece) else 1
    slot = torch.arange(len(masked_piece)) - (per_piece.cumsum(0) - per_piece)[masked_piece]
    positions = torch.zeros(pieces, slots, dtype=torch.long)
    labels = torch.zeros(pieces, slots, dtype=torch.long)
    weights = torch.zeros(pieces, slots)
    positions[masked_piece, slot] = column[batch["masked_positions"]]
    labels[masked_piece, slot] = batch["masked_lm_ids"]
    weights[masked_piece, slot] = 1.0
    return {"input_ids": input_ids, "input_mask": input_mask, "segment_ids": torch.zeros_like(input_ids),
            "masked_lm_positions": positions, "masked_lm_ids": labels, "masked_lm_weights": weights,
            "next_sentence_labels": torch.zeros(pieces, 1, dtype=torch.long)}


def on_device(batch: dict, device) -> dict:
    return {name: tensor.to(device, non_blocking=True) for name, tensor in batch.items()}
