"""The download stage against a real HTTP server on 127.0.0.1 serving a dump tree laid out like the mirror."""

import hashlib
import json
import subprocess

import pytest

from bertpipe import BertpipeError
from bertpipe.download import download_part, part_name, write_manifest
from bertpipe.settings import DownloadSettings
from tests.conftest import VENV_BIN, DumpServer, bertpipe_in_process, make_dump_tree, run_bertpipe


def manifest_for(tmp_path, server, date="20260101"):
    out = tmp_path / "dl" / "manifest.json"
    write_manifest(server.url, "enwiki", date, out, DownloadSettings(timeout_seconds=10))
    return out, json.loads(out.read_text())


def test_full_download_of_every_part(tmp_path, mirror):
    server, contents = mirror
    manifest_path, manifest = manifest_for(tmp_path, server)
    assert manifest["date"] == "20260101"
    assert sorted(manifest["parts"]) == sorted(part_name(name) for name in contents)
    for part, entry in manifest["parts"].items():
        out = tmp_path / "dl" / entry["file"]
        download_part(manifest_path, part, out, DownloadSettings(retries=0, timeout_seconds=10), server.url)
        assert out.read_bytes() == contents[entry["file"]]
    assert not list((tmp_path / "dl").glob("*.part")), "no partial file may be left"


def test_latest_resolves_to_the_newest_finished_dump(tmp_path, sample_xml):
    root = tmp_path / "mirror"
    make_dump_tree(root, sample_xml, parts=1, date="20260101")
    make_dump_tree(root, sample_xml, parts=1, date="20260201", status="in-progress")
    with DumpServer(root) as server:
        _, manifest = manifest_for(tmp_path, server, date="latest")
    assert manifest["requested_date"] == "latest"
    assert manifest["date"] == "20260101"


def test_dropped_connection_resumes_without_fetching_bytes_again(tmp_path, mirror):
    server, contents = mirror
    manifest_path, manifest = manifest_for(tmp_path, server)
    part, entry = sorted(manifest["parts"].items())[0]
    path = f"/enwiki/20260101/{entry['file']}"
    half = entry["size"] // 2
    server.drop_after[path] = half
    out = tmp_path / "dl" / entry["file"]

    download_part(manifest_path, part, out, DownloadSettings(retries=2, backoff_seconds=0, timeout_seconds=10),
                  server.url)

    assert out.read_bytes() == contents[entry["file"]]
    ranges = [header for requested, header in server.requests if requested == path]
    assert ranges == [None, f"bytes={half}-"], "the second request must ask only for the missing bytes"
    assert server.sent[path] == entry["size"], "no byte may be sent twice"


def test_partial_file_from_a_killed_run_is_resumed(tmp_path, mirror):
    server, contents = mirror
    manifest_path, manifest = manifest_for(tmp_path, server)
    part, entry = sorted(manifest["parts"].items())[1]
    out = tmp_path / "dl" / entry["file"]
    have = 1000
    out.with_name(out.name + ".part").write_bytes(contents[entry["file"]][:have])

    download_part(manifest_path, part, out, DownloadSettings(retries=0, timeout_seconds=10), server.url)

    assert out.read_bytes() == contents[entry["file"]]
    assert server.sent[f"/enwiki/20260101/{entry['file']}"] == entry["size"] - have


def test_a_partial_file_longer_than_the_part_starts_again_at_once(tmp_path, mirror):
    """Longer than the manifest's size (another file under the name, or bytes appended twice): no range request,
    which the server would refuse (416) or answer with bytes past the part's end; the part is fetched whole."""
    server, contents = mirror
    manifest_path, manifest = manifest_for(tmp_path, server)
    part, entry = sorted(manifest["parts"].items())[0]
    out = tmp_path / "dl" / entry["file"]
    out.with_name(out.name + ".part").write_bytes(contents[entry["file"]] + b"more bytes than the part has")

    download_part(manifest_path, part, out, DownloadSettings(retries=0, timeout_seconds=10), server.url)

    assert out.read_bytes() == contents[entry["file"]]
    path = f"/enwiki/20260101/{entry['file']}"
    assert [asked for asked in server.requests if asked[0] == path] == [(path, None)], "one request, from byte 0"


