"""Debian packages the tests and the scale rehearsal need (Slurm, a headless Chromium), installed with apt-get when
their commands are missing: CI starts from a bare Debian 12, as root."""

import fcntl
import os
import shutil
import subprocess

LOCK = "/tmp/bertpipe-tests-apt.lock"


def apt_install(packages, commands, needed_for: str) -> None:
    """Install `packages` unless every one of `commands` is on PATH already."""
    if all(shutil.which(command) for command in commands):
        return
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        raise RuntimeError(f"{needed_for} need Debian's {', '.join(packages)}: install them (apt-get install "
                           f"{' '.join(packages)}) or run the tests as root on Debian")
    environment = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    # The suite's workers may install at once (Slurm in one, Chromium in the other): one apt-get at a time, as apt
    # refuses a second while its lock is held.
    with open(LOCK, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if all(shutil.which(command) for command in commands):
            return
        for command in (["apt-get", "update", "-q"],
                        ["apt-get", "install", "-y", "-q", "--no-install-recommends", *packages]):
            result = subprocess.run(command, capture_output=True, text=True, env=environment)
            if result.returncode != 0:
                raise RuntimeError(f"{' '.join(command)} failed:\n{result.stdout}\n{result.stderr}")
