"""Pretraining for real on TFRecords from the bundled sample: exact resume after SIGKILL, a checkpoint on SIGTERM,
torchrun with two gloo processes against one, fp16 loss scaling on the CPU, and the Megatron flags' errors."""

import html
import json
import os
import re
import shutil
import signal
import subprocess

import pytest
import torch

from bertpipe.settings import InstanceSpec, TokenizerSettings
from bertpipe.stages.tfrecords import build_shard, pack_shard
from bertpipe.stages.tokenizer import train
from bertpipe.tokenizer_folder import Tokenizer
from bertpipe.train import checkpoint
from tests.conftest import NO_TENSORFLOW, VENV_BIN, bertpipe_in_process

pytestmark = pytest.mark.slow

SPEC = InstanceSpec(seq_length=64, max_predictions=10, dupe_factor=2)


@pytest.fixture(scope="module")
def records(sample_corpus, tmp_path_factory):
    """(tokenizer folder, train TFRecords, valid TFRecords) from the sample, seq 64."""
    folder = tmp_path_factory.mktemp("pretrain-data")
    train([sample_corpus], folder / "tokenizer", TokenizerSettings(vocab_size=2000, input_sentence_size=20000))
    for split in ("train", "valid"):
        for shard in sorted((sample_corpus / split).glob("shard-*.jsonl")):
            build_shard(shard, folder / "tokenizer", folder / split / f"{shard.stem}.tfrecord",
                        folder / split / f"{shard.stem}.stats.json", SPEC, seed=1)
    return folder / "tokenizer", str(folder / "train" / "*.tfrecord"), str(folder / "valid" / "*.tfrecord")


# The modern recipe's model at the tests' size with both kinds of layer (0 global, 1 local) and a window shorter than
# the sequences, on packed sequences of the same sample, masked as it trains.
MODERN = ("--recipe", "modern", "--global-attn-every-n-layers", 2, "--local-attention", 16)


@pytest.fixture(scope="module")
def packed_records(records, sample_corpus, tmp_path_factory):
    """(tokenizer folder, train TFRecords, valid TFRecords) of packed sequences from the sample, seq 64, made with
    `records`' tokenizer."""
    folder = tmp_path_factory.mktemp("packed-data")
    for split in ("train", "valid"):
        for shard in sorted((sample_corpus / split).glob("shard-*.jsonl")):
            pack_shard(shard, records[0], folder / split / f"{shard.stem}.tfrecord",
                       folder / split / f"{shard.stem}.stats.json", seq_length=64)
    return records[0], str(folder / "train" / "*.tfrecord"), str(folder / "valid" / "*.tfrecord")


def recipe_data(request) -> tuple:
    """(records, the recipe's flags) of the test's `recipe` parameter."""
    if request.param == "modern":
        return request.getfixturevalue("packed_records"), MODERN
    return request.getfixturevalue("records"), ()


@pytest.fixture(params=["bert2019", "modern"])
def recipe_records(request):
    return recipe_data(request)


def command(records, out, *extra, launcher=(str(VENV_BIN / "bertpipe"),)):
    tokenizer, train_data, valid_data = records
    extra = [str(word) for word in extra]
    # fp32 (the config's default is fp16) unless the test says otherwise
    precision = [] if {"--precision", "--fp16", "--bf16"} & set(extra) else ["--precision", "fp32"]
    # eager (the config's default compiles): a compile takes longer than these runs of a few steps
    compile_flag = [] if {"--compile", "--no-compile"} & set(extra) else ["--no-compile"]
    return [*launcher, "pretrain", "--use-tfrecords", "--train-data", train_data, "--valid-data", valid_data,
            "--tokenizer-path", str(tokenizer), "--seq-length", "64", *precision, *compile_flag, "--num-layers", "2",
            "--hidden-size", "64", "--intermediate-size", "128", "--num-attention-heads", "2",
            "--max-position-embeddings", "64", "--lr", "1e-3", "--warmup", "0.1", "--log-interval", "1",
            "--eval-interval", "1000", "--eval-iters", "1", "--save", str(out / "ckpt"),
            "--metrics", str(out / "metrics.jsonl"), "--seed", "5", *extra]


def in_process(args, capsys):
    return bertpipe_in_process(capsys, *args[1:])


def environment():
    # One thread: the same kernels and summation order in every run, for bitwise comparisons. TensorFlow cannot be
    # imported: training reads its TFRecords without it (tfrecord_reader.py), in the trainer and in its reader
    # processes. A compiled run's C++ (Inductor on a CPU) is built as one library per graph, its kernels and their
    # caller together, not one compiler run per kernel, each of which parses torch's headers again (docs/benchmarks.md,
    # "The test suite").
    path = os.pathsep.join(filter(None, (str(NO_TENSORFLOW), os.environ.get("PYTHONPATH"))))
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": path, "TORCHINDUCTOR_CPP_WRAPPER": "1"}


