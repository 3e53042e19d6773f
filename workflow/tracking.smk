# MLflow tracking (src/bertpipe/tracking.py): every job's `bertpipe` gets TRACKING's flags (the Snakefile's shell
# prefix), which name the store, the experiment, the tracking folder (holding the pipeline's parent run) and the
# commit; this Snakefile is parsed again inside every Slurm job, so they get them too.
# The parent run opens when jobs are about to run (not on a dry run), after what earlier runs kept offline is sent
# (tracking.replay). While the jobs run, this process sends the runs they write to the tracking folder (SENDER; only
# pretrain, evaluate and register write to MLflow themselves). The parent run closes with the workflow's outcome and
# Snakemake's log, redacted (the mirror's token among what is hidden), once the jobs' runs are sent.
from bertpipe import tracking

TRACKING = tracking.Target.for_pipeline(config["mlflow"], results=RESULTS, code=workflow.basedir)
SENDER = tracking.Sender(TRACKING)


onstart:
    if not workflow.local_exec and config["mlflow"]["tracking_uri"] is None:
        print(tracking.SQLITE_ON_A_CLUSTER, file=sys.stderr)
    tracking.replay_before_start(TRACKING)
    tracking.start_pipeline(TRACKING, config, command=sys.argv)
    SENDER.start()


onsuccess:
    try:
        SENDER.stop()
    finally:
        tracking.end_pipeline(TRACKING, "FINISHED", log, secret_variables=[config["download"]["token_env"]])


onerror:
    try:
        SENDER.stop()
    finally:
        tracking.end_pipeline(TRACKING, "FAILED", log, secret_variables=[config["download"]["token_env"]])
