"""Content hashes of the pipeline's files: what a run's inputs were, as MLflow params and registry lineage."""

import hashlib
import json
from pathlib import Path


def content_hash(*paths) -> str:
    """blake2b-128 of the paths' contents: a file's bytes, a folder's relative paths and file bytes in sorted order.

    A TFRecord file whose stats file (`<name>.stats.json`, written by the tfrecords stage) records its hash is not
    read again: pretraining data runs to hundreds of gigabytes."""
    digest = hashlib.blake2b(digest_size=16)
    for path in map(Path, paths):
        recorded = _recorded_records_hash(path)
        if recorded:
            digest.update(recorded.encode())
            continue
        files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
        for file in files:
            if path.is_dir():
                digest.update(str(file.relative_to(path)).encode() + b"\0")
            digest.update(file_hash(file).encode())
    return digest.hexdigest()


def hash_of_hashes(file_hashes) -> str:
    """content_hash of files from their `file_hash`es, in the same order: a corpus's hash from its jobs' records."""
    digest = hashlib.blake2b(digest_size=16)
    for value in file_hashes:
        digest.update(value.encode())
    return digest.hexdigest()


def described_input(paths, digest: str = None) -> tuple:
    """An input of a run as tracking.Run.log_inputs takes it: (paths, content hash, records, feature names); the
    records and features of TFRecords (from their stats files), None for other files. `digest`: the content hash,
    where the caller has it already."""
    from bertpipe.tfrecord_reader import dataset_features, dataset_rows

    paths = [str(path) for path in paths]
    tfrecords = all(path.endswith(".tfrecord") for path in paths)
    return (paths, digest or content_hash(*paths), dataset_rows(paths) if tfrecords else None,
            dataset_features(paths) if tfrecords else None)


def file_hash(path) -> str:
    """blake2b-128 of one file's bytes."""
    digest = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _recorded_records_hash(path: Path):
    stats = path.with_name(path.name.removesuffix(".tfrecord") + ".stats.json")
    if path.suffix != ".tfrecord" or not stats.is_file():
        return None
    try:
        return json.loads(stats.read_text()).get("records_blake2b")
    except ValueError:
        return None
