"""One definition per setting (src/bertpipe/settings.py): config.yaml, the schema, docs/settings.md, every
`bertpipe` command's defaults and the flags the rules pass all agree with it."""

import argparse
import dataclasses
import re
import shlex

import pytest
import yaml

from bertpipe import cli, settings
from bertpipe.settings import (
    Config,
    CorpusSettings,
    DownloadSettings,
    DumpSettings,
    EvaluateSettings,
    ExtractSettings,
    InstanceSpec,
    MlflowSettings,
    ModelSettings,
    ModernSettings,
    PhaseSettings,
    PretrainSettings,
    SlurmPretrain,
    SourceSettings,
    TFRecordsSettings,
    TokenizerSettings,
    TrainingSettings,
)
from tests.conftest import REPO


def merged(base: dict, overlay: dict) -> dict:
    """`overlay` on `base`, as Snakemake merges --configfile files (mappings recursively, anything else replaced)."""
    out = dict(base)
    for key, value in overlay.items():
        out[key] = merged(base[key], value) if isinstance(value, dict) and isinstance(base.get(key), dict) else value
    return out


CONFIG = yaml.safe_load((REPO / "config.yaml").read_text())
# The demo's config as the workflow sees it: keys left out (a phase's lr_decay_iters) have the schema's default.
DEMO = dataclasses.asdict(settings.from_dict(Config, merged(CONFIG, yaml.safe_load((REPO / "config.demo.yaml")
                                                                                   .read_text()))))

# Each command with its required arguments, and the settings it takes: (config section, settings class, only these).
TFRECORDS_PHASE = lambda config: {**config["tfrecords"], **config["tfrecords"]["phases"][0]}  # noqa: E731
FIRST_PHASE = lambda config: config["pretrain"]["phases"][0]  # noqa: E731
COMMANDS = {
    "download manifest": (["--out", "m.json"], [(lambda c: c["dump"], DumpSettings, None),
                                                (lambda c: c["download"], DownloadSettings,
                                                 ("timeout_seconds", "redirects_to_other_hosts"))]),
    "download part": (["--manifest", "m.json", "--part", "p", "--out", "p.bz2"],
                      [(lambda c: c["dump"], DumpSettings, ("mirror",)),
                       (lambda c: c["download"], DownloadSettings, None)]),
    "extract": (["--input", "p.bz2", "--out", "p.jsonl"], [(lambda c: c["extract"], ExtractSettings, None)]),
    "corpus build": (["--input", "p.jsonl", "--outdir", "c"],
                     [(lambda c: c["corpus"], CorpusSettings, None),
                      (lambda c: c["source"], SourceSettings, ("format", "text_key", "id_key", "documents",
                                                               "bad_input"))]),
    "corpus summarize": (["c", "--out", "s.json", "--page", "s.html", "--manifest", "m.json"],
                         [(lambda c: c["corpus"], CorpusSettings, ("split",)),
                          (lambda c: c["source"], SourceSettings, ("format", "name", "license"))]),
    "tokenizer": (["--corpus", "c", "--outdir", "t"], [(lambda c: c["tokenizer"], TokenizerSettings, None)]),
    "tfrecords build": (["--input", "s.jsonl", "--tokenizer", "t", "--out", "r", "--stats", "s"],
                        [(TFRECORDS_PHASE, InstanceSpec, None),
                         (lambda c: c["tfrecords"], TFRecordsSettings, ("seed",))]),
    "pretrain": (["--train-data", "r"], [(lambda c: c, Config, ("recipe",)),
                                         (lambda c: c["modern"], ModernSettings, None),
                                         (lambda c: c["model"], ModelSettings, None),
                                         (FIRST_PHASE, PhaseSettings, None),
                                         (lambda c: c["pretrain"], TrainingSettings, None)]),
    "launch": ([], [(lambda c: c["pretrain"], PretrainSettings, ("nodes", "nproc_per_node")),
                    (lambda c: c["slurm"]["pretrain"], SlurmPretrain, ("cpus_per_node", "gpus_per_node"))]),
    "evaluate": (["--checkpoint", "c", "--test-data", "t", "--tokenizer", "k", "--out", "m.json",
                  "--fill-mask", "f.html"],
                 [(lambda c: c["evaluate"], EvaluateSettings, None),
                  (lambda c: c["pretrain"], TrainingSettings, ("precision",))]),
    "register": (["--model", "m", "--evaluation", "e", "--manifest", "m", "--tokenizer", "t", "--train-data", "r",
                  "--training-done", "d", "--out", "o"],
                 [(lambda c: c["mlflow"], MlflowSettings, ("registered_model", "registered_alias",
                                                             "upload_timeout_seconds"))]),
}


def parse(command: str, *arguments):
    argv = [*command.split(), *arguments]
    return cli.parser(argv).parse_args(argv)


def taken(cls, only) -> list:
    return [f.name for f in settings.scalar_fields(cls) if only is None or f.name in only]


def test_config_yaml_holds_exactly_the_defaults():
    assert CONFIG == settings.defaults()


def test_the_schema_file_is_the_one_generated_from_the_settings():
    written = yaml.safe_load((REPO / "workflow/schemas/config.schema.yaml").read_text())
    assert written == settings.config_schema(), "run: bertpipe settings schema > workflow/schemas/config.schema.yaml"


