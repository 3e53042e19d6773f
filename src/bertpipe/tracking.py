"""MLflow tracking: one parent run per pipeline run (a `snakemake` invocation), one child run per job under it.

Where runs go is a `Target`, which every job gets as explicit flags of `bertpipe` (`Target.flags`, which the
Snakefile's `bertpipe` shell function puts before each rule's stage, so Slurm jobs get it too): the tracking
URI, the experiment, the workflow's commit, and the tracking folder under the results, which holds
`pipeline-run.json` (the parent run, written when the pipeline starts) and `offline/` (what could not be logged). A `bertpipe` command without
`--tracking-uri` (run by hand) is not tracked.

Tracking never stops the work: the first call that fails (server down, database locked, ...) logs one warning, and
from then on this process appends what it would have logged to `offline/<run>.jsonl` (JSON lines, one per call),
so nothing is lost. Under torchrun only rank 0 tracks.
"""

import contextlib
import dataclasses
import json
import logging
import os
import re
import time
import uuid
from pathlib import Path

from bertpipe.atomic import atomic_file, exclusive
from bertpipe.redaction import redact, redact_values
from bertpipe.settings import MlflowSettings

log = logging.getLogger(__name__)

# MLflow retries an unreachable server for minutes by default; a stage must go on within seconds.
HTTP_DEFAULTS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
                 "MLFLOW_HTTP_REQUEST_TIMEOUT": "20"}
PIPELINE_RUN = "pipeline-run.json"
SQLITE_ON_A_CLUSTER = (
    "bertpipe: warning: mlflow.tracking_uri is null, so every job of this cluster run writes to one SQLite file under "
    "results/mlflow on a shared file system, whose locks SQLite cannot always trust, one writer at a time: a "
    "tracking server is the right store here (set mlflow.tracking_uri to its URL)")
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


@dataclasses.dataclass
class Outcome:
    """What a stage measured and made, for its run: metrics, tags, and artifacts as (path, folder in the run or
    None); `stopped`: it stopped early on a signal and will be resumed."""

    metrics: dict = dataclasses.field(default_factory=dict)
    tags: dict = dataclasses.field(default_factory=dict)
    artifacts: list = dataclasses.field(default_factory=list)
    stopped: bool = False


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
                 run_id: str = None, enabled: bool = True):
        """A new run, or (`run_id`) one that exists already; `enabled=False` (or no tracking URI, or a rank other
        than 0) makes every method a no-op."""
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
            except Exception as error:  # noqa: BLE001: whatever MLflow raises, tracking must not stop the stage
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
            except Exception as error:  # noqa: BLE001: as _call, the work goes on without it
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
            timeout = os.environ.get("MLFLOW_HTTP_REQUEST_TIMEOUT")
            if timeout_seconds:  # MLflow reads it at each request
                os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] = str(timeout_seconds)
            try:
                if path.is_dir():
                    self.client.log_artifacts(self.run_id, str(path), artifact_path)
                else:
                    self.client.log_artifact(self.run_id, str(path), artifact_path)
            finally:
                if timeout is None:
                    os.environ.pop("MLFLOW_HTTP_REQUEST_TIMEOUT", None)
                else:
                    os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] = timeout

        self._call(send, {"op": "artifact", "path": str(path.resolve()), "artifact_path": artifact_path})

    def artifact_uri(self, artifact_path: str):
        return self._call(lambda: f"{self.client.get_run(self.run_id).info.artifact_uri}/{artifact_path}",
                          {"op": "artifact_uri", "artifact_path": artifact_path})

    def call(self, function, *args, what: str):
        """`function(client, *args)` with this run's MLflow client; None once offline (the call is recorded)."""
        return self._call(lambda: function(self.client, *args), {"op": what, "args": list(args)})

    def end(self, status: str = "FINISHED"):
        self._call(lambda: self.client.set_terminated(self.run_id, status), {"op": "end", "status": status})


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


def end_pipeline(target: Target, status: str, log_files=()) -> None:
    """Close the parent run named in `pipeline-run.json` (FINISHED or FAILED), with Snakemake's log files."""
    parent = target.pipeline_parent()
    if not parent:
        return
    run = Run(target, "pipeline", "pipeline", run_id=parent)
    for log_file in log_files:
        run.log_artifact(log_file, "snakemake")
    run.end(status)


REPLAYED = "replayed.json"  # in offline/: how many records of each file were sent, and the runs they made
OFFLINE_ID_TAG = "bertpipe.offline_run_id"


