"""Throughput and memory of the `tfrecords` stage against google-research/bert's create_pretraining_data.py, in
the same run, and how our memory scales with the input.

    .venv/bin/pip install bert-tensorflow==1.0.4   # Google's script (bench only; it runs on TF 2 via compat.v1)
    .venv/bin/python -m bench.tfrecords_bench [--google-mb 16 64] [--base-mb 16] [--scales 1 4 16] [--jobs 2]

Input: the bundled sample's articles (extracted and cleaned by our own stages), repeated with new ids until the
corpus reaches the size asked for (so sentences repeat; generated input, not more Wikipedia). Settings: Google's
reference ones, a 16k WordPiece vocab trained on the sample (both tools read the same `vocab.txt`, lowercased), seq
128, 20 predictions, masked_lm_prob 0.15, short_seq_prob 0.1, dupe_factor 5.

1. Against Google, per core: for each of `--google-mb`, one corpus shard of that size; one `bertpipe tfrecords
   build` process and one `python -m bert.create_pretraining_data` process on it (its input written as Google's
   format, a sentence a line and a blank line between documents, before the clock starts), one after the other.
   Each process's CPU seconds (user + system) and peak RSS come from wait4, imports included; the ratio is our
   instances per CPU second over Google's.
2. Scaling: shards of `--base-mb` up to `base-mb * scale` MB, one build process per shard, `--jobs` at a time, as
   the workflow runs them; peak RSS of the largest process at each scale.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.harness import REPO
from bench.harness.corpus import sample_corpus
from bertpipe.settings import TokenizerSettings
from bertpipe.stages.tokenizer import train
from bertpipe.tfrecord_reader import index_records

SETTINGS = {"seq_length": 128, "max_predictions": 20, "dupe_factor": 5}


def repeated_corpus(documents: list, folder: Path, total_bytes: int, shard_bytes: int) -> list:
    """Corpus shards `folder/train/shard-NNNN.jsonl` of the documents repeated with new ids up to `total_bytes`."""
    shards, written, copy = [], 0, 0
    handle, size = None, 0
    while written < total_bytes:
        for document in documents:
            line = json.dumps({**document, "id": f"{document['id']}-{copy}"}, ensure_ascii=False) + "\n"
            data = line.encode()
            if written + len(data) > total_bytes:
                break
            if handle is None or size + len(data) > shard_bytes:
                if handle:
                    handle.close()
                shards.append(folder / "train" / f"shard-{len(shards):04d}.jsonl")
                shards[-1].parent.mkdir(parents=True, exist_ok=True)
                handle, size = open(shards[-1], "wb"), 0
            handle.write(data)
            size += len(data)
            written += len(data)
        else:
            copy += 1
            continue
        break
    handle.close()
    return shards


def build_command(shard: Path, tokenizer: Path, out: Path) -> list:
    return [sys.executable, "-m", "bertpipe", "tfrecords", "build", "--input", str(shard), "--tokenizer",
            str(tokenizer), "--out", str(out / f"{shard.stem}.tfrecord"),
            "--stats", str(out / f"{shard.stem}.stats.json"),
            "--seq-length", str(SETTINGS["seq_length"]), "--max-predictions", str(SETTINGS["max_predictions"]),
            "--dupe-factor", str(SETTINGS["dupe_factor"])]


def google_command(text: Path, vocab: Path, out: Path) -> list:
    return [sys.executable, "-m", "bert.create_pretraining_data", f"--input_file={text}", f"--output_file={out}",
            f"--vocab_file={vocab}", "--do_lower_case=True", f"--max_seq_length={SETTINGS['seq_length']}",
            f"--max_predictions_per_seq={SETTINGS['max_predictions']}", "--masked_lm_prob=0.15",
            "--short_seq_prob=0.1", "--random_seed=12345", f"--dupe_factor={SETTINGS['dupe_factor']}"]


def run_jobs(commands: list, jobs: int) -> tuple:
    """Run `commands`, `jobs` at a time; returns (wall seconds, [(CPU seconds, peak RSS MB) of each process])."""
    pending = list(commands)
    running, usages = {}, []
    started = time.perf_counter()
    while pending or running:
        while pending and len(running) < jobs:
            process = subprocess.Popen(pending.pop(0), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                       env={**os.environ, "PYTHONPATH": str(REPO / "src")})
            running[process.pid] = process
        pid, status, usage = os.wait4(-1, 0)
        if pid in running:
            command = running.pop(pid).args
            if status != 0:
                raise SystemExit(f"{' '.join(command[:4])} failed with status {status}")
            usages.append((usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024))
    return time.perf_counter() - started, usages


def google_input(shard: Path, text: Path) -> None:
    """Google's input format from a corpus shard: a sentence a line, a blank line after each document."""
    with open(text, "w", encoding="utf-8") as out:
        for line in open(shard, encoding="utf-8"):
            out.write(json.loads(line)["text"] + "\n\n")


