"""A scale rehearsal: the whole DAG, `snakemake --profile slurm all`, on a local two-node Slurm cluster, from a
generated multi-part dump of real text served over HTTP on 127.0.0.1, at several sizes; per stage and size it
prints wall time, CPU seconds per input MB, peak RSS per job, output MB per input MB, jobs, and tracking's runs and
seconds per job.

    .venv/bin/python -m bench.scale_rehearsal [--sizes-mb 15 150 1500] [--part-mb 150] [--out DIR] [--json FILE]

Needs root and Debian's Slurm (installed when missing), as the Slurm tests: the cluster is
bench/harness/slurm_cluster.py's, two nodes of 2 CPUs each on this machine, the HTTP mirror
bench/harness/mirror.py's DumpServer.

The dump: the bundled sample's pages repeated under new page ids and titles until the XML reaches the size, cut into
parts of `--part-mb` MB of XML (bz2, with their dumpstatus.json and sha1). Each copy but the first keeps about 85% of
an article's paragraphs, in another order, and shifts its years, so documents differ and sentences are not all the
same; still, the text is the sample's 106 articles again and again (generated input, not more Wikipedia).

The settings are config.yaml's (full scale: SentencePiece 30522 with 10M sentences, dupe_factor 10, seq 128 and 512,
64 MB shards, ...) but for the model and the step counts (2 layers of 128, a few steps, fp32 on the CPU), what two
2-CPU nodes hold (threads, memory, no GPU), and the split: 98,1,1 instead of 1000,1,1, whose valid and test splits
would be empty at the smallest size. Tracking is the SQLite default (the run warns that a server is the store on a
cluster).

Where the figures come from: each job's last log line (`bertpipe <stage>: job usage: ...`, cli.py: getrusage of the
job's processes, so CPU seconds are exact and peak RSS is that of its largest process); Slurm's record of each job
(jobcomp) for its start and end; the MLflow store for the runs; the output folders' sizes.
"""

import argparse
import bz2
import collections
import hashlib
import json
import multiprocessing
import random
import re
import shutil
import sqlite3
import time
from datetime import datetime
from pathlib import Path

import yaml

from bench.harness import SAMPLE
from bench.harness.mirror import DumpServer, split_pages
from bench.harness.slurm_cluster import SlurmCluster, install_slurm
from bench.harness.workflow import copy_workflow, snakemake
from bench.loose_json_bench import index
from bertpipe.cli import JOB_USAGE_LINE

WIKI, DATE = "enwiki", "20260101"
ID_STRIDE = 10_000_000  # a copy's page ids: the sample's (below 40,000) plus copy x this
SUBMITTED = re.compile(r"has been submitted with SLURM jobid (\d+) \(log: \S*/slurm_logs/rule_(\w+?)/")
# The command whose usage lines are a rule's. Pretrain's are those of its training processes, one per rank, on every
# node (srun brings the other node's output back into the job's log); its `bertpipe launch` line leaves out the other
# node's processes.
RULE_OF_STAGE = {"download manifest": "download_manifest", "download part": "download", "extract": "extract",
                 "corpus build": "corpus", "tokenizer": "tokenizer", "tfrecords build": "tfrecords",
                 "pretrain": "pretrain", "evaluate": "evaluate", "export": "export", "register": "register"}
RULES = list(RULE_OF_STAGE.values())
OUTPUTS = {"download": "resources/dumps", "extract": "results/extract", "corpus": "results/corpus",
           "tokenizer": "results/tokenizer", "tfrecords": "results/tfrecords", "pretrain": "results/pretrain",
           "evaluate": "results/evaluate", "export": "results/export"}
YEAR = re.compile(rb"\b(1[6-9]\d\d|20[0-2]\d)\b")


