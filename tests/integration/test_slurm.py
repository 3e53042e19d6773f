"""The workflow on a real Slurm cluster that the tests start on this machine (bench/harness/slurm_cluster.py; Debian's
packages are installed when missing): `snakemake --profile slurm` runs every job as a Slurm job (but the stats
sums, local rules) and gets a local run's results, pretrain spans two nodes, a time limit leaves a checkpoint that
the next run resumes from, and a failed job is reported with its Slurm log."""

import json
import re
import shutil
import time
from collections import Counter

import pytest
import yaml

from bench.harness.slurm_cluster import SlurmCluster, install_slurm
from bench.harness.workflow import copy_workflow, snakemake
from bertpipe.stages.launch import STOPPED
from tests.conftest import SMALL_PIPELINE
from tests.integration.test_workflow import rules_run

pytestmark = pytest.mark.slow

CONFIGS = ("--configfile", "config.demo.yaml", "small.yaml")
SLURM = ("--profile", "slurm")
PHASE1 = "results/pretrain/phase1/done.json"


def slurm_jobs(output: str) -> dict:
    """{Slurm job id: rule} of the jobs Snakemake submitted, from its log lines."""
    return {job: rule for job, rule in
            re.findall(r"has been submitted with SLURM jobid (\d+) \(log: \S*/slurm_logs/rule_(\w+?)/", output)}


def run_id(output: str) -> str:
    return re.search(r"SLURM run ID: (\S+)", output).group(1)


def losses(metrics_file) -> dict:
    """step -> the last recorded training metrics of that step."""
    records = [json.loads(line) for line in open(metrics_file)]
    return {record["step"]: record for record in records if "loss" in record}


def write_yaml(path, document):
    path.write_text(yaml.safe_dump(document))


@pytest.fixture(scope="module")
def slurm_installed():
    install_slurm()


@pytest.fixture
def start_cluster(tmp_path, slurm_installed):
    """start_cluster(nodes) -> a running SlurmCluster; every daemon is stopped (by PID) after the test."""
    clusters = []

    def start(nodes):
        clusters.append(SlurmCluster(tmp_path / f"slurm-{nodes}-nodes", nodes=nodes).start())
        return clusters[-1]

    yield start
    for cluster in clusters:
        cluster.stop()


ON_SLURM = {"download_manifest": 1, "download": 1, "extract": 1, "corpus": 1, "tokenizer": 1, "tfrecords": 3,
            "tfrecords_common": 1,
            "pretrain": 1, "evaluate": 1, "export": 1, "register": 1}
# the workflow's localrules
LOCAL = {"corpus_jobs": 1, "corpus_stats": 1, "tfrecords_stats": 3, "tfrecords_list": 7, "all": 1}


@pytest.fixture(scope="module")
def slurm_run(tmp_path_factory, slurm_installed):
    """The small pipeline with `--profile slurm` on a one-node cluster: (workflow folder, Snakemake's log, the
    cluster's job records). The other tests start from its TFRecords."""
    folder = copy_workflow(tmp_path_factory.mktemp("slurm") / "wf")
    write_yaml(folder / "small.yaml", SMALL_PIPELINE)
    cluster = SlurmCluster(folder.parent / "slurm-1-node", nodes=1).start()
    try:
        result = snakemake(folder, *SLURM, "all", *CONFIGS)
        return folder, result.stderr, cluster.job_records()
    finally:
        cluster.stop()


def copy_upstream(folder, destination):
    """A copy of a run up to the TFRecords (outputs and Snakemake's records of them), without pretraining."""
    shutil.copytree(folder, destination, symlinks=True)
    for produced in ("results/pretrain", "logs/pretrain"):
        shutil.rmtree(destination / produced)
    return destination


def test_profile_runs_the_jobs_on_slurm_with_the_results_of_a_local_run(slurm_run, tmp_path):
    folder, log, job_records = slurm_run
    submitted = slurm_jobs(log)
    assert Counter(submitted.values()) == ON_SLURM
    assert rules_run(log) == Counter(ON_SLURM) + Counter(LOCAL)
    assert "a tracking server is the right store here" in log, "the SQLite default on a cluster is warned of"
    records = {record["JobId"]: record for record in job_records}
    for job in submitted:
        assert records[job]["JobState"] == "COMPLETED" and records[job]["Name"] == run_id(log), records[job]

    # The stages that compute, from the extracted articles to training, again on this machine without Slurm: the
    # same bytes and the same losses.
    local = copy_upstream(folder, tmp_path / "local")
    rerun = snakemake(local, PHASE1, "--cores", "2", "--forcerun", "corpus", *CONFIGS)
    assert rules_run(rerun.stderr) == {"corpus": 1, "corpus_jobs": 1, "tokenizer": 1, "tfrecords": 2,
                                       "tfrecords_list": 2, "pretrain": 1}  # train, valid
    made = sorted(path.relative_to(local) for pattern in ("corpus/parts/*/*/*.jsonl", "tokenizer/*",
                                                          "tfrecords/*/train/*/*.tfrecord",
                                                          "tfrecords/*/valid/*/*.tfrecord")
                  for path in local.glob(f"results/{pattern}"))
    assert len([path for path in made if path.suffix == ".tfrecord"]) == 2
    for path in made:
        assert (folder / path).read_bytes() == (local / path).read_bytes(), path
    on_slurm = losses(folder / "results/pretrain/phase1/metrics.jsonl")
    here = losses(local / "results/pretrain/phase1/metrics.jsonl")
    assert sorted(on_slurm) == sorted(here) == list(range(1, 41))
    for step in here:
        for key in ("loss", "mlm_loss", "nsp_loss"):
            assert on_slurm[step][key] == here[step][key], (step, key)


