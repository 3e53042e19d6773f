"""Dependencies run one way, by folder: the CLI imports stages (src/bertpipe/stages/); a stage imports components
(everything else under src/bertpipe/), never another stage; a component imports no stage."""

import ast
import subprocess
import sys

import pytest

from tests.conftest import REPO

SOURCE = REPO / "src/bertpipe"
STAGES = {f"stages.{path.stem}" for path in (SOURCE / "stages").glob("*.py") if path.stem != "__init__"}
MODULES = sorted(SOURCE.rglob("*.py"))


def imported_modules(path) -> set:
    """The bertpipe modules `path` imports (anywhere in it, function bodies included), without the `bertpipe.`."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("bertpipe"):
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name.startswith("bertpipe"))
    return {name.removeprefix("bertpipe.") for name in found}


def name_of(path) -> str:
    return ".".join(path.relative_to(SOURCE).with_suffix("").parts)


def test_every_stage_of_the_pipeline_is_a_module_of_the_stages_folder():
    assert STAGES == {f"stages.{name}" for name in ("download", "extract", "corpus", "tokenizer", "tfrecords",
                                                    "pretrain", "launch", "evaluate", "export", "register")}


@pytest.mark.parametrize("path", MODULES, ids=name_of)
def test_only_the_cli_imports_a_stage_and_no_stage_another(path):
    name = name_of(path)
    if name == "cli":
        return
    others = imported_modules(path) & (STAGES - {name})
    assert not others, f"{name} imports {sorted(others)}: move what they share into a component"


def test_the_cli_names_every_stage_in_its_registry():
    from bertpipe import cli

    assert {where.partition(":")[0].removeprefix("bertpipe.") for _, where in cli.COMMANDS.values()} >= STAGES


def test_starting_a_command_imports_no_heavy_library():
    """Every job starts `python -m bertpipe`, which imports the module of its command and builds its flags: stages
    import torch, TensorFlow, MLflow and transformers only where they run (each takes seconds to import, and a
    pipeline starts hundreds of jobs, most of them a corpus shard's or a TFRecord file's)."""
    from bertpipe import cli

    heavy = ("torch", "tensorflow", "mlflow", "transformers", "matplotlib")
    commands = [[name, *(["build"] if name in ("corpus", "tfrecords") else [])] for name in cli.COMMANDS]
    script = ("import sys, bertpipe.cli\n"
              f"for command in {commands!r}:\n"
              "    bertpipe.cli.parser([*command, '--help'])\n"
              f"print(*[m for m in {heavy!r} if m in sys.modules])")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert result.stdout.split() == [], f"building the commands' flags imports {result.stdout.strip()}"