def test_every_schema_default_is_the_settings_default():
    def walk(schema, default, path):
        for name, prop in schema["properties"].items():
            value = default[name]
            if prop.get("type") == "object":
                walk(prop, value, f"{path}{name}.")
            else:
                assert prop["default"] == value, f"{path}{name}"

    walk(settings.config_schema(), settings.defaults(), "")


def test_the_settings_docs_are_the_ones_generated():
    assert (REPO / "docs/settings.md").read_text() == settings.settings_table(), \
        "run: bertpipe settings docs > docs/settings.md"


@pytest.mark.parametrize("command", COMMANDS)
def test_each_command_defaults_to_the_config_and_takes_the_rules_flags(command):
    required, sections = COMMANDS[command]
    defaults = parse(command, *required)
    for section, cls, only in sections:
        for name in taken(cls, only):
            assert getattr(defaults, name) == section(CONFIG)[name], f"{command}: --{name} default"
    # The rules pass each setting as flags made by settings.flags; the command then has the config's values (the
    # demo's differ from the defaults in many keys).
    passed = [word for section, cls, only in sections for word in shlex.split(settings.flags(cls, section(DEMO),
                                                                                            only=only))]
    given = parse(command, *required, *passed)
    for section, cls, only in sections:
        for name in taken(cls, only):
            assert getattr(given, name) == section(DEMO)[name], f"{command}: --{name} from the rule"


@pytest.mark.parametrize("command", COMMANDS)
def test_help_shows_each_setting_with_its_default(command, capsys):
    required, sections = COMMANDS[command]
    with pytest.raises(SystemExit):
        parse(command, "--help")
    text = " ".join(capsys.readouterr().out.split())
    for section, cls, only in sections:
        for name in taken(cls, only):
            flag = "--" + name.replace("_", "-")
            # its help line: the flag, its metavar, choices or --no- form, its meaning and default
            described = re.search(
                rf"(?<![\[\w-]){flag}(?: [A-Z_]+| {{[^}}]*}}|, --no-\S+) (?:(?! --).)*?\(default: (.*?)\)", text)
            expected = section(CONFIG)[name]
            shown = yaml.safe_load(described.group(1)) if described else "(no default shown)"
            if isinstance(expected, float):
                shown = float(shown)  # YAML 1.1 reads 1e-12 as a string
            assert shown == expected, f"{command} {flag}"


def test_every_config_setting_reaches_a_command_or_the_workflow():
    """No key that nothing reads: each scalar setting is a flag of some command, or one the workflow itself uses."""
    used_by_workflow = {"results", "resources", "slurm.", "tfrecords.phases", "tfrecords.splits", "pretrain.phases",
                        "pretrain.nodes", "pretrain.nproc_per_node", "mlflow.tracking_uri", "mlflow.experiment",
                        "tokenizer.threads", "extract.threads", "source.files", "source.group_mb"}
    flags = {name for _, sections in COMMANDS.values() for _, cls, only in sections for name in taken(cls, only)}

    def keys(cls, prefix):
        for field in dataclasses.fields(cls):
            kind = settings._base(field.type)[0]
            if dataclasses.is_dataclass(kind):
                yield from keys(kind, f"{prefix}{field.name}.")
            else:
                yield f"{prefix}{field.name}", field.name

    for key, name in keys(Config, ""):
        assert name in flags or any(key.startswith(used) for used in used_by_workflow), key


def test_every_setting_and_flag_that_reaches_the_trainer_says_its_part_in_a_run():
    """A setting of the trainer is part of a run's identity (a checkpoint of another value is another run's) or of
    how it is carried out; one that says neither would be compared by no resume, so a new one cannot be left
    unclassified. The same holds for each of `bertpipe pretrain`'s flags that is not a setting."""
    from bertpipe.stages.pretrain import FLAG_PARTS
    from bertpipe.stages.pretrain import add_arguments as add_pretrain_arguments

    parts = (settings.IDENTITY, settings.EXECUTION)
    defined = {}
    for cls in (ModelSettings, ModernSettings, PhaseSettings, TrainingSettings, PretrainSettings):
        for field in settings.scalar_fields(cls):
            assert field.metadata.get("run") in parts, f"{cls.__name__}.{field.name} says no part in a run"
            defined[field.name] = field.metadata["run"]
    parser = argparse.ArgumentParser()
    add_pretrain_arguments(parser)
    flags = {action.dest for action in parser._actions if action.dest != "help"}
    unclassified = flags - defined.keys() - FLAG_PARTS.keys()
    assert not unclassified, f"bertpipe pretrain flags with no part in a run: {sorted(unclassified)}"
    assert not FLAG_PARTS.keys() - flags, "FLAG_PARTS names flags that no longer exist"
    assert set(FLAG_PARTS.values()) <= {*parts, "content"}
    # What the workflow and Megatron's users change most is identity; what only observes or schedules is not.
    assert {defined[name] for name in ("lr", "train_iters", "seed", "batch_size", "precision", "optimizer",
                                       "warmup", "clip_grad", "hidden_dropout")} == {settings.IDENTITY}
    assert {defined[name] for name in ("save_interval", "log_interval", "num_workers", "compile", "keep_last",
                                       "dist_timeout_minutes")} == {settings.EXECUTION}
