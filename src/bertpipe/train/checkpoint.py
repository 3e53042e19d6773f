"""Checkpoints: complete or absent (written to a temporary folder, synced, then renamed), the last K kept, loaded
with `weights_only=True` (tensors and plain containers only: a checkpoint cannot run code when it is loaded); and the
CheckpointManager, a training run's policy for them: when to save, which checkpoint to resume, and what a checkpoint
must share with the run that resumes it."""

import json
import logging
import os
import re
import shutil
import socket
import time
from pathlib import Path

import torch

from bertpipe import BertpipeError
from bertpipe.atomic import atomic_dir
from bertpipe.settings import STALE_POLICIES, TrainingSettings

STEP_FOLDER = re.compile(r"^step-(\d{8})$")

log = logging.getLogger(__name__)


def set_aside(path: Path, why: str) -> Path:
    """Rename `path` to `<path>.<why>-<UTC time>`: out of the way of every later run, kept for a person to judge."""
    aside = path.with_name(f"{path.name}.{why}-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}")
    os.replace(path, aside)
    return aside


ABANDONED_SECONDS = 3600  # a save that has not changed its temporary folder for this long has ended without it


def _remove_abandoned(folder: Path) -> None:
    """Remove the temporary folders of saves that ended without renaming them (killed, or their node lost): they can
    hold gigabytes. A folder (atomic.py names it `.step-N.tmp-<host>-<pid>`) is abandoned when its process is gone
    from this host, or, from another host whose processes cannot be seen from here, once untouched for an hour."""
    host = socket.gethostname()
    for temp in folder.glob(".step-*.tmp-*"):
        owner, _, pid = temp.name.split(".tmp-", 1)[1].rpartition("-")
        if owner == host and pid.isdigit():
            try:
                os.kill(int(pid), 0)
                continue
            except ProcessLookupError:
                pass
            except PermissionError:
                continue  # alive, another user's
        elif time.time() - temp.stat().st_mtime < ABANDONED_SECONDS:
            continue
        shutil.rmtree(temp, ignore_errors=True)


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
                 keep_last: int = TrainingSettings.keep_last, stale: str = "refuse"):
        """`save`: the folder checkpoints go to (None: none are written); `load`: another folder to resume from
        (Megatron's --load); `init_from`: a checkpoint (or folder of them) whose weights alone start the run;
        `stale`: what a checkpoint of another run in `save` meets: "refuse" (an error naming what changed) or
        "set-aside" (the folder is moved aside and the run starts afresh: the workflow's choice, since Snakemake
        reruns a phase exactly when its inputs or settings changed)."""
        if stale not in STALE_POLICIES:
            raise ValueError(f"stale: {stale!r} is not one of {STALE_POLICIES}")
        self.folder, self.load_folder, self.init_from = save, load, init_from
        self.interval, self.keep_last, self.stale = interval, keep_last, stale
        self.set_aside = []  # what this run moved aside, for its record

    def due(self, step: int, last_step: int) -> bool:
        return step % self.interval == 0 or step == last_step

    def resume(self, current: dict):
        """(checkpoint, state) to resume the run `current` (Trainer.identity) from, or None to start afresh; asked
        on rank 0 alone, which tells the others. The candidates are the checkpoints of --save and --load, newest
        first (--save's on a tie). One that does not load (truncated by a crash, damaged) is renamed aside with a
        warning and the next older one is tried. The newest that loads must be of this run (`conflicts`), or it
        meets the `stale` policy."""
        candidates = [(path, rank) for rank, folder in enumerate((self.load_folder, self.folder)) if folder
                      for path in checkpoints(folder)]
        for path, _ in sorted(candidates, key=lambda c: (c[0].name, c[1]), reverse=True):
            try:
                state = load(path)
            except Exception as error:  # torch reports a short or damaged file in several ways
                aside = set_aside(path, "unreadable")
                self.set_aside.append(str(aside))
                log.warning("%s does not load (%s); renamed to %s, resuming from the one before", path,
                            str(error).splitlines()[0], aside.name)
                continue
            changed = self.conflicts(state, current)
            if not changed:
                return path, state
            why = f"{path} is of another run ({'; '.join(changed)})"
            if self.stale == "refuse" or path.parent != Path(self.folder):
                raise BertpipeError(f"{why}: resuming would continue that run, not start this one; use the same "
                                    "inputs and settings, another --save folder, or --stale-checkpoints set-aside")
            aside = set_aside(Path(self.folder), "stale")
            self.set_aside.append(str(aside))
            log.warning("%s: moved its checkpoints to %s and starting afresh", why, aside)
            return None
        return None

    def initial_weights(self, current: dict):
        """(checkpoint, state) of --init-from, or None; its model and tokenizer must be the run `current`'s."""
        if not self.init_from:
            return None
        source = latest(self.init_from) or Path(self.init_from)
        if not (source / "state.pt").is_file():
            raise BertpipeError(f"--init-from {self.init_from}: no checkpoint there")
        try:
            state = load(source)
        except Exception as error:  # as in resume
            raise BertpipeError(f"--init-from {source}: the checkpoint does not load ({str(error).splitlines()[0]}); "
                                "train the phase it comes from again") from None
        if state["model_config"] != current["model_config"]:
            raise BertpipeError(f"--init-from {source}: its model config {state['model_config']} differs from "
                                f"this run's {current['model_config']}")
        tokenizer, ours = state.get("inputs", {}).get("tokenizer"), current["inputs"].get("tokenizer")
        if ours and tokenizer != ours:
            raise BertpipeError(f"--init-from {source} was trained with another tokenizer (content hash {tokenizer}, "
                                f"this run's {ours}): its token ids mean other tokens here; train that phase again")
        return source, state

    @staticmethod
    def conflicts(saved: dict, current: dict) -> list:
        """What differs between a checkpoint's run and the run `current` such that resuming would continue another
        run: other inputs (content hashes of the tokenizer and the training data), other samples a step (the
        sequence length, the batch's shape, the processes), another model or precision."""
        changed = [f"{key} {saved['phase'].get(key)} -> {current['phase'][key]}"
                   for key in ("seq_length", "batch_size", "gradient_accumulation_steps")
                   if saved["phase"].get(key) != current["phase"][key]]
        if saved["world"] != current["world"]:
            changed.append(f"processes {saved['world']} -> {current['world']}")
        if saved["model_config"] != current["model_config"]:
            changed.append("model config")
        if saved["training"]["precision"] != current["training"]["precision"]:
            changed.append(f"precision {saved['training']['precision']} -> {current['training']['precision']}")
        recorded = saved.get("inputs", {})
        changed += [f"{name} content hash {recorded.get(name, 'not recorded')} -> {value}"
                    for name, value in current["inputs"].items() if recorded.get(name) != value]
        return changed

    def save(self, step: int, state: dict):
        """Write the checkpoint of `step` (None without a --save folder)."""
        return save(self.folder, step, state, self.keep_last) if self.folder else None
