"""Tracking against a real MLflow store (SQLite), and what happens when MLflow cannot be reached."""

import json
import logging
import socket

import pytest

from bertpipe import tracking
from bertpipe.hashing import content_hash


@pytest.fixture
def store(tmp_path, monkeypatch):
    monkeypatch.delenv("RANK", raising=False)
    return tmp_path


def target(store, uri=None) -> tracking.Target:
    return tracking.Target(uri=uri or f"sqlite:///{store}/mlflow/mlflow.db", folder=str(store / "mlflow"),
                           experiment="tests", commit="0123abcd")


def stage_run(target, name, stage):
    return tracking.Run(target, name, stage, parent_id=target.pipeline_parent())


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_stage_runs_are_children_of_the_pipeline_run_with_params_metrics_and_artifacts(store):
    from mlflow import MlflowClient

    where = target(store)
    parent = tracking.start_pipeline(where, {"tokenizer": {"vocab_size": 8000, "kind": "sentencepiece"}},
                                     ["snakemake"])
    run = stage_run(where, "tokenizer results/tokenizer", "tokenizer")
    run.log_params({"vocab_size": 8000, "special_ids": {"[MASK]": 4}})
    run.log_metric_history([(1, {"loss": 2.5, "ok": True}), (2, {"loss": 2.0, "nan": float("nan")})])
    (store / "stats.json").write_text("{}")
    run.log_artifact(store / "stats.json")
    run.end()
    tracking.end_pipeline(where, "FINISHED")

    client = MlflowClient(where.uri)
    child = client.get_run(run.run_id)
    assert child.data.tags["mlflow.parentRunId"] == parent.run_id
    assert child.data.tags["mlflow.source.git.commit"] == "0123abcd"
    assert child.data.params == {"vocab_size": "8000", "special_ids._MASK_": "4"}
    assert [(m.step, m.value) for m in client.get_metric_history(run.run_id, "loss")] == [(1, 2.5), (2, 2.0)]
    assert "nan" not in child.data.metrics and child.data.metrics["ok"] == 1.0
    assert [a.path for a in client.list_artifacts(run.run_id)] == ["stats.json"]
    assert child.info.status == "FINISHED"
    top = client.get_run(parent.run_id)
    assert top.info.status == "FINISHED" and top.data.params["tokenizer.vocab_size"] == "8000"
    assert not (store / "mlflow/offline").exists()


def test_unreachable_server_warns_once_and_keeps_everything_in_a_local_file(store, monkeypatch, caplog):
    with caplog.at_level(logging.WARNING, logger="bertpipe.tracking"):
        run = stage_run(target(store, f"http://bert:secret@127.0.0.1:{free_port()}"), "pretrain phase1", "pretrain")
        run.log_params({"lr": 0.001})
        run.log_metric_history([(step, {"loss": 1.0 / step}) for step in range(1, 4)])
        run.log_artifact(store)
        run.end("FINISHED")
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "goes on without it" in warnings[0].getMessage()
    assert str(run.offline_file) in warnings[0].getMessage()
    assert "secret" not in caplog.text + run.offline_file.read_text()
    assert "http://127.0.0.1:" in warnings[0].getMessage()
    records = [json.loads(line) for line in run.offline_file.read_text().splitlines()]
    assert [r["op"] for r in records] == ["create_run", "offline_run_id", "params", "metrics", "artifact", "end"]
    assert records[0]["tags"]["bertpipe.stage"] == "pretrain"
    assert records[3]["metrics"] == [["loss", 1.0, 1], ["loss", 0.5, 2], ["loss", 1 / 3, 3]]
    assert run.run_id.startswith("offline-") and all(r["run_id"] == run.run_id for r in records[1:])


