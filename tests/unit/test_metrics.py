"""The trainer's metric sinks: the console every log interval, every record as a JSON line."""

import json

from bertpipe.train.metrics import ConsoleSink, JsonLinesSink


def step(number):
    return {"step": number, "loss": 1.0, "mlm_loss": 0.5, "nsp_loss": 0.5, "lr": 1e-4, "loss_scale": 1.0,
            "skipped": 0, "samples_per_second": 10.0}


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
