"""Checkpoints: complete or absent (written to a temporary folder, then renamed), the last K kept, loaded with
`weights_only=True` (tensors and plain containers only: a checkpoint cannot run code when it is loaded)."""

import json
import os
import re
import shutil
from pathlib import Path

import torch

from bertpipe.atomic import atomic_dir

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