def test_replay_sends_the_offline_records_to_their_runs_once(store):
    from mlflow import MlflowClient

    where = target(store)
    parent = tracking.start_pipeline(where, {"tokenizer": {"vocab_size": 8000}}, ["snakemake"])
    down = target(store, f"http://127.0.0.1:{free_port()}")  # the same tracking folder, MLflow unreachable
    run = stage_run(down, "pretrain phase 1", "pretrain")
    run.log_params({"lr": 0.001})
    run.log_metric_history([(step, {"loss": 1.0 / step}) for step in range(1, 4)])
    (store / "stats.json").write_text("{}")
    run.log_artifact(store / "stats.json")
    run.end("FINISHED")
    tracking.end_pipeline(down, "FAILED")  # the pipeline run, made online, closed offline
    with open(run.offline_file, "a") as torn:  # a record cut off as it was written: skipped, the rest sent
        torn.write('{"op": "metr\n')

    assert tracking.replay(where) == {"files": 2, "records": 7, "runs_created": 1, "skipped": 1, "refused": 0,
                                      "waiting": 0}
    client = MlflowClient(where.uri)

    def state():
        runs = client.search_runs([client.get_experiment_by_name("tests").experiment_id])
        return {r.info.run_id: (r.info.run_name, r.info.status, r.data.tags.get("mlflow.parentRunId"), r.data.params,
                                [(m.step, m.value) for m in client.get_metric_history(r.info.run_id, "loss")],
                                [a.path for a in client.list_artifacts(r.info.run_id)]) for r in runs}

    replayed = state()
    (child,) = [value for run_id, value in replayed.items() if run_id != parent.run_id]
    assert child == ("pretrain phase 1", "FINISHED", parent.run_id, {"lr": "0.001"},
                     [(1, 1.0), (2, 0.5), (3, 1 / 3)], ["stats.json"])
    assert replayed[parent.run_id][1] == "FAILED"
    assert tracking.replay(where) == {"files": 0, "records": 0, "runs_created": 0, "skipped": 0, "refused": 0,
                                      "waiting": 0}
    # A replay cut off before it noted what it sent sends it again to the same effect: one run, each metric once.
    (store / "mlflow/offline" / tracking.REPLAYED).unlink()
    assert tracking.replay(where)["runs_created"] == 0
    assert state() == replayed


NOTHING_REPLAYED = {"files": 0, "records": 0, "runs_created": 0, "skipped": 0, "refused": 0, "waiting": 0}


@pytest.fixture
def down(store, monkeypatch):
    """The test's tracking folder with a tracking URI where nothing listens; jobs give up on it at once (no retries)."""
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    return target(store, f"http://127.0.0.1:{free_port()}")


def warnings_of(caplog) -> list:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and r.name == "bertpipe.tracking"]


def test_a_refused_record_is_kept_with_the_rest_of_its_file_at_each_replay_and_the_other_files_go_on(store, down,
                                                                                                     caplog):
    from mlflow import MlflowClient

    where = target(store)
    tracking.start_pipeline(where, {}, ["snakemake"])
    online = stage_run(where, "pretrain phase 1", "pretrain")
    online.log_params({"lr": 0.001})
    # The same run, from a job whose node could not reach MLflow, logs the param again with another value: MLflow
    # will refuse it whenever it is sent.
    conflicting = tracking.Run(down, "pretrain phase 1", "pretrain", run_id=online.run_id)
    conflicting.log_params({"lr": 0.002})
    conflicting.log_metrics({"loss": 1.0})
    conflicting.end()
    other = stage_run(down, "evaluate", "evaluate")  # a later file, which the refused one must not hold back
    other.log_metrics({"accuracy": 0.5})
    other.end()

    with caplog.at_level(logging.WARNING, logger="bertpipe.tracking"):
        assert tracking.replay(where) == {**NOTHING_REPLAYED, "files": 1, "records": 4, "runs_created": 1,
                                          "refused": 1, "waiting": 2}
        caplog.clear()
        assert tracking.replay(where) == {**NOTHING_REPLAYED, "refused": 1, "waiting": 2}
    (warning,) = warnings_of(caplog)  # reported again, with what to do
    assert f"{conflicting.offline_file}: line 1 (params of run 'pretrain phase 1', {online.run_id}) was refused" in (
        warning)
    assert "Changing param values is not allowed" in warning and "the other files go on" in warning
    assert f"delete {conflicting.offline_file} to give up its records from line 1 on" in warning

    client = MlflowClient(where.uri)
    assert client.get_run(online.run_id).data.params == {"lr": "0.001"}
    assert "loss" not in client.get_run(online.run_id).data.metrics, "the records after the refused one wait"
    (evaluate,) = client.search_runs([client.get_experiment_by_name("tests").experiment_id], "run_name = 'evaluate'")
    assert evaluate.data.metrics == {"accuracy": 0.5} and evaluate.info.status == "FINISHED"
    conflicting.offline_file.unlink()  # what the warning says to do with a record MLflow can never take
    assert tracking.replay(where) == NOTHING_REPLAYED


