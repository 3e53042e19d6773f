"""The demo pipeline on your own corpus (config.ownjson.yaml: the bundled loose-JSON sample, not Wikipedia) under the
modern recipe (config.modern.yaml: ModernBERT on packed sequences), small, against a real `mlflow server` on
127.0.0.1: the DAG from your files to a registered model, the corpus's content hash from its manifest to the MLflow
dataset and the registered version, runs found through the server's REST API, the registered version's LoggedModel,
the ModernBERT loaded and served by its alias, the runs view as a browser shows it; a server that stops mid-run,
after which every stage but register completes, with a warning and the local fallback files; and a file added to the
corpus, which reruns only its own corpus job. (The demo itself, Wikipedia and bert2019, runs to its registered model
in test_workflow.py.)"""

import json
import os
import re
import signal
import subprocess
import threading

import pytest
import requests
import yaml

from bench.harness.workflow import copy_workflow
from bertpipe import tracking
from tests.browser import install_chromium, page_script_value
from tests.conftest import SMALL_PIPELINE, VENV_BIN
from tests.integration.test_own_corpus import jobs_of
from tests.integration.test_tracking import free_port

pytestmark = pytest.mark.slow

class ListeningProcess:
    """A server command in its own process group; ready once it says it is listening (read from its log, no
    polling)."""

    def __init__(self, command, env=None):
        self.lines, self.ready, self.ended = [], threading.Event(), False
        self.process = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
            env={**os.environ, "PATH": f"{VENV_BIN}{os.pathsep}{os.environ['PATH']}", **(env or {})})
        threading.Thread(target=self._drain, daemon=True).start()
        if not self.ready.wait(timeout=120) or self.ended:
            self.stop()
            raise RuntimeError(f"{' '.join(command[:3])} did not start:\n" + "".join(self.lines))

    def _drain(self):
        for line in self.process.stdout:
            self.lines.append(line)
            # Listening: uvicorn's line comes after "Application startup complete", once the socket is bound.
            if re.search(r"Uvicorn running on|Listening at", line):
                self.ready.set()
        self.ended = True
        self.ready.set()  # the process ended: let the waiter look

    def stop(self):
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)  # the whole group: gunicorn/uvicorn workers too
        self.process.wait(timeout=60)


class MlflowServer(ListeningProcess):
    """`mlflow server` on 127.0.0.1."""

    def __init__(self, folder, port=None):
        """A server on `port` (default: a free one) over the store in `folder` (kept across a restart)."""
        self.folder = folder
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        # Without MLflow 3's job runner (GenAI scorers and their periodic tasks, which bertpipe does not use): its
        # worker processes would each import MLflow at every start (docs/benchmarks.md, "The test suite").
        super().__init__(
            [str(VENV_BIN / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(self.port), "--workers", "1",
             "--backend-store-uri", f"sqlite:///{folder}/server.db", "--artifacts-destination", str(folder / "store")],
            env={"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"})

    def api(self, method, path, **kwargs):
        response = requests.request(method, f"{self.url}/api/2.0/mlflow/{path}", timeout=30, **kwargs)
        response.raise_for_status()
        return response.json()


def snakemake_process(workflow_dir, *args):
    return subprocess.Popen([str(VENV_BIN / "snakemake"), *args], cwd=workflow_dir, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "PATH": f"{VENV_BIN}{os.pathsep}{os.environ['PATH']}"})


PIPELINE = ("--cores", "2", "all", "--configfile", "config.demo.yaml", "config.ownjson.yaml", "config.modern.yaml",
            "small.yaml")
# The small pipeline with a second phase, from the first's weights, as the demo's.
PHASES = [SMALL_PIPELINE["pretrain"]["phases"][0],
          {"seq_length": 128, "batch_size": 8, "gradient_accumulation_steps": 1, "train_iters": 10, "lr": 1.0e-4}]