def replay(target: Target) -> dict:
    """Send the offline records of `target`'s tracking folder (offline/*.jsonl) to its tracking URI, each once.

    Records are sent in the order they were written, file by file (oldest first), to the runs they belong to: a run
    that was made offline is created then, with its first record's time and its parent (itself maybe made offline),
    and tagged with its offline id; a run that went offline part way gets the rest of its records. What was sent is
    kept in `offline/replayed.json`, so a second replay sends nothing new; and every call is one that MLflow takes
    twice to the same effect (a run is looked up by its offline id before it is made; a metric is resent with its
    first timestamp), so a replay cut off mid-file repeats nothing either. Queries (an artifact's URI) and model
    registrations are not replayed: rerun the register stage. Returns counts of what was done."""
    folder = Path(target.folder) / "offline"
    state_file = folder / REPLAYED
    state = json.loads(state_file.read_text()) if state_file.is_file() else {"files": {}, "runs": {}}
    counts = {"files": 0, "records": 0, "runs_created": 0, "skipped": 0}
    files = []
    for path in folder.glob("*.jsonl"):
        lines = path.read_text().split("\n")[:-1]  # a line without its newline is still being written
        if lines:
            files.append((_first_time(lines, path), path, lines))
    if not any(len(lines) > state["files"].get(path.name, 0) for _, path, lines in files):
        return counts  # nothing new: MLflow is not even imported
    from mlflow import MlflowClient
    from mlflow.entities import Param

    client = MlflowClient(target.uri)
    with _first_use_lock(target.uri):
        experiment_id = experiment(client, target.experiment, Path(target.folder))
    runs = state["runs"]  # offline id -> run id
    for _, path, lines in sorted(files):
        done = state["files"].get(path.name, 0)
        if done >= len(lines):
            continue
        counts["files"] += 1
        created = None  # the create_run record of a run made offline: its id comes in the next record
        for number, line in enumerate(lines[done:], done + 1):
            try:
                record = json.loads(line)
            except ValueError:
                log.warning("%s: line %d is not a whole record (cut off as it was written); skipped", path, number)
                counts["skipped"] += 1
                continue
            op, run_id = record["op"], runs.get(record["run_id"], record["run_id"])
            stamp = int(record["time"] * 1000)
            if op == "create_run":
                created = record
            elif op == "offline_run_id" and created:
                tags = {**created["tags"], OFFLINE_ID_TAG: record["run_id"]}
                parent = runs.get(tags.get("mlflow.parentRunId"), tags.get("mlflow.parentRunId"))
                tags.pop("mlflow.parentRunId")
                if parent and not parent.startswith("offline-"):
                    tags["mlflow.parentRunId"] = parent
                found = client.search_runs([experiment_id], f"tags.`{OFFLINE_ID_TAG}` = '{record['run_id']}'")
                if found:
                    runs[record["run_id"]] = found[0].info.run_id
                else:
                    runs[record["run_id"]] = client.create_run(experiment_id, start_time=stamp, tags=tags,
                                                               run_name=created["name"]).info.run_id
                    counts["runs_created"] += 1
            elif not run_id or run_id.startswith("offline-"):
                counts["skipped"] += 1  # its run was never made: its create_run record is missing
                continue
            elif op == "params":
                items = [Param(key, value) for key, value in record["params"].items()]
                for start in range(0, len(items), 100):
                    client.log_batch(run_id, params=items[start:start + 100])
            elif op == "inputs":
                client.log_inputs(run_id, datasets=_dataset_inputs(record["inputs"]))
            elif op == "metrics":
                _log_metrics(client, run_id, record["metrics"], record["time"])
            elif op == "tags":
                for key, value in record["tags"].items():
                    client.set_tag(run_id, key, value)
            elif op == "artifact" and Path(record["path"]).exists():
                if Path(record["path"]).is_dir():
                    client.log_artifacts(run_id, record["path"], record["artifact_path"])
                else:
                    client.log_artifact(run_id, record["path"], record["artifact_path"])
            elif op == "end":
                client.set_terminated(run_id, record["status"], end_time=stamp)
            else:
                counts["skipped"] += 1  # attach, artifact_uri, register_model, or an artifact since deleted
                continue
            counts["records"] += 1
        state["files"][path.name] = len(lines)
        with atomic_file(state_file) as temp:
            temp.write_text(json.dumps(state, indent=1) + "\n")
    return counts


def _first_time(lines: list, path: Path) -> float:
    """When a file's first whole record was written (its modification time if none is whole)."""
    for line in lines:
        try:
            return json.loads(line)["time"]
        except (ValueError, KeyError):
            continue
    return path.stat().st_mtime


def replay_before_start(target: Target) -> None:
    """At a pipeline run's start, what earlier runs kept offline, sent as `replay` does; never stops the run (the
    records stay for the next replay)."""
    if not target.uri or not any((Path(target.folder) / "offline").glob("*.jsonl")):
        return
    try:
        counts = replay(target)
    except Exception as error:  # noqa: BLE001: as every tracking call, the work goes on without it
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else ""
        log.warning("the offline records in %s/offline were not replayed (%s: %s); they are kept for the next run "
                    "or `bertpipe tracking replay`", target.folder, type(error).__name__, redact(first_line))
        return
    if counts["records"]:
        log.warning("replayed %d offline tracking records of %d files to %s", counts["records"], counts["files"],
                    redact(target.uri))