def test_transient_server_error_is_retried(tmp_path, mirror):
    server, contents = mirror
    manifest_path, manifest = manifest_for(tmp_path, server)
    part, entry = sorted(manifest["parts"].items())[0]
    server.fail_with[f"/enwiki/20260101/{entry['file']}"] = 503
    out = tmp_path / "dl" / entry["file"]
    download_part(manifest_path, part, out, DownloadSettings(retries=1, backoff_seconds=0, timeout_seconds=10),
                  server.url)
    assert out.read_bytes() == contents[entry["file"]]


def test_sha1_mismatch_names_file_and_both_hashes_and_leaves_nothing(tmp_path, mirror):
    server, contents = mirror
    manifest_path, manifest = manifest_for(tmp_path, server)
    part, entry = sorted(manifest["parts"].items())[0]
    wrong = "0" * 40
    manifest["parts"][part]["sha1"] = wrong
    manifest_path.write_text(json.dumps(manifest))
    out = tmp_path / "dl" / entry["file"]

    result = run_bertpipe("download", "part", "--manifest", manifest_path, "--part", part, "--out", out,
                          "--mirror", server.url, "--retries", 0)

    assert result.returncode == 1
    actual = hashlib.sha1(contents[entry["file"]]).hexdigest()
    assert entry["file"] in result.stderr and wrong in result.stderr and actual in result.stderr
    assert "Traceback" not in result.stderr
    left = {path.name for path in (tmp_path / "dl").iterdir()}
    assert left == {"manifest.json", f"{entry['file']}.lock"}, "neither the output nor a partial file is left"


def test_missing_part_404_fails_clearly(tmp_path, mirror):
    server, contents = mirror
    manifest_path, manifest = manifest_for(tmp_path, server)
    part, entry = sorted(manifest["parts"].items())[0]
    (server.root / "enwiki/20260101" / entry["file"]).unlink()
    out = tmp_path / "dl" / entry["file"]

    result = run_bertpipe("download", "part", "--manifest", manifest_path, "--part", part, "--out", out,
                          "--mirror", server.url)

    assert result.returncode == 1
    assert "404" in result.stderr and entry["file"] in result.stderr
    assert "Traceback" not in result.stderr
    assert not out.exists()


def test_missing_dump_date_fails_clearly(tmp_path, mirror):
    server, _ = mirror
    with pytest.raises(BertpipeError, match=r"20991231/dumpstatus.json: 404"):
        write_manifest(server.url, "enwiki", "20991231", tmp_path / "manifest.json", DownloadSettings())
    assert not (tmp_path / "manifest.json").exists()


def test_unfinished_dump_is_refused(tmp_path, sample_xml):
    root = tmp_path / "mirror"
    make_dump_tree(root, sample_xml, parts=1, date="20260201", status="in-progress")
    with DumpServer(root) as server, pytest.raises(BertpipeError, match="in-progress"):
        write_manifest(server.url, "enwiki", "20260201", tmp_path / "manifest.json", DownloadSettings())


def test_local_folder_mirror_works_like_http(tmp_path, sample_xml):
    root = tmp_path / "mirror"
    contents = make_dump_tree(root, sample_xml, parts=2)
    for mirror_url in (str(root), root.as_uri()):
        folder = tmp_path / mirror_url.replace("/", "_")
        write_manifest(mirror_url, "enwiki", "20260101", folder / "manifest.json", DownloadSettings())
        manifest = json.loads((folder / "manifest.json").read_text())
        for part, entry in manifest["parts"].items():
            download_part(folder / "manifest.json", part, folder / entry["file"], DownloadSettings(retries=0),
                          mirror_url)
            assert (folder / entry["file"]).read_bytes() == contents[entry["file"]]


