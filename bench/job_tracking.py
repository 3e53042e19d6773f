"""What tracking costs a job: the same `bertpipe tfrecords summarize` jobs, started together, each tracked by a run of
its own, on a SQLite store (the default), written two ways in the same process tree one after the other:

- live (the reference): no pipeline run, so each job imports MLflow, opens the store and writes its run itself;
- through the pipeline: under a pipeline run whose process sends them (tracking.Sender), as the workflow's jobs run;
  the figures end once the sender has stopped, every run in MLflow.

Printed: a job's own CPU seconds (its `job usage` line), and for the batch as a whole, from the jobs' start until
their runs are in MLflow, the CPU seconds of the jobs and of this process's sending together (per job) and the wall
seconds; the ratios of the pipeline's to the live reference for the two that count the same work.

    .venv/bin/python -m bench.job_tracking [--jobs 6] [--repeats 2]
"""

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bertpipe import tracking
from bertpipe.cli import JOB_USAGE_LINE

STATS = {"documents": 3, "sentences": 3, "instances": 3, "tokens": 3, "real_tokens": 3, "masked": 3, "mask": 3,
         "kept": 3, "random": 3, "random_next": 3, "random_next_forced": 3, "padding": 3}


def cpu_seconds() -> float:
    """This process's CPU seconds and its ended children's (the jobs)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def batch(folder: Path, target: tracking.Target, jobs: int, sender: tracking.Sender = None) -> dict:
    """`jobs` summarize jobs at once (then `sender` stopped, their runs sent): a job's own mean CPU seconds, and the
    batch's CPU seconds per job (the jobs and this process) and wall seconds, until the runs are in MLflow."""
    stats = folder / "shard.stats.json"
    stats.write_text(json.dumps(STATS))
    started, cpu_started = time.perf_counter(), cpu_seconds()
    running = []
    for job in range(jobs):
        log = folder / f"job-{job}.log"
        running.append((log, subprocess.Popen(
            [sys.executable, "-m", "bertpipe", *target.arguments(), "--log-file", str(log), "--run-name",
             f"summarize {job}", "tfrecords", "summarize", str(stats), "--out", str(folder / f"summary-{job}.json"),
             "--page", str(folder / f"summary-{job}.html")], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            text=True)))
    usages = []
    for log, process in running:
        output = process.communicate()[0]
        if process.returncode:
            raise SystemExit(output)
        usages.append(JOB_USAGE_LINE.search(output).groupdict())
    if sender:
        sender.stop()
    return {"job_cpu_s": statistics.mean(float(u["cpu"]) for u in usages),
            "cpu_s": (cpu_seconds() - cpu_started) / jobs, "wall_s": time.perf_counter() - started}


def live(folder: Path, jobs: int) -> dict:
    target = tracking.Target(uri=f"sqlite:///{folder}/mlflow/mlflow.db", folder=str(folder / "mlflow"))
    tracking.Run(target, "store", "bench").end()  # the store and experiment made, as a pipeline's start makes them
    return batch(folder, target, jobs)


def through_the_pipeline(folder: Path, jobs: int) -> dict:
    target = tracking.Target(uri=f"sqlite:///{folder}/mlflow/mlflow.db", folder=str(folder / "mlflow"))
    tracking.start_pipeline(target, {}, ["bench"])
    sender = tracking.Sender(target)
    sender.start()
    return batch(folder, target, jobs, sender)


def main():
    parser = argparse.ArgumentParser(prog=".venv/bin/python -m bench.job_tracking", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=6, help="jobs started together (default: %(default)s)")
    parser.add_argument("--repeats", type=int, default=2, help="batches of each kind, alternating (default: "
                                                               "%(default)s)")
    args = parser.parse_args()
    results = {"live": [], "pipeline": []}
    with tempfile.TemporaryDirectory() as temporary:
        for repeat in range(args.repeats):
            for name, measure in (("live", live), ("pipeline", through_the_pipeline)):
                folder = Path(temporary, f"{name}-{repeat}")
                folder.mkdir()
                results[name].append(measure(folder, args.jobs))
    mean = {name: {key: statistics.mean(r[key] for r in runs) for key in runs[0]} for name, runs in results.items()}
    print(f"{args.jobs} jobs at once, {args.repeats} batches each")
    print(f"{'':10} {'job CPU s':>10} {'batch CPU s/job':>16} {'batch wall s':>13}")
    for name, figures in mean.items():
        print(f"{name:10} {figures['job_cpu_s']:10.2f} {figures['cpu_s']:16.2f} {figures['wall_s']:13.2f}")
    print("pipeline / live: " + ", ".join(f"{key} {mean['pipeline'][key] / mean['live'][key]:.2f}"
                                          for key in ("cpu_s", "wall_s")))


if __name__ == "__main__":
    main()
