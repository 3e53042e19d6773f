"""Checkpoints: atomic folders, the last K kept, abandoned temporary folders removed, weights-only loading."""

import os
import socket
import subprocess
import sys
import time

import pytest
import torch

from bertpipe import BertpipeError, atomic
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
    hours_ago = time.time() - 2 * atomic.ABANDONED_SECONDS
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


def record(identity=None, execution=None) -> dict:
    """A run's record (Trainer.run_record), with changes to its identity and execution parts."""
    run = {"identity": {"inputs": {"tokenizer": "t1", "train_data": "d1"}, "flags": {"split": "1000,1,1"},
                        "world": 2, "model": {"num_layers": 2}, "training": {"precision": "fp16", "lr": 1e-3},
                        "phase": {"seq_length": 128, "batch_size": 8},
                        "initialised_from": checkpoint.FROM_SCRATCH},
           "execution": {"training": {"compile": True, "num_workers": 2}}}
    for part, changes in (("identity", identity or {}), ("execution", execution or {})):
        for key, value in changes.items():
            current = run[part][key]
            run[part][key] = {**current, **value} if isinstance(current, dict) and isinstance(value, dict) else value
    return run


def save_run(folder, step, **changes):
    run = record(**changes)
    return checkpoint.save(folder, step, {"step": torch.tensor(step), "run": run}, keep_last=5, meta=run)


def test_the_manager_resumes_from_the_newest_of_save_and_load_and_from_save_on_a_tie(tmp_path):
    save, load = tmp_path / "save", tmp_path / "load"
    manager = checkpoint.CheckpointManager(save, load)
    assert manager.resume(record()) is None
    save_run(load, 4)
    assert manager.resume(record()) == load / "step-00000004"
    save_run(save, 2)
    assert manager.resume(record()) == load / "step-00000004", "the newer one, wherever it is"
    save_run(save, 4)
    assert manager.resume(record()) == save / "step-00000004"


def test_the_manager_names_every_identity_setting_that_changed_and_only_those():
    other = record(identity={"inputs": {"tokenizer": "t2"}, "world": 1, "model": {"num_layers": 4},
                             "training": {"precision": "bf16", "lr": 9e-4}, "phase": {"seq_length": 512},
                             "flags": {"split": "98,1,1"},
                             "initialised_from": {"identity": "abc", "step": 20, "state": "0a1b2c3d"}},
                   execution={"training": {"compile": False}})
    assert checkpoint.differences(record()["identity"], record()["identity"]) == []
    assert checkpoint.differences(record()["identity"], other["identity"]) == [
        "inputs.tokenizer t1 -> t2", "flags.split 1000,1,1 -> 98,1,1", "world 2 -> 1", "model.num_layers 2 -> 4",
        "training.precision fp16 -> bf16", "training.lr 0.001 -> 0.0009", "phase.seq_length 128 -> 512",
        "initialised_from.identity None -> abc", "initialised_from.step None -> 20",
        "initialised_from.state None -> 0a1b2c3d"]
    # A setting one side does not record is a change too (a checkpoint of an earlier bertpipe, a new setting).
    fewer = record()["identity"]
    del fewer["training"]["lr"]
    assert checkpoint.differences(fewer, record()["identity"]) == ["training.lr not recorded -> 0.001"]
    assert checkpoint.differences(None, record()["identity"]) == [
        "its identity is not recorded (saved by an earlier bertpipe)"]


def test_a_resume_across_a_change_of_execution_settings_is_allowed_and_logged(tmp_path, caplog):
    save_run(tmp_path, 3)
    crossing = record(execution={"training": {"compile": False, "num_workers": 0}})
    with caplog.at_level("INFO"):
        assert checkpoint.CheckpointManager(tmp_path).resume(crossing) == tmp_path / "step-00000003"
    assert "training.compile True -> False; training.num_workers 2 -> 0" in caplog.text


