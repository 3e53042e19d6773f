"""Stage `register`: the exported transformers folder logged to MLflow as a servable model of this stage's run (an
MLflow 3 LoggedModel, with evaluate's test metrics), registered as a new version of a named model in the Model
Registry, tagged with its lineage and its evaluation metrics, and given the alias that marks the newest version.

The logged model is an MLflow pyfunc model whose code is `fill_mask_model.py` and whose artifact is the exported
folder, so `mlflow.pyfunc.load_model("models:/<name>@<alias>").predict(["... [MASK] ..."])` and `mlflow models serve`
answer with the top tokens and their probabilities, and `transformers` can still load the folder itself
(`artifacts/huggingface` in the model).

The version's source is the LoggedModel (`models:/<model id>`), an immutable copy in MLflow, not a results folder that
a rerun may replace; the run's Models column, the experiment's Models tab and the version's page link each other.
Without a reachable tracking server the stage fails, naming the server, and writes nothing: every earlier output is
kept, and the rerun registers. Creating a version is idempotent: a request that MLflow retried after a timeout can
have created the version twice, so the versions of this run and source are looked up, and only the first is kept.
"""

import contextlib
import json
import logging
import tempfile
import time
from importlib.metadata import version
from pathlib import Path

from bertpipe import BertpipeError, settings
from bertpipe.atomic import atomic_file
from bertpipe.hashing import content_hash
from bertpipe.redaction import redact
from bertpipe.settings import MlflowSettings
from bertpipe.tracking import Outcome, environment_restored, numeric, request_timeout

log = logging.getLogger(__name__)

MODEL_ARTIFACT = "model"
MODEL_CODE = Path(__file__).parent.parent / "fill_mask_model.py"
MODEL_VERSIONS_TAG = "mlflow.modelVersions"  # a LoggedModel's registered versions, as MLflow's UI reads them


def lineage(manifest, tokenizer_dir, train_data, training_done, commit: str = None) -> dict:
    """Where the model comes from: the corpus (its name, content hash and, for Wikipedia, the dump), the
    tokenizer's and the training data's content hashes, the training runs (one per phase) and the code's commit."""
    corpus = json.loads(Path(manifest).read_text())
    phases = [json.loads(Path(done).read_text()) for done in training_done]
    return {"corpus": corpus["source"]["name"], "corpus_hash": corpus["corpus_hash"],
            **({"dump": corpus["source"]["dump"]} if "dump" in corpus["source"] else {}),
            "tokenizer_hash": content_hash(tokenizer_dir), "train_data_hash": content_hash(*train_data),
            "final_step": phases[-1]["step"],
            "training_run_ids": ",".join(str(phase.get("mlflow_run_id")) for phase in phases),
            "git_commit": commit or "unknown"}


def register(run, model_dir, name: str, lineage: dict, evaluation_file, out, upload_timeout_seconds: int,
             alias: str = MlflowSettings.registered_alias) -> dict:
    """Log `model_dir` as a model of `run`, register it as a version of `name` with `alias`; write what was registered
    to `out`."""
    model_dir = Path(model_dir)
    for needed in ("config.json", "bertpipe-export.json"):
        if not (model_dir / needed).is_file():
            raise BertpipeError(f"{model_dir}: not an exported model folder (no {needed}); run the export stage")
    evaluation = json.loads(Path(evaluation_file).read_text())
    metrics = numeric({key: value for key, value in evaluation.items() if key.startswith("test_")})
    lineage_tags = {f"lineage.{key}": str(value) for key, value in lineage.items()}
    tags = {**lineage_tags, **{f"evaluation.{key}": f"{value:.6g}" for key, value in metrics.items()}}
    run.set_tags(tags)
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=Path(out).parent, prefix=".mlflow-model-") as temp:
        folder = servable_model(model_dir, Path(temp) / MODEL_ARTIFACT)
        model_id = run.call(_log_model, run.run_id, name, str(folder), lineage_tags, metrics, upload_timeout_seconds,
                            what="log_model")
    source, version = f"models:/{model_id}", None  # MLflow 3's URI of a LoggedModel
    if model_id is not None:
        version = run.call(_create_version, name, source, run.run_id, tags, model_id, alias, what="register_model")
    if version is None:
        raise BertpipeError(f"model {name} was not registered: MLflow at {redact(run.uri)} could not be reached "
                            f"({run.failure}); every earlier output is kept: once it answers, run the workflow again "
                            "(or snakemake --forcerun register) to register")
    record = {"name": name, "version": version, "alias": alias, "uri": f"models:/{name}@{alias}", "model_id": model_id,
              "source": source, "run_id": run.run_id, "metrics": metrics, "tags": tags, "registered": True}
    log.info("registered %s version %s (alias %s) from %s", name, version, alias, source)
    with atomic_file(out) as temp:
        temp.write_text(json.dumps(record, indent=2) + "\n")
    return record


