# MLflow tracking (src/bertpipe/tracking.py): every job's `bertpipe` gets TRACKING's flags (the Snakefile's shell
# prefix), which name the store, the experiment, the tracking folder (holding the pipeline's parent run) and the
# commit; this Snakefile is parsed again inside every Slurm job, so they get them too.
# The parent run opens when jobs are about to run (not on a dry run), after what earlier runs kept offline is sent
# (tracking.replay), and closes with the workflow's outcome and Snakemake's log, redacted (the mirror's token among
# what is hidden).
from bertpipe import tracking

TRACKING = tracking.Target.for_pipeline(config["mlflow"], results=RESULTS, code=workflow.basedir)


onstart:
    if not workflow.local_exec and config["mlflow"]["tracking_uri"] is None:
        print(tracking.SQLITE_ON_A_CLUSTER, file=sys.stderr)
    tracking.replay_before_start(TRACKING)
    tracking.start_pipeline(TRACKING, config, command=sys.argv)


onsuccess:
    tracking.end_pipeline(TRACKING, "FINISHED", log, secret_variables=[config["download"]["token_env"]])


onerror:
    tracking.end_pipeline(TRACKING, "FAILED", log, secret_variables=[config["download"]["token_env"]])
