"""Checkpoints: atomic folders, the last K kept, abandoned temporary folders removed, weights-only loading."""

import subprocess
import sys

import pytest
import torch

from bertpipe import BertpipeError
from bertpipe.train import checkpoint


def test_keeps_the_last_k_and_finds_the_newest(tmp_path):
    for step in (1, 2, 3, 4):
        checkpoint.save(tmp_path, step, {"step": torch.tensor(step)}, keep_last=2)
    assert [p.name for p in checkpoint.checkpoints(tmp_path)] == ["step-00000003", "step-00000004"]
    assert checkpoint.load(checkpoint.latest(tmp_path))["step"].item() == 4


def test_incomplete_folders_are_not_checkpoints(tmp_path):
    (tmp_path / "step-00000009").mkdir()  # no state.pt: a folder someone made by hand
    assert checkpoint.latest(tmp_path) is None


def test_temporary_folders_of_dead_savers_are_removed(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    abandoned = tmp_path / f".step-00000005.tmp-{int(dead.stdout)}"
    abandoned.mkdir()
    (abandoned / "state.pt").write_bytes(b"half written")
    ours = tmp_path / ".step-00000006.tmp-1"  # pid 1 is alive
    ours.mkdir()
    checkpoint.save(tmp_path, 7, {"step": torch.tensor(7)}, keep_last=2)
    assert not abandoned.exists() and ours.exists()


def test_loading_refuses_code(tmp_path):
    folder = tmp_path / "step-00000001"
    folder.mkdir()
    torch.save({"model": object()}, folder / "state.pt")  # a pickled object, not tensors and containers
    with pytest.raises(Exception, match="Weights only load failed"):
        checkpoint.load(folder)


def test_the_manager_saves_every_interval_and_at_the_last_step():
    manager = checkpoint.CheckpointManager(interval=3)
    assert [step for step in range(1, 11) if manager.due(step, last_step=10)] == [3, 6, 9, 10]


def test_the_manager_resumes_from_the_newest_of_save_and_load_and_from_save_on_a_tie(tmp_path):
    save, load = tmp_path / "save", tmp_path / "load"
    manager = checkpoint.CheckpointManager(save, load)
    assert manager.resume_point() is None
    checkpoint.save(load, 4, {"step": torch.tensor(4)}, keep_last=2)
    assert manager.resume_point() == load / "step-00000004"
    checkpoint.save(save, 2, {"step": torch.tensor(2)}, keep_last=2)
    assert manager.resume_point() == load / "step-00000004", "the newer one, wherever it is"
    checkpoint.save(save, 4, {"step": torch.tensor(4)}, keep_last=2)
    assert manager.resume_point() == save / "step-00000004"


def test_the_manager_names_what_forbids_a_resume():
    saved = {"phase": {"batch_size": 8, "gradient_accumulation_steps": 1}, "world": 2, "model_config": {"a": 1}}
    same = checkpoint.CheckpointManager.resume_conflicts(saved, saved)
    other = checkpoint.CheckpointManager.resume_conflicts(
        saved, {"phase": {"batch_size": 4, "gradient_accumulation_steps": 2}, "world": 1, "model_config": {"a": 2}})
    assert same == [] and other == ["batch_size 8 -> 4", "gradient_accumulation_steps 1 -> 2", "processes 2 -> 1",
                                    "model config"]


def test_initial_weights_come_from_the_newest_checkpoint_of_a_folder_or_a_clear_error(tmp_path):
    checkpoint.save(tmp_path / "phase1", 5, {"step": torch.tensor(5)}, keep_last=2)
    source, state = checkpoint.CheckpointManager(init_from=tmp_path / "phase1").initial_weights()
    assert source.name == "step-00000005" and state["step"].item() == 5
    assert checkpoint.CheckpointManager().initial_weights() is None
    with pytest.raises(BertpipeError, match="no checkpoint there"):
        checkpoint.CheckpointManager(init_from=tmp_path / "empty").initial_weights()


def test_no_save_folder_writes_nothing(tmp_path):
    assert checkpoint.CheckpointManager().save(1, {"step": torch.tensor(1)}) is None
