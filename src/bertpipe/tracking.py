"""MLflow tracking: one parent run per pipeline run (a `snakemake` invocation), one child run per job under it.

Where runs go is a `Target`, which every job gets as explicit flags of `bertpipe` (`Target.flags`, which the
Snakefile's `bertpipe` shell function puts before each rule's stage, so Slurm jobs get it too): the tracking
URI, the experiment, the workflow's commit, and the tracking folder under the results, which holds
`pipeline-run.json` (the parent run, written when the pipeline starts) and `offline/` (runs not in MLflow yet). A
`bertpipe` command without `--tracking-uri` (run by hand) is not tracked.

A job of a pipeline run writes its run to `offline/<run>.jsonl` (JSON lines, one per call) and the pipeline's own
process (Snakemake's) sends what its jobs wrote (`Sender`, by `replay`) every few seconds while it runs and the rest
when it ends: a job imports no MLflow (seconds of CPU each, with thousands of jobs at Wikipedia's size), needs no
route to the tracking server nor its credentials, and never queues for a SQLite store's lock. Only the jobs that need
MLflow while they work write to it themselves: those that sample their system metrics (pretrain, evaluate) and
register (the model registry).

Tracking never stops the work: the first call of such a job that fails (server down, database locked, ...) logs one
warning, and from then on the job appends what it would have logged to its offline file, so nothing is lost; what the
sender cannot send waits there for the next pipeline run or `bertpipe tracking replay`. Under torchrun only rank 0
tracks.
"""

import atexit
import contextlib
import dataclasses
import json
import logging
import os
import re
import threading
import time
import uuid
from pathlib import Path

from bertpipe import BertpipeError
from bertpipe.atomic import atomic_file, exclusive
from bertpipe.hashing import hash_of_hashes
from bertpipe.redaction import HIDDEN, redact, redact_values
from bertpipe.settings import MlflowSettings

log = logging.getLogger(__name__)

# MLflow retries an unreachable server for minutes by default; a stage must go on within seconds.
HTTP_DEFAULTS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
                 "MLFLOW_HTTP_REQUEST_TIMEOUT": "20"}
PIPELINE_RUN = "pipeline-run.json"
SENDING = "sending.json"  # in the tracking folder while a pipeline's process sends its jobs' runs (Sender)
# A Sender renews sending.json every pass (2 s); one older than this was left by a process that ended without
# stopping its Sender, and a job's clock may be behind the file system's by less.
SENDER_STALE_SECONDS = 60
SQLITE_ON_A_CLUSTER = (
    "bertpipe: warning: mlflow.tracking_uri is null, so this pipeline's process and its training, evaluation and "
    "register jobs on the cluster's nodes write to one SQLite file under results/mlflow on a shared file system, "
    "whose locks SQLite cannot always trust, one writer at a time: a tracking server is the right store here (set "
    "mlflow.tracking_uri to its URL)")
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND = {EXPERIMENT_KIND_TAG: "custom_model_development"}  # the UI's kind for training runs
METRICS_PER_REQUEST = 1000  # MLflow's log_batch limit
PARAM_CHARS = 6000  # MLflow's param value limit


def flatten(values: dict, prefix: str = "") -> dict:
    """{"a": {"b": 1}} -> {"a.b": 1}"""
    flat = {}
    for key, value in values.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def numeric(values: dict) -> dict:
    """The finite numbers among flattened `values` (booleans as 0/1), as metrics."""
    out = {}
    for key, value in flatten(values).items():
        if isinstance(value, bool):
            value = int(value)
        if isinstance(value, (int, float)) and value == value and abs(value) != float("inf"):
            out[key] = float(value)
    return out


def _key(name: str) -> str:
    """A metric or param name MLflow accepts (letters, digits, _ - . space : /)."""
    return re.sub(r"[^A-Za-z0-9_\-. :/]", "_", name)


def _safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_")[:120]


def _is_rank_zero() -> bool:
    return os.environ.get("RANK", "0") == "0"


