# MLflow tracking (src/bertpipe/tracking.py): every job's environment names the store, the experiment and the folder
# holding the pipeline's parent run; this Snakefile is parsed again inside every Slurm job, so they get it too.
# The parent run opens when jobs are about to run (not on a dry run) and closes with the workflow's outcome.
import os
import subprocess
import sys

sys.path.insert(0, str(Path(workflow.basedir) / "src"))  # bertpipe.tracking from this checkout
from bertpipe import tracking

MLFLOW_DIR = Path(RESULTS, "mlflow").resolve()
os.environ["MLFLOW_TRACKING_URI"] = config["mlflow"]["tracking_uri"] or f"sqlite:///{MLFLOW_DIR}/mlflow.db"
os.environ["MLFLOW_EXPERIMENT_NAME"] = config["mlflow"]["experiment"]
os.environ["BERTPIPE_MLFLOW_DIR"] = str(MLFLOW_DIR)
_commit = subprocess.run(["git", "-C", workflow.basedir, "rev-parse", "--verify", "-q", "HEAD"], capture_output=True, text=True)
os.environ["BERTPIPE_GIT_COMMIT"] = _commit.stdout.strip() if _commit.returncode == 0 else "unknown"


onstart:
    tracking.start_pipeline(config, command=sys.argv)


onsuccess:
    tracking.end_pipeline("FINISHED", log)


onerror:
    tracking.end_pipeline("FAILED", log)
