"""The train/valid/test split: Megatron's split string, and the split of a document from a hash of its id alone (reruns,
another order of parts, or parts added later never move a document)."""

import hashlib
import re

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


def split_of(doc_id: str, fractions: tuple) -> str:
    """The split of a document, from a hash of its id: the same id always lands in the same split."""
    digest = hashlib.blake2b(doc_id.encode("utf-8"), digest_size=8).digest()
    point = int.from_bytes(digest, "big") / 2**64
    bound = 0.0
    for name, fraction in zip(SPLITS, fractions):
        bound += fraction
        if point < bound:
            return name
    return next(name for name, fraction in zip(reversed(SPLITS), reversed(fractions)) if fraction > 0)


def splits_with_documents(spec: str) -> list:
    """The splits a positive weight gives documents to."""
    return [name for name, share in zip(SPLITS, parse_split(spec)) if share > 0]
