"""Checkpoints: complete or absent (written to a temporary folder, synced, then renamed), the last K kept, loaded
with `weights_only=True` (tensors and plain containers only: a checkpoint cannot run code when it is loaded); and the
CheckpointManager, a training run's policy for them: when to save, which checkpoint to resume, and what a checkpoint
must share with the run that resumes it.

Each checkpoint's `meta.json` records its run (the identity and the execution settings, Trainer.run_record) and the
size and CRC32C of its `state.pt`, so that a damaged file (set aside; the one before is used) is told from a file
the file system failed to read (the run stops and nothing is renamed: the file may be whole)."""

import hashlib
import json
import logging
import os
import re
import shutil
import time
from pathlib import Path

import torch

from bertpipe import BertpipeError
from bertpipe.atomic import atomic_dir, remove_abandoned
from bertpipe.settings import STALE_POLICIES, TrainingSettings

STEP_FOLDER = re.compile(r"^step-(\d{8})$")

log = logging.getLogger(__name__)


def set_aside(path: Path, why: str) -> Path:
    """Rename `path` to `<path>.<why>-<UTC time>`: out of the way of every later run, kept for a person to judge."""
    aside = path.with_name(f"{path.name}.{why}-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}")
    os.replace(path, aside)
    return aside


class CheckpointDamaged(Exception):
    """A checkpoint whose bytes are not what was saved (cut short by a crash, or damaged): set aside, not retried."""


class CheckpointUnreadable(BertpipeError):
    """A checkpoint the file system failed to read (EIO, ESTALE on a shared file system, ...): it may be whole, so it
    is left in place and the run stops; a later run reads it again."""


def _unreadable(path: Path, error: OSError) -> CheckpointUnreadable:
    return CheckpointUnreadable(f"{path}: reading it failed ({error.strerror or error}); the checkpoint may be whole, "
                                "so nothing was renamed or deleted: check the file system (a shared mount, a disk), "
                                "then rerun to resume")


def _crc32c(path: Path) -> tuple:
    """(bytes, CRC32C) of a file, read in chunks: an I/O error surfaces here as an OSError, before torch parses it."""
    import google_crc32c

    checksum, size = google_crc32c.Checksum(), 0
    with open(path, "rb") as f:
        while chunk := f.read(READ_CHUNK_BYTES):
            checksum.update(chunk)
            size += len(chunk)
    return size, checksum.hexdigest().decode()


READ_CHUNK_BYTES = 1 << 24


def save(folder, step: int, state: dict, keep_last: int, meta: dict = None) -> Path:
    """Write `state` as `<folder>/step-NNNNNNNN/` with `meta.json` (the step, `meta`, and the size and CRC32C of
    `state.pt`, which tell a damaged file from a whole one) and drop all but the newest `keep_last` checkpoints."""
    target = Path(folder) / f"step-{step:08d}"
    if target.parent.is_dir():  # they can hold gigabytes
        remove_abandoned(target.parent, ".step-*.tmp-*")
    with atomic_dir(target) as temp:
        torch.save(state, temp / "state.pt")
        size, crc = _crc32c(temp / "state.pt")
        (temp / "meta.json").write_text(json.dumps({"step": step, **(meta or {}), "state_bytes": size,
                                                    "state_crc32c": crc}) + "\n")
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


def read_meta(checkpoint, required: bool = False) -> dict:
    """A checkpoint's `meta.json`, its state's bytes checked against the size and CRC32C recorded there (a checkpoint
    saved before they were recorded is only read through; one made by hand may have no meta.json, unless
    `required`: every checkpoint a run saves has one). Raises CheckpointDamaged or CheckpointUnreadable."""
    checkpoint = Path(checkpoint)
    try:
        meta_file = checkpoint / "meta.json"
        meta = json.loads(meta_file.read_text()) if required or meta_file.exists() else {}
        size, crc = _crc32c(checkpoint / "state.pt")
    except FileNotFoundError as error:
        raise CheckpointDamaged(f"{error.filename} is missing") from None
    except OSError as error:
        raise _unreadable(checkpoint, error) from None
    except ValueError as error:
        raise CheckpointDamaged(f"meta.json does not parse ({error})") from None
    if meta.get("state_crc32c", crc) != crc or meta.get("state_bytes", size) != size:
        raise CheckpointDamaged(f"state.pt has {size} bytes of CRC32C {crc}; {meta.get('state_bytes')} bytes of "
                                f"{meta.get('state_crc32c')} were saved")
    return meta


def load(checkpoint) -> dict:
    """A checkpoint's state, checked against its meta.json first. Raises CheckpointDamaged (the bytes are not what was
    saved, or do not parse) or CheckpointUnreadable (the file system failed)."""
    verified = "state_crc32c" in read_meta(checkpoint)
    try:
        return torch.load(Path(checkpoint) / "state.pt", map_location="cpu", weights_only=True)
    except OSError as error:
        raise _unreadable(Path(checkpoint), error) from None
    except Exception as error:  # torch reports a short or damaged file in several ways
        if isinstance(error.__cause__ or error.__context__, OSError):
            raise _unreadable(Path(checkpoint), error.__cause__ or error.__context__) from None
        if verified:  # its bytes are those saved: reading them again failed, not the file
            raise _unreadable(Path(checkpoint), OSError(str(error).strip().splitlines()[0])) from None
        raise CheckpointDamaged(str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__) \
            from None


