"""A workflow job's log ends with what the job cost (cli.py), in the form bench/scale_rehearsal.py reads."""

from bertpipe.cli import JOB_USAGE_LINE
from tests.conftest import bertpipe_in_process


def test_a_job_given_its_log_ends_it_with_its_cpu_time_peak_rss_and_time_outside_the_stage(tmp_path, capsys):
    status, out, err = bertpipe_in_process(capsys, "--log-file", tmp_path / "job.log", "settings", "schema")
    assert status in (0, None) and out.startswith("# Generated")
    last = err.strip().splitlines()[-1]
    usage = JOB_USAGE_LINE.fullmatch(last)
    assert usage and usage["stage"] == "settings", last
    # This test process's own usage: it has run Python for a while and holds tens of MB at least.
    assert float(usage["cpu"]) > 0 and float(usage["rss"]) > 10
    assert 0 <= float(usage["outside"]) <= float(usage["seconds"])


def test_a_command_run_by_hand_prints_no_usage_line(capsys):
    status, _, err = bertpipe_in_process(capsys, "settings", "schema")
    assert status in (0, None) and "job usage" not in err
