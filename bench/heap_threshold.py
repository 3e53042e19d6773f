"""What fixing glibc's mmap threshold (memory.fix_mmap_threshold, which `bertpipe evaluate` does) costs a training
step on a CPU: the demo's phase-1 step (2 layers of 128, vocab 4000, batch 8 of the sample's seq-128 TFRecords,
fp32, AdamW, one thread) run for the same batches in fresh processes, two ways in turn in the same run:

- reference: glibc's default heap (what `bertpipe pretrain` runs with);
- fixed: the threshold fixed at memory.MMAP_THRESHOLD, so that every tensor above it gets a mapping of its own,
  page-faulted in when allocated and given back when freed.

Printed: each way's median CPU seconds (user, system) and wall seconds over the timed steps, its resident memory
after each quarter of them, and the ratios of fixed to reference.

    .venv/bin/python -m bench.heap_threshold [--steps 400] [--repeats 3]
"""

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from bench.train_bench import sample_records
from bertpipe.settings import InstanceSpec

WARMUP = 20  # steps before timing: first allocations, the optimizer's state

# One way's run in a process of its own: the demo's model on the records' batches, then its resource usage.
STEPS = """
import json, resource, sys, time
import torch
from bench.train_bench import ours_step
from bertpipe.memory import fix_mmap_threshold
from bertpipe.model import BertConfig, BertForPreTraining
from bertpipe.tfrecord_reader import TFRecordSamples
from bertpipe.train.batches import RankBatches
from bertpipe.train.optim import adamw

records, steps, warmup, way = json.loads(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
if way == "fixed":
    assert fix_mmap_threshold()
torch.set_num_threads(1)
torch.manual_seed(0)
config = BertConfig(vocab_size=4000, hidden_size=128, num_layers=2, num_attention_heads=2, intermediate_size=512,
                    hidden_dropout=0.0, attention_dropout=0.0)
model = BertForPreTraining(config).train()
optimizer = adamw(model, 1e-3, 0.01)
batches = RankBatches(TFRecordSamples(records), 8, 1, 0, 1, seed=0)
def resident_mb():
    return int(open("/proc/self/status").read().split("VmRSS:")[1].split()[0]) / 1024
resident = []
for step in range(warmup + steps):
    if step == warmup:
        started, usage = time.perf_counter(), resource.getrusage(resource.RUSAGE_SELF)
    ours_step(model, optimizer, batches[step][0], "fp32", torch.device("cpu"))
    if step >= warmup and (step - warmup + 1) % (steps // 4) == 0:
        resident.append(resident_mb())
wall, end = time.perf_counter() - started, resource.getrusage(resource.RUSAGE_SELF)
print(json.dumps({"user": end.ru_utime - usage.ru_utime, "system": end.ru_stime - usage.ru_stime, "wall": wall,
                  "resident_mb": resident}))
"""


def run_way(records, steps, way) -> dict:
    result = subprocess.run([sys.executable, "-c", STEPS, json.dumps(records), str(steps), str(WARMUP), way],
                            capture_output=True, text=True)
    if result.returncode:
        raise SystemExit(f"the {way} run failed:\n{result.stderr}")
    return json.loads(result.stdout)


def main():
    parser = argparse.ArgumentParser(prog=".venv/bin/python -m bench.heap_threshold", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=400, help="timed steps of each run")
    parser.add_argument("--repeats", type=int, default=3, help="runs of each way, taking turns")
    args = parser.parse_args()
    if args.steps < 4:
        parser.error("--steps: at least 4 (resident memory is read after each quarter of them)")
    with tempfile.TemporaryDirectory() as temp:
        records = [str(path) for path in sample_records(Path(temp), 4000, InstanceSpec(dupe_factor=1))]
        runs = {"reference": [], "fixed": []}
        for _ in range(args.repeats):
            for way, results in runs.items():
                results.append(run_way(records, args.steps, way))
    medians = {}
    for way, results in runs.items():
        medians[way] = {key: statistics.median(run[key] for run in results) for key in ("user", "system", "wall")}
        quarters = zip(*(run["resident_mb"] for run in results))
        medians[way]["resident_mb"] = [statistics.median(quarter) for quarter in quarters]
    print(f"{args.steps} steps of the demo's phase-1 model, one thread; runs of each way: {args.repeats} (medians)")
    for way, median in medians.items():
        print(f"{way:9}: user {median['user']:.1f} s, system {median['system']:.1f} s, wall {median['wall']:.1f} s, "
              "resident after each quarter of the steps " + ", ".join(f"{mb:.0f}" for mb in median["resident_mb"])
              + " MB")
    reference, fixed = medians["reference"], medians["fixed"]
    print(f"fixed / reference: CPU {(fixed['user'] + fixed['system']) / (reference['user'] + reference['system']):.2f}"
          f", wall {fixed['wall'] / reference['wall']:.2f}, resident at the end "
          f"{fixed['resident_mb'][-1] / reference['resident_mb'][-1]:.2f}")


if __name__ == "__main__":
    main()