@dataclasses.dataclass
class Target:
    """Where a job's runs go: the tracking URI (None: nowhere), the experiment, the tracking folder (the pipeline's
    parent run and offline records) and the commit of the code that runs."""

    uri: str = None
    folder: str = "mlflow"
    experiment: str = MlflowSettings.experiment
    commit: str = None

    @classmethod
    def for_pipeline(cls, settings: dict, results, code) -> "Target":
        """The pipeline's target from config `mlflow` (tracking_uri null: SQLite under `<results>/mlflow`), with the
        commit of the checkout `code`."""
        import subprocess

        folder = Path(results, "mlflow").resolve()
        commit = subprocess.run(["git", "-C", str(code), "rev-parse", "--verify", "-q", "HEAD"], capture_output=True,
                                text=True)
        return cls(uri=settings["tracking_uri"] or f"sqlite:///{folder}/mlflow.db", folder=str(folder),
                   experiment=settings["experiment"], commit=commit.stdout.strip() if commit.returncode == 0 else None)

    def arguments(self) -> list:
        """The `bertpipe` arguments that give a command this target."""
        words = ["--tracking-dir", self.folder, "--experiment", self.experiment]
        if self.uri:
            words += ["--tracking-uri", self.uri]
        if self.commit:
            words += ["--git-commit", self.commit]
        return words

    def flags(self) -> str:
        """`arguments()` as shell words."""
        import shlex

        return " ".join(shlex.quote(word) for word in self.arguments())

    def pipeline_parent(self):
        """The running pipeline's parent run id (from `pipeline-run.json`), or None outside a pipeline run."""
        try:
            return json.loads((Path(self.folder) / PIPELINE_RUN).read_text())["run_id"]
        except (OSError, ValueError, KeyError):
            return None

    def store_key(self) -> str:
        """The store and experiment this target writes to, as a digest (no URL's credentials on disk)."""
        return hash_of_hashes([f"{self.uri}\n{self.experiment}"])

    def pipeline_sends(self) -> bool:
        """Whether a pipeline's process is sending its jobs' runs to this target's store and experiment (Sender):
        its `sending.json` is there, renewed within SENDER_STALE_SECONDS, and names them."""
        path = Path(self.folder) / SENDING
        try:
            fresh = time.time() - path.stat().st_mtime < SENDER_STALE_SECONDS
            return fresh and json.loads(path.read_text())["store"] == self.store_key()
        except (OSError, ValueError, KeyError):
            return False


@dataclasses.dataclass
class Outcome:
    """What a stage measured and made, for its run: metrics, tags, and artifacts as (path, folder in the run or
    None); `stopped`: it stopped early and will be resumed, `signal`: on this signal."""

    metrics: dict = dataclasses.field(default_factory=dict)
    tags: dict = dataclasses.field(default_factory=dict)
    artifacts: list = dataclasses.field(default_factory=list)
    stopped: bool = False
    signal: int = None


def add_arguments(parser) -> None:
    """`bertpipe`'s tracking flags (before the stage)."""
    group = parser.add_argument_group("tracking (the workflow passes these to every job)")
    group.add_argument("--tracking-uri", help="MLflow tracking URI; without it nothing is tracked (credentials go "
                                              "in MLFLOW_TRACKING_USERNAME/PASSWORD or MLFLOW_TRACKING_TOKEN)")
    group.add_argument("--tracking-dir", default=Target.folder,
                       help="the pipeline's tracking folder: its parent run (pipeline-run.json) and offline records "
                            "(default: %(default)s)")
    group.add_argument("--experiment", default=Target.experiment, help="MLflow experiment (default: %(default)s)")
    group.add_argument("--git-commit", help="the commit of the code that runs, as the runs' source commit")


def target_of(args) -> Target:
    return Target(uri=args.tracking_uri, folder=args.tracking_dir, experiment=args.experiment, commit=args.git_commit)


