"""The benches are a package, each bench a module run from the repository root as `.venv/bin/python -m bench.<name>`:
each imports as a module of it and answers `--help`, and no file of bench/ edits sys.path or imports a module of the
tests (what benches and tests share is in bench/harness/, which the tests import)."""

import ast
import importlib
import sys

import pytest

from tests.conftest import REPO

BENCH = REPO / "bench"
BENCHES = sorted(path.stem for path in BENCH.glob("*.py") if path.stem != "__init__")
SOURCES = sorted(BENCH.rglob("*.py"))


def test_the_benches_are_the_modules_of_the_bench_folder():
    assert {"records_bench", "scale_rehearsal", "train_bench"} <= set(BENCHES)


@pytest.mark.parametrize("name", BENCHES)
def test_each_bench_imports_as_a_module_of_the_package_and_gives_its_command(name):
    module = importlib.import_module(f"bench.{name}")
    assert callable(module.main)
    assert f".venv/bin/python -m bench.{name}" in module.__doc__


def imported_and_sys_path(path) -> tuple:
    """(the modules `path` imports, anywhere in it; whether it names sys.path in any way)."""
    imported, uses_sys_path = set(), False
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            imported.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            imported.add(node.module)
            if node.module == "sys" and any(alias.name == "path" for alias in node.names):
                uses_sys_path = True
        elif isinstance(node, ast.Attribute) and node.attr == "path" and getattr(node.value, "id", None) == "sys":
            uses_sys_path = True
    return imported, uses_sys_path


@pytest.mark.parametrize("path", SOURCES, ids=lambda path: str(path.relative_to(BENCH)))
def test_no_file_of_bench_edits_sys_path_or_imports_the_tests(path):
    imported, uses_sys_path = imported_and_sys_path(path)
    assert not uses_sys_path, f"{path.relative_to(REPO)} touches sys.path: run it as `python -m bench.<name>`"
    tests = sorted(name for name in imported if name == "tests" or name.startswith("tests."))
    assert not tests, f"{path.relative_to(REPO)} imports {tests}: move what it shares with them to bench/harness/"


@pytest.mark.parametrize("name", BENCHES)
def test_each_bench_answers_help_with_its_command(name, monkeypatch, capsys):
    # In this process (a process of its own would import torch again for each bench): its main, as `python -m` runs
    # it, with the command line `--help`.
    monkeypatch.setattr(sys, "argv", [f"bench.{name}", "--help"])
    with pytest.raises(SystemExit) as exit:
        importlib.import_module(f"bench.{name}").main()
    assert exit.value.code == 0
    assert capsys.readouterr().out.startswith(f"usage: .venv/bin/python -m bench.{name}")