def overlay(mirror_url: str) -> dict:
    """config.yaml's settings but the model, the step counts, the split and what the test nodes hold."""
    return {
        "dump": {"mirror": mirror_url, "wiki": WIKI, "date": DATE},
        "extract": {"threads": 2},
        "corpus": {"split": "98,1,1"},
        "tokenizer": {"threads": 2},
        "model": {"num_layers": 2, "hidden_size": 128, "intermediate_size": 512, "num_attention_heads": 2},
        "pretrain": {"precision": "fp32", "compile": False, "nproc_per_node": 1, "nodes": 2, "num_workers": 1,
                     "save_interval": 10, "eval_interval": 10, "eval_iters": 2, "log_interval": 5,
                     "phases": [{"seq_length": 128, "batch_size": 16, "gradient_accumulation_steps": 1,
                                 "train_iters": 20, "lr": 1e-3},
                                {"seq_length": 512, "batch_size": 4, "gradient_accumulation_steps": 1,
                                 "train_iters": 10, "lr": 1e-3}]},
        "slurm": {"pretrain": {"gpus_per_node": 0, "cpus_per_node": 2, "mem_mb": 8000, "runtime": 240},
                  "jobs": {"extract": {"mem_mb": 4000}, "corpus": {"mem_mb": 4000},
                           "tokenizer": {"runtime": 240, "mem_mb": 16000},
                           "evaluate": {"gpus": 0, "mem_mb": 8000}, "export": {"mem_mb": 8000}}},
    }


# -- the dump --------------------------------------------------------------------------------------------------------
def varied_page(page: bytes, copy: int, rng: random.Random) -> bytes:
    """The page as copy `copy`: a new id and title, and (but copy 0) a varied text."""
    if copy == 0:
        return page
    page = re.sub(rb"<title>(.*?)</title>", lambda m: b"<title>%s (%d)</title>" % (m.group(1), copy), page, count=1)
    page = re.sub(rb"</ns>(\s*)<id>(\d+)</id>", lambda m: b"</ns>%s<id>%d</id>" % (
        m.group(1), int(m.group(2)) + copy * ID_STRIDE), page, count=1)
    text = re.search(rb"(<text[^>]*>)(.*?)(</text>)", page, flags=re.S)
    if not text or b"#REDIRECT" in text.group(2)[:20].upper():
        return page
    lead, *paragraphs = text.group(2).split(b"\n\n")
    kept = [p for p in paragraphs if rng.random() < 0.85]
    rng.shuffle(kept)
    shift = rng.randint(-30, 30)
    body = YEAR.sub(lambda m: b"%d" % (int(m.group()) + shift), b"\n\n".join([lead, *kept]))
    return page[:text.start(2)] + body + page[text.end(2):]


def _compress(job):
    path, data = job
    compressed = bz2.compress(data, 9)
    path.write_bytes(compressed)
    return path.name, len(compressed), hashlib.sha1(compressed).hexdigest(), len(data)


def make_dump(root: Path, size_mb: float, part_mb: float, seed: int = 0) -> dict:
    """A mirror tree `root/enwiki/20260101/` of about `size_mb` MB of XML in parts of `part_mb`: {parts, xml_mb,
    bz2_mb, pages, seconds}."""
    started = time.perf_counter()
    header, pages, footer = split_pages(bz2.decompress(SAMPLE.read_bytes()))
    folder = root / WIKI / DATE
    folder.mkdir(parents=True, exist_ok=True)
    rng, target, part_bytes = random.Random(seed), int(size_mb * 2**20), int(part_mb * 2**20)
    jobs, written, count, copy = [], 0, 0, 0
    current, current_bytes, first_id = [], 0, None

    def close_part():
        name = f"{WIKI}-{DATE}-pages-articles{len(jobs) + 1}.xml-p{first_id}p{last_id}.bz2"
        jobs.append((folder / name, header + b"".join(current) + footer))

    while written < target:
        for page in pages:
            varied = varied_page(page, copy, rng)
            page_id = int(re.search(rb"<id>(\d+)</id>", varied).group(1))
            if first_id is None:
                first_id = page_id
            current.append(varied)
            current_bytes += len(varied)
            written += len(varied)
            count += 1
            last_id = page_id
            if current_bytes >= part_bytes or written >= target:
                close_part()
                current, current_bytes, first_id = [], 0, None
                if written >= target:
                    break
        copy += 1
    with multiprocessing.Pool(2) as pool:
        parts = pool.map(_compress, jobs)
    files = {name: {"size": size, "sha1": sha1, "url": f"/{WIKI}/{DATE}/{name}", "md5": "not-checked"}
             for name, size, sha1, _ in parts}
    status = {"jobs": {"articlesdump": {"status": "done", "updated": "2026-01-02 03:04:05", "files": files}},
              "version": "0.8"}
    (folder / "dumpstatus.json").write_text(json.dumps(status))
    return {"parts": len(parts), "xml_mb": sum(p[3] for p in parts) / 2**20, "bz2_mb": sum(p[1] for p in parts) / 2**20,
            "pages": count, "seconds": time.perf_counter() - started}


