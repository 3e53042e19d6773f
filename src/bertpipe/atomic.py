"""Publish files and folders only when they are complete, and let one process at a time make a shared one.

Every stage writes to a temporary name beside the target and renames it at the end, so that a crash, a kill or an
error never leaves a half-written output where Snakemake or a later stage could take it as done. A stage that is
stopped removes its temporary output as it unwinds; one killed outright (SIGKILL, a lost node) cannot, so the next
write of the same target removes what such writers left (`remove_abandoned`). The data is synced
to disk before the rename, and the rename after it: otherwise a node that crashes just after can come back with the
new name on a short or empty file.
"""

import contextlib
import fcntl
import glob
import os
import shutil
import socket
import time
from pathlib import Path

ABANDONED_SECONDS = 3600  # a temporary output from another host untouched this long has lost its writer


def remove_abandoned(folder: Path, pattern: str) -> None:
    """Remove the temporary outputs matching `pattern` in `folder` whose writers ended without publishing them. One
    (named `.<name>.tmp-<host>-<pid>`, `_temp_name`) is abandoned when its process is gone from this host, or, from
    another host whose processes cannot be seen from here, once untouched for an hour."""
    host = socket.gethostname()
    for temp in Path(folder).glob(pattern):
        owner, _, pid = temp.name.split(".tmp-", 1)[1].rpartition("-")
        if owner == host and pid.isdigit():
            try:
                os.kill(int(pid), 0)
                continue
            except ProcessLookupError:
                pass
            except PermissionError:
                continue  # alive, another user's
        elif time.time() - temp.lstat().st_mtime < ABANDONED_SECONDS:
            continue
        if temp.is_dir() and not temp.is_symlink():
            shutil.rmtree(temp, ignore_errors=True)
        else:
            temp.unlink(missing_ok=True)


def _remove_abandoned_temps_of(target: Path) -> None:
    remove_abandoned(target.parent, f".{glob.escape(target.name)}.tmp-*")


def _temp_name(target: Path) -> Path:
    """`.<name>.tmp-<host>-<pid>`: whose it is, on a file system that several machines share."""
    return target.with_name(f".{target.name}.tmp-{socket.gethostname()}-{os.getpid()}")


def _sync(path: Path) -> None:
    """fsync a file, or a folder's entries."""
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def _publish(temp: Path, target: Path) -> None:
    """Rename synced `temp` to `target`, and sync the rename."""
    os.replace(temp, target)
    _sync(target.parent)


def publish_file(temp, target) -> None:
    """Sync the file `temp`, rename it to `target` and sync the rename: how atomic_file ends, for a file written
    under a name of its own (a download's resumable `.part`)."""
    _sync(temp)
    _publish(temp, target)


@contextlib.contextmanager
def atomic_file(target):
    """Yield a temporary path; on success rename it to `target`, on error remove it."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    _remove_abandoned_temps_of(target)
    temp = _temp_name(target)
    try:
        yield temp
        publish_file(temp, target)
    finally:
        temp.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_dir(target):
    """Yield a temporary folder; on success it replaces `target` whole, on error it is removed."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    _remove_abandoned_temps_of(target)
    temp = _temp_name(target)
    shutil.rmtree(temp, ignore_errors=True)
    temp.mkdir()
    try:
        yield temp
        for folder, _, files in os.walk(temp):
            for name in files:
                _sync(Path(folder, name))
            _sync(Path(folder))
        if target.exists():
            shutil.rmtree(target)
        _publish(temp, target)
    finally:
        shutil.rmtree(temp, ignore_errors=True)


@contextlib.contextmanager
def exclusive(lock_file, wait: bool = True):
    """Hold an exclusive lock on `lock_file` (made if missing): one process at a time, on this machine or on any
    that shares the file system with working locks, does what it guards; the others wait, without a time limit, or
    (`wait=False`) raise BlockingIOError at once."""
    lock_file = Path(lock_file)
    lock_file.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_file, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        yield