class Run:
    """One MLflow run, or its offline record once MLflow cannot be reached. Every method is best effort."""

    def __init__(self, target: Target, name: str, stage: str, parent_id: str = None, tags: dict = None,
                 run_id: str = None, enabled: bool = True, spooled: bool = False):
        """A new run, or (`run_id`) one that exists already; `enabled=False` (or no tracking URI, or a rank other
        than 0) makes every method a no-op; `spooled`: the new run is written to its offline file alone, for the
        pipeline's Sender to send."""
        self.name, self.target = name, target
        self.uri = target.uri
        self.enabled = enabled and bool(self.uri) and _is_rank_zero()
        self.folder = Path(target.folder)
        self.offline_file = self.folder / "offline" / f"{_safe_name(name)}-{uuid.uuid4().hex[:8]}.jsonl"
        self.offline = False
        self.failure = None  # why MLflow could not be reached, once it could not
        self.run_id = run_id
        if not self.enabled:
            return
        # MLflow reads its HTTP retry settings from the environment only; without these it retries for minutes.
        for key, value in HTTP_DEFAULTS.items():
            os.environ.setdefault(key, value)
        if run_id:
            self.offline = run_id.startswith("offline-")
            self._call(self._connect, {"op": "attach"})
            return
        tags = {"bertpipe.stage": stage, **{key: redact(value) for key, value in (tags or {}).items()}}
        self.offline = spooled
        if parent_id and parent_id.startswith("offline-"):
            parent_id = _replayed_runs(self.folder).get(parent_id, parent_id)
            if parent_id.startswith("offline-"):
                # Its pipeline run exists only offline: made online, this run would name a parent MLflow never has;
                # offline, the replay that makes the pipeline run makes this one under it.
                self.offline = True
                log.info("%s is tracked offline in %s with its pipeline run, until a replay sends both", name,
                         self.offline_file)
        if parent_id:
            tags["mlflow.parentRunId"] = parent_id
        if target.commit:
            tags["mlflow.source.git.commit"] = target.commit
        self.run_id = self._call(self._create, {"op": "create_run", "name": name, "tags": tags}, tags)
        if self.run_id is None:
            self.run_id = f"offline-{uuid.uuid4().hex}"
            self._write({"op": "offline_run_id"})

    # -- MLflow, or the offline file ---------------------------------------------------------------------------
    def _connect(self):
        from mlflow import MlflowClient

        # urllib3 warns on each retry; the one warning below says what happened and where the records go.
        logging.getLogger("urllib3.connectionpool").setLevel(logging.ERROR)

        self.client = MlflowClient(self.uri)

    def _create(self, tags):
        with _first_use_lock(self.uri):
            self._connect()
            experiment_id = experiment(self.client, self.target.experiment, self.folder)
        return self.client.create_run(experiment_id, run_name=self.name, tags=tags).info.run_id

    def _call(self, function, record, *args):
        if not self.enabled:
            return None
        if not self.offline:
            try:
                return function(*args)
            except Exception as error:  # whatever MLflow raises, tracking must not stop the stage
                self.offline = True
                first_line = str(error).strip().splitlines()[0] if str(error).strip() else ""
                self.failure = f"{type(error).__name__}: {redact(first_line)}"
                log.warning("MLflow tracking at %s failed (%s: %s); %s goes on without it and keeps what it "
                            "would have logged in %s", redact(self.uri), type(error).__name__,
                            redact(first_line), self.name,
                            self.offline_file)
        self._write(record)
        return None

    def _write(self, record):
        self.offline_file.parent.mkdir(parents=True, exist_ok=True)
        with open(self.offline_file, "a") as f:
            f.write(json.dumps({"time": time.time(), "run": self.name, "run_id": self.run_id, **record},
                               default=str) + "\n")
            f.flush()
            os.fsync(f.fileno())  # a record is complete or absent, never half there for the replay

    @contextlib.contextmanager
    def system_metrics(self):
        """While the block runs: CPU, memory, disk and network use, and a GPU's utilisation and memory where there is
        one, sampled by MLflow's own monitor into this run as `system/...` metrics (every 10 s, or
        MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL); nothing offline."""
        monitor = None
        if self.enabled and not self.offline:
            try:
                from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

                monitor = SystemMetricsMonitor(self.run_id, tracking_uri=self.uri)
                monitor.start()
            except Exception as error:  # as _call, the work goes on without it
                log.warning("system metrics of %s are not recorded: %s", self.name, redact(str(error)))
                monitor = None
        try:
            yield
        finally:
            if monitor:
                monitor.finish()

    # -- what stages log ---------------------------------------------------------------------------------------
    def log_params(self, params: dict):
        from_values = {_key(k): redact(str(v))[:PARAM_CHARS] for k, v in flatten(params).items() if v is not None}
        if not from_values:
            return

        def send():
            from mlflow.entities import Param

            items = [Param(k, v) for k, v in from_values.items()]
            for start in range(0, len(items), 100):
                self.client.log_batch(self.run_id, params=items[start:start + 100])

        self._call(send, {"op": "params", "params": from_values})

    def log_inputs(self, inputs: dict):
        """What the stage read, {name: (paths, content hash, records or None, feature names or None)}: each as a
        param `input_hash.<name>` and as an MLflow dataset input (named by the paths' common folder, the content hash
        as its digest, the records as its rows, tagged with `name` as its context), which MLflow's UI shows in the
        runs' Dataset column and each run's inputs."""
        self.log_params({f"input_hash.{name}": digest for name, (_, digest, _, _) in inputs.items()})
        records = []
        for name, (paths, digest, rows, features) in inputs.items():
            where = os.path.commonpath([os.path.abspath(path) for path in paths])
            records.append({"name": os.path.relpath(where), "digest": digest, "source": Path(where).as_uri(),
                            "rows": rows, "features": features, "context": name})

        if records:
            self._call(lambda: self.client.log_inputs(self.run_id, datasets=_dataset_inputs(records)),
                       {"op": "inputs", "inputs": records})

    def log_metrics(self, metrics: dict, step: int = None):
        self.log_metric_history([(step, metrics)])

    def log_metric_history(self, steps: list):
        """[(step or None, {name: value}), ...] in one or a few requests."""
        stamp = time.time()
        rows = [(_key(key), value, step or 0) for step, metrics in steps for key, value in numeric(metrics).items()]
        if rows:
            self._call(lambda: _log_metrics(self.client, self.run_id, rows, stamp),
                       {"op": "metrics", "metrics": rows, "time": stamp})

    def set_tags(self, tags: dict):
        tags = {_key(k): redact(str(v)) for k, v in tags.items()}
        self._call(lambda: [self.client.set_tag(self.run_id, k, v) for k, v in tags.items()],
                   {"op": "tags", "tags": tags})

    def log_artifact(self, path, artifact_path: str = None, timeout_seconds: int = None):
        """A file or a folder (its contents under `artifact_path`); `timeout_seconds`: of each upload request, for
        large files (MLflow's one request timeout, HTTP_DEFAULTS, is sized for API calls)."""
        path = Path(path)
        if not path.exists():
            return

        def send():
            with request_timeout(timeout_seconds):
                if path.is_dir():
                    self.client.log_artifacts(self.run_id, str(path), artifact_path)
                else:
                    self.client.log_artifact(self.run_id, str(path), artifact_path)

        self._call(send, {"op": "artifact", "path": str(path.resolve()), "artifact_path": artifact_path})

    def artifact_uri(self, artifact_path: str):
        return self._call(lambda: f"{self.client.get_run(self.run_id).info.artifact_uri}/{artifact_path}",
                          {"op": "artifact_uri", "artifact_path": artifact_path})

    def call(self, function, *args, what: str):
        """`function(client, *args)` with this run's MLflow client; None once offline (the call is recorded)."""
        return self._call(lambda: function(self.client, *args), {"op": what, "args": list(args)})

    def end(self, status: str = "FINISHED"):
        self._call(lambda: self.client.set_terminated(self.run_id, status), {"op": "end", "status": status})


