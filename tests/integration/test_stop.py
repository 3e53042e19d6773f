"""A stage stopped mid-job by SIGTERM (Slurm's time limit, `scancel`, `kill`) or SIGINT (Ctrl-C) unwinds: its
temporary output is removed, nothing is published, the processes it started end with it, its MLflow run ends as
KILLED, and it exits with 128 + the signal. (Pretrain's stops, which checkpoint, are in test_pretrain.py.)"""

import signal
import subprocess

import psutil
import pytest

from bench.harness import SAMPLE
from bertpipe.settings import TokenizerSettings
from bertpipe.stages.tokenizer import train
from tests.conftest import VENV_BIN

pytestmark = pytest.mark.slow

SIGNALS = [signal.SIGTERM, signal.SIGINT]


def stop_when(args, line_says: str, number) -> tuple:
    """Run `bertpipe <args>` and send `number` to it alone (not to the processes it started) once its log has a line
    with `line_says`: (exit status, its log)."""
    process = subprocess.Popen([str(VENV_BIN / "bertpipe"), *map(str, args)], stderr=subprocess.PIPE, text=True,
                               stdout=subprocess.DEVNULL)
    log = []
    try:
        for line in process.stderr:
            log.append(line)
            if line_says in line:
                process.send_signal(number)
        return process.wait(timeout=120), "".join(log)
    finally:
        if process.poll() is None:
            process.kill()


def tracking(tmp_path) -> list:
    return ["--tracking-uri", f"sqlite:///{tmp_path}/mlflow/mlflow.db", "--tracking-dir", tmp_path / "mlflow"]


def run_statuses(tmp_path) -> list:
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow/mlflow.db")
    return [run.info.status for run in client.search_runs([client.get_experiment_by_name("bertpipe").experiment_id])]


@pytest.mark.parametrize("number", SIGNALS)
def test_extract_stopped_mid_job_leaves_no_output_no_wikiextractor_and_a_killed_run(tmp_path, number):
    out = tmp_path / "part/articles.jsonl"
    status, log = stop_when([*tracking(tmp_path), "extract", "--input", SAMPLE, "--out", out, "--threads", "2"],
                            "running", number)
    assert status == 128 + number, log
    assert f"bertpipe extract: stopped by {number.name}; its unfinished output was removed" in log
    assert "Traceback" not in log, log
    assert list(out.parent.iterdir()) == [], "no output, no temporary file"
    # WikiExtractor and its workers (the sample on their command lines) were sent SIGKILL: each ends as it is
    # delivered, which the kernel does at once but not synchronously with this test.
    left = [p for p in psutil.process_iter(["cmdline"]) if str(SAMPLE) in (p.info["cmdline"] or [])]
    assert not psutil.wait_procs(left, timeout=30)[1], "WikiExtractor's processes end with the stage"
    assert run_statuses(tmp_path) == ["KILLED"]


@pytest.fixture(scope="module")
def tokenizer(sample_corpus, tmp_path_factory):
    folder = tmp_path_factory.mktemp("stop") / "tokenizer"
    train([sample_corpus], folder, TokenizerSettings(vocab_size=2000, input_sentence_size=20000))
    return folder


@pytest.mark.parametrize("number", SIGNALS)
def test_tfrecords_stopped_while_writing_leaves_no_records_index_or_stats(tmp_path, sample_corpus, tokenizer,
                                                                          number):
    out = tmp_path / "records"
    # Enough copies of the shard's documents that the writing takes seconds, not the moment the signal takes.
    status, log = stop_when(["tfrecords", "build", "--input", sample_corpus / "train/shard-0000.jsonl", "--tokenizer",
                             tokenizer, "--out", out / "shard-0000.tfrecord", "--stats", out / "shard-0000.stats.json",
                             "--dupe-factor", 200], "writing the instances", number)
    assert status == 128 + number, log
    assert f"bertpipe tfrecords build: stopped by {number.name}" in log and "Traceback" not in log, log
    assert list(out.iterdir()) == [], "no records, index, stats or temporary file"