# -- the figures -----------------------------------------------------------------------------------------------------
def job_usages(logs: Path) -> dict:
    """{rule: [usage of each job, or of each training process]} from the usage lines in the jobs' logs."""
    usages = collections.defaultdict(list)
    for log in logs.rglob("*.log"):
        for match in JOB_USAGE_LINE.finditer(log.read_text(errors="replace")):
            if match["stage"] in RULE_OF_STAGE:
                usages[RULE_OF_STAGE[match["stage"]]].append(
                    {key: float(match[key]) for key in ("cpu", "rss", "seconds", "outside")})
    return usages


def slurm_spans(snakemake_log: str, records: list) -> dict:
    """{rule: [(start, end) of each of its Slurm jobs]} from Snakemake's submissions and Slurm's job records."""
    rule_of_job = dict(SUBMITTED.findall(snakemake_log))
    spans = collections.defaultdict(list)
    for record in records:
        if record.get("JobId") in rule_of_job:
            start, end = (datetime.fromisoformat(record[key]) for key in ("StartTime", "EndTime"))
            spans[rule_of_job[record["JobId"]]].append((start, end))
    return spans


def folder_mb(path: Path) -> float:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 2**20 if path.exists() else 0.0


def tracking_runs(folder: Path) -> int:
    database = folder / "results/mlflow/mlflow.db"
    with sqlite3.connect(database) as connection:
        return connection.execute("select count(*) from runs").fetchone()[0]


def stage_rows(folder: Path, snakemake_log: str, records: list, xml_mb: float) -> list:
    usages, spans = job_usages(folder / "logs"), slurm_spans(snakemake_log, records)
    rows = []
    for rule in RULES:
        jobs, span = usages.get(rule, []), spans.get(rule, [])
        if not jobs:
            continue
        wall = (max(e for _, e in span) - min(s for s, _ in span)).total_seconds() if span else float("nan")
        slurm_seconds = [(e - s).total_seconds() for s, e in span]
        rows.append({
            "stage": rule, "jobs": len(span) or len(jobs), "wall_s": wall,
            "cpu_s_per_mb": sum(j["cpu"] for j in jobs) / xml_mb,
            "peak_rss_mb": max(j["rss"] for j in jobs),
            "out_mb_per_mb": folder_mb(folder / OUTPUTS[rule]) / xml_mb if rule in OUTPUTS else 0.0,
            "tracking_s_per_job": sum(j["outside"] for j in jobs) / len(jobs),
            # What a Slurm job costs besides our command: Snakemake starting again inside the job, srun, the
            # plugin's wait for the job's status (Slurm's times have a resolution of a second).
            "slurm_s_per_job": (sum(slurm_seconds) / len(slurm_seconds) - sum(j["seconds"] for j in jobs) / len(jobs))
            if slurm_seconds else float("nan"),
        })
    return rows


def print_table(size: dict, rows: list, runs: int, wall: float) -> None:
    print(f"\n{size['xml_mb']:.0f} MB of XML ({size['bz2_mb']:.0f} MB bz2, {size['parts']} parts, {size['pages']:,} "
          f"pages): {wall / 60:.1f} min in all, {runs} tracking runs")
    print("| stage | jobs | wall s | CPU s / input MB | peak RSS per job MB | output MB / input MB | tracking s / job "
          "| Slurm s / job |")
    print("|---|---|---|---|---|---|---|---|")
    for row in rows:
        print(f"| {row['stage']} | {row['jobs']} | {row['wall_s']:.0f} | {row['cpu_s_per_mb']:.2f} | "
              f"{row['peak_rss_mb']:.0f} | {row['out_mb_per_mb']:.2f} | {row['tracking_s_per_job']:.1f} | "
              f"{row['slurm_s_per_job']:.1f} |")


