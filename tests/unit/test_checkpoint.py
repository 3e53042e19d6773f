"""Checkpoints: atomic folders, the last K kept, abandoned temporary folders removed, weights-only loading."""

import os
import socket
import subprocess
import sys
import time

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


def test_temporary_folders_of_dead_savers_are_removed_here_by_pid_and_from_other_hosts_by_age(tmp_path):
    host = socket.gethostname()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    abandoned = tmp_path / f".step-00000005.tmp-{host}-{int(dead.stdout)}"
    alive = tmp_path / f".step-00000006.tmp-{host}-1"  # pid 1 is alive
    elsewhere_old = tmp_path / ".step-00000004.tmp-node17-4242"
    elsewhere_recent = tmp_path / ".step-00000008.tmp-node17-4243"  # maybe saving now, on another node
    for folder in (abandoned, alive, elsewhere_old, elsewhere_recent):
        folder.mkdir()
        (folder / "state.pt").write_bytes(b"half written")
    hours_ago = time.time() - 2 * checkpoint.ABANDONED_SECONDS
    os.utime(elsewhere_old, (hours_ago, hours_ago))
    checkpoint.save(tmp_path, 7, {"step": torch.tensor(7)}, keep_last=2)
    assert not abandoned.exists() and not elsewhere_old.exists() and alive.exists() and elsewhere_recent.exists()


def test_loading_refuses_code(tmp_path):
    folder = tmp_path / "step-00000001"
    folder.mkdir()
    torch.save({"model": object()}, folder / "state.pt")  # a pickled object, not tensors and containers
    with pytest.raises(Exception, match="Weights only load failed"):
        checkpoint.load(folder)


def test_the_manager_saves_every_interval_and_at_the_last_step():
    manager = checkpoint.CheckpointManager(interval=3)
    assert [step for step in range(1, 11) if manager.due(step, last_step=10)] == [3, 6, 9, 10]


def identity(**changes) -> dict:
    """A run's identity (Trainer.identity), with `changes` to its parts."""
    run = {"inputs": {"tokenizer": "t1", "train_data": "d1"}, "world": 2, "model_config": {"a": 1},
           "training": {"precision": "fp16"}, "phase": {"seq_length": 128, "batch_size": 8,
                                                      "gradient_accumulation_steps": 1}}
    for key, value in changes.items():
        run[key] = {**run[key], **value} if isinstance(run[key], dict) else value
    return run


def save_run(folder, step, **changes):
    return checkpoint.save(folder, step, {"step": torch.tensor(step), **identity(**changes)}, keep_last=5)


def test_the_manager_resumes_from_the_newest_of_save_and_load_and_from_save_on_a_tie(tmp_path):
    save, load = tmp_path / "save", tmp_path / "load"
    manager = checkpoint.CheckpointManager(save, load)
    assert manager.resume(identity()) is None
    save_run(load, 4)
    assert manager.resume(identity())[0] == load / "step-00000004"
    save_run(save, 2)
    assert manager.resume(identity())[0] == load / "step-00000004", "the newer one, wherever it is"
    save_run(save, 4)
    assert manager.resume(identity())[0] == save / "step-00000004"


def test_the_manager_names_what_forbids_a_resume():
    other = identity(inputs={"tokenizer": "t2"}, world=1, model_config={"a": 2}, training={"precision": "bf16"},
                     phase={"seq_length": 512, "batch_size": 4})
    assert checkpoint.CheckpointManager.conflicts(identity(), identity()) == []
    assert checkpoint.CheckpointManager.conflicts(identity(), other) == [
        "seq_length 128 -> 512", "batch_size 8 -> 4", "processes 2 -> 1", "model config", "precision fp16 -> bf16",
        "tokenizer content hash t1 -> t2"]
    unrecorded = {key: value for key, value in identity().items() if key != "inputs"}  # saved by an older bertpipe
    assert checkpoint.CheckpointManager.conflicts(unrecorded, identity()) == [
        "tokenizer content hash not recorded -> t1", "train_data content hash not recorded -> d1"]


def test_a_checkpoint_that_does_not_load_is_renamed_aside_and_the_one_before_resumed(tmp_path, caplog):
    save_run(tmp_path, 3)
    newest = save_run(tmp_path, 6)
    data = (newest / "state.pt").read_bytes()
    (newest / "state.pt").write_bytes(data[:len(data) // 2])  # as a crash during a write that was not synced
    manager = checkpoint.CheckpointManager(tmp_path)
    path, state = manager.resume(identity())
    assert path == tmp_path / "step-00000003" and state["step"].item() == 3
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith("step-00000006.unreadable-")] != []
    assert "step-00000006 does not load" in caplog.text and manager.set_aside


def test_a_checkpoint_of_another_run_is_refused_or_set_aside_whole(tmp_path, caplog):
    save_run(tmp_path / "checkpoints", 6)
    changed = identity(inputs={"tokenizer": "t2"})
    with pytest.raises(BertpipeError, match="tokenizer content hash t1 -> t2.*--stale-checkpoints set-aside"):
        checkpoint.CheckpointManager(tmp_path / "checkpoints").resume(changed)
    assert checkpoint.latest(tmp_path / "checkpoints").name == "step-00000006", "refusing moves nothing"
    manager = checkpoint.CheckpointManager(tmp_path / "checkpoints", stale="set-aside")
    assert manager.resume(changed) is None
    aside = [p for p in tmp_path.iterdir() if p.name.startswith("checkpoints.stale-")]
    assert len(aside) == 1 and (aside[0] / "step-00000006/state.pt").is_file()
    assert not (tmp_path / "checkpoints").exists() and manager.set_aside == [str(aside[0])]
    assert "moved its checkpoints to" in caplog.text


def test_initial_weights_come_from_the_newest_checkpoint_of_a_folder_with_the_same_model_and_tokenizer(tmp_path):
    save_run(tmp_path / "phase1", 5)
    source, state = checkpoint.CheckpointManager(init_from=tmp_path / "phase1").initial_weights(identity())
    assert source.name == "step-00000005" and state["step"].item() == 5
    assert checkpoint.CheckpointManager().initial_weights(identity()) is None
    with pytest.raises(BertpipeError, match="no checkpoint there"):
        checkpoint.CheckpointManager(init_from=tmp_path / "empty").initial_weights(identity())
    with pytest.raises(BertpipeError, match="trained with another tokenizer"):
        checkpoint.CheckpointManager(init_from=tmp_path / "phase1").initial_weights(
            identity(inputs={"tokenizer": "t2"}))
    with pytest.raises(BertpipeError, match="model config"):
        checkpoint.CheckpointManager(init_from=tmp_path / "phase1").initial_weights(identity(model_config={"a": 2}))


def test_no_save_folder_writes_nothing(tmp_path):
    assert checkpoint.CheckpointManager().save(1, {"step": torch.tensor(1)}) is None
