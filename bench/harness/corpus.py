"""The bundled sample through the extract and corpus stages, as the workflow runs them: what benches and tests train
tokenizers and make TFRecords from."""

from pathlib import Path

from bench.harness import SAMPLE


def sample_corpus(folder: Path, split: str, shard_max_mb: float = 64, part: str = "sample") -> Path:
    """The sample's one dump part extracted into `folder` and made into corpus shards of `shard_max_mb` split by
    `split` (corpus.split's weights): the part's folder `folder/part`, `<split>/shard-NNNN.jsonl` in it."""
    from bertpipe.settings import CorpusSettings
    from bertpipe.stages.corpus import build_part
    from bertpipe.stages.extract import extract_part

    extract_part(SAMPLE, folder / "articles.jsonl", processes=2)
    build_part(folder / "articles.jsonl", folder / part, CorpusSettings(split=split, shard_max_mb=shard_max_mb))
    return folder / part
