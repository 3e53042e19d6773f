"""A changed training setting never ships the old model: the workflow, run again after a change of phase 1's
learning rate alone, trains both phases afresh and registers a model of other weights; run again with nothing
changed, it has nothing to do."""

import re
from pathlib import Path
from urllib.parse import urlparse

import pytest
import yaml

from tests.conftest import SMALL_PIPELINE, snakemake

pytestmark = pytest.mark.slow

PHASES = [{"seq_length": 128, "batch_size": 8, "gradient_accumulation_steps": 1, "train_iters": 30, "lr": 1.0e-3},
          {"seq_length": 128, "batch_size": 8, "gradient_accumulation_steps": 1, "train_iters": 10, "lr": 1.0e-4}]
RUN = ("--cores", "2", "all", "--configfile", "config.demo.yaml", "small.yaml")


def registered_weights(folder) -> list:
    """The bytes of each registered version's model.safetensors, oldest version first."""
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{folder}/results/mlflow/mlflow.db")
    versions = sorted(client.search_model_versions("name='bertpipe-bert'"), key=lambda v: int(v.version))
    return [(Path(urlparse(v.source).path) / "artifacts/huggingface/model.safetensors").read_bytes()
            for v in versions]


@pytest.mark.timeout(1200)
def test_a_change_of_phase_1s_learning_rate_retrains_both_phases_and_registers_other_weights(workflow_dir):
    small = {**SMALL_PIPELINE, "pretrain": {**SMALL_PIPELINE["pretrain"], "phases": PHASES}}
    (workflow_dir / "small.yaml").write_text(yaml.safe_dump(small))
    snakemake(workflow_dir, *RUN)
    (first,) = registered_weights(workflow_dir)

    changed = [{**PHASES[0], "lr": 9.0e-4}, PHASES[1]]
    (workflow_dir / "small.yaml").write_text(yaml.safe_dump({**small, "pretrain": {**small["pretrain"],
                                                                                    "phases": changed}}))
    rerun = snakemake(workflow_dir, *RUN)
    finished = re.findall(r"Finished jobid: \d+ \(Rule: (\w+)\)", rerun.stderr)
    assert sorted(finished) == ["all", "evaluate", "export", "pretrain", "pretrain", "register"], finished
    phase1, phase2 = ((workflow_dir / f"logs/pretrain/phase{n}.log").read_text() for n in (1, 2))
    assert "phase.lr 0.001 -> 0.0009" in phase1 and "moved its checkpoints to" in phase1
    # Phase 2's own settings did not change: its checkpoints are another run's because they started from the other
    # phase-1 weights.
    assert "initialised_from.identity" in phase2 and "phase.lr" not in phase2 and "moved its checkpoints to" in phase2
    assert "resumed from" not in phase1 + phase2
    for log, steps in ((phase1, 30), (phase2, 10)):
        assert f"step {steps} loss" in log and "step 1 loss" in log, "trained from the first step to the last"
    assert len(list((workflow_dir / "results/pretrain").glob("phase*/checkpoints.stale-*"))) == 2

    first_again, second = registered_weights(workflow_dir)
    assert first_again == first and second != first, "the new version holds the retrained model"

    dry = snakemake(workflow_dir, "-n", *RUN)
    assert "Nothing to be done" in dry.stdout + dry.stderr
