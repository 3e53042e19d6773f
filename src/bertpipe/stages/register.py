"""Stage `register`: the exported transformers folder logged to MLflow as a servable model and registered as a new
version of a named model in the Model Registry, tagged with its lineage and its evaluation metrics.

The logged model is an MLflow pyfunc model whose code is `fill_mask_model.py` and whose artifact is the exported
folder, so `mlflow.pyfunc.load_model("models:/<name>/<version>").predict(["... [MASK] ..."])` and `mlflow models
serve` answer with the top tokens and their probabilities, and `transformers` can still load the folder itself
(`artifacts/huggingface` in the model).

The version's source is the folder as logged under this stage's run (`runs:/...` resolved to the artifact URI), so
the registry points at an immutable copy, not at a results folder that a rerun may replace. Without a reachable
tracking server the stage fails, naming the server, and writes nothing: every earlier output is kept, and the rerun
registers. Creating a version is idempotent: a request that MLflow retried after a timeout can have created the
version twice, so the versions of this run and source are looked up, and only the first is kept.
"""

import json
import logging
import tempfile
from importlib.metadata import version
from pathlib import Path

from bertpipe import BertpipeError, settings
from bertpipe.atomic import atomic_file
from bertpipe.hashing import content_hash
from bertpipe.redaction import redact
from bertpipe.settings import MlflowSettings
from bertpipe.tracking import Outcome

log = logging.getLogger(__name__)

MODEL_ARTIFACT = "model"
MODEL_CODE = Path(__file__).parent.parent / "fill_mask_model.py"


def lineage(manifest, tokenizer_dir, train_data, training_done, commit: str = None) -> dict:
    """Where the model comes from: the dump, the tokenizer's and the training data's content hashes, the training
    runs (one per phase) and the code's commit."""
    dump = json.loads(Path(manifest).read_text())
    phases = [json.loads(Path(done).read_text()) for done in training_done]
    return {"dump": f"{dump['wiki']}/{dump['date']}", "tokenizer_hash": content_hash(tokenizer_dir),
            "train_data_hash": content_hash(*train_data), "final_step": phases[-1]["step"],
            "training_run_ids": ",".join(str(phase.get("mlflow_run_id")) for phase in phases),
            "git_commit": commit or "unknown"}


def register(run, model_dir, name: str, lineage: dict, evaluation_file, out, upload_timeout_seconds: int) -> dict:
    """Log `model_dir` under `run` and register it as a version of `name`; write what was registered to `out`."""
    model_dir = Path(model_dir)
    for needed in ("config.json", "bertpipe-export.json"):
        if not (model_dir / needed).is_file():
            raise BertpipeError(f"{model_dir}: not an exported model folder (no {needed}); run the export stage")
    evaluation = json.loads(Path(evaluation_file).read_text())
    metrics = {key: value for key, value in evaluation.items() if key.startswith("test_")}
    tags = {**{f"lineage.{key}": str(value) for key, value in lineage.items()},
            **{f"evaluation.{key}": f"{value:.6g}" for key, value in metrics.items()}}
    run.log_metrics(metrics)
    run.set_tags(tags)
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=Path(out).parent, prefix=".mlflow-model-") as temp:
        run.log_artifact(servable_model(model_dir, Path(temp) / MODEL_ARTIFACT), MODEL_ARTIFACT,
                         timeout_seconds=upload_timeout_seconds)
    source = run.artifact_uri(MODEL_ARTIFACT)
    version = None
    if source is not None:
        version = run.call(_create_version, name, source, run.run_id, tags, what="register_model")
    if version is None:
        raise BertpipeError(f"model {name} was not registered: MLflow at {redact(run.uri)} could not be reached "
                            f"({run.failure}); every earlier output is kept: once it answers, run the workflow again "
                            "(or snakemake --forcerun register) to register")
    record = {"name": name, "version": version, "source": source, "run_id": run.run_id, "tags": tags,
              "registered": True}
    log.info("registered %s version %s from %s", name, version, source)
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


def _create_version(client, name, source, run_id, tags):
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
            client.create_model_version(name, source, run_id=run_id, tags=tags)
        except MlflowException:
            if not ours():  # a retried request that had got through the first time is not a failure
                raise
    first, *duplicates = ours()
    for duplicate in duplicates:
        client.delete_model_version(name, duplicate.version)
    return first.version


def add_arguments(parser) -> None:
    parser.add_argument("--model", required=True, help="the export stage's folder")
    settings.add_arguments(parser, MlflowSettings, only=("registered_model", "upload_timeout_seconds"))
    parser.add_argument("--evaluation", required=True, help="the evaluate stage's metrics")
    parser.add_argument("--manifest", required=True, help="the dump's manifest.json (lineage)")
    parser.add_argument("--tokenizer", required=True, help="the tokenizer stage's folder (lineage)")
    parser.add_argument("--train-data", nargs="+", required=True, help="the TFRecords trained on (lineage)")
    parser.add_argument("--training-done", nargs="+", required=True, help="each phase's done.json (lineage)")
    parser.add_argument("--out", required=True, help="what was registered (JSON)")
    parser.set_defaults(run=run, label="registered_model", inputs=("model",))


def run(args, tracking_run) -> Outcome:
    if not tracking_run.enabled:
        raise BertpipeError("no MLflow tracking URI: give `bertpipe --tracking-uri URI register ...` (the workflow "
                            "gives config mlflow.tracking_uri) to register a model")
    origin = lineage(args.manifest, args.tokenizer, args.train_data, args.training_done, tracking_run.target.commit)
    record = register(tracking_run, args.model, args.registered_model, origin, args.evaluation, args.out,
                      args.upload_timeout_seconds)
    return Outcome(tags={"registered_version": record["version"]})