TWO_PHASES = {**SMALL_PIPELINE, "pretrain": {**SMALL_PIPELINE["pretrain"], "phases": PHASES}}
MODEL = "bertpipe-stdlib-docs"  # config.ownjson.yaml's mlflow.registered_model
NEWEST = f"models:/{MODEL}@newest"  # the version that config mlflow.registered_alias marks


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """The small pipeline run against a real server: (workflow folder, the server). The tests share it, in file
    order: the last trains again and stops the server on the way."""
    workflow_dir = copy_workflow(tmp_path_factory.mktemp("server") / "wf")
    mlflow_server = MlflowServer(workflow_dir.parent)
    try:
        (workflow_dir / "small.yaml").write_text(yaml.safe_dump({**TWO_PHASES,
                                                                  "mlflow": {"tracking_uri": mlflow_server.url}}))
        process = snakemake_process(workflow_dir, *PIPELINE)
        output = process.stdout.read()
        assert process.wait() == 0, output
        yield workflow_dir, mlflow_server
    finally:
        mlflow_server.stop()


def test_demo_against_a_tracking_server_is_found_through_its_rest_api(served):
    from mlflow import MlflowClient

    workflow_dir, mlflow_server = served
    assert not (workflow_dir / "results/mlflow/mlflow.db").exists(), "the server is the store, not a local file"
    # What the jobs wrote to the tracking folder, the pipeline's process sent, every record.
    assert tracking.replay(tracking.Target(uri=mlflow_server.url, folder=str(workflow_dir / "results/mlflow"))) == {
        "files": 0, "records": 0, "runs_created": 0, "skipped": 0, "refused": 0, "waiting": 0}

    experiment = mlflow_server.api("GET", "experiments/get-by-name", params={"experiment_name": "bertpipe"})
    runs = mlflow_server.api("POST", "runs/search", json={
        "experiment_ids": [experiment["experiment"]["experiment_id"]], "max_results": 1000})["runs"]
    tags = [{t["key"]: t["value"] for t in run["data"].get("tags", [])} for run in runs]
    parents = [run for run, tag in zip(runs, tags) if tag["bertpipe.stage"] == "pipeline"]
    assert len(parents) == 1 and parents[0]["info"]["status"] == "FINISHED"
    parent_id = parents[0]["info"]["run_id"]
    children = [(run, tag) for run, tag in zip(runs, tags) if tag["bertpipe.stage"] != "pipeline"]
    assert all(tag["mlflow.parentRunId"] == parent_id and run["info"]["status"] == "FINISHED"
               for run, tag in children)
    assert {tag["bertpipe.stage"] for _, tag in children} == {
        "corpus", "tokenizer", "tfrecords", "pretrain", "evaluate", "export", "register"}, "no download, no extract"
    phase1 = next(run for run, tag in children if run["info"]["run_name"] == "pretrain phase 1")
    history = mlflow_server.api("GET", "metrics/get-history",
                                params={"run_id": phase1["info"]["run_id"], "metric_key": "loss"})["metrics"]
    assert sorted(int(m["step"]) for m in history) == list(range(1, 41))

    versions = mlflow_server.api("GET", "model-versions/search", params={"filter": f"name='{MODEL}'"})
    (version,) = versions["model_versions"]
    register = next(run for run, tag in children if tag["bertpipe.stage"] == "register")
    assert version["run_id"] == register["info"]["run_id"]
    # Its source is the register run's LoggedModel (MLflow 3's models:/<model id>; the open-source registry keeps no
    # model_id of its own): the run's output, with the model's files, evaluate's test metrics and the version it
    # became, which the alias marks as the newest.
    model_id = version["source"].removeprefix("models:/")
    assert model_id.startswith("m-")
    assert [output["model_id"] for output in register["outputs"]["model_outputs"]] == [model_id]
    client = MlflowClient(mlflow_server.url)
    model = client.get_logged_model(model_id)
    assert model.source_run_id == register["info"]["run_id"] and str(model.status) == "READY"
    evaluation = json.loads((workflow_dir / "results/evaluate/metrics.json").read_text())
    tested = {key: value for key, value in evaluation.items() if key.startswith("test_")}
    assert {"test_perplexity", "test_mlm_accuracy"} <= tested.keys() and "test_nsp_accuracy" not in tested
    exported = json.loads((workflow_dir / "results/export/huggingface/config.json").read_text())
    assert exported["architectures"] == ["ModernBertForMaskedLM"] and "sliding_attention" in exported["layer_types"]
    packed = json.loads((workflow_dir / "results/tfrecords/seq128/train/stats.json").read_text())
    assert packed["per_shard"][0]["features"] == ["input_ids", "document_lengths"] and packed["instances"] > 0
    assert {metric.key: metric.value for metric in model.metrics} == pytest.approx(tested)
    assert json.loads(model.tags["mlflow.modelVersions"]) == [{"name": MODEL, "version": 1}]
    assert client.get_model_version_by_alias(MODEL, "newest").version == "1"
    registered = json.loads((workflow_dir / "results/register/model-version.json").read_text())
    assert (registered["version"], registered["model_id"], registered["uri"]) == ("1", model_id, NEWEST)
    assert "MLmodel" in {f.path for f in client.list_logged_model_artifacts(model_id)}

    # The corpus: its four files in the manifest; its content hash the corpus run's MLflow dataset digest and the
    # registered version's lineage; the model card names it, not Wikipedia.
    manifest = json.loads((workflow_dir / "results/corpus/manifest.json").read_text())
    sample = sorted((workflow_dir / "data/ownjson").glob("*.jsonl"))
    assert [(f["path"], f["bytes"], f["documents"] > 0) for f in manifest["files"]] == [
        (str(path.relative_to(workflow_dir)), path.stat().st_size, True) for path in sample]
    corpus_run = next(run for run, tag in children if run["info"]["run_name"] == "corpus stats")
    (dataset,) = corpus_run["inputs"]["dataset_inputs"]
    assert dataset["dataset"]["digest"] == manifest["corpus_hash"] == version_tags(version)["lineage.corpus_hash"]
    assert dataset["dataset"]["name"] == "data/ownjson"  # where the files are
    assert version_tags(version)["lineage.corpus"] == "Python standard library docstrings"
    card = (workflow_dir / "results/export/huggingface/README.md").read_text()
    assert "wikipedia" not in card.lower() and "license: psf-2.0" in card
    assert "- Python standard library docstrings (source.format loose_json): 4 files, 0.9 MB, 199 documents" in card
    assert {f"artifacts/huggingface/{name}" for name in ("config.json", "model.safetensors", "tokenizer.json")} <= {
        f.path for f in client.list_logged_model_artifacts(model_id, "artifacts/huggingface")}


