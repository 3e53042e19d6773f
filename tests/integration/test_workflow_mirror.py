"""The workflow from a dump on an HTTP mirror on 127.0.0.1, cut into two parts: the same corpus split as one part."""

import json

import pytest
import yaml

from bench.harness.workflow import snakemake
from bertpipe.splits import parse_split, split_of
from tests.conftest import SAMPLE_ARTICLES
from tests.integration.test_workflow import rules_run

pytestmark = pytest.mark.slow


def test_http_mirror_with_two_parts_gives_the_same_corpus_split(workflow_dir, mirror):
    server, contents = mirror
    (workflow_dir / "http.yaml").write_text(yaml.safe_dump(
        {"dump": {"mirror": server.url, "wiki": "enwiki", "date": "20260101"}, "download": {"backoff_seconds": 0}}))
    corpus_stats = "results/corpus/stats.json"
    run = snakemake(workflow_dir, "--cores", "2", corpus_stats, "--configfile", "config.demo.yaml", "http.yaml")
    assert rules_run(run.stderr) == {"download_manifest": 1, "download": 2, "extract": 2, "corpus": 2,
                                    "corpus_jobs": 1, "corpus_stats": 1}
    for name, data in contents.items():
        assert (workflow_dir / "resources/dumps/enwiki/20260101" / name).read_bytes() == data
    two_parts = json.loads((workflow_dir / "results/corpus/stats.json").read_text())
    assert two_parts["parts"] == 2 and two_parts["documents_in"] == SAMPLE_ARTICLES

    # Each document in the split its id hashes to (splits.py), whichever part it came in: cut into other parts,
    # or into one, the dump gives the same split.
    fractions = parse_split("90,5,5")  # config.demo.yaml's corpus.split
    split_by_id = {}
    for shard in (workflow_dir / "results/corpus/parts").glob("*/*/shard-*.jsonl"):
        for line in shard.read_text().splitlines():
            split_by_id[json.loads(line)["id"]] = shard.parent.name
    assert len(split_by_id) == SAMPLE_ARTICLES - two_parts["documents_dropped"]
    assert split_by_id == {doc_id: split_of(doc_id, fractions) for doc_id in split_by_id}
    assert set(split_by_id.values()) == {"train", "valid", "test"}
