"""Dependencies run one way: stages use components (model, settings, records, train/...), never the reverse, and no
stage reaches into another stage for a component."""

import ast

import pytest

from tests.conftest import REPO

SOURCE = REPO / "src/bertpipe"
STAGES = {"download", "extract", "corpus", "tokenizer", "tfrecords", "pretrain", "launch", "evaluate", "export",
          "register", "cli"}


def imported_modules(path) -> set:
    """The bertpipe modules `path` imports (anywhere in it, function bodies included)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("bertpipe"):
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name.startswith("bertpipe"))
    return {name.removeprefix("bertpipe.") for name in found}


@pytest.mark.parametrize("path", sorted((SOURCE / "train").glob("*.py")), ids=lambda p: p.name)
def test_training_components_import_no_stage(path):
    assert not imported_modules(path) & STAGES, f"{path.name} imports a stage"


@pytest.mark.parametrize("component", ["records", "model", "pretrained", "settings", "splits", "hashing",
                                       "instances", "atomic", "plot", "tracking", "stopping"])
def test_components_import_no_stage_but_their_own_layer(component):
    # tracking knows settings only; the others know no stage at all (tokenizer is the one stage components may read:
    # its special tokens and its files are what every later stage is built on).
    assert not imported_modules(SOURCE / f"{component}.py") & (STAGES - {"tokenizer"}), component


def test_no_stage_imports_evaluate_or_export_for_what_they_hold():
    for path in SOURCE.rglob("*.py"):
        if path.name != "cli.py":
            assert not imported_modules(path) & {"evaluate", "export"}, path


def test_starting_a_command_imports_no_heavy_library():
    """Every job starts `python -m bertpipe`; its flags come from every stage's module, so those modules import
    torch, TensorFlow, MLflow and transformers only where a stage runs (each takes seconds to import, and a pipeline
    starts hundreds of jobs)."""
    import subprocess
    import sys

    heavy = ("torch", "tensorflow", "mlflow", "transformers", "matplotlib")
    result = subprocess.run([sys.executable, "-c", "import sys, bertpipe.cli; bertpipe.cli.parser(); "
                                                   f"print(*[m for m in {heavy!r} if m in sys.modules])"],
                            capture_output=True, text=True, check=True)
    assert result.stdout.split() == [], f"importing bertpipe.cli imports {result.stdout.strip()}"
