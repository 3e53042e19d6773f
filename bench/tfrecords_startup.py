"""What a `tfrecords` job spends on TensorFlow's import: the same `bertpipe tfrecords build` job (a demo-sized shard,
the demo's SentencePiece tokenizer and settings), run two ways in turn in the same run:

- reference: TensorFlow imported the plain way (`import tensorflow`, which loads Keras and scikit-learn with it)
  before the job's own code runs;
- as shipped: the job alone, whose stage imports TensorFlow without Keras (stages/tfrecords.py,
  tensorflow_without_keras).

Printed: each way's mean CPU seconds (user + system, from wait4) and wall seconds a job, and the ratios of the
shipped job to the reference.

    .venv/bin/python -m bench.tfrecords_startup [--repeats 3]
"""

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.harness.corpus import sample_corpus
from bertpipe.settings import TokenizerSettings
from bertpipe.stages.tokenizer import train

REFERENCE = "import sys, tensorflow; from bertpipe.cli import main; sys.exit(main(sys.argv[1:]))"


def run(command: list) -> tuple:
    """(CPU seconds, wall seconds) of `command`, which must succeed."""
    started = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(process.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{process.stderr.read().decode()}")
    process.stderr.close()
    return usage.ru_utime + usage.ru_stime, time.perf_counter() - started


def main():
    parser = argparse.ArgumentParser(prog=".venv/bin/python -m bench.tfrecords_startup", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as temp:
        folder = Path(temp)
        corpus = sample_corpus(folder / "corpus", "90,5,5", shard_max_mb=1)
        train([corpus], folder / "tokenizer", TokenizerSettings(vocab_size=4000))
        shard = sorted((corpus / "train").glob("shard-*.jsonl"))[0]
        megabytes = shard.stat().st_size / 1e6
        job = ["tfrecords", "build", "--input", str(shard), "--tokenizer", str(folder / "tokenizer"),
               "--out", str(folder / "out.tfrecord"), "--stats", str(folder / "out.json"),
               "--seq-length", "128", "--max-predictions", "20", "--dupe-factor", "5"]
        ways = {"reference": [sys.executable, "-c", REFERENCE, *job],
                "as shipped": [str(Path(sys.executable).parent / "bertpipe"), *job]}
        figures = {way: [] for way in ways}
        for _ in range(args.repeats):
            for way, command in ways.items():
                figures[way].append(run(command))
    print(f"`bertpipe tfrecords build`, {megabytes:.2f} MB shard, seq 128, dupe_factor 5, "
          f"{args.repeats} runs each, alternating\n")
    print("| | CPU s a job | wall s a job |\n|---|---|---|")
    means = {way: [statistics.mean(column) for column in zip(*runs)] for way, runs in figures.items()}
    for way, (cpu, wall) in means.items():
        print(f"| {way} | {cpu:.2f} | {wall:.2f} |")
    (ref_cpu, ref_wall), (cpu, wall) = means["reference"], means["as shipped"]
    print(f"| ratio | {cpu / ref_cpu:.2f} | {wall / ref_wall:.2f} |")


if __name__ == "__main__":
    main()