def version_tags(version: dict) -> dict:
    return {tag["key"]: tag["value"] for tag in version.get("tags", [])}


SENTENCES = ["The capital of France is [MASK].", "He was born in [MASK] and studied at the university."]


def test_the_registered_version_fills_masks_through_pyfunc_and_served_over_http(served, monkeypatch):
    import mlflow.pyfunc

    _, mlflow_server = served
    offline = {"MLFLOW_TRACKING_URI": mlflow_server.url, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    for key, value in offline.items():
        monkeypatch.setenv(key, value)
    model = mlflow.pyfunc.load_model(NEWEST)  # version 1, the only one
    predicted = model.predict(SENTENCES)
    assert [(row["sentence"], row["rank"]) for row in predicted] == [(s, r) for s in SENTENCES for r in range(1, 6)]
    for sentence in SENTENCES:
        scores = [row["score"] for row in predicted if row["sentence"] == sentence]
        assert scores == sorted(scores, reverse=True) and 0 < sum(scores) <= 1
    assert all(row["token"].strip() and "[MASK]" not in row["token"] for row in predicted)
    with pytest.raises(Exception, match="has 0 \\[MASK\\] tokens"):
        model.predict(["no mask here"])

    # `mlflow models serve` of the same version on 127.0.0.1, with no network: the same answer over HTTP.
    port = free_port()
    served_model = ListeningProcess(
        [str(VENV_BIN / "mlflow"), "models", "serve", "-m", NEWEST, "--env-manager", "local",
         "--host", "127.0.0.1", "--port", str(port)], env=offline)
    try:
        response = requests.post(f"http://127.0.0.1:{port}/invocations", json={"inputs": SENTENCES}, timeout=60)
        assert response.status_code == 200, response.text
        answered = response.json()["predictions"]
        assert [(row["sentence"], row["rank"], row["token"]) for row in answered] == [
            (row["sentence"], row["rank"], row["token"]) for row in predicted]
        assert [row["score"] for row in answered] == pytest.approx([row["score"] for row in predicted], rel=1e-5)
        refused = requests.post(f"http://127.0.0.1:{port}/invocations", json={"inputs": ["no mask"]}, timeout=60)
        assert refused.status_code == 400 and "exactly one" in refused.text
    finally:
        served_model.stop()


# Run in the page of the runs view: the pipeline run's row, and once it is unfolded as a person's click does, its
# register run's row, read from the DOM; then the register run's model link followed to the version's page, whose links
# are read too. It waits for each with the browser's own observer of the page's changes.
RUNS_VIEW_SCRIPT = """
async ({pipeline, register}) => {
  const until = find => new Promise(resolve => {
    const look = () => {
      const found = find();
      if (found) {
        observer.disconnect();
        resolve(found);
      }
    };
    const observer = new MutationObserver(look);
    observer.observe(document.body, {childList: true, subtree: true, characterData: true});
    look();
  });
  const links = within => [...within.querySelectorAll("a[href]")].map(
    a => ({href: a.getAttribute("href"), text: a.innerText.replace(/\\s+/g, " ").trim()}));
  // A cell of a run's row in the runs table (AG Grid: a row's cells are spread over several containers).
  const cell = (runId, column) => document.querySelector(
    `[role=row][row-id="${runId}"] [role=gridcell][col-id="attributes.\\`${column}\\`"]`);
  const row = runId => ({name: links(cell(runId, "Run Name")), models: links(cell(runId, "Models"))});
  await until(() => cell(pipeline, "Run Name") && cell(pipeline, "Models"));
  const pipelineRow = row(pipeline);
  cell(pipeline, "Run Name").querySelector("button").click();  // its stage runs are nested under it, folded
  await until(() => cell(register, "Models") && cell(register, "Models").querySelector("a[href]"));
  const registerRow = row(register);
  location.hash = registerRow.models[0].href;
  const version = await until(() => document.querySelector('a[href*="/models/m-"]') && links(document));
  return {pipeline: pipelineRow, register: registerRow, version};
}
"""


def test_the_runs_view_shows_the_pipeline_run_and_its_register_runs_model_linked_both_ways(served):
    """The URL `bertpipe tracking runs-view` prints (as `make mlflow-ui` does) for the server, in headless Chromium: the
    experiment's runs in the model-training view, whatever mode the browser last used. The pipeline run's row is
    there; unfolded, its register run's row links to the version its LoggedModel became, and the version's page to
    that LoggedModel and the run."""
    workflow_dir, mlflow_server = served
    install_chromium()
    experiment = mlflow_server.api("GET", "experiments/get-by-name",
                                   params={"experiment_name": "bertpipe"})["experiment"]["experiment_id"]
    pipeline = json.loads((workflow_dir / "results/mlflow/pipeline-run.json").read_text())["run_id"]
    pipeline_name = mlflow_server.api("GET", "runs/get", params={"run_id": pipeline})["run"]["info"]["run_name"]
    registered = json.loads((workflow_dir / "results/register/model-version.json").read_text())
    printed = subprocess.run([str(VENV_BIN / "bertpipe"), "--tracking-uri", mlflow_server.url, "tracking", "runs-view"],
                             capture_output=True, text=True, check=True).stdout.strip()
    assert printed == f"{mlflow_server.url}/#/experiments/{experiment}/runs?workflowType=machine_learning"
    shown = page_script_value(printed, f"({RUNS_VIEW_SCRIPT})("
                              f"{json.dumps({'pipeline': pipeline, 'register': registered['run_id']})})")
    assert shown["pipeline"]["name"] == [{"href": f"#/experiments/{experiment}/runs/{pipeline}",
                                          "text": pipeline_name}]
    assert shown["register"]["name"] == [{"href": f"#/experiments/{experiment}/runs/{registered['run_id']}",
                                          "text": "register"}]
    assert shown["register"]["models"] == [{"href": f"#/models/{MODEL}/versions/1", "text": f"{MODEL} v1"}]
    assert {"href": f"#/experiments/{experiment}/models/{registered['model_id']}", "text": MODEL} in shown[
        "version"], "the version's source model: the LoggedModel, by its name"
    assert {"href": f"#/experiments/{experiment}/runs/{registered['run_id']}", "text": "register"} in shown["version"]


def registered_weights(server) -> dict:
    """{version: the bytes of its model.safetensors}, read through the server from the version's LoggedModel."""
    versions = server.api("GET", "model-versions/search", params={"filter": f"name='{MODEL}'"})
    weights = {}
    for version in versions["model_versions"]:
        model_id = version["source"].removeprefix("models:/")
        response = requests.get(f"{server.url}/ajax-api/2.0/mlflow/logged-models/{model_id}/artifacts/files",
                                params={"artifact_file_path": "artifacts/huggingface/model.safetensors"}, timeout=60)
        response.raise_for_status()
        weights[version["version"]] = response.content
    return weights


def test_a_changed_learning_rate_retrains_both_phases_the_server_stops_and_register_fails_until_it_is_back(served):
    """A changed training setting never ships the old model: phase 1's learning rate alone changes; phase 1 trains
    afresh (its checkpoints set aside, not resumed), phase 2 follows it (its checkpoints started from the other
    phase-1 weights). The server stops once the pipeline run is open on it and Snakemake starts the training jobs:
    every stage goes on without it but register, which fails naming the server. Back, it gets what the jobs kept
    offline; a plain rerun registers exactly one version, of other weights; then the workflow has nothing to do."""
    from mlflow import MlflowClient

    workflow_dir, mlflow_server = served
    (first,) = registered_weights(mlflow_server).values()
    changed = [{**PHASES[0], "lr": 9.0e-4}, PHASES[1]]
    (workflow_dir / "small.yaml").write_text(yaml.safe_dump({
        **TWO_PHASES, "pretrain": {**TWO_PHASES["pretrain"], "phases": changed},
        "mlflow": {"tracking_uri": mlflow_server.url}}))
    process = snakemake_process(workflow_dir, *PIPELINE)
    output = []
    for line in process.stdout:  # Snakemake's own log, line by line as it runs
        output.append(line)
        if re.match(r"(local)?rule pretrain:", line):
            mlflow_server.stop()
    output = "".join(output)
    assert process.wait() != 0, output
    assert mlflow_server.process.poll() is not None, "the server was stopped mid-run"
    finished = re.findall(r"Finished jobid: \d+ \(Rule: (\w+)\)", output)
    assert sorted(finished) == ["evaluate", "export", "pretrain", "pretrain"], finished
    assert "Error in rule register" in output
    assert f"model {MODEL} was not registered: MLflow at {mlflow_server.url} could not be reached" in (
        workflow_dir / "logs/register.log").read_text()
    assert not (workflow_dir / "results/register/model-version.json").exists()
    assert (workflow_dir / "results/export/huggingface/model.safetensors").is_file(), "earlier outputs are kept"
    phase1, phase2 = ((workflow_dir / f"logs/pretrain/phase{n}.log").read_text() for n in (1, 2))
    assert "phase.lr 0.001 -> 0.0009" in phase1 and "moved its checkpoints to" in phase1
    assert "initialised_from.identity" in phase2 and "phase.lr" not in phase2 and "moved its checkpoints to" in phase2
    assert "resumed from" not in phase1 + phase2
    for log, steps in ((phase1, 40), (phase2, 10)):
        assert "step 1 loss" in log and f"step {steps} loss" in log, "trained from the first step to the last"
    checkpoints = workflow_dir / "results/pretrain/phase1"
    stale = sorted(checkpoints.glob("checkpoints.stale-*"))[-1]  # the newest: this test's
    assert (stale / "step-00000040/state.pt").is_file()
    assert (checkpoints / "checkpoints/step-00000040/state.pt").is_file()

    # Before the stop: the pipeline run opened on the server. After it: a clear warning in each job's log, and the
    # local file.
    parent = json.loads((workflow_dir / "results/mlflow/pipeline-run.json").read_text())["run_id"]
    assert not parent.startswith("offline-")
    warning = f"MLflow tracking at {mlflow_server.url} failed"
    assert warning in phase1 and "goes on without it" in phase1
    assert warning in output, "Snakemake's own output warns when the pipeline run cannot be closed"
    offline = list((workflow_dir / "results/mlflow/offline").glob("*.jsonl"))
    records = [json.loads(line) for path in offline for line in path.read_text().splitlines()]
    pretrain_steps = [m for r in records if r["op"] == "metrics" and r["run"] == "pretrain phase 1"
                      for m in r["metrics"] if m[0] == "loss"]
    assert sorted(step for _, _, step in pretrain_steps) == list(range(1, 41)), "every step"

    # The server back (its store kept): what the jobs kept offline is replayed to it, under the runs it belongs to.
    restarted = MlflowServer(mlflow_server.folder, port=mlflow_server.port)
    try:
        replay = [str(VENV_BIN / "bertpipe"), "--tracking-uri", restarted.url, "--tracking-dir",
                  str(workflow_dir / "results/mlflow"), "tracking", "replay"]
        replayed = subprocess.run(replay, capture_output=True, text=True)
        assert replayed.returncode == 0 and re.search(r"replayed [1-9]\d* records", replayed.stdout), replayed
        after_replay = runs_on(restarted)
        second = after_replay[parent]
        assert second["status"] == "FAILED", "the pipeline run that failed at register is closed as it ended"
        children = {run["name"]: run for run in after_replay.values() if run["parent"] == parent}
        assert {"pretrain phase 1", "pretrain phase 2", "evaluate", "export", "register"} <= set(children)
        offline_phase1 = children["pretrain phase 1"]
        assert offline_phase1["status"] == "FINISHED" and offline_phase1["offline_id"].startswith("offline-")
        assert offline_phase1["loss_steps"] == list(range(1, 41)), "every step, once"
        assert offline_phase1["params"]["input_hash.train_data"], "its params and inputs too"
        # A plain rerun replays nothing again, and runs register alone, which adds exactly one version, of the
        # retrained weights, and moves the alias to it.
        process = snakemake_process(workflow_dir, *PIPELINE)
        output = process.stdout.read()
        assert process.wait() == 0, output
        assert re.findall(r"Finished jobid: \d+ \(Rule: (\w+)\)", output) == ["register", "all"]
        registered = json.loads((workflow_dir / "results/register/model-version.json").read_text())
        weights = registered_weights(restarted)
        assert sorted(weights) == ["1", "2"] == ["1", registered["version"]]
        assert weights["1"] == first and weights["2"] != first
        client = MlflowClient(restarted.url)
        assert client.get_model_version_by_alias(MODEL, "newest").version == "2"
        assert client.get_logged_model(registered["model_id"]).source_run_id == registered["run_id"]
        after_rerun = runs_on(restarted)
        assert {run_id: after_rerun[run_id] for run_id in after_replay} == after_replay
        assert len(after_rerun) == len(after_replay) + 2, "the rerun's pipeline run and its register run"
        again = subprocess.run(replay, capture_output=True, text=True)
        assert again.returncode == 0 and "replayed 0 records of 0 files" in again.stdout, again
        assert runs_on(restarted) == after_rerun
        dry = snakemake_process(workflow_dir, "-n", *PIPELINE)
        assert "Nothing to be done" in dry.stdout.read() and dry.wait() == 0
        # A file added to the corpus: the corpus job it joins and what depends on the corpus, no other corpus job.
        added = workflow_dir / "data/ownjson/stdlib-docs-5.jsonl"
        added.write_text('{"id": "added", "text": "One more module documented here."}\n')
        dry = snakemake_process(workflow_dir, "-n", *PIPELINE)
        output = dry.stdout.read()
        assert dry.wait() == 0
        (job,) = jobs_of(output, "corpus")
        assert jobs_of(output, "corpus_files") == [job] and str(added.relative_to(workflow_dir)) in output
        assert re.search(r"^corpus_stats\s+1$", output, re.M) and re.search(r"^tokenizer\s+1$", output, re.M)
        added.unlink()
    finally:
        restarted.stop()


def runs_on(server) -> dict:
    """Every run of the experiment on `server`: {run id: name, status, parent, offline id, params, loss steps}."""
    experiment = server.api("GET", "experiments/get-by-name", params={"experiment_name": "bertpipe"})
    runs = server.api("POST", "runs/search", json={"experiment_ids": [experiment["experiment"]["experiment_id"]],
                                                   "max_results": 1000})["runs"]
    found = {}
    for run in runs:
        tags = {tag["key"]: tag["value"] for tag in run["data"].get("tags", [])}
        history = server.api("GET", "metrics/get-history", params={"run_id": run["info"]["run_id"],
                                                                   "metric_key": "loss"}).get("metrics", [])
        found[run["info"]["run_id"]] = {
            "name": run["info"]["run_name"], "status": run["info"]["status"], "parent": tags.get("mlflow.parentRunId"),
            "offline_id": tags.get("bertpipe.offline_run_id"),
            "params": {param["key"]: param["value"] for param in run["data"].get("params", [])},
            "loss_steps": sorted(int(metric["step"]) for metric in history)}
    return found