def losses(metrics_file) -> dict:
    """step -> the last recorded training metrics of that step (a resumed run records steps again)."""
    by_step = {}
    for line in open(metrics_file):
        record = json.loads(line)
        if "loss" in record:
            by_step[record["step"]] = record
    return by_step


def run(args, **env):
    result = subprocess.run(args, capture_output=True, text=True, env={**environment(), **env})
    assert result.returncode == 0, result.stdout + result.stderr
    return result


STEPS = ("--train-iters", 12, "--save-interval", 3, "--keep-last", 4, "--batch-size", 8, "--deterministic")


def uninterrupted_run(records, folder, *recipe):
    """(folder, losses by step) of a run of STEPS with nothing in its way, checkpoints at steps 3, 6, 9 and 12."""
    run(command(records, folder, *STEPS, *recipe))
    return folder, losses(folder / "metrics.jsonl")


@pytest.fixture(scope="module")
def uninterrupted(records, tmp_path_factory):
    return uninterrupted_run(records, tmp_path_factory.mktemp("uninterrupted"))


@pytest.fixture(scope="module", params=["bert2019", "modern"])
def recipe_uninterrupted(request, tmp_path_factory):
    """(records, the recipe's flags, the uninterrupted run) of each recipe."""
    records, recipe = recipe_data(request)
    if not recipe:
        return records, recipe, request.getfixturevalue("uninterrupted")
    return records, recipe, uninterrupted_run(records, tmp_path_factory.mktemp("uninterrupted-modern"), *recipe)


def test_resume_after_sigkill_repeats_the_uninterrupted_run_bitwise(tmp_path, recipe_uninterrupted):
    records, recipe, (_, expected) = recipe_uninterrupted
    steps = (*STEPS, *recipe)
    killed = tmp_path / "killed"
    process = subprocess.Popen(command(records, killed, *steps), stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                               text=True, env=environment())
    for line in process.stdout:
        if line.startswith("saved") and "step-00000006" in line:
            process.send_signal(signal.SIGKILL)
            break
    process.wait()
    assert process.returncode == -signal.SIGKILL
    resumed_from = checkpoint.latest(killed / "ckpt")
    assert resumed_from is not None and resumed_from.name >= "step-00000006"

    resumed = run(command(records, killed, *steps))
    assert f"resumed from {resumed_from}" in resumed.stdout
    got = losses(killed / "metrics.jsonl")
    assert sorted(got) == sorted(expected) == list(range(1, 13))
    for step in range(1, 13):
        for key in ("loss", "mlm_loss", "lr", "grad_norm") + (() if recipe else ("nsp_loss",)):
            assert got[step][key] == expected[step][key], (step, key)


def test_bf16_follows_the_fp32_run_unscaled_over_float32_weights(tmp_path, recipe_uninterrupted):
    """bf16 is autocast to bfloat16 over float32 parameters, with no loss scaling: each recipe's losses follow the
    fp32 run's within bfloat16's rounding, its gradients are not the fp32 run's (bfloat16 did compute), no step is
    skipped, and the checkpoint holds float32 weights."""
    records, recipe, (_, expected) = recipe_uninterrupted
    run(command(records, tmp_path, *STEPS, *recipe, "--bf16"))
    got = losses(tmp_path / "metrics.jsonl")
    assert sorted(got) == list(range(1, 13))
    for step in got:
        assert got[step]["loss"] == pytest.approx(expected[step]["loss"], rel=1e-3), step
        assert got[step]["loss_scale"] == 1.0 and got[step]["skipped"] == 0, step
    assert any(got[step]["grad_norm"] != expected[step]["grad_norm"] for step in got)
    state = checkpoint.load(checkpoint.latest(tmp_path / "ckpt"))
    assert {tensor.dtype for tensor in state["model"].values()} == {torch.float32}


def test_each_step_reports_real_tokens_per_second_mfu_data_wait_and_padding(records, uninterrupted):
    folder, by_step = uninterrupted
    from bertpipe.tfrecord_reader import TFRecordSamples

    train = TFRecordSamples([records[1]])
    padding = 1 - float(train.read(range(len(train)))["input_mask"].float().mean())  # over the whole split
    for step, metrics in by_step.items():
        assert 0 < metrics["mfu"] < 1.5 and 0 <= metrics["data_wait_fraction"] < 1, (step, metrics)
        # A step's 8 sequences: their padding is the split's, give or take the draw.
        assert abs(metrics["padding_fraction"] - padding) < 0.25, (step, metrics["padding_fraction"], padding)
        assert metrics["tokens_per_s"] == pytest.approx(
            metrics["samples_per_second"] * 64 * (1 - metrics["padding_fraction"]), rel=1e-6)


