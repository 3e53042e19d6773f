"""Checkpoints: atomic folders, the last K kept, abandoned temporary folders removed, weights-only loading."""

import subprocess
import sys

import pytest
import torch

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
