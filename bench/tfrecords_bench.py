"""Throughput and memory of the `tfrecords` stage, and how its memory scales with the input.

    .venv/bin/python bench/tfrecords_bench.py [--base-mb 16] [--scales 1 4 16] [--jobs 2]

Input: the bundled sample's articles (extracted and cleaned by our own stages), repeated with new ids until the
corpus reaches `base-mb * scale` MB of text, cut into corpus shards of `base-mb` MB each (so x1 is one shard, x16 is
sixteen). The stage runs as the workflow runs it: one `bertpipe tfrecords build` process per shard, `--jobs` at a
time (the machine's two cores), with Google's reference settings: a 16k WordPiece vocab, seq 128, 20 predictions,
dupe_factor 5. Peak RSS is each process's own (wait4), TensorFlow's import included.

Reference (google-research/bert's create_pretraining_data.py cannot run here: it needs TF1 and its source is not
fetched): on a machine like this, on the bundled sample's text (2.6 MB) with the same settings, it wrote 28,149
instances in 25 s of one core, about 1,100 instances/s, with 818 MB peak RSS growing with its input. That figure is
printed as the reference; the ratio is ours over it.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from bertpipe.settings import CorpusSettings, TokenizerSettings  # noqa: E402
from bertpipe.corpus import build_part  # noqa: E402
from bertpipe.extract import extract_part  # noqa: E402
from bertpipe.tokenizer import train  # noqa: E402

SAMPLE = REPO / "data/mirror/enwiki/latest/enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2"
REFERENCE_INSTANCES_PER_SECOND = 28149 / 25
REFERENCE_PEAK_RSS_MB = 818


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


def run_jobs(shards: list, tokenizer: Path, out: Path, jobs: int) -> tuple:
    """Run one build process per shard, `jobs` at a time; returns (wall seconds, peak RSS in MB of each process)."""
    pending = list(shards)
    running, peaks = {}, []
    started = time.perf_counter()
    while pending or running:
        while pending and len(running) < jobs:
            shard = pending.pop(0)
            command = [sys.executable, "-m", "bertpipe", "tfrecords", "build", "--input", str(shard), "--tokenizer",
                       str(tokenizer), "--out", str(out / f"{shard.stem}.tfrecord"), "--stats",
                       str(out / f"{shard.stem}.stats.json"), "--seq-length", "128", "--max-predictions", "20",
                       "--dupe-factor", "5"]
            process = subprocess.Popen(command, stderr=subprocess.DEVNULL, env={**os.environ,
                                                                               "PYTHONPATH": str(REPO / "src")})
            running[process.pid] = process
        pid, status, usage = os.wait4(-1, 0)
        if pid in running:
            running.pop(pid)
            if status != 0:
                raise SystemExit(f"a build process failed with status {status}")
            peaks.append(usage.ru_maxrss / 1024)
    return time.perf_counter() - started, peaks


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base-mb", type=float, default=16.0, help="input at x1 and the size of each corpus shard")
    parser.add_argument("--scales", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--jobs", type=int, default=2)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as temp:
        temp = Path(temp)
        extract_part(SAMPLE, temp / "articles.jsonl", processes=2)
        build_part(temp / "articles.jsonl", temp / "sample", CorpusSettings(split="1"))
        documents = [json.loads(line) for shard in sorted((temp / "sample/train").glob("*.jsonl"))
                     for line in shard.read_text().splitlines()]
        train([temp / "sample"], temp / "tokenizer", TokenizerSettings(kind="wordpiece", vocab_size=16000))

        print(f"reference: google-research/bert create_pretraining_data.py, {REFERENCE_INSTANCES_PER_SECOND:,.0f} "
              f"instances/s on one core, {REFERENCE_PEAK_RSS_MB} MB peak RSS on 2.6 MB of text (recorded, see docstring)")
        print(f"{'input':>9} {'shards':>6} {'instances':>10} {'wall s':>7} {'inst/s':>8} {'tokens/s':>10} "
              f"{'peak RSS MB':>11} {'x reference':>11}")
        rows = []
        for scale in args.scales:
            folder = temp / f"x{scale}"
            shard_bytes = int(args.base_mb * 2**20)
            shards = repeated_corpus(documents, folder, shard_bytes * scale, shard_bytes)
            out = folder / "tfrecords"
            out.mkdir()
            wall, peaks = run_jobs(shards, temp / "tokenizer", out, args.jobs)
            stats = [json.loads(p.read_text()) for p in out.glob("*.stats.json")]
            instances = sum(s["instances"] for s in stats)
            tokens = sum(s["tokens"] for s in stats)
            rows.append((scale, max(peaks)))
            print(f"{args.base_mb * scale:>6.0f} MB {len(shards):>6} {instances:>10,} {wall:>7.1f} "
                  f"{instances / wall:>8,.0f} {tokens / wall:>10,.0f} {max(peaks):>11.0f} "
                  f"{instances / wall / REFERENCE_INSTANCES_PER_SECOND:>11.1f}")
        first_scale, first_peak = rows[0]
        for scale, peak in rows[1:]:
            print(f"peak RSS x{scale} / x{first_scale}: {peak / first_peak:.2f} (input grew {scale / first_scale:.0f}x)")


if __name__ == "__main__":
    main()