def test_a_truncated_newest_checkpoint_is_set_aside_and_the_one_before_resumed_bitwise(tmp_path,
                                                                                   recipe_uninterrupted):
    records, recipe, (straight, expected) = recipe_uninterrupted
    for step in ("step-00000003", "step-00000006"):
        shutil.copytree(straight / "ckpt" / step, tmp_path / "ckpt" / step)
    newest = tmp_path / "ckpt/step-00000006/state.pt"
    newest.write_bytes(newest.read_bytes()[:newest.stat().st_size // 2])  # a node crash during an unsynced write
    resumed = run(command(records, tmp_path, *STEPS, *recipe))
    assert f"resumed from {tmp_path / 'ckpt/step-00000003'} at step 3" in resumed.stdout
    assert "step-00000006 is damaged" in resumed.stderr
    assert [p.name.split(".")[1].split("-")[0] for p in (tmp_path / "ckpt").glob("step-00000006.*")] == ["damaged"]
    got = losses(tmp_path / "metrics.jsonl")
    assert sorted(got) == list(range(4, 13))
    for step in got:
        for key in ("loss", "mlm_loss", "lr", "grad_norm") + (() if recipe else ("nsp_loss",)):
            assert got[step][key] == expected[step][key], (step, key)


def test_compiled_training_resumes_bitwise_with_the_loss_scaler_and_its_checkpoints_load_eager(tmp_path,
                                                                                              recipe_records):
    # fp16: the loss scaler works outside the compiled model, so its schedule is the eager run's (see the fp16 test).
    records, recipe = recipe_records
    # The modern recipe without dropout, as config.modern.yaml trains it: so its eager run below computes the same.
    compiled = ("--compile", "--fp16", "--train-iters", 6, "--save-interval", 3, "--keep-last", 4, "--batch-size", 4,
                "--num-workers", 0, "--deterministic", *recipe,
                *(("--hidden-dropout", 0, "--attention-dropout", 0) if recipe else ()))
    # Inductor writes the code it generates here: none would mean the step ran eager after all.
    inductor = {"TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "inductor")}
    straight = run(command(records, tmp_path / "straight", *compiled), **inductor)
    assert "under torch.compile" in straight.stdout
    assert list((tmp_path / "inductor").rglob("*.py")), "torch.compile generated no code"
    expected = losses(tmp_path / "straight/metrics.jsonl")
    assert expected[1]["loss_scale"] == 2.0**32 and expected[1]["overflow"], "2^32 overflows at once, as eager"
    assert [expected[step]["loss_scale"] for step in (1, 2, 3)] == [2.0**32, 2.0**32, 2.0**31], straight.stdout
    if recipe:  # The compiled model is the eager one: the same losses but for rounding, the same overflows. (Compiled
        # dropout draws other masks than eager's; bert2019 compiled is compared with eager by the two-process test.)
        run(command(records, tmp_path / "eager", *("--no-compile" if word == "--compile" else word
                                                   for word in compiled)))
        eager = losses(tmp_path / "eager/metrics.jsonl")
        assert sorted(eager) == sorted(expected) == [1, 2, 3, 4, 5, 6]
        for step in eager:
            assert expected[step]["loss"] == pytest.approx(eager[step]["loss"], rel=1e-4), step
            assert expected[step]["loss_scale"] == eager[step]["loss_scale"], step
    shutil.copytree(tmp_path / "straight/ckpt/step-00000003", tmp_path / "resumed/ckpt/step-00000003")
    resumed = run(command(records, tmp_path / "resumed", *compiled), **inductor)
    assert "resumed from" in resumed.stdout and "at step 3" in resumed.stdout
    got = losses(tmp_path / "resumed/metrics.jsonl")
    assert sorted(got) == [4, 5, 6]
    for step in got:
        for key in ("loss", "mlm_loss", "lr", "grad_norm", "loss_scale") + (() if recipe else ("nsp_loss",)):
            assert got[step][key] == expected[step][key], (step, key)
    # The checkpoint holds the plain model's weights: evaluate and export load them into an eager model as they are.
    from bertpipe.model_loading import load_model

    _, _, state = load_model(tmp_path / "resumed/ckpt")
    assert state["iteration"] == 6 and not any(name.startswith("_orig_mod") for name in state["model"])


def test_evaluate_reads_the_test_records_without_tensorflow(tmp_path, records, packed_records, capsys):
    assert in_process(command(records, tmp_path, "--train-iters", 2, "--save-interval", 2, "--batch-size", 4,
                              "--num-workers", 0), capsys)[0] == 0
    shadowed = subprocess.run([str(VENV_BIN / "python"), "-c", "import tensorflow"], env=environment(),
                              capture_output=True, text=True)
    assert "TensorFlow is made unimportable" in shadowed.stderr
    run([str(VENV_BIN / "bertpipe"), "evaluate", "--checkpoint", tmp_path / "ckpt", "--test-data", records[2],
         "--common-test-data", packed_records[2], "--common-seq-length", "64", "--tokenizer", records[0],
         "--batch-size", "16", "--out", tmp_path / "metrics.json", "--fill-mask", tmp_path / "fill-mask.html"])
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["checkpoint_step"] == 2 and metrics["test_sequences"] > 100 and metrics["test_perplexity"] > 1
    # BERT on the common test set: every packed sequence, its document pieces read one by one, under the 15% mask.
    from bertpipe.packed_sequences import PackedSamples

    assert metrics["test_common_sequences"] == len(PackedSamples([packed_records[2]], Tokenizer(records[0]), 0.15, 0))
    assert metrics["test_common_perplexity"] > 1 and 0 <= metrics["test_common_mlm_accuracy"] < 1
    assert not any("nsp" in key for key in metrics if key.startswith("test_common"))
    # What the model fills in, for a person: masked sentences, the true token, the top 5 with probabilities.
    page = (tmp_path / "fill-mask.html").read_text()
    rows = re.findall(r"<tr><td>(.*?) <mark>\[MASK\]</mark> (.*?)</td><td><b>(.*?)</b></td><td>(.*?)</td></tr>", page)
    assert len(rows) == 12 and len({left + right for left, right, _, _ in rows}) >= 10, page
    tokenizer = Tokenizer(records[0])
    vocabulary = {tokenizer.token(i) for i in range(tokenizer.vocab_size)}
    for left, right, true, predictions in (map(html.unescape, row) for row in rows):
        assert len(f"{left} {right}".split()) >= 6 and true in vocabulary and "[SEP]" not in left + right
        top = [re.fullmatch(r"(?:<b>)?(\S+) (\d\.\d{3})(?:</b>)?", cell).groups()
               for cell in predictions.split(" \u00b7 ")]
        probabilities = [float(p) for _, p in top]
        assert len(top) == 5 and {token for token, _ in top} <= vocabulary
        assert probabilities == sorted(probabilities, reverse=True) and sum(probabilities) <= 1.03


def stop_at_step_2(args, number, tmp_path) -> tuple:
    """Run `args` in a session of its own and send `number` to its process group once step 2 is logged, as Slurm
    signals every process of a job step and a terminal's Ctrl-C its foreground group: (exit status, output)."""
    process = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=environment(),
                               start_new_session=True)
    output = []
    try:
        for line in process.stdout:
            output.append(line)
            if line.startswith("step 2 "):
                os.killpg(process.pid, number)
        return process.wait(timeout=300), "".join(output)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)


def tracked(tmp_path) -> list:
    return [str(VENV_BIN / "bertpipe"), "--tracking-uri", f"sqlite:///{tmp_path}/mlflow/mlflow.db", "--tracking-dir",
            str(tmp_path / "mlflow")]


def run_statuses(tmp_path) -> list:
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow/mlflow.db")
    return [run.info.status for run in client.search_runs([client.get_experiment_by_name("bertpipe").experiment_id])]


def test_sigterm_saves_a_checkpoint_says_where_the_rerun_resumes_and_exits_143(tmp_path, recipe_records):
    # The reader processes get the signal too: they leave it to the trainer. (SIGINT: the launch test below.)
    records, recipe = recipe_records
    number = signal.SIGTERM
    status, output = stop_at_step_2(command(records, tmp_path, "--train-iters", 10000, "--save-interval", 10000,
                                            "--batch-size", 4, "--num-workers", 2, *recipe,
                                            launcher=tracked(tmp_path)), number, tmp_path)
    assert status == 128 + number, output
    saved = checkpoint.latest(tmp_path / "ckpt")
    step = int(saved.name.split("-")[1])
    assert step >= 2 and checkpoint.load(saved)["iteration"] == step
    assert f"stopping at step {step} of 10000 on {number.name}: saved {saved}; a rerun resumes from step {step}" \
        in output
    assert "Traceback" not in output and "KeyboardInterrupt" not in output, output
    assert run_statuses(tmp_path) == ["KILLED"]


def test_launch_hands_ctrl_c_to_the_trainers_and_torchrun_ends_without_a_traceback(tmp_path, records):
    """Ctrl-C reaches every process of the terminal's foreground group: launch, but not torchrun, which runs in a
    session of its own (its own handling would end in a traceback and kill the trainers 30 s later); launch hands
    the signal to the trainers."""
    number = signal.SIGINT
    launch = [*tracked(tmp_path), "launch", "--nproc-per-node", "2", "--cpus-per-node", "2", "--done",
              str(tmp_path / "done.json")]
    status, output = stop_at_step_2(command(records, tmp_path, "--train-iters", 10000, "--save-interval", 10000,
                                            "--batch-size", 2, "--num-workers", 0, launcher=launch),
                                    number, tmp_path)
    assert status == 128 + number, output
    saved = checkpoint.latest(tmp_path / "ckpt")
    assert saved and f"on {number.name}: saved {saved}; a rerun resumes from step" in output
    assert len(checkpoint.load(saved)["rng"]) == 2, "both trainers took part in the checkpoint"
    assert "Traceback" not in output and "SignalException" not in output, output
    assert not (tmp_path / "done.json").exists() and run_statuses(tmp_path) == ["KILLED"]


def test_torchrun_two_processes_match_one_with_the_same_global_batch(tmp_path, recipe_records, capsys):
    records, recipe = recipe_records
    no_dropout = ("--hidden-dropout", 0, "--attention-dropout", 0, "--train-iters", 5, "--save-interval", 100,
                  *recipe)
    assert in_process(command(records, tmp_path / "one", *no_dropout, "--batch-size", 8), capsys)[0] == 0
    torchrun = (str(VENV_BIN / "torchrun"), "--standalone", "--nproc-per-node", "2", "-m", "bertpipe")
    two = run(command(records, tmp_path / "two", *no_dropout, "--batch-size", 4, launcher=torchrun))
    # and with gradient accumulation, compiled (as config.yaml trains: DDP under torch.compile, its gradient sync
    # skipped on all but the last micro-batch): 2 processes x 2 micro-batches x 2 sequences. The modern model, whose
    # attention breaks its graph into several and so costs more to compile, is compiled by the compiled resume test.
    compiled = () if recipe else ("--compile",)
    accumulated = run(command(records, tmp_path / "accumulated", *no_dropout, "--batch-size", 2,
                              "--gradient-accumulation-steps", 2, *compiled, launcher=torchrun))
    assert ("under torch.compile" in accumulated.stdout) == bool(compiled)
    one = losses(tmp_path / "one/metrics.jsonl")
    for other in ("two", "accumulated"):
        both = losses(tmp_path / other / "metrics.jsonl")
        assert sorted(one) == sorted(both) == [1, 2, 3, 4, 5], two.stdout
        for step in one:
            for key in ("loss", "mlm_loss", "grad_norm") + (() if recipe else ("nsp_loss",)):
                assert both[step][key] == pytest.approx(one[step][key], rel=1e-5, abs=1e-6), (other, step, key)


def another_value(field, value):
    """A valid value of setting `field` other than `value`."""
    from bertpipe.settings import _base

    limits = field.metadata
    if "enum" in limits:
        return next(choice for choice in limits["enum"] if choice != value)
    kind = _base(field.type)[0]
    if kind is bool:
        return not value
    if value is None:
        return kind(7)
    if kind is float and "maximum" in limits:  # a rate or a fraction
        return value + 0.05
    return value * 2 if value else kind(1)


def changed_flag(field, value) -> list:
    """The command-line words that set setting `field` to `value`."""
    flag = "--" + field.name.replace("_", "-")
    if isinstance(value, bool):
        return [flag if value else f"--no-{flag[2:]}"]
    return [flag, str(value)]


def test_a_change_of_any_identity_setting_is_another_run_and_of_an_execution_setting_resumes(tmp_path, records,
                                                                                             capsys, caplog):
    """Walks every setting that reaches the trainer, as settings.py classifies it: a resume after a change of any
    identity setting is refused naming it (or stopped earlier by a check of its own: the sequence length);
    after a change of any execution setting, the run resumes the checkpoint of its last step and trains nothing."""
    import dataclasses

    import torch

    from bertpipe import cli
    from bertpipe.settings import EXECUTION, IDENTITY, ModelSettings, PhaseSettings, TrainingSettings

    base = command(records, tmp_path, "--train-iters", 2, "--save-interval", 2, "--batch-size", 4, "--num-workers", 0)
    assert in_process(base, capsys)[0] == 0
    parsed = cli.parser(base[1:]).parse_args(base[1:])
    walked = {IDENTITY: [], EXECUTION: []}
    for part, cls in (("model", ModelSettings), ("phase", PhaseSettings), ("training", TrainingSettings)):
        for field in dataclasses.fields(cls):
            value = another_value(field, getattr(parsed, field.name))
            caplog.clear()
            try:
                with caplog.at_level("INFO"):
                    status, out, err = in_process([*base, *changed_flag(field, value)], capsys)
            finally:
                torch.use_deterministic_algorithms(False)  # --deterministic sets it for the whole process
            role = field.metadata["run"]
            walked[role].append(field.name)
            if role == IDENTITY:
                named = "--seq-length 128" if field.name == "seq_length" else \
                    f"{part}.{field.name} {getattr(parsed, field.name)} -> {value}"
                assert status == 1 and named in err and "resumed from" not in out, (field.name, err)
            else:
                assert status == 0 and "resumed from" in out and "step 3" not in out, (field.name, err)
                assert f"training.{field.name}" in caplog.text, "a resume across it is logged"
    assert {"lr", "train_iters", "seed", "optimizer", "hidden_dropout", "precision"} <= set(walked[IDENTITY])
    assert {"compile", "num_workers", "save_interval"} <= set(walked[EXECUTION])
    status, _, err = in_process([*base, "--vocab-size", 4000], capsys)
    assert status == 1 and "model.vocab_size 2000 -> 4000" in err
    # What the run reads is part of it too: other TFRecords (the valid split's, as train data) are another run.
    _, train_data, valid_data = records
    status, _, err = in_process([valid_data if word == train_data else word for word in base], capsys)
    assert status == 1 and "inputs.train_data" in err and "resumed from" not in err


def test_a_change_of_any_modern_setting_is_another_run(tmp_path, packed_records, capsys):
    """The modern recipe's own settings (its attention's window and layer kinds, its rotary bases, the masks drawn as
    it trains) are each part of the run's identity: a resume after a change of any is refused, naming it."""
    import dataclasses

    from bertpipe import cli
    from bertpipe.settings import IDENTITY, ModernSettings

    base = command(packed_records, tmp_path, *MODERN, "--train-iters", 2, "--save-interval", 2, "--batch-size", 4,
                   "--num-workers", 0)
    assert in_process(base, capsys)[0] == 0
    parsed = cli.parser(base[1:]).parse_args(base[1:])
    for field in dataclasses.fields(ModernSettings):
        assert field.metadata["run"] == IDENTITY, field.name
        value = another_value(field, getattr(parsed, field.name))
        status, out, err = in_process([*base, *changed_flag(field, value)], capsys)
        assert status == 1 and f"{field.name} {getattr(parsed, field.name)} -> {value}" in err, (field.name, err)
        assert "resumed from" not in out


def test_init_from_is_chosen_on_rank_0_whose_failure_stops_every_rank_at_once(tmp_path, records):
    """Two processes: rank 0 resolves --init-from and tells rank 1, errors included. A checkpoint the file system
    fails to read (a real EIO: /proc/self/mem at offset 0) stops both ranks with rank 0's message, well before the
    collectives' timeout, and renames nothing; once readable, both start from rank 0's choice."""
    assert run(command(records, tmp_path / "phase1", "--train-iters", 2, "--save-interval", 2, "--batch-size", 4,
                       "--num-workers", 0)).returncode == 0
    chosen = checkpoint.latest(tmp_path / "phase1/ckpt")
    state = chosen / "state.pt"
    state.rename(tmp_path / "state.pt")
    state.symlink_to("/proc/self/mem")
    torchrun = (str(VENV_BIN / "torchrun"), "--standalone", "--nproc-per-node", "2", "-m", "bertpipe")
    phase2 = command(records, tmp_path / "phase2", "--init-from", tmp_path / "phase1/ckpt", "--train-iters", 2,
                     "--save-interval", 2, "--batch-size", 2, "--num-workers", 0, "--dist-timeout-minutes", 5,
                     launcher=torchrun)
    failed = subprocess.run(phase2, capture_output=True, text=True, env=environment())
    output = failed.stdout + failed.stderr
    assert failed.returncode != 0 and f"{chosen}: reading it failed" in output, output[-3000:]
    assert "rank 0 stopped the run" in output and "Timed out" not in output, output[-3000:]
    assert sorted(p.name for p in (tmp_path / "phase1/ckpt").iterdir()) == [chosen.name]

    state.unlink()
    (tmp_path / "state.pt").rename(state)
    started = run(phase2)
    assert started.returncode == 0, started.stderr[-3000:]
    assert started.stdout.count(f"initialised from the weights of {chosen}") == 1  # rank 0 logs


def test_resume_with_other_batch_settings_is_refused(tmp_path, records, capsys):
    status, _, _ = in_process(command(records, tmp_path, "--train-iters", 2, "--save-interval", 2, "--batch-size", 4,
                                      "--num-workers", 0), capsys)
    assert status == 0
    status, _, err = in_process(command(records, tmp_path, "--train-iters", 4, "--save-interval", 2, "--batch-size",
                                        8), capsys)
    assert status == 1 and "phase.batch_size 4 -> 8" in err and "Traceback" not in err


def test_fp16_on_cpu_scales_skips_overflows_and_holds_the_schedule(tmp_path, records, capsys, caplog):
    caplog.set_level("INFO")
    status, _, _ = in_process(command(records, tmp_path, "--fp16", "--fp32-layernorm", "--fp32-embedding",
                                      "--hysteresis", 2, "--train-iters", 30, "--save-interval", 100, "--batch-size", 4,
                                      "--num-workers", 0), capsys)
    assert status == 0
    metrics = losses(tmp_path / "metrics.jsonl")
    assert metrics[1]["loss_scale"] == 2.0**32 and metrics[1]["overflow"], "2^32 overflows float16 gradients at once"
    # Megatron's rule, step by step (the window of 1000 steps is never reached here): an overflow skips the step and
    # halves the scale, except the first, which only uses up the hysteresis counter of 2; a step taken holds it. Which
    # steps overflow once the scale nears what float16 holds depends on the batch, so the rule is checked on each.
    hysteresis_left, skipped = 2, 0
    for step in range(1, 30):
        scale, overflow = metrics[step]["loss_scale"], metrics[step]["overflow"]
        skipped += overflow
        assert metrics[step]["skipped"] == skipped, step
        if overflow and hysteresis_left == 1:
            scale /= 2
        elif overflow:
            hysteresis_left -= 1
        assert metrics[step + 1]["loss_scale"] == scale, step
    # From 2^32 the scale comes down to what float16 holds within ~20 steps, after which steps are taken.
    assert 10 < metrics[30]["skipped"] < 30
    assert metrics[30]["loss_scale"] < 2.0**20 and not all(metrics[step]["overflow"] for step in range(25, 31))
    # The schedule's clock stops on skipped steps: the LR of the first taken step is the LR of step 0.
    taken = [m for m in metrics.values() if not m["overflow"]]
    assert taken[0]["lr"] == 0.0 and taken[1]["lr"] > 0
    assert "fp16 on a CPU" in caplog.text


def test_lamb_trains_and_its_checkpoint_holds_its_moments(tmp_path, records, capsys):
    """`bertpipe pretrain --optimizer lamb`: the loss falls (20 steps at a constant 2e-2 take the masked-LM loss
    down about 0.6 nats on these records, AdamW at these tests' 1e-3 about 0.3), and the final checkpoint holds each
    parameter's LAMB moments for a resume (their round trip: tests/unit/test_optim.py)."""
    status, _, err = in_process(command(records, tmp_path, "--optimizer", "lamb", "--lr", 2e-2, "--warmup", 0,
                                        "--lr-decay-style", "constant", "--train-iters", 20, "--save-interval", 20,
                                        "--batch-size", 8, "--num-workers", 0), capsys)
    assert status == 0, err
    metrics = losses(tmp_path / "metrics.jsonl")
    first, last = (sum(metrics[s]["mlm_loss"] for s in steps) / 4 for steps in (range(1, 5), range(17, 21)))
    assert last < first - 0.3, (first, last)
    state = checkpoint.load(checkpoint.latest(tmp_path / "ckpt"))
    assert state["run"]["identity"]["training"]["optimizer"] == "lamb"
    moments = state["optimizer"]["state"]
    assert len(moments) == len(state["model"]) - 1  # every parameter but the decoder weight tied to the embeddings
    assert all({"exp_avg", "exp_avg_sq", "step"} <= set(moment) for moment in moments.values())


@pytest.mark.parametrize("flags, message", [
    (("--seq-length", 128, "--max-position-embeddings", 128),
     "--seq-length 128, but the records in --train-data have 64"),
    (("--seq-length", 128), "--seq-length 128 is above --max-position-embeddings 64"),
    (("--fp16", "--bf16"), "not allowed with argument"),
    (("--log-interval", 0), "must be at least 1"),
    (("--precision", "fp8"), "invalid choice: 'fp8'"),
    (("--hidden-size", 30, "--num-attention-heads", 4), "not a multiple of num_attention_heads"),
])
def test_megatron_flags_that_cannot_work_stop_with_a_clear_message(tmp_path, records, flags, message, capsys):
    status, _, err = in_process(command(records, tmp_path, "--train-iters", 1, *flags), capsys)
    assert status != 0 and message in err and "Traceback" not in err


def test_train_data_kind_must_be_said(records, capsys):
    tokenizer, train_data, _ = records
    status, _, err = in_process(["bertpipe", "pretrain", "--train-data", train_data, "--tokenizer-path", tokenizer],
                                capsys)
    assert status == 1 and "--use-tfrecords" in err and "--loose-json" in err


def test_megatron_readme_command_runs_with_only_paths_changed(tmp_path, records, sample_corpus, capsys, caplog):
    tokenizer, _, _ = records
    wikipedia = tmp_path / "wikipedia.jsonl"  # loose json, one document a line, as Megatron's README asks
    wikipedia.write_text((sample_corpus / "train/shard-0000.jsonl").read_text())
    # The original README's single-GPU command, with our paths and a tiny size: 2 steps.
    args = ["--batch-size", "4", "--tokenizer-type", "BertWordPieceTokenizer", "--cache-dir", str(tmp_path / "cache"),
            "--tokenizer-model-type", "bert-large-uncased", "--tokenizer-path", str(tokenizer), "--vocab-size", "2000",
            "--train-data", str(wikipedia), "--loose-json", "--text-key", "text", "--split", "1000,1,1",
            "--lazy-loader", "--max-preds-per-seq", "80", "--seq-length", "512", "--max-position-embeddings", "512",
            "--num-layers", "2", "--hidden-size", "32", "--intermediate-size", "64", "--num-attention-heads", "2",
            "--hidden-dropout", "0.1", "--attention-dropout", "0.1", "--train-iters", "2", "--lr", "0.0001",
            "--lr-decay-style", "linear", "--lr-decay-iters", "990000", "--warmup", ".01", "--weight-decay", "1e-2",
            "--clip-grad", "1.0", "--fp16", "--fp32-layernorm", "--fp32-embedding", "--hysteresis", "2",
            "--num-workers", "2", "--save", str(tmp_path / "ckpt")]
    tracked = ["--tracking-uri", f"sqlite:///{tmp_path}/mlflow/mlflow.db", "--tracking-dir", tmp_path / "mlflow"]
    status, _, err = in_process(["bertpipe", *tracked, "pretrain", *args], capsys)
    assert status == 0, err
    assert checkpoint.latest(tmp_path / "ckpt").name == "step-00000002"
    assert (tmp_path / "wikipedia.jsonl.lazy/offsets.int64").is_file()
    # Tracked like the workflow's TFRecord runs: the loose-json input is hashed too.
    assert "goes on without it" not in caplog.text and not (tmp_path / "mlflow/offline").exists()


def test_when_a_rank_hangs_the_others_fail_after_the_configured_timeout(tmp_path, records):
    """`--dist-timeout-minutes` bounds every collective: rank 0 is stopped (SIGSTOP, as a hung file system or
    device leaves a process) after step 1; rank 1 fails in its next gradient all-reduce after 3 s, not torch's
    default 30 minutes, and torchrun stops the run."""
    torchrun = (str(VENV_BIN / "torchrun"), "--standalone", "--nproc-per-node", "2", "-m", "bertpipe")
    process = subprocess.Popen(command(records, tmp_path, "--train-iters", 10000, "--save-interval", 10000,
                                       "--batch-size", 4, "--num-workers", 0, "--dist-timeout-minutes", 0.05,
                                       launcher=torchrun),
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=environment(),
                               start_new_session=True)
    output, rank_0 = [], None
    try:
        for line in process.stdout:
            output.append(line)
            if line.startswith("step 1 ") and rank_0 is None:
                children = open(f"/proc/{process.pid}/task/{process.pid}/children").read().split()
                rank_0 = next(int(pid) for pid in children
                              if b"\0RANK=0\0" in b"\0" + open(f"/proc/{pid}/environ", "rb").read())
                os.kill(rank_0, signal.SIGSTOP)
            if "Timed out" in line and rank_0:
                os.kill(rank_0, signal.SIGCONT)  # so that it takes torchrun's SIGTERM at once
        assert process.wait(timeout=300) != 0
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    text = "".join(output)
    assert rank_0 and "Timed out" in text and "3000ms" in text, text[-3000:]
