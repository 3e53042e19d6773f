"""The GPU bench of the two recipes (bench/gpu_recipes.py) in its CPU smoke mode, so that the script a GPU machine
runs cannot rot: the trainer runs for each recipe and the table has their figures."""

import re
import subprocess

import pytest

from tests.conftest import REPO, VENV_BIN

pytestmark = pytest.mark.slow


def test_the_gpu_bench_runs_both_recipes_through_the_trainer_in_its_smoke_mode():
    result = subprocess.run([str(VENV_BIN / "python"), "-m", "bench.gpu_recipes", "--smoke"], cwd=REPO,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    for recipe in ("bert2019", "modern"):
        row = re.search(rf"^\| {recipe} \| eager \| ([\d,.]+) \| ([\d,]+) \| ([\d.]+)% \|", result.stdout, re.M)
        assert row and all(float(value.replace(",", "")) > 0 for value in row.groups()), result.stdout
    assert "| modern | compiled | not run in the smoke mode" in result.stdout
