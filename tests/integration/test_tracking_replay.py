"""The offline tracking records replayed into a real `mlflow server` on 127.0.0.1 once it is up: every run once,
under its pipeline run; a record the server refuses kept and reported at each replay, without holding back the other
files; two replays at once; a replay cut off mid-way (killed, or its server stopped), then run again."""

import contextlib
import dataclasses
import json
import logging
import os
import re
import signal
import subprocess
import threading
from pathlib import Path

import pytest

from bertpipe import tracking
from tests.conftest import VENV_BIN
from tests.integration.test_mlflow_server import MlflowServer
from tests.integration.test_tracking import free_port, stage_run

pytestmark = pytest.mark.slow

STATS_KEYS = ("documents", "sentences", "instances", "tokens", "real_tokens", "masked", "mask", "kept", "random",
              "random_next", "random_next_forced", "padding")


@pytest.fixture
def down(tmp_path, monkeypatch) -> tracking.Target:
    """A tracking URI on a free port where nothing listens yet (a server comes up there later); jobs give up on it at
    once (no retries), here and in the `bertpipe` processes."""
    monkeypatch.delenv("RANK", raising=False)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    return tracking.Target(uri=f"http://127.0.0.1:{free_port()}", folder=str(tmp_path / "mlflow"),
                           experiment=tmp_path.name, commit="0123abcd")


@pytest.fixture(scope="module")
def shared_server(tmp_path_factory):
    """A server for the tests whose scenario does not need it down at first on the jobs' own port: each sends its
    records there, to an experiment of its own (`up`)."""
    server = MlflowServer(tmp_path_factory.mktemp("shared-server"))
    yield server
    server.stop()


@pytest.fixture
def up(down, shared_server) -> tracking.Target:
    """`down`'s records and experiment (of this test's alone), sent to the shared server."""
    return tracking.Target(uri=shared_server.url, folder=down.folder, experiment=down.experiment, commit=down.commit)


def serve(where: tracking.Target, folder) -> MlflowServer:
    """A real server on `where`'s port, its store in `folder` (kept across a restart)."""
    folder.mkdir(exist_ok=True)
    return MlflowServer(folder, port=int(where.uri.rsplit(":", 1)[1]))


def replay_command(where: tracking.Target) -> list:
    return [str(VENV_BIN / "bertpipe"), "--tracking-uri", where.uri, "--tracking-dir", where.folder, "--experiment",
            where.experiment, "tracking", "replay"]


def runs_of(where: tracking.Target) -> dict:
    """{run name: run} of the experiment, deleted runs too; each name once."""
    from mlflow import MlflowClient
    from mlflow.entities import ViewType

    client = MlflowClient(where.uri)
    runs = client.search_runs([client.get_experiment_by_name(where.experiment).experiment_id],
                              run_view_type=ViewType.ALL)
    by_name = {run.info.run_name: run for run in runs}
    assert len(by_name) == len(runs), [run.info.run_name for run in runs]
    return by_name


def summary(run) -> tuple:
    return run.info.run_id, run.info.status, run.data.params, run.data.metrics, run.data.tags


def loss_steps(where: tracking.Target, run) -> list:
    from mlflow import MlflowClient

    return sorted(m.step for m in MlflowClient(where.uri).get_metric_history(run.info.run_id, "loss"))


