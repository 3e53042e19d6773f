"""The workflow as a fresh clone runs it: a copy of its files in a folder, and Snakemake run there with the venv's
tools first on PATH."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

from bench.harness import REPO

VENV_BIN = Path(sys.executable).parent


def copy_workflow(folder: Path) -> Path:
    """A copy of the workflow (Snakefile, configs, workflow/, envs/, data/, src/, the slurm/ profile) in `folder`, to
    run Snakemake in as a fresh clone would."""
    folder.mkdir(parents=True)
    for name in ("Snakefile", "config.yaml", "config.demo.yaml", "config.modern.yaml", "config.ownjson.yaml"):
        shutil.copy(REPO / name, folder / name)
    for name in ("workflow", "envs", "data", "src", "slurm"):
        shutil.copytree(REPO / name, folder / name, ignore=shutil.ignore_patterns("__pycache__"))
    return folder


def snakemake(folder: Path, *args, check=True):
    """Run Snakemake in `folder` with the venv's tools first on PATH; returns the CompletedProcess."""
    env = {**os.environ, "PATH": f"{VENV_BIN}{os.pathsep}{os.environ['PATH']}"}
    result = subprocess.run([str(VENV_BIN / "snakemake"), *map(str, args)], cwd=folder, env=env,
                            capture_output=True, text=True)
    if check and result.returncode != 0:
        raise AssertionError(f"snakemake {' '.join(map(str, args))} failed:\n{result.stdout}\n{result.stderr}")
    return result