@contextlib.contextmanager
def request_timeout(seconds: int = None):
    """While the block runs, each MLflow HTTP request may take `seconds` (None: MLflow's, HTTP_DEFAULTS): for the
    uploads of large files, which MLflow's one request timeout, sized for API calls, would cut off."""
    with environment_restored("MLFLOW_HTTP_REQUEST_TIMEOUT"):
        if seconds:  # MLflow reads it at each request
            os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] = str(seconds)
        yield


@contextlib.contextmanager
def environment_restored(name: str):
    """The environment variable `name` as it was before the block, whatever the block set or unset."""
    before = os.environ.get(name)
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = before


def _dataset_inputs(records: list) -> list:
    """MLflow DatasetInputs of log_inputs's records."""
    from mlflow.entities import Dataset, DatasetInput, InputTag

    return [DatasetInput(
        Dataset(name=record["name"], digest=record["digest"], source_type="local",
                source=json.dumps({"uri": record["source"]}),
                schema=json.dumps({"mlflow_colspec": [{"name": feature, "type": "long"}
                                                      for feature in record["features"]]})
                if record["features"] else None,
                profile=json.dumps({"num_rows": record["rows"]}) if record["rows"] is not None else None),
        tags=[InputTag("mlflow.data.context", record["context"])]) for record in records]


def _log_metrics(client, run_id: str, rows: list, stamp: float):
    """rows [(key, value, step)], all stamped `stamp` (seconds): a row sent twice is the same metric, which the store
    keeps once."""
    from mlflow.entities import Metric

    items = [Metric(key, value, int(stamp * 1000), step) for key, value, step in rows]
    for start in range(0, len(items), METRICS_PER_REQUEST):
        client.log_batch(run_id, metrics=items[start:start + METRICS_PER_REQUEST])


@contextlib.contextmanager
def _first_use_lock(uri: str):
    """With a SQLite store, one process at a time opens it and finds or makes the experiment: MLflow makes or
    upgrades its tables when a client first opens the file, and jobs that start together would run those migrations
    at once and break them (and the experiment would be made twice). Runs are then written concurrently, which
    SQLite serialises."""
    if not uri.startswith("sqlite:///"):
        yield
        return
    # The store's modules take seconds to import and the opening itself a fraction of one: imported before the lock,
    # jobs that start together queue for the opening alone.
    import mlflow.store.tracking.sqlalchemy_store  # noqa: F401

    with exclusive(uri.removeprefix("sqlite:///") + ".lock"):
        yield


def experiment(client, name: str, folder: Path) -> str:
    """The id of experiment `name`, created on first use, marked as model training (MLflow's UI otherwise opens it
    on its GenAI pages: traces, token usage). With a local database the artifacts go beside it, under the results;
    a tracking server keeps them where it is configured to."""
    found = client.get_experiment_by_name(name)
    if found is None:
        location = None
        if client.tracking_uri.startswith("sqlite:"):
            location = (folder.resolve() / "artifacts").as_uri()
        try:
            return client.create_experiment(name, artifact_location=location, tags=EXPERIMENT_KIND)
        except Exception:  # another job created it first
            found = client.get_experiment_by_name(name)
            if found is None:
                raise
    if EXPERIMENT_KIND_TAG not in found.tags:  # an experiment made before (a kind set in the UI is kept)
        client.set_experiment_tag(found.experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND[EXPERIMENT_KIND_TAG])
    return found.experiment_id


def runs_view(server: str, experiment_id) -> str:
    """The URL of an experiment's runs in the MLflow UI at `server`, in its model-training view: MLflow 3's UI keeps
    its mode per browser and starts in GenAI (traces, judges, prompts) whatever the experiment's kind; the
    workflowType parameter sets it. (The UI's route of an experiment's runs tab is /experiments/:experimentId/runs.)"""
    return f"{server.rstrip('/')}/#/experiments/{experiment_id}/runs?workflowType=machine_learning"


class MetricSink:
    """The trainer's metrics (train/metrics.py) to a run: step metrics in batches of `every` steps (one request, not
    one per step), validation metrics at once."""

    def __init__(self, run: Run, every: int):
        self.run, self.every, self.pending = run, every, []

    def __call__(self, metrics: dict):
        self.pending.append((metrics["step"], {k: v for k, v in metrics.items() if k != "step"}))
        if "valid_mlm_loss" in metrics or len(self.pending) >= self.every:
            self.close()

    def close(self):
        if self.pending:
            self.run.log_metric_history(self.pending)
            self.pending = []