def differences(saved, current: dict) -> list:
    """'key saved -> current' for every setting (dotted key) whose value differs between two records of a run."""
    if saved is None:
        return ["its identity is not recorded (saved by an earlier bertpipe)"]
    old, new = _flat(saved), _flat(current)
    keys = [*new, *(key for key in old if key not in new)]
    return [f"{key} {old.get(key, 'not recorded')} -> {new.get(key, 'not recorded')}"
            for key in keys if old.get(key, _ABSENT) != new.get(key, _ABSENT)]


_ABSENT = object()  # a key one record has and the other not


def _flat(values: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in values.items():
        if isinstance(value, dict) and value:
            flat.update(_flat(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


# What a run's identity records of the checkpoint it started from when it started from initial weights.
FROM_SCRATCH = {"identity": None, "step": None, "state": None}


def identity_digest(identity: dict) -> str:
    """A run's identity as a short hash: what a checkpoint initialised from it records of it."""
    return hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()[:16]


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

    def resume(self, run: dict):
        """The checkpoint to resume the run `run` from ({"identity": ..., "execution": ...}, Trainer.run_record), or
        None to start afresh; asked on rank 0 alone, which tells the others. The candidates are the checkpoints of
        --save and --load, newest first (--save's on a tie). One whose bytes are not what was saved (cut short by a
        crash, damaged) is renamed aside with a warning and the next older one is tried; one the file system fails
        to read stops the run (CheckpointUnreadable), renaming nothing. The newest whole one must be of this run's
        identity, or it meets the `stale` policy; changes of how the run is carried out are logged."""
        candidates = [(path, rank) for rank, folder in enumerate((self.load_folder, self.folder)) if folder
                      for path in checkpoints(folder)]
        for path, _ in sorted(candidates, key=lambda c: (c[0].name, c[1]), reverse=True):
            try:
                meta = read_meta(path, required=True)
            except CheckpointDamaged as error:
                aside = set_aside(path, "damaged")
                self.set_aside.append(str(aside))
                log.warning("%s is damaged (%s); renamed to %s, resuming from the one before", path, error,
                            aside.name)
                continue
            changed = differences(meta.get("identity"), run["identity"])
            if not changed:
                crossed = differences(meta.get("execution", {}), run["execution"])
                if crossed:
                    log.info("resuming %s across changes of how the run is carried out, not of what it computes: %s",
                             path, "; ".join(crossed))
                return path
            why = f"{path} is of another run ({'; '.join(changed)})"
            if self.stale == "refuse" or path.parent != Path(self.folder):
                raise BertpipeError(f"{why}: resuming would continue that run, not start this one; use the same "
                                    "inputs and settings, another --save folder, or --stale-checkpoints set-aside")
            aside = set_aside(Path(self.folder), "stale")
            self.set_aside.append(str(aside))
            log.warning("%s: moved its checkpoints to %s and starting afresh", why, aside)
            return None
        return None

    def initial_checkpoint(self, identity: dict):
        """(checkpoint, what the run records of it) of --init-from, or None; asked on rank 0 alone. The checkpoint's
        model and tokenizer must be those of the run of `identity`; the record (its identity's digest and step) is
        part of this run's identity, so that a retrained earlier phase makes this one another run."""
        if not self.init_from:
            return None
        source = latest(self.init_from) or Path(self.init_from)
        if not (source / "state.pt").is_file():
            raise BertpipeError(f"--init-from {self.init_from}: no checkpoint there")
        try:
            meta = read_meta(source)
        except CheckpointDamaged as error:
            raise BertpipeError(f"--init-from {source}: the checkpoint is damaged ({error}); train the phase it comes "
                                "from again") from None
        theirs = meta.get("identity")
        if theirs is None:  # saved before checkpoints recorded their run: its state has the model and tokenizer
            try:
                state = load(source)
            except CheckpointDamaged as error:
                raise BertpipeError(f"--init-from {source}: the checkpoint is damaged ({error}); train the phase it "
                                    "comes from again") from None
            theirs = {"model": state.get("model_config"), "inputs": state.get("inputs", {})}
        if theirs.get("model") != identity["model"]:
            raise BertpipeError(f"--init-from {source}: its model config {theirs.get('model')} differs from this "
                                f"run's {identity['model']}")
        tokenizer, ours = theirs.get("inputs", {}).get("tokenizer"), identity["inputs"].get("tokenizer")
        if ours and tokenizer != ours:
            raise BertpipeError(f"--init-from {source} was trained with another tokenizer (content hash {tokenizer}, "
                                f"this run's {ours}): its token ids mean other tokens here; train that phase again")
        # Its CRC too: the same settings trained again (a deleted phase, a GPU's rounding) give other weights, which
        # make this run another, unless they are the same bytes.
        return source, {"identity": identity_digest(theirs), "step": meta.get("step"),
                        "state": meta.get("state_crc32c")}

    def save(self, step: int, state: dict, run: dict):
        """Write the checkpoint of `step` with the record of its run (None without a --save folder)."""
        return save(self.folder, step, state, self.keep_last, meta=run) if self.folder else None
