# MLflow tracking (src/bertpipe/tracking.py): every job's environment names the store, the experiment and the folder
# holding the pipeline's parent run; this Snakefile is parsed again inside every Slurm job, so they get it too.
# The parent run opens when jobs are about to run (not on a dry run) and closes with the workflow's outcome.
import sys

sys.path.insert(0, str(Path(workflow.basedir) / "src"))  # bertpipe.tracking from this checkout
from bertpipe import tracking

tracking.configure(config["mlflow"], results=RESULTS, code=workflow.basedir)


onstart:
    tracking.start_pipeline(config, command=sys.argv)


onsuccess:
    tracking.end_pipeline("FINISHED", log)


onerror:
    tracking.end_pipeline("FAILED", log)