def servable_model(model_dir, path) -> Path:
    """The exported folder `model_dir` as an MLflow pyfunc fill-mask model in folder `path` (made here), which
    requires this MLflow and the versions the export stage ran with (bertpipe-export.json)."""
    import mlflow.pyfunc

    exported = json.loads((Path(model_dir) / "bertpipe-export.json").read_text())
    mlflow.pyfunc.save_model(path, python_model=str(MODEL_CODE), artifacts={"huggingface": str(model_dir)},
                             pip_requirements=[f"mlflow=={version('mlflow')}", *exported["requirements"]])
    return Path(path)


def _log_model(client, run_id, name, folder, tags, metrics, upload_timeout_seconds) -> str:
    """The saved model `folder` as a LoggedModel `name` of run `run_id` (what `mlflow.pyfunc.log_model(name=...)` does
    under an active run), with `tags` and `metrics` (on the run too), an output of the run; returns its id. Its
    MLmodel names it, as one logged by MLflow does. A model whose upload failed is marked FAILED."""
    from mlflow.entities import LoggedModelOutput, LoggedModelStatus, Metric
    from mlflow.models import Model

    experiment_id = client.get_run(run_id).info.experiment_id
    model = client.create_logged_model(experiment_id, name=name, source_run_id=run_id, tags=tags)
    try:
        client.log_outputs(run_id, [LoggedModelOutput(model.model_id, step=0)])  # the model the run made
        saved = Model.load(folder)
        saved.artifact_path, saved.run_id = model.artifact_location, run_id
        saved.model_id = saved.model_uuid = model.model_id
        saved.save(str(Path(folder) / "MLmodel"))
        with request_timeout(upload_timeout_seconds):
            client.log_model_artifacts(model.model_id, folder)
        stamp = int(time.time() * 1000)
        client.log_batch(run_id, metrics=[Metric(key, value, stamp, 0, model_id=model.model_id)
                                          for key, value in metrics.items()])
        client.finalize_logged_model(model.model_id, LoggedModelStatus.READY)
    except Exception:
        with contextlib.suppress(Exception):  # unreachable, it stays PENDING
            client.finalize_logged_model(model.model_id, LoggedModelStatus.FAILED)
        raise
    return model.model_id