def start_pipeline(target: Target, config: dict, command: list) -> Run:
    """The parent run of a pipeline run, with the whole effective config as params and as an artifact; its id goes
    to `pipeline-run.json` for the jobs."""
    run = Run(target, f"pipeline {time.strftime('%Y-%m-%d %H:%M:%S')}", "pipeline",
              tags={"bertpipe.command": " ".join(command)})
    if not run.enabled:
        return run
    config = redact_values(config)
    run.log_params(config)
    with atomic_file(run.folder / "effective-config.json") as temp:
        temp.write_text(json.dumps(config, indent=2) + "\n")
    run.log_artifact(run.folder / "effective-config.json")
    with atomic_file(run.folder / PIPELINE_RUN) as temp:
        temp.write_text(json.dumps({"run_id": run.run_id, "tracking_uri": redact(run.uri)}) + "\n")
    return run


def end_pipeline(target: Target, status: str, log_files=(), secret_variables=()) -> None:
    """Close the parent run named in `pipeline-run.json` (FINISHED or FAILED), with Snakemake's log files redacted:
    URLs' credentials and the values of the environment variables named in `secret_variables` (download.token_env;
    None and unset ones are passed over) hidden. The logs themselves are left as they are."""
    parent = target.pipeline_parent()
    if not parent:
        return
    secrets = [os.environ[name] for name in secret_variables if name and os.environ.get(name)]
    run = Run(target, "pipeline", "pipeline", run_id=parent)
    for log_file in map(Path, log_files):
        if log_file.is_file():
            run.log_artifact(_redacted_copy(log_file, Path(target.folder) / "snakemake-logs", secrets), "snakemake")
    run.end(status)


def _redacted_copy(path: Path, folder: Path, secrets: list) -> Path:
    """A copy of the text file `path` in `folder`, under its own name, with every URL redacted and every value in
    `secrets` hidden. It stays there: a run that goes offline uploads it at the next replay."""
    text = redact(path.read_text(errors="replace"))
    for secret in secrets:
        text = text.replace(secret, HIDDEN)
    with atomic_file(folder / path.name) as temp:
        temp.write_text(text)
    return folder / path.name


REPLAYED = "replayed.json"  # in offline/: how many records of each file were handled, and the runs they made
REPLAY_LOCK = "replay.lock"  # in offline/: held by the one replay at work
OFFLINE_ID_TAG = "bertpipe.offline_run_id"
PARENT_TAG = "mlflow.parentRunId"
REPLAYED_OPS = ("params", "inputs", "metrics", "tags", "artifact", "end")  # the others: queries and registrations


class TrackingUnreachable(BertpipeError):
    """MLflow could not be reached during a replay: what was sent before is saved, the rest waits for the next."""


def replay(target: Target, wait: bool = True, report: bool = True) -> dict:
    """Send the offline records of `target`'s tracking folder (offline/*.jsonl) to its tracking URI, each once.

    Records are sent in the order they were written, file by file (oldest first), to the runs they belong to: a run
    that was made offline is created then, with its first record's time, tagged with its offline id, under its
    parent (a parent made offline is created first: until it is, the child's file waits); a run that went offline
    part way gets the rest of its records. What was sent is saved in `offline/replayed.json` after each record, so
    the next replay sends nothing twice; and every call is one that MLflow takes twice to the same effect (a run is
    looked up by its offline id before it is made; a metric is resent with its first timestamp; a param with its
    value), so a replay cut off between a call and its save repeats nothing either. One replay at a time: a second
    waits for the first, then sends what is left.

    A record MLflow refuses (a run deleted in its UI, a param logged again with another value) is reported, with
    the file, the line and what to do, and kept with the rest of its file for the next replay; the other files go
    on. When MLflow cannot be reached, the replay stops with TrackingUnreachable, its progress saved. Queries (an
    artifact's URI) and model registrations are not replayed: rerun the register stage.

    Returns counts: files (with records sent), records (sent), runs_created, skipped (records not for replay),
    refused (records MLflow refused, one per file held back) and waiting (the records held back behind them or
    until their run is made); `report=False` counts those without a warning for each (the Sender's passes while
    jobs still write)."""
    folder = Path(target.folder) / "offline"
    counts = dict.fromkeys(("files", "records", "runs_created", "skipped", "refused", "waiting"), 0)
    if not folder.is_dir():
        return counts
    # Two at once would both make a run: the second waits, then finds it made (or, `wait=False`, BlockingIOError).
    with exclusive(folder / REPLAY_LOCK, wait=wait):
        progress_file = folder / REPLAYED
        progress = json.loads(progress_file.read_text()) if progress_file.is_file() else {"files": {}, "runs": {}}
        files = []
        for path in folder.glob("*.jsonl"):
            lines = path.read_text().split("\n")[:-1]  # a line without its newline is still being written
            if len(lines) > progress["files"].get(path.name, 0):
                files.append((_first_time(lines, path), path, lines))
        if files:  # else MLflow is not even imported
            _Replay(target, progress_file, progress, counts, report).send(
                [(path, lines) for _, path, lines in sorted(files)])
    return counts