def test_credentials_in_the_mirror_url_reach_no_param_tag_artifact_log_or_error(tmp_path, mirror, capsys, caplog):
    server, contents = mirror
    host = server.url.removeprefix("http://")
    secrets = ("p@ss:w0rd", "s3cret")  # a password with the characters that cut a pattern short
    with_credentials = f"http://user:{secrets[0]}@{host}/?token={secrets[1]}&lang=en"
    tracking = ["--tracking-uri", f"sqlite:///{tmp_path}/mlflow/mlflow.db", "--tracking-dir", tmp_path / "mlflow"]
    manifest = tmp_path / "dl/manifest.json"
    status, _, err = bertpipe_in_process(capsys, *tracking, "download", "manifest", "--mirror", with_credentials,
                                         "--wiki", "enwiki", "--date", "20260101", "--out", manifest)
    assert status == 0, err
    part, entry = sorted(json.loads(manifest.read_text())["parts"].items())[0]
    status, _, err_part = bertpipe_in_process(capsys, *tracking, "download", "part", "--manifest", manifest, "--part",
                                              part, "--out", tmp_path / "dl" / entry["file"], "--mirror",
                                              with_credentials, "--retries", 0)
    assert status == 0 and (tmp_path / "dl" / entry["file"]).read_bytes() == contents[entry["file"]]
    (server.root / "enwiki/20260101" / entry["file"]).unlink()  # an error that names the URL
    status, _, err_404 = bertpipe_in_process(capsys, *tracking, "download", "part", "--manifest", manifest, "--part",
                                             part, "--out", tmp_path / "again.bz2", "--mirror", with_credentials,
                                             "--retries", 0)
    assert status == 1 and f"http://{host}/enwiki/20260101/{entry['file']}?token=REDACTED&lang=en: 404" in err_404

    written = [path for path in tmp_path.rglob("*") if path.is_file() and path.suffix != ".bz2"]
    assert manifest in written and any(path.name == "mlflow.db" for path in written)
    for secret in secrets:
        assert secret not in err + err_part + err_404 + caplog.text
        for path in written:
            assert secret.encode() not in path.read_bytes(), path
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow/mlflow.db")
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()], max_results=10)
    mirrors = {run.data.params.get("mirror") for run in runs}
    assert mirrors == {f"http://{host}/?token=REDACTED&lang=en"}