def loose_json_index(folder: Path) -> dict:
    """Megatron's loose-json index (train/loose_json_samples.build_lazy) of the run's extracted parts, which are loose
    json, each built in a fresh process: {mb, seconds, mb_per_s, peak_rss_mb} (RSS: the largest process)."""
    context = multiprocessing.get_context("spawn")
    mb = seconds = peak = 0.0
    for path in sorted((folder / "results/extract").glob("*.jsonl")):
        results = context.Queue()
        worker = context.Process(target=index, args=(str(path), results))
        worker.start()
        part_seconds, part_peak = results.get()
        worker.join()
        mb, seconds, peak = mb + path.stat().st_size / 2**20, seconds + part_seconds, max(peak, part_peak)
    return {"mb": mb, "seconds": seconds, "mb_per_s": mb / seconds, "peak_rss_mb": peak}


def rehearse(size_mb: float, part_mb: float, out: Path, cluster: SlurmCluster) -> dict:
    folder = out / f"{size_mb:g}MB"
    shutil.rmtree(folder, ignore_errors=True)
    size = make_dump(folder / "mirror", size_mb, part_mb)
    workflow = copy_workflow(folder / "wf")
    records_before = len(cluster.job_records())
    with DumpServer(folder / "mirror") as server:
        (workflow / "rehearsal.yaml").write_text(yaml.safe_dump(overlay(server.url)))
        started = time.perf_counter()
        result = snakemake(workflow, "--profile", "slurm", "all", "--configfile", "config.yaml", "rehearsal.yaml")
        wall = time.perf_counter() - started
    rows = stage_rows(workflow, result.stderr, cluster.job_records()[records_before:], size["xml_mb"])
    runs = tracking_runs(workflow)
    print_table(size, rows, runs, wall)
    loose_json = loose_json_index(workflow)
    print(f"loose-json index of the extracted parts: {loose_json['mb']:.0f} MB in {loose_json['seconds']:.1f} s, "
          f"{loose_json['mb_per_s']:.0f} MB/s, peak RSS {loose_json['peak_rss_mb']:.0f} MB")
    (folder / "snakemake.log").write_text(result.stderr)
    return {"size": size, "wall_s": wall, "tracking_runs": runs, "stages": rows, "loose_json_index": loose_json}


# English Wikipedia, for the projection: its dump's sizes (over 20 GB of bz2, about 100 GB of XML), not measured here; a
# real dump's dumpstatus.json lists its parts' sizes.
WIKIPEDIA_XML_MB, WIKIPEDIA_BZ2_MB, WIKIPEDIA_PARTS = 100 * 1024, 22 * 1024, 60
NODE_CORES = 64  # config.yaml's slurm.pretrain.cpus_per_node, a typical node
# The training step of BERT-Large on one H200, an input of the projection (docs/benchmarks.md: `python -m
# bench.train_bench --gpu --batch 256 --compile`, 2026-11-28): sequences/s at seq 128, bf16; the trainer made 97% of
# its bench step on a CPU (trainer_bench.py).
H200_SEQ128_PER_S, TRAINER_SHARE = 1719, 0.97


