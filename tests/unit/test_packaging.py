"""The rules' conda environments pin what the package pins; each stage is a rule file, a module and a CLI."""

import tomllib

import pytest
import yaml

from tests.conftest import REPO, bertpipe_in_process, run_bertpipe


def package_pins() -> dict:
    """pyproject.toml's pins and those the Makefile installs without their dependencies."""
    dependencies = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    no_deps = [line for line in (REPO / "requirements-no-deps.txt").read_text().splitlines()
               if line.strip() and not line.startswith("#")]
    return dict(d.split("==") for d in dependencies + no_deps)


def test_the_makefile_installs_the_no_deps_requirements():
    assert "--no-deps -r requirements-no-deps.txt" in (REPO / "Makefile").read_text()


def test_every_package_dependency_is_pinned_exactly():
    dependencies = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    assert all("==" in d for d in dependencies), dependencies


@pytest.mark.parametrize("env_file", sorted((REPO / "envs").glob("*.yaml")), ids=lambda p: p.name)
def test_conda_env_pins_match_the_package(env_file):
    pins = package_pins()
    env = yaml.safe_load(env_file.read_text())
    pip = next(item["pip"] for item in env["dependencies"] if isinstance(item, dict))
    assert pip, env_file
    for requirement in pip:
        name, version = requirement.split("==")
        assert pins.get(name) == version, f"{env_file.name}: {requirement} but pyproject.toml pins {pins.get(name)}"


def test_every_rule_names_a_conda_env_that_exists():
    for rule_file in (REPO / "workflow/rules").glob("*.smk"):
        for line in rule_file.read_text().splitlines():
            if line.strip().startswith('"../../envs/'):
                assert (rule_file.parent / line.strip().strip('"')).resolve().is_file(), line


STAGES = sorted(p.stem for p in (REPO / "workflow/rules").glob("*.smk") if p.stem != "common")


@pytest.mark.parametrize("stage", STAGES)
def test_each_rule_file_has_a_library_module_and_a_cli_stage(stage, capsys):
    assert (REPO / "src/bertpipe/stages" / f"{stage}.py").is_file()
    status, out, _ = bertpipe_in_process(capsys, stage, "--help")
    assert status == 0 and f"bertpipe {stage}" in out


def test_the_installed_command_runs():
    result = run_bertpipe("--version")
    assert result.returncode == 0 and result.stdout.startswith("bertpipe ")