def _replayed_runs(folder: Path) -> dict:
    """Offline run id -> the run a replay made of it (offline/replayed.json)."""
    try:
        return json.loads((folder / "offline" / REPLAYED).read_text())["runs"]
    except (OSError, ValueError, KeyError):
        return {}


class _RunNotMade(Exception):
    """A record's run, or the parent of a run to make, was made offline and is not made in MLflow yet."""

    def __init__(self, offline_id: str):
        super().__init__(offline_id)
        self.offline_id = offline_id


@dataclasses.dataclass
class _Wait:
    """The records of `path` from `index` (0-based) on, which wait for run `offline_id` to be made."""

    path: Path
    lines: list
    index: int
    offline_id: str


class _Replay:
    """One replay: the MLflow client, the progress (records handled per file, offline id -> run id), the counts."""

    def __init__(self, target: Target, progress_file: Path, progress: dict, counts: dict, report: bool = True):
        from mlflow import MlflowClient

        # As for the jobs: MLflow retries an unreachable server for minutes by default, and a pipeline's start waits.
        for key, value in HTTP_DEFAULTS.items():
            os.environ.setdefault(key, value)
        self.target, self.progress_file, self.progress, self.counts = target, progress_file, progress, counts
        self.report = report
        self.runs = progress["runs"]
        self.client = MlflowClient(target.uri)
        self.experiment_id = None
        self.files_sent = set()

    def send(self, files: list) -> None:
        """Send the records of `files` [(path, lines)], oldest first."""
        try:
            with _first_use_lock(self.target.uri):
                self.experiment_id = experiment(self.client, self.target.experiment, Path(self.target.folder))
            pending, waits = files, []
            while pending:
                runs_known = len(self.runs)
                waits = [wait for wait in (self._send_file(path, lines) for path, lines in pending) if wait]
                # A child's file can come before its parent's (the nodes' clocks disagree by a little): once a pass
                # has made runs, the files that wait for one go again.
                pending = [(wait.path, wait.lines) for wait in waits] if len(self.runs) > runs_known else []
        except Exception as error:
            if not _unreachable(error):
                raise
            raise TrackingUnreachable(
                f"MLflow at {redact(self.target.uri)} could not be reached ({_reason(error)}); the replay stopped "
                f"after sending {self.counts['records']} records, saved in {self.progress_file}: the rest is kept in "
                f"{self.progress_file.parent} for `bertpipe tracking replay` once MLflow is back (or the next "
                "pipeline run)") from error
        finally:
            self.counts["files"] = len(self.files_sent)
        for wait in waits:
            self.counts["waiting"] += len(wait.lines) - wait.index
            if self.report:
                self._report_wait(wait, files)

    def _send_file(self, path: Path, lines: list):
        """Send the unsent records of one file in order, saving the progress after each; stop at one MLflow refuses
        (reported: it and the rest of the file are kept) or at one whose run is not made yet (returned, a _Wait)."""
        for index in range(self.progress["files"].get(path.name, 0), len(lines)):
            try:
                record = json.loads(lines[index])
            except ValueError:
                log.warning("%s: line %d is not a whole record (cut off as it was written); skipped", path, index + 1)
                self.counts["skipped"] += 1
            else:
                try:
                    self.counts[self._send(record, path, lines, index)] += 1
                except _RunNotMade as waiting:
                    return _Wait(path, lines, index, waiting.offline_id)
                except Exception as error:  # whatever MLflow answers holds back this file alone
                    if _unreachable(error) and not self._answers():
                        raise
                    self._report_refusal(path, lines, index, record, error)
                    return None
            self.progress["files"][path.name] = index + 1
            self.files_sent.add(path.name)
            with atomic_file(self.progress_file) as temp:
                temp.write_text(json.dumps(self.progress, indent=1) + "\n")
        return None

    def _send(self, record: dict, path: Path, lines: list, index: int) -> str:
        """Send one record, `lines[index]` of `path`; returns the count it adds to: "records" (sent) or "skipped"
        (not for replay)."""
        from mlflow.entities import Param

        op, stamp = record["op"], int(record["time"] * 1000)
        if op == "create_run":
            return "records"  # the run is made with the next record, which holds its offline id
        if op == "offline_run_id":
            self._create(json.loads(lines[index - 1]), record["run_id"], stamp)  # its create_run record
            return "records"
        if op not in REPLAYED_OPS:
            return "skipped"
        if op == "artifact" and not Path(record["path"]).exists():
            log.warning("%s: line %d: artifact %s is gone; skipped", path, index + 1, record["path"])
            return "skipped"
        run_id = self._run_id(record["run_id"])
        if op == "params":
            items = [Param(key, value) for key, value in record["params"].items()]
            for start in range(0, len(items), 100):
                self.client.log_batch(run_id, params=items[start:start + 100])
        elif op == "inputs":
            self.client.log_inputs(run_id, datasets=_dataset_inputs(record["inputs"]))
        elif op == "metrics":
            _log_metrics(self.client, run_id, record["metrics"], record["time"])
        elif op == "tags":
            for key, value in record["tags"].items():
                self.client.set_tag(run_id, key, value)
        elif op == "artifact" and Path(record["path"]).is_dir():
            self.client.log_artifacts(run_id, record["path"], record["artifact_path"])
        elif op == "artifact":
            self.client.log_artifact(run_id, record["path"], record["artifact_path"])
        else:
            self.client.set_terminated(run_id, record["status"], end_time=stamp)
        return "records"

    def _create(self, created: dict, offline_id: str, stamp: int) -> None:
        """Make the run of a `created` (create_run) record once, under its parent."""
        if self._made(offline_id):
            return  # by an earlier replay, maybe one cut off before it saved that
        tags = {**created["tags"], OFFLINE_ID_TAG: offline_id}
        if PARENT_TAG in tags:
            tags[PARENT_TAG] = self._run_id(tags[PARENT_TAG])  # a parent made offline: made first, or wait for it
        self.runs[offline_id] = self.client.create_run(self.experiment_id, start_time=stamp, tags=tags,
                                                       run_name=created["name"]).info.run_id
        self.counts["runs_created"] += 1

    def _run_id(self, run_id: str) -> str:
        """The MLflow run of a record's run id; raises _RunNotMade for one made offline and not made in MLflow yet."""
        if not run_id.startswith("offline-"):
            return run_id
        made = self._made(run_id)
        if made is None:
            raise _RunNotMade(run_id)
        return made

    def _made(self, offline_id: str):
        """The run made for `offline_id`, or None: from the progress, else found by its tag (the progress of a replay
        cut off after it made the run, or a progress file deleted); deleted runs too, which are not made again."""
        from mlflow.entities import ViewType

        if offline_id not in self.runs:
            found = self.client.search_runs([self.experiment_id], f"tags.`{OFFLINE_ID_TAG}` = '{offline_id}'",
                                            run_view_type=ViewType.ALL, max_results=1)
            if not found:
                return None
            self.runs[offline_id] = found[0].info.run_id
        return self.runs[offline_id]

    def _answers(self) -> bool:
        """Whether MLflow answers a cheap request: a record that failed as if unreachable (retries spent on its 5xx, a
        timeout of its upload) from a server that answers is that record's fault, not the server's."""
        try:
            self.client.search_experiments(max_results=1)
            return True
        except Exception:  # no answer, whatever the cause
            return False

    def _report_refusal(self, path: Path, lines: list, index: int, record: dict, error: Exception) -> None:
        later = len(lines) - index - 1
        self.counts["refused"] += 1
        self.counts["waiting"] += later
        if not self.report:
            return
        run_id = self.runs.get(record["run_id"], record["run_id"])
        log.warning("%s: line %d (%s of run %r, %s) was refused by MLflow: %s. It is kept, with the %d records after "
                    "it, and tried again at each replay; the other files go on. If the run or its experiment was "
                    "deleted in MLflow, restore it (in its UI, or `mlflow runs restore --run-id %s`, `mlflow "
                    "experiments restore --experiment-id %s`); if MLflow can never take the record (a param logged "
                    "again with another value), delete %s to give up its records from line %d on", path, index + 1,
                    record["op"], record["run"], run_id, _reason(error), later, run_id, self.experiment_id, path,
                    index + 1)

    def _report_wait(self, wait: _Wait, files: list) -> None:
        waiting = len(wait.lines) - wait.index
        maker = _maker(wait.offline_id, files)
        if maker:
            log.warning("%s: its records from line %d on (%d) wait for run %s, which %s makes and which is not made "
                        "yet (see the warning about that file): they are sent once it is", wait.path, wait.index + 1,
                        waiting, wait.offline_id, maker)
        else:
            log.warning("%s: its records from line %d on (%d) wait for run %s, which no offline file makes (was its "
                        "file deleted?): put that file back, or delete %s to give these records up", wait.path,
                        wait.index + 1, waiting, wait.offline_id, wait.path)