def test_jobs_run_while_the_server_was_down_arrive_once_under_their_pipeline_run(tmp_path, down):
    from mlflow import MlflowClient

    pipeline = tracking.start_pipeline(down, {"tfrecords": {"seed": 12345}}, ["snakemake", "--cores", "2"])
    stats = tmp_path / "shard.stats.json"
    stats.write_text(json.dumps(dict.fromkeys(STATS_KEYS, 3)))
    broken = tmp_path / "broken.stats.json"
    broken.write_text("{")  # its job fails: its run ends FAILED
    for name, stats_file in (("summarize shard", stats), ("summarize broken", broken)):
        log_file = tmp_path / f"{name}.log"
        log_file.write_text(f"{name}: the job's log\n")
        job = subprocess.run([str(VENV_BIN / "bertpipe"), *down.arguments(), "--log-file", log_file, "--run-name",
                              name, "tfrecords", "summarize", stats_file, "--out", tmp_path / f"{name}.json",
                              "--page", tmp_path / f"{name}.html"], capture_output=True, text=True)
        assert job.returncode == (1 if stats_file == broken else 0), job.stderr
        # Its pipeline run is offline: so is the job's, which a replay then makes under it.
        assert f"{name} is tracked offline" in job.stderr and "with its pipeline run" in job.stderr, job.stderr
    tracking.end_pipeline(down, "FAILED")
    offline = sorted((tmp_path / "mlflow/offline").glob("*.jsonl"))
    assert len(offline) == 4, "the pipeline run's start, two jobs, the pipeline run's end"

    server = serve(down, tmp_path / "server")
    try:
        replayed = subprocess.run(replay_command(down), capture_output=True, text=True)
        assert replayed.returncode == 0, replayed.stderr
        assert re.search(r"replayed [1-9]\d* records of 4 files \(3 runs created", replayed.stdout), replayed.stdout
        client = MlflowClient(down.uri)
        runs = runs_of(down)
        (top,) = [run for name, run in runs.items() if name.startswith("pipeline ")]
        assert set(runs) == {top.info.run_name, "summarize shard", "summarize broken"}
        assert "mlflow.parentRunId" not in top.data.tags and top.info.status == "FAILED"
        assert top.data.tags[tracking.OFFLINE_ID_TAG] == pipeline.run_id
        assert top.data.params == {"tfrecords.seed": "12345"}
        assert [a.path for a in client.list_artifacts(top.info.run_id)] == ["effective-config.json"]
        shard, failed = runs["summarize shard"], runs["summarize broken"]
        for job in shard, failed:
            assert job.data.tags["mlflow.parentRunId"] == top.info.run_id
            assert job.data.tags["mlflow.source.git.commit"] == "0123abcd"
            assert job.data.params["out"] == str(tmp_path / f"{job.info.run_name}.json")
            assert [a.path for a in client.list_artifacts(job.info.run_id, "logs")] == [
                f"logs/{job.info.run_name}.log"]
            assert all(len(client.get_metric_history(job.info.run_id, key)) == 1 for key in job.data.metrics)
        assert shard.info.status == "FINISHED" and failed.info.status == "FAILED"
        assert shard.data.metrics["instances"] == 3 and shard.data.metrics["shards"] == 1
        assert "job_cpu_seconds" in shard.data.metrics and "instances" not in failed.data.metrics
        assert {a.path for a in client.list_artifacts(shard.info.run_id)} == {
            "logs", "summarize shard.json", "summarize shard.html"}
        assert shard.inputs.dataset_inputs[0].dataset.digest == shard.data.params["input_hash.stats"]

        again = subprocess.run(replay_command(down), capture_output=True, text=True)
        assert again.returncode == 0 and "replayed 0 records of 0 files" in again.stdout, again
        assert {name: summary(run) for name, run in runs_of(down).items()} == {
            name: summary(run) for name, run in runs.items()}
    finally:
        server.stop()


def test_a_run_deleted_in_the_ui_holds_back_its_records_alone_at_each_replay_until_it_is_restored(down, up, caplog):
    from mlflow import MlflowClient

    client = MlflowClient(up.uri)
    tracking.start_pipeline(up, {}, ["snakemake"])
    deleted = stage_run(up, "pretrain phase 1", "pretrain")
    deleted.log_metric_history([(1, {"loss": 2.0})])
    client.delete_run(deleted.run_id)  # in the UI, while the job works: the job goes on offline
    deleted.log_metric_history([(2, {"loss": 1.0})])
    deleted.end()
    assert deleted.offline
    other = stage_run(down, "evaluate", "evaluate")  # a later job, whose node could not reach the server
    other.log_params({"batch": 8})
    other.log_metrics({"accuracy": 0.5})
    other.end()

    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="bertpipe.tracking"):
        assert tracking.replay(up) == {"files": 1, "records": 5, "runs_created": 1, "skipped": 0, "refused": 1,
                                       "waiting": 1}
    (warning,) = [r.getMessage() for r in caplog.records if r.name == "bertpipe.tracking"]
    assert f"{deleted.offline_file}: line 1 (metrics of run 'pretrain phase 1', {deleted.run_id})" in warning
    assert "must be in the 'active' state" in warning and "the other files go on" in warning
    assert f"mlflow runs restore --run-id {deleted.run_id}" in warning
    assert runs_of(up)["evaluate"].data.metrics == {"accuracy": 0.5}

    # Every replay tries it again and says so; `bertpipe tracking replay` ends with status 1.
    again = subprocess.run(replay_command(up), capture_output=True, text=True)
    assert again.returncode == 1 and "replayed 0 records of 0 files" in again.stdout, again
    assert f"{deleted.offline_file}: line 1 (metrics of run 'pretrain phase 1'" in again.stderr
    assert "1 records were refused by MLflow and 1 more wait behind them" in again.stderr
    assert loss_steps(up, runs_of(up)["pretrain phase 1"]) == [1]

    client.restore_run(deleted.run_id)
    assert tracking.replay(up) == {"files": 1, "records": 2, "runs_created": 0, "skipped": 0, "refused": 0,
                                   "waiting": 0}
    runs = runs_of(up)
    assert loss_steps(up, runs["pretrain phase 1"]) == [1, 2]
    assert runs["pretrain phase 1"].info.status == "FINISHED"
    assert len(runs) == 3
    assert tracking.replay(up)["records"] == 0