def project(result: dict) -> None:
    """English Wikipedia from the rates of one rehearsal size: CPU hours per stage, hours on 1, 4 and 16 nodes, and
    disk; then pretraining's GPU hours at the training bench's rate."""
    from bertpipe.model import BertConfig, flops_per_sequence
    from bertpipe.settings import Config

    config = Config()
    xml_mb = result["size"]["xml_mb"]
    shards = WIKIPEDIA_XML_MB * 0.45 / config.corpus.shard_max_mb  # text is about 45% of the XML (the sample's)
    parallel_jobs = {"download": WIKIPEDIA_PARTS, "extract": WIKIPEDIA_PARTS * config.extract.threads,
                     "corpus": WIKIPEDIA_PARTS, "tokenizer": config.tokenizer.threads,
                     "tfrecords": shards * len(config.tfrecords.phases)}
    print(f"\nEnglish Wikipedia ({WIKIPEDIA_XML_MB / 1024:.0f} GB of XML, {WIKIPEDIA_BZ2_MB / 1024:.0f} GB bz2, "
          f"{WIKIPEDIA_PARTS} parts, about {shards:.0f} train shards) at the rates of {xml_mb:.0f} MB:")
    print(f"| stage | CPU hours | hours on 1 / 4 / 16 nodes of {NODE_CORES} cores | disk GB |")
    print("|---|---|---|---|")
    for row in result["stages"]:
        stage = row["stage"]
        if stage not in parallel_jobs:
            continue
        # The tokenizer trains on a sample of input_sentence_size sentences, not on the corpus; a download goes at
        # the network's pace, not the CPU's.
        cpu_hours = None if stage == "tokenizer" else row["cpu_s_per_mb"] * WIKIPEDIA_XML_MB / 3600
        hours = "-"
        if cpu_hours is not None and stage != "download":
            hours = " / ".join(f"{cpu_hours / min(nodes * NODE_CORES, parallel_jobs[stage]):.2f}"
                               for nodes in (1, 4, 16))
        disk = WIKIPEDIA_BZ2_MB / 1024 if stage == "download" else row["out_mb_per_mb"] * WIKIPEDIA_XML_MB / 1024
        if stage == "tokenizer":  # its model, the same size at any input
            disk = row["out_mb_per_mb"] * xml_mb / 1024
        print(f"| {stage} | {'bounded' if cpu_hours is None else f'{cpu_hours:.1f}'} | {hours} | {disk:.3g} |")
    model = BertConfig(vocab_size=config.tokenizer.vocab_size, hidden_size=config.model.hidden_size,
                       num_layers=config.model.num_layers, num_attention_heads=config.model.num_attention_heads,
                       intermediate_size=config.model.intermediate_size)
    phase_flops = {}
    for phase, spec in zip(config.pretrain.phases, config.tfrecords.phases):
        sequences = (phase.train_iters * phase.batch_size * phase.gradient_accumulation_steps
                     * config.pretrain.nproc_per_node * config.pretrain.nodes)
        phase_flops[phase.seq_length] = sequences * flops_per_sequence(model, phase.seq_length, spec.max_predictions)
    rate = H200_SEQ128_PER_S * TRAINER_SHARE * flops_per_sequence(model, 128, 20)  # model FLOP/s of one GPU
    for seq, flops in phase_flops.items():
        print(f"pretrain seq {seq}: {flops / rate / 3600:.0f} H200 hours at the seq-128 bench's model FLOP/s "
              f"({flops / rate / 3600 / 8:.1f} h on 8, {flops / rate / 3600 / 64:.2f} h on 64)")


def main():
    parser = argparse.ArgumentParser(prog=".venv/bin/python -m bench.scale_rehearsal", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes-mb", type=float, nargs="+", default=[15, 150, 1500], help="MB of XML")
    # 150 MB of XML make about 67 MB of text: from this size on, a part fills a 64 MB corpus shard (the default
    # corpus.shard_max_mb), as English Wikipedia's parts of about 4 GB of XML do.
    parser.add_argument("--part-mb", type=float, default=150, help="MB of XML per dump part")
    parser.add_argument("--out", type=Path, default=Path("/tmp/bertpipe-rehearsal"))
    parser.add_argument("--json", type=Path, help="write every figure here")
    args = parser.parse_args()
    install_slurm()
    cluster = SlurmCluster(args.out / "slurm", nodes=2).start()
    try:
        results = [rehearse(size, args.part_mb, args.out, cluster) for size in args.sizes_mb]
    finally:
        cluster.stop()
    by_stage = collections.defaultdict(dict)
    for result in results:
        for row in result["stages"]:
            by_stage[row["stage"]][result["size"]["xml_mb"]] = row["peak_rss_mb"]
    smallest, largest = results[0]["size"]["xml_mb"], results[-1]["size"]["xml_mb"]
    print(f"\npeak RSS per job, {largest:.0f} MB over {smallest:.0f} MB of XML:")
    for stage, peaks in by_stage.items():
        if smallest in peaks and largest in peaks:
            print(f"  {stage}: {peaks[largest] / peaks[smallest]:.2f}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    project(results[-1])


if __name__ == "__main__":
    main()