def test_a_checkpoint_that_does_not_load_is_renamed_aside_and_the_one_before_resumed(tmp_path, caplog):
    save_run(tmp_path, 3)
    newest = save_run(tmp_path, 6)
    data = (newest / "state.pt").read_bytes()
    (newest / "state.pt").write_bytes(data[:len(data) // 2])  # as a crash during a write that was not synced
    manager = checkpoint.CheckpointManager(tmp_path)
    assert manager.resume(record()) == tmp_path / "step-00000003"
    assert checkpoint.load(tmp_path / "step-00000003")["step"].item() == 3
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith("step-00000006.damaged-")] != []
    assert "step-00000006 is damaged" in caplog.text and manager.set_aside


@pytest.mark.parametrize("damage", ["a flipped byte", "appended bytes", "a meta.json that does not parse"])
def test_any_damage_to_a_checkpoint_is_told_from_a_whole_one(tmp_path, damage):
    """The size and CRC32C in meta.json catch what torch might load without a word (a flipped byte in a tensor)."""
    saved = save_run(tmp_path, 2)
    state_file, meta_file = saved / "state.pt", saved / "meta.json"
    if damage == "a flipped byte":
        data = bytearray(state_file.read_bytes())
        data[len(data) // 2] ^= 0x01
        state_file.write_bytes(bytes(data))
    elif damage == "appended bytes":
        state_file.write_bytes(state_file.read_bytes() + b"\0")
    else:
        meta_file.write_text(meta_file.read_text()[:10])
    with pytest.raises(checkpoint.CheckpointDamaged):
        checkpoint.load(saved)


def test_an_io_error_stops_the_resume_and_renames_nothing(tmp_path):
    """A real EIO from the kernel: reading /proc/self/mem at offset 0 (an address no process maps) fails with EIO,
    as a failing disk or a stale NFS handle does."""
    save_run(tmp_path, 3)
    newest = save_run(tmp_path, 6)
    (newest / "state.pt").unlink()
    (newest / "state.pt").symlink_to("/proc/self/mem")
    manager = checkpoint.CheckpointManager(tmp_path, stale="set-aside")
    with pytest.raises(checkpoint.CheckpointUnreadable, match="step-00000006: reading it failed .*nothing was renamed"):
        manager.resume(record())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step-00000003", "step-00000006"] and not manager.set_aside
    with pytest.raises(checkpoint.CheckpointUnreadable):
        checkpoint.load(newest)


def test_a_checkpoint_of_another_run_is_refused_or_set_aside_whole(tmp_path, caplog):
    save_run(tmp_path / "checkpoints", 6)
    changed = record(identity={"training": {"lr": 9e-4}})
    with pytest.raises(BertpipeError, match="training.lr 0.001 -> 0.0009.*--stale-checkpoints set-aside"):
        checkpoint.CheckpointManager(tmp_path / "checkpoints").resume(changed)
    assert checkpoint.latest(tmp_path / "checkpoints").name == "step-00000006", "refusing moves nothing"
    manager = checkpoint.CheckpointManager(tmp_path / "checkpoints", stale="set-aside")
    assert manager.resume(changed) is None
    aside = [p for p in tmp_path.iterdir() if p.name.startswith("checkpoints.stale-")]
    assert len(aside) == 1 and (aside[0] / "step-00000006/state.pt").is_file()
    assert not (tmp_path / "checkpoints").exists() and manager.set_aside == [str(aside[0])]
    assert "moved its checkpoints to" in caplog.text


def test_the_initial_checkpoint_is_the_newest_of_a_folder_with_the_same_model_and_tokenizer(tmp_path):
    save_run(tmp_path / "phase1", 5)
    source, origin = checkpoint.CheckpointManager(init_from=tmp_path / "phase1").initial_checkpoint(
        record()["identity"])
    assert source.name == "step-00000005"
    state_crc = checkpoint.read_meta(source)["state_crc32c"]
    assert origin == {"identity": checkpoint.identity_digest(record()["identity"]), "step": 5, "state": state_crc}
    assert checkpoint.CheckpointManager().initial_checkpoint(record()["identity"]) is None
    with pytest.raises(BertpipeError, match="no checkpoint there"):
        checkpoint.CheckpointManager(init_from=tmp_path / "empty").initial_checkpoint(record()["identity"])
    with pytest.raises(BertpipeError, match="trained with another tokenizer"):
        checkpoint.CheckpointManager(init_from=tmp_path / "phase1").initial_checkpoint(
            record(identity={"inputs": {"tokenizer": "t2"}})["identity"])
    with pytest.raises(BertpipeError, match="model config"):
        checkpoint.CheckpointManager(init_from=tmp_path / "phase1").initial_checkpoint(
            record(identity={"model": {"num_layers": 4}})["identity"])
    # Another run of the earlier phase (another lr) is another origin: a checkpoint started from the first is stale.
    save_run(tmp_path / "phase1", 6, identity={"training": {"lr": 5e-4}})
    _, retrained = checkpoint.CheckpointManager(init_from=tmp_path / "phase1").initial_checkpoint(
        record()["identity"])
    assert retrained["identity"] != origin["identity"]
    # So are other weights of the same settings (the phase trained again after its checkpoints were deleted).
    run = record()
    checkpoint.save(tmp_path / "again", 5, {"step": torch.tensor(5), "other": torch.ones(3)}, keep_last=1, meta=run)
    _, again = checkpoint.CheckpointManager(init_from=tmp_path / "again").initial_checkpoint(record()["identity"])
    assert again["identity"] == origin["identity"] and again["step"] == 5 and again["state"] != origin["state"]


def test_a_checkpoint_saved_before_checkpoints_recorded_their_run_still_starts_the_next_phase(tmp_path):
    """An earlier bertpipe's meta.json held the step alone; its state held the model config and the input hashes."""
    folder = tmp_path / "phase1/step-00000005"
    folder.mkdir(parents=True)
    torch.save({"model_config": {"num_layers": 2}, "inputs": {"tokenizer": "t1"}}, folder / "state.pt")
    (folder / "meta.json").write_text('{"step": 5}\n')
    source, origin = checkpoint.CheckpointManager(init_from=tmp_path / "phase1").initial_checkpoint(
        record()["identity"])
    assert source == folder and origin["step"] == 5 and origin["identity"]
    with pytest.raises(BertpipeError, match="trained with another tokenizer"):
        checkpoint.CheckpointManager(init_from=tmp_path / "phase1").initial_checkpoint(
            record(identity={"inputs": {"tokenizer": "t2"}})["identity"])


def test_a_checkpoint_without_its_meta_json_is_damaged_not_another_runs(tmp_path):
    """A partial copy or a deletion, not a run of other settings: the older checkpoints are the run's and stay."""
    save_run(tmp_path, 3)
    newest = save_run(tmp_path, 6)
    (newest / "meta.json").unlink()
    manager = checkpoint.CheckpointManager(tmp_path, stale="set-aside")
    assert manager.resume(record()) == tmp_path / "step-00000003"
    assert [p.name.split(".")[1].split("-")[0] for p in tmp_path.glob("step-00000006.*")] == ["damaged"]


def test_no_save_folder_writes_nothing():
    assert checkpoint.CheckpointManager().save(1, {"step": torch.tensor(1)}, record()) is None