def test_a_child_waits_for_its_pipeline_run_made_offline_until_that_is_made(store, down, caplog):
    """The pipeline run and a job's run made offline; the pipeline run's creation is refused (its experiment was
    deleted): the job's run waits instead of going to the top level, and goes under it once it is made."""
    from mlflow import MlflowClient

    where = target(store)
    client = MlflowClient(where.uri)
    experiment_id = tracking.experiment(client, "tests", store / "mlflow")
    pipeline = tracking.start_pipeline(down, {"tokenizer": {"vocab_size": 8000}}, ["snakemake"])
    job = stage_run(down, "tokenizer", "tokenizer")
    job.log_metrics({"vocab": 8000.0})
    job.end()
    tracking.end_pipeline(down, "FINISHED")  # a third file, for the same offline pipeline run
    client.delete_experiment(experiment_id)

    caplog.clear()  # the jobs' warnings that they go offline
    with caplog.at_level(logging.WARNING, logger="bertpipe.tracking"):
        counts = tracking.replay(where)
    assert counts["refused"] == 1 and counts["runs_created"] == 0 and counts["waiting"] > 0, counts
    refused, *waits = warnings_of(caplog)
    assert f"{pipeline.offline_file}: line 2 (offline_run_id of run" in refused and "'active' state" in refused
    assert f"mlflow experiments restore --experiment-id {experiment_id}" in refused
    assert len(waits) == 2 and all(f"wait for run {pipeline.run_id}, which {pipeline.offline_file} makes" in wait
                                   for wait in waits), waits
    assert str(job.offline_file) in "".join(waits)

    client.restore_experiment(experiment_id)
    assert tracking.replay(where)["runs_created"] == 2
    runs = {run.info.run_name: run for run in client.search_runs([experiment_id])}
    (top,) = [run for name, run in runs.items() if name.startswith("pipeline")]
    assert "mlflow.parentRunId" not in top.data.tags and top.info.status == "FINISHED"
    assert top.data.params == {"tokenizer.vocab_size": "8000"}
    assert runs["tokenizer"].data.tags["mlflow.parentRunId"] == top.info.run_id
    assert runs["tokenizer"].data.metrics["vocab"] == 8000.0
    assert tracking.replay(where) == NOTHING_REPLAYED


def test_a_job_whose_clock_is_behind_still_goes_under_its_pipeline_run_in_one_replay(store, down):
    """Files are replayed oldest first by their records' times; a job on a node whose clock is behind can look older
    than its pipeline run, made offline too. It waits for it within the same replay."""
    from mlflow import MlflowClient

    tracking.start_pipeline(down, {}, ["snakemake"])
    job = stage_run(down, "extract", "extract")
    job.end()
    records = [json.loads(line) for line in job.offline_file.read_text().splitlines()]
    job.offline_file.write_text("".join(json.dumps({**record, "time": record["time"] - 60}) + "\n"
                                        for record in records))

    where = target(store)
    assert tracking.replay(where) == {**NOTHING_REPLAYED, "files": 2, "records": 6, "runs_created": 2}
    client = MlflowClient(where.uri)
    experiment_id = client.get_experiment_by_name("tests").experiment_id
    runs = {run.info.run_name: run for run in client.search_runs([experiment_id])}
    (top,) = [run for name, run in runs.items() if name.startswith("pipeline")]
    assert runs["extract"].data.tags["mlflow.parentRunId"] == top.info.run_id


def test_the_replay_at_a_pipeline_start_never_stops_it_and_what_it_could_not_send_waits(store, down, caplog):
    from mlflow import MlflowClient

    job = stage_run(down, "download", "download")
    job.log_metrics({"bytes": 10.0})
    job.end()
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="bertpipe.tracking"):
        tracking.replay_before_start(down)  # MLflow still down
    (warning,) = warnings_of(caplog)
    assert f"were not all replayed (TrackingUnreachable: MLflow at {down.uri} could not be reached" in warning
    assert not (store / "mlflow/offline" / tracking.REPLAYED).exists()

    where = target(store)
    tracking.replay_before_start(where)
    client = MlflowClient(where.uri)
    (run,) = client.search_runs([client.get_experiment_by_name("tests").experiment_id])
    assert run.data.metrics == {"bytes": 10.0} and run.info.status == "FINISHED"


