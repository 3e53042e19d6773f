"""A vocabulary for tests of masking, without a tokenizer: the special ids of tokenizer_folder (0-4), then ordinary
ids up to VOCAB_SIZE; what pretraining_instances.materialize and packed_sequences.draw_masks read of a Tokenizer."""

import types

import numpy as np

PAD, UNK, CLS, SEP, MASK = range(5)
VOCAB_SIZE = 1000


def vocab(word_start_every=1):
    """Ids 5 up are ordinary; with `word_start_every` n, only the multiples of n start a word."""
    return types.SimpleNamespace(cls_id=CLS, sep_id=SEP, mask_id=MASK, pad_id=PAD,
                                 ordinary_ids=np.arange(5, VOCAB_SIZE),
                                 is_word_start=np.arange(VOCAB_SIZE) % word_start_every == 0)
