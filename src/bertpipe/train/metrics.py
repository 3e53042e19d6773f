"""Where the trainer's metrics go: sinks that each take every record (a training step's metrics, or a validation's)
and decide what to do with it. The trainer reports to them on rank 0; the MLflow sink is tracking.MetricSink."""

import json
from pathlib import Path

from bertpipe.atomic import atomic_file


class ConsoleSink:
    """A log line every `interval` steps and at `last_step`, and one per validation."""

    def __init__(self, interval: int, last_step: int):
        self.interval, self.last_step = interval, last_step

    def __call__(self, metrics: dict):
        if "valid_mlm_loss" in metrics:
            print(" ".join(f"{k} {v:.4f}" for k, v in metrics.items() if k != "step"), flush=True)
        elif metrics["step"] % self.interval == 0 or metrics["step"] == self.last_step:
            nsp = f"nsp {metrics['nsp_loss']:.6f} " if "nsp_loss" in metrics else ""  # bert2019's only
            print(f"step {metrics['step']} loss {metrics['loss']:.6f} mlm {metrics['mlm_loss']:.6f} "
                  f"{nsp}lr {metrics['lr']:.3e} scale {metrics['loss_scale']:g} "
                  f"skipped {metrics['skipped']} {metrics['samples_per_second']:.1f} samples/s "
                  f"mfu {metrics['mfu']:.1%} data wait {metrics['data_wait_fraction']:.1%}", flush=True)

    def close(self):
        pass


class JsonLinesSink:
    """Every record, one JSON line each, appended (a resumed run appends the steps it repeats)."""

    def __init__(self, path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def __call__(self, metrics: dict):
        with open(self.path, "a") as f:
            f.write(json.dumps(metrics) + "\n")

    def keep_until(self, step: int):
        """Drop the records of steps after `step`, where a run starts (0 afresh, else the checkpoint it resumed):
        they are another run's (one set aside) or will be repeated, and a loss curve must show this run alone."""
        if not self.path.exists():
            return
        kept = []
        with open(self.path, "rb") as f:
            for line in f:
                try:
                    if json.loads(line)["step"] <= step:
                        kept.append(line)
                except (ValueError, KeyError, TypeError):
                    continue  # a torn line: the curve skips it too
        with atomic_file(self.path) as temp:
            temp.write_bytes(b"".join(kept))

    def close(self):
        pass