def _maker(offline_id: str, files: list):
    """The file among `files` [(path, lines)] whose run is `offline_id` (its offline_run_id record), or None."""
    for path, lines in files:
        for line in lines:
            if offline_id in line:
                with contextlib.suppress(ValueError):
                    record = json.loads(line)
                    if record.get("op") == "offline_run_id" and record.get("run_id") == offline_id:
                        return path
    return None


def _unreachable(error: BaseException) -> bool:
    """Whether `error` says MLflow could not be reached (a refused connection, a timeout, retries spent on a server
    that answers 5xx, a locked database), rather than that it answered and refused the request. Over HTTP, MLflow
    raises a plain MlflowException for a request that got no answer, with the requests error as its context."""
    import requests
    from mlflow.exceptions import MlflowException

    while error is not None:
        if isinstance(error, MlflowException) and error.error_code == "TEMPORARILY_UNAVAILABLE":
            return True
        if isinstance(error, (ConnectionError, TimeoutError)) or (
                isinstance(error, requests.RequestException) and not isinstance(error, requests.HTTPError)):
            return True
        error = error.__cause__ or error.__context__
    return False


def _reason(error: Exception) -> str:
    """The type and first line of `error`, credentials hidden."""
    first_line = str(error).strip().splitlines()[0] if str(error).strip() else ""
    return f"{type(error).__name__}: {redact(first_line)}"