def against_google(documents: list, temp: Path, tokenizer: Path, sizes_mb: list) -> None:
    try:
        import bert.create_pretraining_data  # noqa: F401
    except ImportError:
        raise SystemExit("Google's script is not installed: .venv/bin/pip install bert-tensorflow==1.0.4")
    print("against google-research/bert's create_pretraining_data.py (bert-tensorflow 1.0.4), one process each, on "
          "the same shard:")
    print(f"{'input':>9} {'tool':>7} {'instances':>10} {'wall s':>7} {'CPU s':>7} {'inst/CPU s':>10} "
          f"{'peak RSS MB':>11}")
    for size in sizes_mb:
        folder = temp / f"google-{size}"
        shard, = repeated_corpus(documents, folder, int(size * 2**20), int(size * 2**20))
        out = folder / "ours"
        out.mkdir()
        ours_wall, [(ours_cpu, ours_rss)] = run_jobs([build_command(shard, tokenizer, out)], 1)
        ours = json.loads((out / f"{shard.stem}.stats.json").read_text())["instances"]
        text = folder / "google.txt"
        google_input(shard, text)
        google_wall, [(google_cpu, google_rss)] = run_jobs([google_command(text, tokenizer / "vocab.txt",
                                                                           folder / "google.tfrecord")], 1)
        google = len(index_records(folder / "google.tfrecord"))
        for tool, instances, wall, cpu, rss in (("ours", ours, ours_wall, ours_cpu, ours_rss),
                                                ("Google", google, google_wall, google_cpu, google_rss)):
            print(f"{size:>6.0f} MB {tool:>7} {instances:>10,} {wall:>7.1f} {cpu:>7.1f} {instances / cpu:>10,.0f} "
                  f"{rss:>11.0f}")
        print(f"{size:>6.0f} MB ours / Google per core: {ours / ours_cpu / (google / google_cpu):.1f}x, peak RSS "
              f"{ours_rss:.0f} / {google_rss:.0f} MB")


def main():
    parser = argparse.ArgumentParser(prog=".venv/bin/python -m bench.tfrecords_bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base-mb", type=float, default=16.0, help="input at x1 and the size of each corpus shard")
    parser.add_argument("--scales", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--google-mb", type=float, nargs="+", default=[16.0, 64.0],
                        help="shard sizes of the comparison with Google's script (64: corpus.shard_max_mb)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as temp:
        temp = Path(temp)
        sample_corpus(temp, "1")
        documents = [json.loads(line) for shard in sorted((temp / "sample/train").glob("*.jsonl"))
                     for line in shard.read_text().splitlines()]
        train([temp / "sample"], temp / "tokenizer", TokenizerSettings(kind="wordpiece", vocab_size=16000))

        against_google(documents, temp, temp / "tokenizer", args.google_mb)

        print(f"\nscaling: shards of {args.base_mb:.0f} MB, {args.jobs} build processes at a time")
        print(f"{'input':>9} {'shards':>6} {'instances':>10} {'wall s':>7} {'inst/s':>8} {'tokens/s':>10} "
              f"{'peak RSS MB':>11}")
        rows = []
        for scale in args.scales:
            folder = temp / f"x{scale}"
            shard_bytes = int(args.base_mb * 2**20)
            shards = repeated_corpus(documents, folder, shard_bytes * scale, shard_bytes)
            out = folder / "tfrecords"
            out.mkdir()
            wall, usages = run_jobs([build_command(shard, temp / "tokenizer", out) for shard in shards], args.jobs)
            peak = max(rss for _, rss in usages)
            stats = [json.loads(p.read_text()) for p in out.glob("*.stats.json")]
            instances = sum(s["instances"] for s in stats)
            tokens = sum(s["tokens"] for s in stats)
            rows.append((scale, peak))
            print(f"{args.base_mb * scale:>6.0f} MB {len(shards):>6} {instances:>10,} {wall:>7.1f} "
                  f"{instances / wall:>8,.0f} {tokens / wall:>10,.0f} {peak:>11.0f}")
        first_scale, first_peak = rows[0]
        for scale, peak in rows[1:]:
            print(f"peak RSS x{scale} / x{first_scale}: {peak / first_peak:.2f} "
                  f"(input grew {scale / first_scale:.0f}x)")


if __name__ == "__main__":
    main()
