"""The trainer's metric sinks: the console every log interval, every record as a JSON line."""

import json

from bertpipe.train.metrics import ConsoleSink, JsonLinesSink


def step(number):
    return {"step": number, "loss": 1.0, "mlm_loss": 0.5, "nsp_loss": 0.5, "lr": 1e-4, "loss_scale": 1.0,
            "skipped": 0, "samples_per_second": 10.0, "mfu": 0.25, "data_wait_fraction": 0.01}


def test_the_console_shows_every_interval_the_last_step_and_each_validation(capsys):
    sink = ConsoleSink(interval=4, last_step=10)
    for number in range(1, 11):
        sink(step(number))
    sink({"step": 10, "valid_mlm_loss": 2.0, "valid_perplexity": 7.39})
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[1] for line in lines[:-1]] == ["4", "8", "10"]
    assert lines[-1] == "valid_mlm_loss 2.0000 valid_perplexity 7.3900"


def test_json_lines_get_every_record_appended(tmp_path):
    path = tmp_path / "phase1" / "metrics.jsonl"
    for number in (1, 2):
        JsonLinesSink(path)(step(number))  # a resumed run opens it again and appends
    assert [json.loads(line)["step"] for line in path.read_text().splitlines()] == [1, 2]


def test_a_torn_or_nul_line_in_the_metrics_is_skipped_with_a_warning_and_the_curve_drawn(tmp_path, caplog):
    from bertpipe.plot import loss_curve, read_metrics

    path = tmp_path / "metrics.jsonl"
    lines = [json.dumps(step(1)), json.dumps(step(2))[:25], "\0" * 30, json.dumps(step(3)),
             json.dumps({"step": 3, "valid_mlm_loss": 2.0})]
    path.write_text("\n".join(lines) + "\n")
    train, valid = read_metrics(path)
    assert [r["step"] for r in train] == [1, 3] and [r["step"] for r in valid] == [3]
    assert f"{path}, line 2: not a metrics record" in caplog.text and f"{path}, line 3" in caplog.text
    loss_curve(path, tmp_path / "curve.png")
    assert (tmp_path / "curve.png").read_bytes()[:4] == b"\x89PNG"


def test_a_run_keeps_only_its_own_steps_of_the_metrics_file(tmp_path):
    """Where a run starts (0 afresh after another run's checkpoints were set aside, else the step it resumed), the
    records after it are another run's or about to be repeated: a loss curve must show this run alone."""
    path = tmp_path / "metrics.jsonl"
    sink = JsonLinesSink(path)
    for step in range(1, 6):
        sink({"step": step, "loss": 10.0 - step})
    with open(path, "a") as f:
        f.write('{"step": 6, "lo')  # torn by a kill
    sink.keep_until(3)
    assert [json.loads(line)["step"] for line in path.read_text().splitlines()] == [1, 2, 3]
    sink.keep_until(0)
    assert path.read_text() == ""
