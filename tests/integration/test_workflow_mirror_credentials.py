"""The workflow's download jobs against an HTTP mirror on 127.0.0.1 that wants credentials: from a netrc file or a
token variable, they reach the mirror, and no command line, log, param, tag or artifact holds them."""

from pathlib import Path

import pytest
import yaml

from bench.harness.workflow import snakemake
from tests.integration.test_download import mirror_credentials

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("kind", ["netrc", "token"])
def test_mirror_credentials_reach_the_mirror_and_no_command_line_log_param_tag_or_artifact(
        tmp_path, workflow_dir, mirror, kind, monkeypatch):
    server, contents = mirror
    secret, token_env = mirror_credentials(kind, tmp_path, server, monkeypatch)
    command_lines_seen, holding_the_secret = [], []

    def look_at_every_command_line(path):
        """While a job waits for this answer: every process's command line, the job's included."""
        for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
            try:
                words = cmdline.read_bytes()
            except OSError:  # the process has ended since the listing
                continue
            command_lines_seen.append(words)
            if secret.encode() in words:
                holding_the_secret.append((path, words))

    server.on_request = look_at_every_command_line
    (workflow_dir / "http.yaml").write_text(yaml.safe_dump(
        {"dump": {"mirror": server.url, "wiki": "enwiki", "date": "20260101"},
         "download": {"backoff_seconds": 0, "token_env": token_env}}))
    parts = [f"resources/dumps/enwiki/20260101/{name}" for name in contents]
    run = snakemake(workflow_dir, "--cores", "2", *parts, "--configfile", "config.demo.yaml", "http.yaml")

    for name, data in contents.items():
        assert (workflow_dir / "resources/dumps/enwiki/20260101" / name).read_bytes() == data
    assert {headers.get("Authorization") for _, headers in server.headers} == {server.authorization}
    assert any(b"download\0part" in words for words in command_lines_seen), "a download job was looked at"
    assert holding_the_secret == []
    assert secret not in run.stdout + run.stderr
    files = [path for path in workflow_dir.rglob("*") if path.is_file()]
    uploaded_logs = [path for path in files if "artifacts" in path.parts and path.parent.name == "snakemake"]
    assert uploaded_logs and any(path.parent.name == "download" and path.parts[-3] == "logs" for path in files)
    assert any(path.name == "mlflow.db" for path in files) and any(".snakemake" in path.parts for path in files)
    assert [path for path in files if secret.encode() in path.read_bytes()] == []

    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{workflow_dir}/results/mlflow/mlflow.db")
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()], max_results=100)
    assert len(runs) == 4, "the pipeline, the manifest and two parts"
    for mlflow_run in runs:
        assert not any(secret in value for value in [*mlflow_run.data.params.values(),
                                                     *mlflow_run.data.tags.values()])
