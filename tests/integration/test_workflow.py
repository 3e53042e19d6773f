"""The Snakemake workflow end to end, as a user runs it, in a fresh copy of the repository's workflow files."""

import json
import re
from collections import Counter

import numpy as np
import pytest
import yaml

from tests.conftest import SAMPLE_ARTICLES, snakemake

pytestmark = pytest.mark.slow

DEMO = ("--cores", "2", "all", "--configfile", "config.demo.yaml")


def rules_run(output: str) -> Counter:
    """How many jobs of each rule Snakemake finished, from its log lines."""
    return Counter(re.findall(r"Finished jobid: \d+ \(Rule: (\w+)\)", output))


def unigram_entropy(folder) -> float:
    """Entropy (nats) of the masked tokens' frequencies over the TFRecords under `folder`."""
    from bertpipe.train.data import TFRecordSamples

    samples = TFRecordSamples([str(folder / "*" / "*.tfrecord")])
    batch = samples.read(range(len(samples)))
    counts = np.bincount(batch["masked_lm_ids"][batch["masked_lm_weights"] > 0].numpy())
    frequencies = counts[counts > 0] / counts.sum()
    return float(-(frequencies * np.log(frequencies)).sum())


def rules_run_planned(output: str) -> dict:
    """The 'Job stats' table of a dry run: {rule: count}."""
    table = output[output.index("Job stats:"):].splitlines()[3:]
    planned = {}
    for line in table:
        fields = line.split()
        if len(fields) != 2 or fields[0] == "total":
            break
        planned[fields[0]] = int(fields[1])
    return planned


def outputs(folder, pattern):
    return {p: p.stat().st_mtime_ns for p in folder.glob(pattern) if p.is_file()}


TFRECORD_STATS = [f"results/tfrecords/seq{seq}/{split}/stats.json" for seq in (128, 512)
                  for split in ("train", "valid", "test")]


def test_demo_runs_then_has_nothing_to_do_and_forcerun_reruns_only_downstream(workflow_dir):
    first = snakemake(workflow_dir, *DEMO)
    assert rules_run(first.stderr) == {"download_manifest": 1, "download": 1, "extract": 1, "corpus": 1,
                                       "corpus_stats": 1, "tokenizer": 1, "tfrecords": 10, "tfrecords_stats": 6,
                                       "pretrain": 2, "all": 1}
    stats = json.loads((workflow_dir / "results/corpus/stats.json").read_text())
    assert stats["documents_in"] == SAMPLE_ARTICLES
    assert all(stats["splits"][name]["documents"] > 0 for name in ("train", "valid", "test"))
    for seq in (128, 512):
        records = json.loads((workflow_dir / f"results/tfrecords/seq{seq}/train/stats.json").read_text())
        assert records["instances"] > 1000 and records["masked_fraction"] == pytest.approx(0.15, abs=0.01)
    for phase, steps in ((1, 600), (2, 20)):
        done = json.loads((workflow_dir / f"results/pretrain/phase{phase}/done.json").read_text())
        assert done["step"] == steps and (workflow_dir / done["checkpoint"] / "state.pt").is_file()
    phase2_log = (workflow_dir / "logs/pretrain/phase2.log").read_text()
    assert "initialised from the weights of results/pretrain/phase1/checkpoints/step-00000600" in phase2_log
    # The model learnt: its validation masked-LM loss is well below the unigram entropy of the masked tokens
    # (the loss of a model that knows only the tokens' frequencies).
    valid = [json.loads(line) for line in open(workflow_dir / "results/pretrain/phase1/metrics.jsonl")]
    valid = [m for m in valid if "valid_mlm_loss" in m]
    assert [m["step"] for m in valid] == [200, 400, 600]
    assert valid[-1]["valid_mlm_loss"] < unigram_entropy(workflow_dir / "results/tfrecords/seq128/train") - 0.3

    dry = snakemake(workflow_dir, "-n", *DEMO)
    assert "Nothing to be done" in dry.stdout + dry.stderr

    # The reruns below stop at the TFRecords (pretraining again would only cost time).
    upstream = outputs(workflow_dir, "resources/**/*") | outputs(workflow_dir, "results/extract/*")
    corpus = outputs(workflow_dir, "results/corpus/**/*")
    records = outputs(workflow_dir, "results/tfrecords/**/*.tfrecord")
    record_bytes = {path: path.read_bytes() for path in records}
    rerun = snakemake(workflow_dir, "--forcerun", "tokenizer", "--cores", "2", *TFRECORD_STATS,
                      "--configfile", "config.demo.yaml")
    assert rules_run(rerun.stderr) == {"tokenizer": 1, "tfrecords": 10, "tfrecords_stats": 6}
    assert outputs(workflow_dir, "results/corpus/**/*") == corpus
    rebuilt = outputs(workflow_dir, "results/tfrecords/**/*.tfrecord")
    assert rebuilt.keys() == records.keys() and all(rebuilt[p] > records[p] for p in records)
    assert all(path.read_bytes() == data for path, data in record_bytes.items()), "same settings, same bytes"
    dry = snakemake(workflow_dir, "-n", *DEMO)
    assert rules_run_planned(dry.stdout + dry.stderr) == {"pretrain": 2, "all": 1}

    rerun = snakemake(workflow_dir, "--forcerun", "corpus", "--cores", "2", "results/corpus/stats.json",
                      *TFRECORD_STATS, "--configfile", "config.demo.yaml")
    assert rules_run(rerun.stderr) == {"corpus": 1, "corpus_stats": 1, "tokenizer": 1, "tfrecords": 10,
                                       "tfrecords_stats": 6}
    assert outputs(workflow_dir, "resources/**/*") | outputs(workflow_dir, "results/extract/*") == upstream
    after = outputs(workflow_dir, "results/corpus/**/*")
    assert after.keys() == corpus.keys() and all(after[path] > corpus[path] for path in after)


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


@pytest.mark.parametrize(
    "overlay, named",
    [({"corpus": {"splitt": "1,1,1"}}, "'splitt' was unexpected"),
     ({"extract": {"threads": "two"}}, "['extract']['threads']"),
     ({"dump": {"date": "last-week"}}, "['dump']['date']")],
)
def test_bad_config_stops_before_any_job_and_names_the_key(workflow_dir, overlay, named):
    (workflow_dir / "bad.yaml").write_text(yaml.safe_dump(overlay))
    result = snakemake(workflow_dir, *DEMO, "bad.yaml", check=False)
    assert result.returncode != 0
    assert named in result.stdout + result.stderr
    assert not (workflow_dir / "results").exists() and not (workflow_dir / "resources").exists()


def test_lint_finds_nothing(workflow_dir):
    result = snakemake(workflow_dir, "--lint", "--configfile", "config.demo.yaml")
    assert "Congratulations, your workflow is in a good condition!" in result.stdout + result.stderr
