"""A wrong key or value (the schema) and settings that contradict each other (settings.check) stop Snakemake before
any job, with a message naming the keys. Each contradiction is found by settings.check on the config as Snakemake
merges it (its own update_config), in this process; that Snakemake stops on one, with the message and no
traceback, is shown by a dry run."""

import pytest
import yaml

from bench.harness import REPO
from bench.harness.workflow import copy_workflow, snakemake
from bertpipe import settings

pytestmark = pytest.mark.slow

PHASES_128_512 = [{"seq_length": 128, "max_predictions": 20}, {"seq_length": 512, "max_predictions": 80}]
TRAINING_PHASE = {"batch_size": 4, "gradient_accumulation_steps": 1, "train_iters": 10, "lr": 1.0e-4}

CASES = {
    "max_predictions above what a sequence holds": (
        {"tfrecords": {"phases": [{"seq_length": 128, "max_predictions": 126}, PHASES_128_512[1]]}},
        ["tfrecords.phases[0].max_predictions 126", "seq_length 128", "at most 125"]),
    "a split that does not parse": ({"corpus": {"split": "0,0,0"}}, ["corpus.split", "positive sum"]),
    "an empty results path": ({"results": "  "}, ["results: an empty path"]),
    "fewer GPUs than processes per node": (
        {"slurm": {"pretrain": {"gpus_per_node": 4}}, "pretrain": {"nproc_per_node": 8}},
        ["slurm.pretrain.gpus_per_node 4", "pretrain.nproc_per_node 8"]),
    "a vocab too small for the special tokens and the alphabet": (
        {"tokenizer": {"vocab_size": 40}}, ["tokenizer.vocab_size 40", "special tokens", "use at least 73"]),
    "a sequence length listed twice": (
        {"tfrecords": {"phases": [PHASES_128_512[0], PHASES_128_512[0]]},
         "pretrain": {"phases": [{"seq_length": 128, **TRAINING_PHASE}]}},
        ["tfrecords.phases: seq_length 128 is listed 2 times"]),
    "hidden_size not divisible by the heads": (
        {"model": {"hidden_size": 130, "num_attention_heads": 4}},
        ["model.hidden_size 130", "model.num_attention_heads 4"]),
    "a phase longer than the position embeddings": (
        {"model": {"max_position_embeddings": 256}},
        ["pretrain.phases[1].seq_length 512", "model.max_position_embeddings 256"]),
    "a phase without TFRecords of its length": (
        {"pretrain": {"phases": [{"seq_length": 128, **TRAINING_PHASE}, {"seq_length": 256, **TRAINING_PHASE}]}},
        ["pretrain.phases[1].seq_length 256 has no TFRecords", "tfrecords.phases"]),
    "a password in the tracking URI": (
        {"mlflow": {"tracking_uri": "https://bert:s3cret@mlflow.example.org"}},
        ["mlflow.tracking_uri holds a password", "MLFLOW_TRACKING_PASSWORD"]),
    "a password in the dump mirror": (
        {"dump": {"mirror": "https://reader:s3cret@dumps.example.org"}},
        ["dump.mirror carries credentials", "user:password@", "~/.netrc", "NETRC", "download.token_env"]),
    "a token in the dump mirror": (
        {"dump": {"mirror": "https://dumps.example.org/?token=s3cret"}},
        ["dump.mirror carries credentials", "the query key 'token'", "download.token_env"]),
    "no test split for evaluate": (
        {"corpus": {"split": "9,1"}}, ["corpus.split '9,1'", "evaluate reads the test split"]),
    "an odd head width under the modern recipe": (
        {"recipe": "modern", "model": {"hidden_size": 120, "num_attention_heads": 8}},
        ["model.hidden_size 120 / model.num_attention_heads 8", "recipe modern", "even width"]),
    "your own format without files": (
        {"source": {"format": "plain_text"}}, ["source.format plain_text", "source.files lists no file"]),
    "files that Wikipedia does not read": (
        {"source": {"files": ["a.jsonl", "b.jsonl"]}}, ["source.files lists 2 files", "source.format wikipedia"]),
}


@pytest.mark.parametrize(
    "overlay, named",
    [({"corpus": {"splitt": "1,1,1"}}, "'splitt' was unexpected"),
     ({"extract": {"threads": "two"}}, "['extract']['threads']"),
     ({"dump": {"date": "last-week"}}, "['dump']['date']"),
     ({"results": ""}, "['results']")],
)
def test_a_wrong_key_or_value_stops_a_run_before_any_job_and_names_it(workflow, overlay, named):
    (workflow / "bad.yaml").write_text(yaml.safe_dump(overlay))
    result = snakemake(workflow, "--cores", "2", "all", "--configfile", "config.demo.yaml", "bad.yaml", check=False)
    assert result.returncode != 0
    assert named in result.stdout + result.stderr
    assert not (workflow / "results").exists() and not (workflow / "resources").exists()


@pytest.fixture(scope="module")
def workflow(tmp_path_factory):
    return copy_workflow(tmp_path_factory.mktemp("checks") / "wf")


def merged(*overlays) -> dict:
    """config.yaml, config.demo.yaml and `overlays`, merged as Snakemake merges --configfile files."""
    from snakemake.utils import update_config

    config = {}
    for layer in (yaml.safe_load((REPO / "config.yaml").read_text()),
                  yaml.safe_load((REPO / "config.demo.yaml").read_text()), *overlays):
        update_config(config, layer)
    return config


@pytest.mark.parametrize("case", CASES)
def test_contradicting_settings_are_each_named_by_their_keys(case):
    overlay, messages = CASES[case]
    faults = "\n".join(settings.check(settings.from_dict(settings.Config, merged(overlay))))
    for message in messages:
        assert message in faults, faults
    assert "s3cret" not in faults


def test_a_contradiction_stops_a_dry_run_before_any_job_without_a_traceback(workflow):
    (workflow / "bad.yaml").write_text(yaml.safe_dump(CASES["a password in the dump mirror"][0]))
    result = snakemake(workflow, "-n", "--cores", "1", "all", "--configfile", "config.demo.yaml", "bad.yaml",
                       check=False)
    output = result.stdout + result.stderr
    assert result.returncode != 0 and "dump.mirror carries credentials" in output, output
    assert "Traceback" not in output and "s3cret" not in output
    assert not (workflow / "results").exists() and not (workflow / "resources").exists()


@pytest.mark.parametrize("missing, named", [("data/ownjson/no-such-file.jsonl", "no such file"),
                                             ("data/own*/*.json", "matches no file")])
def test_an_input_file_that_is_not_there_stops_a_dry_run_naming_it(workflow, missing, named):
    (workflow / "bad.yaml").write_text(yaml.safe_dump({"source": {"files": ["data/ownjson/*.jsonl", missing]}}))
    result = snakemake(workflow, "-n", "--cores", "1", "all", "--configfile", "config.demo.yaml",
                       "config.ownjson.yaml", "bad.yaml", check=False)
    output = result.stdout + result.stderr
    assert result.returncode != 0 and f"source.files: {missing!r}" in output and named in output, output
    assert "Traceback" not in output and not (workflow / "results").exists()


def test_the_demo_config_passes_every_check(workflow):
    assert settings.check(settings.from_dict(settings.Config, merged())) == []
    for overlay in ("config.modern.yaml", "config.ownjson.yaml"):
        assert settings.check(settings.from_dict(settings.Config, merged(
            yaml.safe_load((REPO / overlay).read_text())))) == []
    snakemake(workflow, "-n", "--cores", "1", "all", "--configfile", "config.demo.yaml")
