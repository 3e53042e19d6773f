"""The register stage: the exported folder as an MLflow 3 LoggedModel of the register run, registered as a version
of the named model (its source the LoggedModel), the alias moved to it; the runs view's URL."""

import json
import socket
import types
from pathlib import Path

import pytest

from bertpipe import BertpipeError, cli, tracking
from bertpipe.stages.register import MODEL_VERSIONS_TAG, _list_version, register

EVALUATION = {"test_mlm_loss": 6.5, "test_perplexity": 665.1, "test_mlm_accuracy": 0.12, "test_nsp_accuracy": 0.5,
              "test_sequences": 12, "test_predictions": 240, "checkpoint": "results/pretrain/phase2"}


def test_the_runs_view_opens_the_experiments_runs_in_the_model_training_view():
    """MLflow 3's UI keeps its mode per browser and starts in GenAI: the URL names the mode and the runs tab (the UI's
    route /experiments/:experimentId/runs)."""
    assert tracking.runs_view("http://127.0.0.1:5000/", "3") == (
        "http://127.0.0.1:5000/#/experiments/3/runs?workflowType=machine_learning")


@pytest.mark.parametrize("alias", ["latest", "Latest", "v2", "V17", "new est", ""])
def test_the_alias_setting_refuses_what_mlflow_keeps_for_itself(alias, capsys):
    """models:/<name>/latest is the highest version and models:/<name>@v2 version 2: MLflow refuses them as aliases,
    so the setting does, before a pipeline run trains for hours and then fails at register."""
    argv = ["register", "--model", "m", "--evaluation", "e", "--manifest", "m", "--tokenizer", "t", "--train-data",
            "r", "--training-done", "d", "--out", "o", "--registered-alias", alias]
    with pytest.raises(SystemExit):
        cli.parser(argv).parse_args(argv)
    assert "--registered-alias" in capsys.readouterr().err


@pytest.mark.parametrize("alias", ["newest", "champion", "v2-candidate", "latest_bert"])
def test_the_alias_setting_takes_an_mlflow_alias(alias):
    argv = ["register", "--model", "m", "--evaluation", "e", "--manifest", "m", "--tokenizer", "t", "--train-data",
            "r", "--training-done", "d", "--out", "o", "--registered-alias", alias]
    assert cli.parser(argv).parse_args(argv).registered_alias == alias


class LoggedModels:
    """A client's LoggedModel tags, as MLflow's get_logged_model and set_logged_model_tags see them."""

    def __init__(self, tags):
        self.tags, self.writes = dict(tags), 0

    def get_logged_model(self, model_id):
        return types.SimpleNamespace(model_id=model_id, tags=dict(self.tags))

    def set_logged_model_tags(self, model_id, tags):
        self.tags.update(tags)
        self.writes += 1


def listed(client) -> list:
    return json.loads(client.tags[MODEL_VERSIONS_TAG])


def test_the_logged_model_lists_its_version_once_as_the_server_writes_it():
    """A database store writes no list (a server does, versions as numbers; the client's versions are strings over
    HTTP): the model gets one, and one the server wrote is left alone."""
    client = LoggedModels({})
    _list_version(client, "m-1", "bert", "3", [])
    assert listed(client) == [{"name": "bert", "version": 3}]
    server_wrote = LoggedModels({MODEL_VERSIONS_TAG: json.dumps([{"name": "bert", "version": 3}])})
    _list_version(server_wrote, "m-1", "bert", "3", [])
    assert server_wrote.writes == 0


def test_a_deleted_duplicate_leaves_the_logged_models_list():
    """A retried request that made the version twice: the duplicate is deleted, and the model lists the version kept
    (and the versions of other registered models it holds)."""
    client = LoggedModels({MODEL_VERSIONS_TAG: json.dumps([{"name": "other", "version": 4}, {"name": "bert",
                                                                                            "version": 3},
                                                           {"name": "bert", "version": 4}])})
    _list_version(client, "m-1", "bert", 3, ["4"])
    assert listed(client) == [{"name": "other", "version": 4}, {"name": "bert", "version": 3}]


