"""Checkpoints: complete or absent (written to a temporary folder, then renamed), the last K kept, loaded with
`weights_only=True` (tensors and plain containers only: a checkpoint cannot run code when it is loaded); and the
CheckpointManager, a training run's policy for them."""

import json
import os
import re
import shutil
from pathlib import Path

import torch

from bertpipe import BertpipeError
from bertpipe.atomic import atomic_dir
from bertpipe.settings import TrainingSettings

STEP_FOLDER = re.compile(r"^step-(\d{8})$")


def _remove_abandoned(folder: Path) -> None:
    """Remove the temporary folders of saves whose process is gone (killed mid-save): they can hold gigabytes."""
    for temp in folder.glob(".step-*.tmp-*"):
        pid = int(temp.name.rsplit("-", 1)[1])
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            shutil.rmtree(temp, ignore_errors=True)
        except PermissionError:
            pass  # alive, another user's


def save(folder, step: int, state: dict, keep_last: int) -> Path:
    """Write `state` as `<folder>/step-NNNNNNNN/` and drop all but the newest `keep_last` checkpoints."""
    target = Path(folder) / f"step-{step:08d}"
    if target.parent.is_dir():
        _remove_abandoned(target.parent)
    with atomic_dir(target) as temp:
        torch.save(state, temp / "state.pt")
        (temp / "meta.json").write_text(json.dumps({"step": step}) + "\n")
    for old in checkpoints(folder)[:-keep_last]:
        shutil.rmtree(old)
    return target


def checkpoints(folder) -> list:
    """The complete checkpoints under `folder`, oldest first."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    found = [p for p in folder.iterdir() if STEP_FOLDER.match(p.name) and (p / "state.pt").is_file()]
    return sorted(found, key=lambda p: p.name)


def latest(folder):
    """The newest complete checkpoint under `folder`, or None."""
    found = checkpoints(folder)
    return found[-1] if found else None


def load(checkpoint) -> dict:
    return torch.load(Path(checkpoint) / "state.pt", map_location="cpu", weights_only=True)


class CheckpointManager:
    """The checkpoint policy of a training run: when to save, where to resume from, what must match to resume, and
    which checkpoints to keep. The trainer asks it; it never decides these itself."""

    def __init__(self, save=None, load=None, init_from=None, interval: int = TrainingSettings.save_interval,
                 keep_last: int = TrainingSettings.keep_last):
        """`save`: the folder checkpoints go to (None: none are written); `load`: another folder to resume from
        (Megatron's --load); `init_from`: a checkpoint (or folder of them) whose weights alone start the run."""
        self.folder, self.load_folder, self.init_from = save, load, init_from
        self.interval, self.keep_last = interval, keep_last

    def due(self, step: int, last_step: int) -> bool:
        return step % self.interval == 0 or step == last_step

    def resume_point(self):
        """The newest complete checkpoint of --save and --load (--save's on a tie), or None."""
        found = [latest(folder) for folder in (self.folder, self.load_folder) if folder]
        found = [path for path in found if path is not None]
        return max(found, key=lambda path: path.name) if found else None

    def initial_weights(self):
        """(folder, state) of --init-from, or None."""
        if not self.init_from:
            return None
        source = latest(self.init_from) or Path(self.init_from)
        if not (source / "state.pt").is_file():
            raise BertpipeError(f"--init-from {self.init_from}: no checkpoint there")
        return source, load(source)

    @staticmethod
    def resume_conflicts(saved: dict, current: dict) -> list:
        """What differs between a checkpoint's run and this one such that resuming would read other samples than
        the saved run would have, or load another model: the batch's shape, the processes, the model."""
        changed = [f"{key} {saved['phase'][key]} -> {current['phase'][key]}"
                   for key in ("batch_size", "gradient_accumulation_steps")
                   if saved["phase"][key] != current["phase"][key]]
        if saved["world"] != current["world"]:
            changed.append(f"processes {saved['world']} -> {current['world']}")
        if saved["model_config"] != current["model_config"]:
            changed.append("model config")
        return changed

    def save(self, step: int, state: dict):
        """Write the checkpoint of `step` (None without a --save folder)."""
        return save(self.folder, step, state, self.keep_last) if self.folder else None