def test_pretrain_on_two_nodes_matches_one_node_with_the_same_global_batch(start_cluster, slurm_run, tmp_path):
    one_node_run, _, _ = slurm_run
    cluster = start_cluster(2)
    folder = copy_upstream(one_node_run, tmp_path / "wf")
    # Half the batch on each of two nodes, for the first 10 steps of the one-node run (the same LR schedule).
    (phase,) = SMALL_PIPELINE["pretrain"]["phases"]
    halves = {**phase, "batch_size": phase["batch_size"] // 2, "train_iters": 10,
              "lr_decay_iters": phase["train_iters"]}
    write_yaml(folder / "two-nodes.yaml", {"pretrain": {"nodes": 2, "phases": [halves]}})
    result = snakemake(folder, *SLURM, PHASE1, *CONFIGS, "two-nodes.yaml")

    assert rules_run(result.stderr) == {"pretrain": 1}
    (job,) = slurm_jobs(result.stderr)
    record = {record["JobId"]: record for record in cluster.job_records()}[job]
    assert record["JobState"] == "COMPLETED" and record["NodeCnt"] == "2", record
    log = (folder / "logs/pretrain/phase1.log").read_text()
    ranks = dict(re.findall(r"rank (\d) of 2 on node (\S+)", log))
    assert sorted(ranks) == ["0", "1"] and ranks["0"] != ranks["1"] and set(ranks.values()) == {"n1", "n2"}, log
    two_nodes = losses(folder / "results/pretrain/phase1/metrics.jsonl")
    one_node = losses(one_node_run / "results/pretrain/phase1/metrics.jsonl")
    assert sorted(two_nodes) == list(range(1, 11))
    for step in two_nodes:
        for key in ("loss", "mlm_loss", "nsp_loss", "grad_norm"):
            assert two_nodes[step][key] == pytest.approx(one_node[step][key], rel=1e-5, abs=1e-6), (step, key)


def test_the_time_limit_warning_stops_the_trainer_at_a_checkpoint_and_the_phase_runs_again(start_cluster, slurm_run,
                                                                                          tmp_path):
    one_node_run, _, _ = slurm_run
    cluster = start_cluster(1)
    folder = copy_upstream(one_node_run, tmp_path / "wf")
    # A 2-minute limit, the warning 55 s before it; more steps than fit. slurmctld looks at time limits every 30 s
    # and sends a warning that falls due before its next look at once, so the trainer gets it 35 to 65 s after the
    # job starts: after its start-up (about 15 s here), and early enough that the job ends before the executor's
    # status poll at 80 s (its polls back off: 5, 20, 45, 80, 125 s after submission).
    long_phase = {**SMALL_PIPELINE["pretrain"]["phases"][0], "train_iters": 100000}
    write_yaml(folder / "limit.yaml", {"slurm": {"pretrain": {"runtime": 2, "warning_seconds": 55}},
                                       "pretrain": {"phases": [long_phase]}})
    arguments = (*SLURM, PHASE1, *CONFIGS, "limit.yaml")
    log = folder / "logs/pretrain/phase1.log"

    first = snakemake(folder, *arguments, check=False)
    assert first.returncode != 0
    (job,) = slurm_jobs(first.stderr)
    record = {record["JobId"]: record for record in cluster.job_records()}[job]
    # FAILED, not TIMEOUT: the trainer stopped on the warning, before the limit, and launch said so.
    assert record["JobState"] == "FAILED", record
    stopped = re.search(r"stopping at step (\d+) of 100000 on SIGURG: saved", log.read_text())
    assert stopped and f"Exit status {STOPPED}" in log.read_text(), log.read_text()
    step = int(stopped.group(1))
    checkpoint = folder / f"results/pretrain/phase1/checkpoints/step-{step:08d}"
    assert (checkpoint / "state.pt").is_file() and not (folder / PHASE1).exists()
    # The failure names the job's Slurm log, which holds the job's own Snakemake report.
    slurm_log = re.search(r"(\S+/slurm_logs/rule_pretrain/1/\d+\.log)", first.stderr).group(1)
    assert "exited with non-zero exit code" in open(slurm_log).read()

    # The rerun, the same run (a phase longer than its time limit takes several jobs), plans the phase again, which
    # resumes from that checkpoint as every resume does (test_pretrain.py).
    planned = snakemake(folder, *arguments, "-n")
    assert re.search(r"^pretrain\s+1$", planned.stdout + planned.stderr, re.M), planned.stdout


def test_a_failed_job_is_reported_with_its_slurm_log_without_waiting(start_cluster, tmp_path):
    start_cluster(1)
    folder = copy_workflow(tmp_path / "wf")
    write_yaml(folder / "no-mirror.yaml", {"dump": {"mirror": "no-such-mirror"}})
    started = time.monotonic()
    result = snakemake(folder, *SLURM, "all", "--configfile", "config.demo.yaml", "no-mirror.yaml",
                       check=False)
    # Status from squeue, without Slurm accounting: the failure is seen and Snakemake stops by itself.
    assert result.returncode != 0 and time.monotonic() - started < 300
    assert "Error in rule download_manifest" in result.stderr
    slurm_log = re.search(r"(\S+/slurm_logs/rule_download_manifest/\d+\.log)", result.stderr).group(1)
    assert "logs/download/manifest.log" in open(slurm_log).read()
    assert "no-such-mirror" in (folder / "logs/download/manifest.log").read_text()