def _first_time(lines: list, path: Path) -> float:
    """When a file's first whole record was written (its modification time if none is whole)."""
    for line in lines:
        try:
            return json.loads(line)["time"]
        except (ValueError, KeyError):
            continue
    return path.stat().st_mtime


def replay_before_start(target: Target) -> None:
    """At a pipeline run's start, what earlier runs kept offline, sent as `replay` does; never stops the run (what is
    not sent stays for the next replay)."""
    if not target.uri or not any((Path(target.folder) / "offline").glob("*.jsonl")):
        return
    try:
        counts = replay(target, wait=False)
    except BlockingIOError:
        log.warning("another replay of %s/offline is at work; this pipeline run does not wait for it", target.folder)
        return
    except Exception as error:  # as every tracking call, the work goes on without it
        log.warning("the offline tracking records in %s/offline were not all replayed (%s); what is left is kept for "
                    "the next run or `bertpipe tracking replay`", target.folder, _reason(error))
        return
    if counts["records"] or counts["refused"] or counts["waiting"]:
        log.warning("replayed %d offline tracking records of %d files to %s; %d refused and %d waiting are kept for "
                    "the next run or `bertpipe tracking replay`", counts["records"], counts["files"],
                    redact(target.uri), counts["refused"], counts["waiting"])


class Sender:
    """In a pipeline run's own process (Snakemake's): sends what its jobs write to the tracking folder's offline/
    (`replay`) every `period` seconds while the pipeline runs, and all that is left when it stops, so that a job's run
    shows in MLflow a moment after the job wrote it. A pass between those finds nothing new to send at the cost of
    listing the folder. It never stops the pipeline: what it cannot send is kept, with one warning, for the next
    pipeline run or `bertpipe tracking replay`.

    While it is at work, `sending.json` in the tracking folder names its store and experiment and is touched at each
    pass: jobs of that store and experiment write their runs for it (`Target.pipeline_sends`), until the file is gone
    or SENDER_STALE_SECONDS old (its process ended without stopping it)."""

    def __init__(self, target: Target, period: float = 2.0):
        self.target, self.period = target, period
        self.folder = Path(target.folder) / "offline"
        self.sending = Path(target.folder) / SENDING
        self.seen = {}  # {file name: size} at the last pass that sent
        self.failure = None  # why the last pass could not send, once one could not
        self.stopping = threading.Event()
        self.thread = None

    def start(self) -> None:
        """Start the passes, and say so in the tracking folder: the jobs write their runs for it."""
        if self.target.uri:
            with atomic_file(self.sending) as temp:
                temp.write_text(json.dumps({"store": self.target.store_key(), "pid": os.getpid(),
                                            "host": os.uname().nodename, "started": time.time()}) + "\n")
            atexit.register(self.sending.unlink, missing_ok=True)  # an exit that skips stop() leaves no claim
            self.thread = threading.Thread(target=self._every_period, name="bertpipe tracking sender", daemon=True)
            self.thread.start()

    def stop(self) -> None:
        """Stop the passes, then send all that is left, with a warning for what is kept."""
        if self.thread is None:
            return
        self.stopping.set()
        self.thread.join()
        self.thread = None
        self.sending.unlink(missing_ok=True)
        counts = self._pass(last=True)
        if counts and (counts["refused"] or counts["waiting"]):
            log.warning("%d tracking records refused and %d waiting are kept in %s for the next pipeline run or "
                        "`bertpipe tracking replay` (a replay names each)", counts["refused"], counts["waiting"],
                        self.folder)

    def _every_period(self) -> None:
        while not self.stopping.wait(self.period):
            with contextlib.suppress(OSError):  # a claim it cannot renew lapses: jobs then write to MLflow
                os.utime(self.sending)
            self._pass(last=False)

    def _pass(self, last: bool):
        """Send what is new (the last pass: everything), unless a replay of its own is at work; None if it sent
        nothing."""
        try:
            sizes = {path.name: path.stat().st_size for path in self.folder.glob("*.jsonl")}
            if not last and sizes == self.seen:
                return None
            counts = replay(self.target, wait=last, report=last)
        except BlockingIOError:  # a replay of its own at work (`bertpipe tracking replay`) sends them
            return None
        except Exception as error:  # as every tracking call, the work goes on without it
            if self.failure is None or last:
                log.warning("the pipeline's tracking records in %s were not sent to %s (%s); they are kept and sent "
                            "%s", self.folder, redact(self.target.uri), _reason(error),
                            "by the next pipeline run or `bertpipe tracking replay`" if last else "once it answers")
            self.failure = error
            return None
        self.seen, self.failure = sizes, None
        return counts