def test_a_job_under_a_pipeline_run_made_offline_is_tracked_offline_until_a_replay_makes_both(tmp_path, monkeypatch):
    """The server was down when the pipeline started and is up for a later job: made online, the job's run would
    name a parent MLflow never has. It goes offline with its pipeline run, and one replay makes both, the job under
    the pipeline run."""
    from mlflow import MlflowClient

    monkeypatch.delenv("RANK", raising=False)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    folder = tmp_path / "mlflow"
    down = tracking.Target(uri=f"http://127.0.0.1:{free_port()}", folder=str(folder))
    pipeline = tracking.start_pipeline(down, {"a": 1}, ["snakemake"])
    assert pipeline.run_id.startswith("offline-")
    up = tracking.Target(uri=f"sqlite:///{folder}/mlflow.db", folder=str(folder))
    job = tracking.Run(up, "tokenizer", "tokenizer", parent_id=up.pipeline_parent())
    job.log_metrics({"vocab_size": 4000})
    job.end()
    assert job.offline and job.run_id.startswith("offline-")
    tracking.replay(up)
    client = MlflowClient(up.uri)
    runs = {run.info.run_name: run for run in client.search_runs(
        [client.get_experiment_by_name(up.experiment).experiment_id])}
    parent = next(run for name, run in runs.items() if name.startswith("pipeline"))
    assert runs["tokenizer"].data.tags["mlflow.parentRunId"] == parent.info.run_id
    assert runs["tokenizer"].data.metrics == {"vocab_size": 4000.0}
    # Once made, a later job goes under it online.
    later = tracking.Run(up, "export", "export", parent_id=up.pipeline_parent())
    assert not later.offline and client.get_run(later.run_id).data.tags["mlflow.parentRunId"] == parent.info.run_id


@pytest.mark.parametrize("rank, uri", [("1", "sqlite"), ("0", None)], ids=["rank-1", "no-uri"])
def test_nothing_is_tracked_off_rank_zero_or_without_a_tracking_uri(store, monkeypatch, rank, uri):
    monkeypatch.setenv("RANK", rank)
    where = target(store)
    run = tracking.Run(tracking.Target(uri=where.uri if uri else None, folder=where.folder), "pretrain", "pretrain")
    run.log_metrics({"loss": 1.0})
    run.end()
    assert not run.enabled and run.run_id is None
    assert not (store / "mlflow").exists()


def test_content_hash_reads_bytes_and_folder_layout(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a/x.txt").write_text("one")
    first = content_hash(tmp_path / "a")
    (tmp_path / "a/x.txt").write_text("two")
    second = content_hash(tmp_path / "a")
    (tmp_path / "a/x.txt").rename(tmp_path / "a/y.txt")
    assert len({first, second, content_hash(tmp_path / "a")}) == 3


def test_jobs_that_start_together_on_a_new_sqlite_store_lose_no_run(store):
    # As a Slurm array of short jobs on a first run: four processes open the same new SQLite store at once. Without
    # a lock MLflow's table migrations collide and the runs go to the offline files.
    import subprocess

    from mlflow import MlflowClient

    from tests.conftest import VENV_BIN

    stats = store / "shard.stats.json"
    stats.write_text(json.dumps(dict.fromkeys(("documents", "sentences", "instances", "tokens", "real_tokens",
                                               "masked", "mask", "kept", "random", "random_next",
                                               "random_next_forced", "padding"), 1)))
    uri = f"sqlite:///{store}/mlflow/mlflow.db"
    jobs = [subprocess.Popen([str(VENV_BIN / "bertpipe"), "--tracking-uri", uri, "--tracking-dir", store / "mlflow",
                              "--experiment", "tests", "tfrecords", "summarize", stats, "--out",
                              store / f"summary-{job}.json", "--page", store / f"summary-{job}.html"],
                             stderr=subprocess.PIPE, text=True)
            for job in range(4)]
    errors = [job.communicate()[1] for job in jobs]
    assert [job.returncode for job in jobs] == [0] * 4, errors
    assert not any("MLflow tracking at" in error for error in errors), errors
    assert not (store / "mlflow/offline").exists()
    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("tests").experiment_id], max_results=100)
    assert len(runs) == 4 and {run.info.status for run in runs} == {"FINISHED"}


