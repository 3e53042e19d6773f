"""The workflow from a dump on an HTTP mirror on 127.0.0.1, cut into two parts: the same corpus split as one part."""

import json

import pytest
import yaml

from tests.conftest import SAMPLE_ARTICLES, snakemake
from tests.integration.test_workflow import rules_run

pytestmark = pytest.mark.slow


def test_http_mirror_with_two_parts_gives_the_same_corpus_split(workflow_dir, mirror):
    server, contents = mirror
    (workflow_dir / "http.yaml").write_text(yaml.safe_dump(
        {"dump": {"mirror": server.url, "wiki": "enwiki", "date": "20260101"}, "download": {"backoff_seconds": 0}}))
    corpus_stats = "results/corpus/stats.json"
    run = snakemake(workflow_dir, "--cores", "2", corpus_stats, "--configfile", "config.demo.yaml", "http.yaml")
    assert rules_run(run.stderr) == {"download_manifest": 1, "download": 2, "extract": 2, "corpus": 2,
                                    "corpus_stats": 1}
    for name, data in contents.items():
        assert (workflow_dir / "resources/dumps/enwiki/20260101" / name).read_bytes() == data
    two_parts = json.loads((workflow_dir / "results/corpus/stats.json").read_text())
    assert two_parts["parts"] == 2 and two_parts["documents_in"] == SAMPLE_ARTICLES

    split_by_id = {}
    for shard in (workflow_dir / "results/corpus/parts").glob("*/*/shard-*.jsonl"):
        for line in shard.read_text().splitlines():
            split_by_id[json.loads(line)["id"]] = shard.parent.name
    snakemake(workflow_dir, "--cores", "2", "results-one-part/corpus/stats.json", "--configfile", "config.demo.yaml",
              "--config", "results=results-one-part")
    one_part = {}
    for shard in (workflow_dir / "results-one-part/corpus/parts").glob("*/*/shard-*.jsonl"):
        for line in shard.read_text().splitlines():
            one_part[json.loads(line)["id"]] = shard.parent.name
    assert split_by_id == one_part, "a document's split must not depend on how the dump is cut into parts"