def offline_jobs(where: tracking.Target, names, cut_at=None) -> dict:
    """A pipeline run and a job's run per name, made while `where` cannot be reached: each logs loss at steps 1-3,
    and the run named `cut_at[0]` then the artifact `cut_at[1]` and loss at steps 4-6. Returns {name: Run}."""
    tracking.start_pipeline(where, {"pretrain": {"batch": 8}}, ["snakemake"])
    runs = {}
    for name in names:
        run = runs[name] = stage_run(where, name, "pretrain")
        run.log_metric_history([(step, {"loss": 1.0 / step}) for step in (1, 2, 3)])
        if cut_at and cut_at[0] == name:
            run.log_artifact(cut_at[1])
            run.log_metric_history([(step, {"loss": 1.0 / step}) for step in (4, 5, 6)])
        run.end()
    tracking.end_pipeline(where, "FINISHED")
    return runs


def test_two_replays_at_once_make_each_run_once(down, up):
    names = [f"pretrain shard {shard}" for shard in range(4)]
    offline_jobs(down, names)
    replays = [subprocess.Popen(replay_command(up), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
               for _ in range(2)]
    outputs = [replay.communicate() for replay in replays]
    assert [replay.returncode for replay in replays] == [0, 0], outputs
    printed = sorted(stdout for stdout, _ in outputs)
    # One sends everything; the other waits for it, then finds nothing left.
    assert "replayed 0 records of 0 files" in printed[0] and "of 6 files (5 runs created" in printed[1]
    runs = runs_of(up)
    pipelines = [name for name in runs if name.startswith("pipeline ")]
    assert len(pipelines) == 1 and set(runs) == {*names, *pipelines}
    assert all(loss_steps(up, runs[name]) == [1, 2, 3] for name in names)


@contextlib.contextmanager
def fifo_read_by(fifo, process):
    """The writing end of the named pipe `fifo`, opened once `process` has opened it to read: the process then waits
    for what this end sends. Should the process end without opening it, the pipe is opened here instead, so that
    the test fails on the process's output rather than waiting for ever."""

    def open_if_it_ended():
        process.wait()
        os.close(os.open(fifo, os.O_RDONLY | os.O_NONBLOCK))

    threading.Thread(target=open_if_it_ended, daemon=True).start()
    with open(fifo, "wb") as end:
        assert process.poll() is None, process.communicate()
        yield end


@pytest.fixture
def cut_replay(tmp_path, down):
    """Offline records of a pipeline run and three jobs; the second job's artifact is a named pipe, which a replay
    reads as it uploads it: there a replay stops, at a known record, every record before it sent, until the test
    closes the pipe. Yields (target, the second job's Run, the pipe)."""
    fifo = tmp_path / "samples.txt"
    os.mkfifo(fifo)
    runs = offline_jobs(down, ["pretrain first", "pretrain cut", "pretrain last"], cut_at=("pretrain cut", fifo))
    yield down, runs["pretrain cut"], fifo


def assert_each_run_and_metric_once(where: tracking.Target):
    from mlflow import MlflowClient

    runs = runs_of(where)
    assert len(runs) == 4 and all(run.info.status == "FINISHED" for run in runs.values())
    assert [loss_steps(where, runs[name]) for name in ("pretrain first", "pretrain cut", "pretrain last")] == [
        [1, 2, 3], [1, 2, 3, 4, 5, 6], [1, 2, 3]]
    assert [a.path for a in MlflowClient(where.uri).list_artifacts(runs["pretrain cut"].info.run_id)] == [
        "samples.txt"]


def replay_the_rest_once(where: tracking.Target, cut, fifo):
    """After a replay cut at the second job's artifact: its progress was saved up to there, and the next replay
    sends the rest alone (the second job's artifact, metrics and end; the third job's run; the pipeline run's end)."""
    progress = json.loads((Path(where.folder) / "offline" / tracking.REPLAYED).read_text())
    assert progress["files"][cut.offline_file.name] == 3, "saved: its run made and its first metrics sent"
    assert len(progress["runs"]) == 3, "the pipeline run and the first two jobs' runs"
    fifo.unlink()
    fifo.write_text("samples\n")  # the artifact, a file now
    again = subprocess.run(replay_command(where), capture_output=True, text=True)
    assert again.returncode == 0, again.stderr
    assert "replayed 8 records of 3 files (1 runs created, 1 records not for replay)" in again.stdout
    assert_each_run_and_metric_once(where)


def test_a_replay_killed_mid_way_then_run_again_sends_every_run_and_metric_once(cut_replay, up):
    _, cut, fifo = cut_replay
    replay = subprocess.Popen(replay_command(up), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    with fifo_read_by(fifo, replay):
        replay.send_signal(signal.SIGKILL)  # in the middle of the second job's artifact
        replay.communicate()
    replay_the_rest_once(up, cut, fifo)


def test_a_server_that_stops_mid_replay_stops_it_and_the_next_replay_sends_the_rest_once(tmp_path, cut_replay):
    where, cut, fifo = cut_replay
    server = serve(where, tmp_path / "server")
    try:
        replay = subprocess.Popen(replay_command(where), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        with fifo_read_by(fifo, replay):
            server.stop()  # while the replay uploads the second job's artifact: the upload finds no server
        _, stderr = replay.communicate()
        assert replay.returncode == 1, stderr
        assert f"MLflow at {where.uri} could not be reached" in stderr, stderr
        assert "the replay stopped after sending" in stderr and "once MLflow is back" in stderr
        server = serve(where, tmp_path / "server")  # back, with its store
        replay_the_rest_once(where, cut, fifo)
    finally:
        server.stop()


def test_a_jobs_run_goes_to_mlflow_through_the_pipelines_process_and_the_job_imports_no_mlflow(tmp_path, up):
    """While a pipeline's process sends its jobs' runs, a job that MLflow need not answer writes its run to the
    tracking folder, without importing MLflow; the pipeline's Sender sends it, under the pipeline run, by the time it
    stops. A job run by hand once the pipeline has ended writes to MLflow itself."""
    pipeline = tracking.start_pipeline(up, {}, ["snakemake"])
    sender = tracking.Sender(up)
    sender.start()
    stats = tmp_path / "shard.stats.json"
    stats.write_text(json.dumps(dict.fromkeys(STATS_KEYS, 3)))

    def summarize(name):
        arguments = [*up.arguments(), "--run-name", name, "tfrecords", "summarize", str(stats), "--out",
                     str(tmp_path / f"{name}.json"), "--page", str(tmp_path / f"{name}.html")]
        job = subprocess.run([str(VENV_BIN / "python"), "-c", "import sys\nfrom bertpipe import cli\n"
                              f"status = cli.main({arguments!r})\nprint('mlflow' in sys.modules)\nsys.exit(status)"],
                             capture_output=True, text=True)
        assert job.returncode == 0, job.stderr
        return job.stdout.split()[-1] == "True"

    assert up.pipeline_sends() and not dataclasses.replace(up, experiment="another").pipeline_sends()
    assert not summarize("summarize"), "the job imported MLflow"
    (written,) = (Path(up.folder) / "offline").glob("summarize-*.jsonl")
    sender.stop()
    shard = runs_of(up)["summarize"]
    assert shard.info.status == "FINISHED" and shard.data.tags["mlflow.parentRunId"] == pipeline.run_id
    assert shard.data.metrics["instances"] == 3 and shard.data.params["out"] == str(tmp_path / "summarize.json")
    assert shard.data.tags[tracking.OFFLINE_ID_TAG] in written.read_text()
    assert tracking.replay(up) == {"files": 0, "records": 0, "runs_created": 0, "skipped": 0, "refused": 0,
                                   "waiting": 0}, "nothing is left to send"

    assert summarize("by hand"), "no pipeline sends: the job writes to MLflow"
    assert runs_of(up)["by hand"].info.status == "FINISHED"
    assert not list((Path(up.folder) / "offline").glob("by_hand-*.jsonl"))
    # A claim left by a pipeline's process that ended without stopping its sender lapses once it is not renewed.
    left = Path(up.folder) / tracking.SENDING
    left.write_text(json.dumps({"store": up.store_key()}))
    assert up.pipeline_sends()
    os.utime(left, (left.stat().st_atime, left.stat().st_mtime - tracking.SENDER_STALE_SECONDS - 1))
    assert not up.pipeline_sends()