def test_two_downloads_of_the_same_part_started_together_end_with_one_verified_file(tmp_path, mirror):
    server, contents = mirror
    manifest_path, manifest = manifest_for(tmp_path, server)
    part, entry = sorted(manifest["parts"].items())[0]
    path = f"/enwiki/20260101/{entry['file']}"
    server.seconds_per_chunk[path] = 0.05  # a slow link: the second process starts while the first downloads
    out = tmp_path / "dl" / entry["file"]
    command = [str(VENV_BIN / "bertpipe"), "download", "part", "--manifest", str(manifest_path), "--part", part,
               "--out", str(out), "--mirror", server.url, "--retries", "0"]
    processes = [subprocess.Popen(command, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    errors = [process.communicate()[1] for process in processes]
    assert [process.returncode for process in processes] == [0, 0], errors
    assert out.read_bytes() == contents[entry["file"]] and not out.with_name(out.name + ".part").exists()
    assert server.sent[path] == entry["size"], "one download; the other found the verified file"
    assert any("already downloaded and verified" in error for error in errors)


def test_a_part_that_changed_on_the_mirror_since_the_partial_download_is_fetched_whole(tmp_path, mirror, sample_xml):
    server, contents = mirror
    manifest_path, manifest = manifest_for(tmp_path, server)
    part, entry = sorted(manifest["parts"].items())[0]
    path = f"/enwiki/20260101/{entry['file']}"
    server.drop_after[path] = entry["size"] // 2
    out = tmp_path / "dl" / entry["file"]
    with pytest.raises(BertpipeError, match="the next run resumes"):
        download_part(manifest_path, part, out, DownloadSettings(retries=0, timeout_seconds=10), server.url)
    # The mirror republishes the part (the manifest is made again from its new dumpstatus.json).
    changed = make_dump_tree(server.root, sample_xml.replace(b"Anarchism", b"Anarchy"), parts=2)
    manifest_path, manifest = manifest_for(tmp_path, server)
    download_part(manifest_path, part, out, DownloadSettings(retries=0, timeout_seconds=10), server.url)
    assert out.read_bytes() == changed[entry["file"]] != contents[entry["file"]]
    resumed = [headers for requested, headers in server.headers if requested == path][-1]
    assert resumed["Range"] == f"bytes={entry['size'] // 2}-" and resumed["If-Range"] == f'"{entry["sha1"]}"'
    assert all(headers["Accept-Encoding"] == "identity" for _, headers in server.headers)


def test_redirects_go_to_the_mirrors_host_only_unless_the_config_allows_others(tmp_path, mirror):
    server, _ = mirror
    status = "/enwiki/20260101/dumpstatus.json"
    elsewhere = server.url.replace("127.0.0.1", "localhost")  # the same server under another host name
    server.redirect[status] = f"{elsewhere}/enwiki/20260101/moved.json"
    (server.root / "enwiki/20260101/moved.json").write_bytes((server.root / status.lstrip("/")).read_bytes())
    out = tmp_path / "manifest.json"
    with pytest.raises(BertpipeError, match="redirects to .*another host or scheme; set download.redirects_to_other"):
        write_manifest(server.url, "enwiki", "20260101", out, DownloadSettings())
    assert not out.exists()
    write_manifest(server.url, "enwiki", "20260101", out, DownloadSettings(redirects_to_other_hosts=True))
    server.redirect[status] = "/enwiki/20260101/moved.json"  # the same host: followed by default
    write_manifest(server.url, "enwiki", "20260101", out, DownloadSettings())


@pytest.fixture
def certificate(tmp_path):
    """A self-signed certificate for 127.0.0.1, trusted by requests in this test: (cert file, key file)."""
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", cert, "-days",
                    "1", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
                   check=True, capture_output=True)
    return cert, key


def test_a_redirect_from_https_to_http_is_never_followed(tmp_path, mirror, certificate, monkeypatch):
    """Not even where other hosts are allowed: the dump would come over a connection anyone on the way can change."""
    plain, _ = mirror
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(certificate[0]))
    with DumpServer(plain.root, certificate) as secure:
        out = tmp_path / "manifest.json"
        write_manifest(secure.url, "enwiki", "20260101", out, DownloadSettings())  # https itself works
        status = "/enwiki/20260101/dumpstatus.json"
        secure.redirect[status] = f"{plain.url}{status}"
        out.unlink()
        with pytest.raises(BertpipeError, match="from https to http, which is never followed"):
            write_manifest(secure.url, "enwiki", "20260101", out, DownloadSettings(redirects_to_other_hosts=True))
        assert not out.exists() and not plain.requests, "nothing was asked of the http server"


def test_a_part_name_that_is_not_a_plain_file_name_is_refused(tmp_path, mirror):
    server, _ = mirror
    status_file = server.root / "enwiki/20260101/dumpstatus.json"
    status = json.loads(status_file.read_text())
    files = status["jobs"]["articlesdump"]["files"]
    name = next(iter(files))
    files[f"../../{name}"] = files.pop(name)
    status_file.write_text(json.dumps(status))
    with pytest.raises(BertpipeError, match=r"'\.\./\.\./.*' is not a plain file name of a pages-articles part"):
        write_manifest(server.url, "enwiki", "20260101", tmp_path / "manifest.json", DownloadSettings())
