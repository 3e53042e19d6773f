"""The samples a training run reads: the tfrecords stage's files (bert2019's instances, or modern's packed sequences,
masked as they are read), or Megatron's loose json (one JSON document a line, made into pairs and masks as it trains),
each as (train, valid or None) with random access by index."""

import logging

from bertpipe import BertpipeError
from bertpipe.packed_sequences import PackedSamples
from bertpipe.settings import InstanceSpec, ModernSettings
from bertpipe.tfrecord_reader import TFRecordSamples
from bertpipe.train.loose_json_samples import LooseJsonSamples

log = logging.getLogger(__name__)


def tfrecord_samples(train_data, valid_data, seq_length: int, max_predictions) -> tuple:
    """(train, valid or None) from TFRecord files or globs, whose records must have `seq_length` tokens and (unless
    None) `max_predictions` predictions."""
    train = TFRecordSamples(train_data)
    valid = TFRecordSamples(valid_data) if valid_data else None
    found_length, found_predictions = train.shape
    for flag, given, found in (("--seq-length", seq_length, found_length),
                               ("--max-preds-per-seq", max_predictions, found_predictions)):
        if given is not None and given != found:
            raise BertpipeError(f"{flag} {given}, but the records in --train-data have {found}")
    if valid and valid.shape != train.shape:
        raise BertpipeError(f"--valid-data records have (length, predictions) {valid.shape}, "
                            f"--train-data records {train.shape}")
    return train, valid


def loose_json_samples(files, tokenizer, spec: InstanceSpec, split: str, text_key: str, seed: int) -> tuple:
    """(train, valid or None) from loose-json files, their documents split by `split` as Megatron's --split."""
    train = LooseJsonSamples(files, tokenizer, spec, split, "train", text_key, seed)  # builds the lazy files once
    try:
        valid = LooseJsonSamples(files, tokenizer, spec, split, "valid", text_key, seed)
    except BertpipeError as error:
        log.warning("%s: no validation", error)
        valid = None
    return train, valid


def packed_samples(train_data, valid_data, seq_length: int, tokenizer, modern: ModernSettings, seed: int) -> tuple:
    """(train, valid or None) packed sequences of `seq_length` tokens, masked as `modern` says from `seed`."""
    train, valid = (PackedSamples(data, tokenizer, modern.mask_rate, seed, modern.whole_word_mask) if data else None
                    for data in (train_data, valid_data))
    for flag, samples in (("--train-data", train), ("--valid-data", valid)):
        if samples and samples.seq_length != seq_length:
            raise BertpipeError(f"--seq-length {seq_length}, but the packed sequences in {flag} have "
                                f"{samples.seq_length} tokens")
    return train, valid
