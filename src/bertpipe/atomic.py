"""Publish files and folders only when they are complete.

Every stage writes to a temporary name beside the target and renames it at the end, so that a crash, a kill or an
error never leaves a half-written output where Snakemake or a later stage could take it as done.
"""

import contextlib
import os
import shutil
from pathlib import Path


def _temp_name(target: Path) -> Path:
    return target.with_name(f".{target.name}.tmp-{os.getpid()}")


@contextlib.contextmanager
def atomic_file(target):
    """Yield a temporary path; on success rename it to `target`, on error remove it."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    temp = _temp_name(target)
    try:
        yield temp
        os.replace(temp, target)
    finally:
        temp.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_dir(target):
    """Yield a temporary folder; on success it replaces `target` whole, on error it is removed."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    temp = _temp_name(target)
    shutil.rmtree(temp, ignore_errors=True)
    temp.mkdir()
    try:
        yield temp
        if target.exists():
            shutil.rmtree(target)
        os.replace(temp, target)
    finally:
        shutil.rmtree(temp, ignore_errors=True)