def exported_folder(path):
    """A folder with what register checks and packs (the weights are not loaded)."""
    path.mkdir()
    (path / "config.json").write_text("{}")
    (path / "bertpipe-export.json").write_text(json.dumps({"requirements": ["transformers"]}))
    return path


@pytest.mark.slow
def test_with_a_database_store_each_register_adds_a_version_from_a_logged_model_and_moves_the_alias(
        tmp_path, monkeypatch):
    """The demo's store (SQLite, no server): each register run logs a LoggedModel (its test metrics, its lineage, the
    version it became) and registers it (source models:/<model id>); the alias goes to the newest."""
    from mlflow import MlflowClient
    from mlflow.models import Model

    monkeypatch.delenv("RANK", raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    model_dir = exported_folder(tmp_path / "huggingface")
    (tmp_path / "metrics.json").write_text(json.dumps(EVALUATION))
    where = tracking.Target(uri=f"sqlite:///{tmp_path}/mlflow/mlflow.db", folder=str(tmp_path / "mlflow"),
                            experiment="tests")
    records = []
    for number in range(2):
        run = tracking.Run(where, "register", "register")
        records.append(register(run, model_dir, "bert", {"dump": "enwiki/20260101"}, tmp_path / "metrics.json",
                                tmp_path / f"out{number}/model-version.json", 60, "newest"))
        run.end()
    assert [record["version"] for record in records] == [1, 2]
    client = MlflowClient(where.uri)
    assert str(client.get_model_version_by_alias("bert", "newest").version) == "2"
    for record in records:
        assert json.loads((tmp_path / f"out{records.index(record)}/model-version.json").read_text()) == record
        version = client.get_model_version("bert", record["version"])
        assert version.source == f"models:/{record['model_id']}" and version.run_id == record["run_id"]
        assert version.tags["lineage.dump"] == "enwiki/20260101"
        model = client.get_logged_model(record["model_id"])
        assert model.source_run_id == record["run_id"] and str(model.status) == "READY"
        assert {metric.key: metric.value for metric in model.metrics} == {
            key: value for key, value in EVALUATION.items() if key.startswith("test_")}
        assert json.loads(model.tags[MODEL_VERSIONS_TAG]) == [{"name": "bert", "version": int(record["version"])}]
        assert model.tags["lineage.dump"] == "enwiki/20260101"
        assert [output.model_id for output in client.get_run(record["run_id"]).outputs.model_outputs] == [
            record["model_id"]]
        saved = Model.load(Path(model.artifact_location.removeprefix("file://")) / "MLmodel")
        assert saved.model_id == record["model_id"] and saved.run_id == record["run_id"]
    assert not (tmp_path / "mlruns").exists() and not list(tmp_path.glob("*.db")), "nothing went to MLflow's default"


@pytest.mark.slow
def test_without_a_tracking_server_register_fails_naming_it_and_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.delenv("RANK", raising=False)
    for key, value in tracking.HTTP_DEFAULTS.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    model_dir = exported_folder(tmp_path / "huggingface")
    (tmp_path / "metrics.json").write_text(json.dumps(EVALUATION))
    with socket.socket() as unused:  # a port nothing listens on
        unused.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{unused.getsockname()[1]}"
    run = tracking.Run(tracking.Target(uri=url, folder=str(tmp_path / "mlflow")), "register", "register")
    with pytest.raises(BertpipeError, match=f"model bert was not registered: MLflow at {url} could not be reached"):
        register(run, model_dir, "bert", {"dump": "enwiki/20260101"}, tmp_path / "metrics.json",
                 tmp_path / "out/model-version.json", 60)
    assert not (tmp_path / "out/model-version.json").exists()
    assert [path.name for path in (tmp_path / "out").iterdir()] == [], "no packed model left behind"