def test_the_experiment_is_marked_as_model_training_and_a_kind_set_in_the_ui_is_kept(store):
    """MLflow's UI opens an experiment by its kind: without one it shows its GenAI pages (traces, token usage)."""
    from mlflow import MlflowClient

    where = target(store)
    stage_run(where, "tokenizer", "tokenizer").end()
    client = MlflowClient(where.uri)
    assert client.get_experiment_by_name("tests").tags["mlflow.experimentKind"] == "custom_model_development"
    # An experiment made before (by an older bertpipe, or by hand) gets the tag; a kind someone chose stays.
    for name, tags, kind in (("older", {}, "custom_model_development"),
                             ("chosen", {"mlflow.experimentKind": "finetuning"}, "finetuning")):
        client.create_experiment(name, tags=tags)
        stage_run(tracking.Target(uri=where.uri, folder=where.folder, experiment=name), "tokenizer", "tokenizer").end()
        assert client.get_experiment_by_name(name).tags.get("mlflow.experimentKind") == kind


def test_a_version_that_a_retried_request_made_twice_is_kept_once_and_a_rerun_makes_none(store):
    """MLflow retries a POST that timed out; when the first one had got through, the registry holds the same run's
    model twice. Registering looks the versions of this run and source up: it keeps the first and deletes the
    others, and registering again reuses it."""
    from mlflow import MlflowClient

    from bertpipe.stages.register import _create_version

    where = target(store)
    run = stage_run(where, "register", "register")
    client = MlflowClient(where.uri)
    client.create_registered_model("bert")
    source = f"{client.get_run(run.run_id).info.artifact_uri}/model"
    twice = [client.create_model_version("bert", source, run_id=run.run_id).version for _ in range(2)]
    other = client.create_model_version("bert", f"{source}-other", run_id=run.run_id).version  # not this source

    assert _create_version(client, "bert", source, run.run_id, {"lineage.dump": "enwiki/latest"}) == twice[0]
    assert sorted(v.version for v in client.search_model_versions("name='bert'")) == sorted([twice[0], other])
    assert _create_version(client, "bert", source, run.run_id, {}) == twice[0]
    assert len(client.search_model_versions("name='bert'")) == 2


def test_system_metrics_are_sampled_into_the_run_while_the_stage_works(store, monkeypatch):
    """MLflow's own monitor, as the pretrain and evaluate runs use it (its sampling interval shortened to 0.2 s)."""
    import time

    from mlflow import MlflowClient

    monkeypatch.setenv("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", "0.2")
    where = target(store)
    run = stage_run(where, "pretrain", "pretrain")
    with run.system_metrics():
        busy_until = time.monotonic() + 1.5  # a stage at work for some samples' time
        while time.monotonic() < busy_until:
            sum(range(10000))
    run.end()
    metrics = MlflowClient(where.uri).get_run(run.run_id).data.metrics
    assert {"system/cpu_utilization_percentage", "system/system_memory_usage_percentage"} <= set(metrics), metrics


def test_inputs_are_params_and_mlflow_datasets_with_digest_rows_and_context(store):
    """A stage's inputs reach the Dataset column and the run's inputs: named by their folder, our content hash as the
    digest, the TFRecords' record count (from their stats files) and feature names."""
    from mlflow import MlflowClient

    from bertpipe.hashing import described_input

    folder = store / "results/tfrecords/seq128/train"
    for part, instances in (("a", 3), ("b", 4)):
        (folder / part).mkdir(parents=True)
        (folder / part / "shard-0000.tfrecord").write_bytes(part.encode())
        (folder / part / "shard-0000.stats.json").write_text(json.dumps({"instances": instances}))
    (store / "tokenizer").mkdir()
    (store / "tokenizer/spm.model").write_bytes(b"model")
    files = sorted(str(path) for path in folder.glob("*/*.tfrecord"))
    where = target(store)
    run = stage_run(where, "pretrain phase 1", "pretrain")
    run.log_inputs({"train_data": described_input(files), "tokenizer_path": described_input([store / "tokenizer"])})
    run.end()

    logged = MlflowClient(where.uri).get_run(run.run_id)
    datasets = {d.tags[0].value: d.dataset for d in logged.inputs.dataset_inputs}
    assert set(datasets) == {"train_data", "tokenizer_path"}
    train = datasets["train_data"]
    assert train.digest == content_hash(*files) == logged.data.params["input_hash.train_data"]
    assert train.name.endswith("results/tfrecords/seq128/train") and json.loads(train.profile) == {"num_rows": 7}
    assert "input_ids" in {column["name"] for column in json.loads(train.schema)["mlflow_colspec"]}
    assert json.loads(train.source)["uri"] == folder.resolve().as_uri()
    assert datasets["tokenizer_path"].digest == content_hash(store / "tokenizer") and not datasets[
        "tokenizer_path"].profile