def _create_version(client, name, source, run_id, tags, model_id=None, alias=None):
    """The version of `name` made from `source` by run `run_id` (made once: see the module's doc), from the
    LoggedModel `model_id` (which then lists it, as MLflow's UI reads it) and with `alias` (moved to it)."""
    from mlflow.exceptions import MlflowException

    try:
        client.create_registered_model(name, description="BERT pretrained by bertpipe")
    except MlflowException as error:
        if "RESOURCE_ALREADY_EXISTS" not in str(error.error_code):
            raise

    def ours():
        found = client.search_model_versions(f"name='{name}' and run_id='{run_id}'")
        return sorted((version for version in found if version.source == source), key=lambda v: int(v.version))

    if not ours():
        try:
            with _registry_store_finds(client, source):
                client.create_model_version(name, source, run_id=run_id, tags=tags, model_id=model_id)
        except MlflowException:
            if not ours():  # a retried request that had got through the first time is not a failure
                raise
    first, *duplicates = ours()
    for duplicate in duplicates:
        client.delete_model_version(name, duplicate.version)
    if alias:  # next to the version's making: a failure between the two would leave a version the rerun cannot find
        client.set_registered_model_alias(name, alias, first.version)
    if model_id:
        with contextlib.suppress(MlflowException):  # the UI's list of the model's versions: no cause to fail for
            _list_version(client, model_id, name, first.version, [duplicate.version for duplicate in duplicates])
    return first.version


@contextlib.contextmanager
def _registry_store_finds(client, source):
    """MLflow's database registry looks a `models:/<model id>` source up with a client of the global tracking URI (a
    server sets it to its own store): with a database as the store, it is set to the client's while the version is
    made. MLflow's own context for that (private: no public one puts back an unset URI) restores the global; the
    environment variable, which setting the URI writes, is restored here."""
    from mlflow.tracking._tracking_service.utils import _use_tracking_uri

    if not source.startswith("models:/") or client.tracking_uri.startswith(("http:", "https:")):
        yield
        return
    with environment_restored("MLFLOW_TRACKING_URI"), _use_tracking_uri(client.tracking_uri):
        yield


def _list_version(client, model_id, name, kept, deleted):
    """The LoggedModel's tag of its versions (mlflow.modelVersions) names version `kept` of `name` and none of
    `deleted`. A tracking server writes it as it makes a version; a database store, or a duplicate deleted, does
    not."""
    def names(entry, versions):
        return entry.get("name") == name and str(entry.get("version")) in map(str, versions)

    listed = json.loads(client.get_logged_model(model_id).tags.get(MODEL_VERSIONS_TAG) or "[]")
    wanted = [entry for entry in listed if not names(entry, deleted)]
    if not any(names(entry, [kept]) for entry in wanted):
        wanted.append({"name": name, "version": int(kept)})  # as the server writes it
    if wanted != listed:
        client.set_logged_model_tags(model_id, {MODEL_VERSIONS_TAG: json.dumps(wanted)})


def add_arguments(parser) -> None:
    parser.add_argument("--model", required=True, help="the export stage's folder")
    settings.add_arguments(parser, MlflowSettings, only=("registered_model", "registered_alias",
                                                         "upload_timeout_seconds"))
    parser.add_argument("--evaluation", required=True, help="the evaluate stage's metrics")
    parser.add_argument("--manifest", required=True, help="the corpus stage's manifest.json (lineage)")
    parser.add_argument("--tokenizer", required=True, help="the tokenizer stage's folder (lineage)")
    parser.add_argument("--train-data", nargs="+", required=True, help="the TFRecords trained on (lineage)")
    parser.add_argument("--training-done", nargs="+", required=True, help="each phase's done.json (lineage)")
    parser.add_argument("--out", required=True, help="what was registered (JSON)")
    parser.set_defaults(run=run, label="registered_model", inputs=("model",), calls_mlflow=True)


def run(args, tracking_run) -> Outcome:
    if not tracking_run.enabled:
        raise BertpipeError("no MLflow tracking URI: give `bertpipe --tracking-uri URI register ...` (the workflow "
                            "gives config mlflow.tracking_uri) to register a model")
    origin = lineage(args.manifest, args.tokenizer, args.train_data, args.training_done, tracking_run.target.commit)
    record = register(tracking_run, args.model, args.registered_model, origin, args.evaluation, args.out,
                      args.upload_timeout_seconds, args.registered_alias)
    return Outcome(tags={"registered_version": record["version"], "registered_model_id": record["model_id"]})
