"""The loss-curve plot of a training run, from its metrics file (JSON lines: step records and validation records)."""

import json
import logging

from bertpipe.atomic import atomic_file

log = logging.getLogger(__name__)


def read_metrics(path) -> tuple:
    """(train records, validation records), each the last one written for its step: a run resumed after a kill
    repeats the steps after its last checkpoint, and the repeat is what the final model saw. A line that is not a
    record (torn by a full disk or a crash, NUL bytes from a file system's recovery) is skipped with a warning: the
    plot shows the records there are."""
    train, valid = {}, {}
    with open(path, encoding="utf-8", errors="replace") as lines:
        for number, line in enumerate(lines, 1):
            try:
                record = json.loads(line)
                (valid if "valid_mlm_loss" in record else train)[record["step"]] = record
            except (ValueError, TypeError, KeyError):
                if line.strip():
                    log.warning("%s, line %d: not a metrics record (%r...); skipped", path, number, line[:40])
    return [train[s] for s in sorted(train)], [valid[s] for s in sorted(valid)]


def loss_curve(metrics_file, out, title: str = "") -> None:
    import matplotlib

    matplotlib.use("Agg")  # no display on a cluster node
    from matplotlib import pyplot

    train, valid = read_metrics(metrics_file)
    figure, axis = pyplot.subplots(figsize=(8, 4.5), dpi=100)
    steps = [r["step"] for r in train]
    for key, label in (("loss", "loss"), ("mlm_loss", "masked-LM loss"), ("nsp_loss", "next-sentence loss")):
        if train and key in train[0]:  # the modern recipe has no next-sentence loss
            axis.plot(steps, [r[key] for r in train], label=label, linewidth=1)
    if valid:
        axis.plot([r["step"] for r in valid], [r["valid_mlm_loss"] for r in valid], "o-",
                  label="valid masked-LM loss")
    axis.set_xlabel("step")
    axis.set_ylabel("nats")
    axis.set_title(title)
    axis.grid(alpha=0.3)
    axis.legend()
    figure.tight_layout()
    with atomic_file(out) as temp:
        figure.savefig(temp, format="png")
    pyplot.close(figure)
