"""The train/valid/test split: Megatron's split string, and the split of a document from a hash of its id alone (reruns,
another order of parts, or parts added later never move a document)."""

import hashlib
import re

import numpy as np

from bertpipe import BertpipeError

SPLITS = ("train", "valid", "test")


def parse_split(spec: str) -> tuple:
    """Megatron's split string ("1000,1,1" or "98/1/1") as three fractions; missing weights are 0."""
    try:
        weights = [float(w) for w in re.split(r"[,/]", str(spec))]
    except ValueError:
        raise BertpipeError(f"split {spec!r}: expected up to three numbers separated by ',' or '/'") from None
    if len(weights) > 3 or any(w < 0 for w in weights) or sum(weights) <= 0:
        raise BertpipeError(f"split {spec!r}: expected up to three non-negative weights with a positive sum")
    weights += [0.0] * (3 - len(weights))
    return tuple(w / sum(weights) for w in weights)


def split_point(doc_id: str) -> int:
    """Where a document falls in [0, 2**64): a hash of its id, the same on every machine and in every run."""
    return int.from_bytes(hashlib.blake2b(doc_id.encode("utf-8"), digest_size=8).digest(), "big")


def split_indices(points, fractions: tuple) -> np.ndarray:
    """The split of each document (an index into SPLITS) from its `split_point`, for many documents at once (a
    loose-json corpus's millions). A point past the fractions' float sum goes to the last split with a share."""
    position = np.asarray(points, dtype=np.uint64).astype(np.float64) / 2.0**64
    bounds = np.cumsum(fractions)
    last = max(index for index, fraction in enumerate(fractions) if fraction > 0)
    return np.minimum(np.searchsorted(bounds, position, side="right"), last)


def split_of(doc_id: str, fractions: tuple) -> str:
    """The split of a document, from a hash of its id: the same id always lands in the same split."""
    return SPLITS[int(split_indices([split_point(doc_id)], fractions)[0])]


def splits_with_documents(spec: str) -> list:
    """The splits a positive weight gives documents to."""
    return [name for name, share in zip(SPLITS, parse_split(spec)) if share > 0]
