"""The download stage against a real HTTP server on 127.0.0.1 serving a dump tree laid out like the mirror."""

import base64
import hashlib
import json
import os
import secrets
import subprocess
from pathlib import Path

import pytest

from bench.harness.mirror import DumpServer
from bertpipe import BertpipeError
from bertpipe.settings import DownloadSettings
from bertpipe.stages.download import _origin, download_part, part_name, write_manifest
from tests.conftest import VENV_BIN, bertpipe_in_process, make_dump_tree, run_bertpipe


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


def mirror_credentials(kind: str, tmp_path, server, monkeypatch) -> tuple:
    """Credentials of `kind` that `server` then requires of every request, in this process's environment (and so its
    children's): netrc, a user and password in the file NETRC names (in `tmp_path`); token, a token in a variable
    for download.token_env. Returns (the secret, the variable's name or None)."""
    secret = secrets.token_hex(16)
    if kind == "netrc":
        netrc = tmp_path / "netrc"
        netrc.write_text(f"machine 127.0.0.1 login reader password {secret}\n")
        monkeypatch.setenv("NETRC", str(netrc))
        server.authorization = "Basic " + base64.b64encode(f"reader:{secret}".encode()).decode()
        return secret, None
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))  # no login of whoever runs the tests
    monkeypatch.setenv("BERTPIPE_TEST_MIRROR_TOKEN", secret)
    server.authorization = f"Bearer {secret}"
    return secret, "BERTPIPE_TEST_MIRROR_TOKEN"


@pytest.mark.parametrize("kind", ["netrc", "token"])
def test_netrc_or_token_credentials_reach_the_mirror_and_no_param_tag_artifact_log_or_error(
        tmp_path, mirror, kind, monkeypatch, capsys, caplog):
    """requests reads the netrc file itself (http_get leaves it the environment); the token goes as a Bearer header.
    The server answers 401 to a request without them."""
    server, contents = mirror
    secret, token_env = mirror_credentials(kind, tmp_path, server, monkeypatch)
    credentials = ["--token-env", token_env] if token_env else []
    tracking = ["--tracking-uri", f"sqlite:///{tmp_path}/mlflow/mlflow.db", "--tracking-dir", tmp_path / "mlflow"]
    manifest = tmp_path / "dl/manifest.json"
    status, _, err = bertpipe_in_process(capsys, *tracking, "download", "manifest", "--mirror", server.url,
                                         *credentials, "--wiki", "enwiki", "--date", "20260101", "--out", manifest)
    assert status == 0, err
    part, entry = sorted(json.loads(manifest.read_text())["parts"].items())[0]
    status, _, err_part = bertpipe_in_process(capsys, *tracking, "download", "part", "--manifest", manifest, "--part",
                                              part, "--out", tmp_path / "dl" / entry["file"], "--mirror",
                                              server.url, *credentials, "--retries", 0)
    assert status == 0 and (tmp_path / "dl" / entry["file"]).read_bytes() == contents[entry["file"]]
    assert {headers.get("Authorization") for _, headers in server.headers} == {server.authorization}
    (server.root / "enwiki/20260101" / entry["file"]).unlink()  # an error that names the URL
    status, _, err_404 = bertpipe_in_process(capsys, *tracking, "download", "part", "--manifest", manifest, "--part",
                                             part, "--out", tmp_path / "again.bz2", "--mirror", server.url,
                                             *credentials, "--retries", 0)
    assert status == 1 and f"{server.url}/enwiki/20260101/{entry['file']}: 404" in err_404

    written = [path for path in (tmp_path / "dl").rglob("*") if path.is_file()]
    written += [path for path in (tmp_path / "mlflow").rglob("*") if path.is_file()]
    assert manifest in written and any(path.name == "mlflow.db" for path in written)
    assert secret not in err + err_part + err_404 + caplog.text
    for path in written:
        assert secret.encode() not in path.read_bytes(), path
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow/mlflow.db")
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()], max_results=10)
    assert len(runs) == 3
    for run in runs:
        assert not any(secret in value for value in [*run.data.params.values(), *run.data.tags.values()])


def test_a_mirror_that_wants_credentials_and_gets_none_fails_saying_where_they_go(tmp_path, mirror, monkeypatch):
    server, _ = mirror
    server.authorization = "Bearer something"
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))  # not the netrc of whoever runs the tests
    with pytest.raises(BertpipeError, match=r"dumpstatus.json: HTTP 401 Unauthorized; check the mirror's credentials: "
                                            r".*~/.netrc .*download.token_env"):
        write_manifest(server.url, "enwiki", "20260101", tmp_path / "manifest.json", DownloadSettings())


@pytest.mark.parametrize("with_credentials", ["http://reader:{secret}@{host}", "http://{host}/?token={secret}&lang=en",
                                              "http://reader@{host}"])
def test_credentials_in_the_mirror_url_are_refused_before_any_request(tmp_path, mirror, capsys, with_credentials):
    server, _ = mirror
    secret = secrets.token_hex(16)
    url = with_credentials.format(secret=secret, host=server.url.removeprefix("http://"))
    with pytest.raises(BertpipeError, match=r"^--mirror carries credentials .*~/.netrc .*NETRC.* --token-env") as error:
        write_manifest(url, "enwiki", "20260101", tmp_path / "manifest.json", DownloadSettings())
    assert secret not in str(error.value)
    manifest, _ = manifest_for(tmp_path, server)
    server.requests.clear()
    part = next(iter(json.loads(manifest.read_text())["parts"]))
    status, _, err = bertpipe_in_process(capsys, "download", "part", "--manifest", manifest, "--part", part,
                                         "--out", tmp_path / "part.bz2", "--mirror", url)
    assert status == 1 and "error: --mirror carries credentials" in err and secret not in err
    assert not server.requests and not (tmp_path / "part.bz2").exists()


def test_a_token_variable_that_is_not_set_is_an_error_naming_it_and_the_setting(tmp_path, mirror, monkeypatch):
    server, _ = mirror
    monkeypatch.delenv("BERTPIPE_TEST_UNSET_TOKEN", raising=False)
    with pytest.raises(BertpipeError, match="variable BERTPIPE_TEST_UNSET_TOKEN, which download.token_env"):
        write_manifest(server.url, "enwiki", "20260101", tmp_path / "manifest.json",
                       DownloadSettings(token_env="BERTPIPE_TEST_UNSET_TOKEN"))
    assert not server.requests


def test_the_token_goes_to_the_mirrors_scheme_host_and_port_only_not_where_a_redirect_leads(tmp_path, mirror,
                                                                                           monkeypatch):
    server, _ = mirror
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))  # no login of whoever runs the tests either
    monkeypatch.setenv("BERTPIPE_TEST_MIRROR_TOKEN", "t0ken")
    download = DownloadSettings(token_env="BERTPIPE_TEST_MIRROR_TOKEN", redirects_to_other_hosts=True)
    status = "/enwiki/20260101/dumpstatus.json"
    (server.root / "enwiki/20260101/moved.json").write_bytes((server.root / status.lstrip("/")).read_bytes())
    server.redirect[status] = "/enwiki/20260101/moved.json"  # the mirror's own origin: the token goes along
    write_manifest(server.url, "enwiki", "20260101", tmp_path / "manifest.json", download)
    with DumpServer(server.root) as other:  # another port: another origin, however allowed
        server.redirect[status] = f"{other.url}/enwiki/20260101/moved.json"
        write_manifest(server.url, "enwiki", "20260101", tmp_path / "manifest.json", download)
    sent = [(path, headers.get("Authorization")) for path, headers in server.headers]
    assert sent and all(authorization == "Bearer t0ken" for _, authorization in sent)
    assert ("/enwiki/20260101/moved.json", "Bearer t0ken") in sent
    assert [(path, headers.get("Authorization")) for path, headers in other.headers] == [
        ("/enwiki/20260101/moved.json", None)]


def test_same_host_means_the_same_scheme_hostname_and_effective_port_whatever_the_userinfo():
    assert _origin("https://dumps.example.org/a") == _origin("https://Dumps.Example.org:443/b?c=d")
    assert _origin("http://dumps.example.org/a") == _origin("http://reader@dumps.example.org:80/")
    assert _origin("https://dumps.example.org/") != _origin("https://dumps.example.org:8443/")
    assert _origin("https://dumps.example.org/") != _origin("http://dumps.example.org:443/")


def without_size(manifest_path, part) -> None:
    """The manifest as a mirror's dumpstatus.json without a part's size makes it."""
    manifest = json.loads(manifest_path.read_text())
    manifest["parts"][part]["size"] = None
    manifest_path.write_text(json.dumps(manifest))


def test_a_complete_partial_of_a_part_without_a_listed_size_is_verified_not_fetched_again(tmp_path, mirror):
    """The server answers the range past its end with 416 and `Content-Range: bytes */<the partial's length>`."""
    server, contents = mirror
    manifest_path, manifest = manifest_for(tmp_path, server)
    part, entry = sorted(manifest["parts"].items())[0]
    without_size(manifest_path, part)
    out = tmp_path / "dl" / entry["file"]
    out.with_name(out.name + ".part").write_bytes(contents[entry["file"]])
    server.requests.clear()

    download_part(manifest_path, part, out, DownloadSettings(retries=0, timeout_seconds=10), server.url)

    assert out.read_bytes() == contents[entry["file"]] and not out.with_name(out.name + ".part").exists()
    path = f"/enwiki/20260101/{entry['file']}"
    assert server.requests == [(path, f"bytes={entry['size']}-")] and path not in server.sent


def test_a_416_for_a_partial_that_is_not_the_servers_file_deletes_it_and_says_so(tmp_path, mirror):
    """A part without a listed size whose partial file is longer than the server's: the 416 names another length;
    the partial is deleted, the message says nothing is kept, and the next run fetches the part from byte 0."""
    server, contents = mirror
    manifest_path, manifest = manifest_for(tmp_path, server)
    part, entry = sorted(manifest["parts"].items())[0]
    without_size(manifest_path, part)
    out = tmp_path / "dl" / entry["file"]
    partial = out.with_name(out.name + ".part")
    partial.write_bytes(contents[entry["file"]] + b"more bytes than the part has")

    result = run_bertpipe("download", "part", "--manifest", manifest_path, "--part", part, "--out", out,
                          "--mirror", server.url, "--retries", 0)

    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert f"Content-Range 'bytes */{entry['size']}'" in result.stderr
    assert "no partial file is kept: the next run downloads the part from the start" in result.stderr
    assert " kept and the next run resumes" not in result.stderr and not partial.exists()
    server.requests.clear()
    download_part(manifest_path, part, out, DownloadSettings(retries=0, timeout_seconds=10), server.url)
    assert out.read_bytes() == contents[entry["file"]]
    assert server.requests == [(f"/enwiki/20260101/{entry['file']}", None)]


def test_a_verified_part_is_synced_before_its_rename_and_the_rename_synced(tmp_path, mirror, monkeypatch):
    """os.fsync and os.replace are watched as they run (each call still made): the `.part` file is synced, renamed
    to the part, then its folder synced."""
    server, contents = mirror
    manifest_path, manifest = manifest_for(tmp_path, server)
    part, entry = sorted(manifest["parts"].items())[0]
    out = tmp_path / "dl" / entry["file"]
    calls = []
    fsync, replace = os.fsync, os.replace

    def watched_fsync(descriptor):
        calls.append(("fsync", os.readlink(f"/proc/self/fd/{descriptor}")))
        return fsync(descriptor)

    def watched_replace(source, target):
        calls.append(("replace", str(source), str(target)))
        return replace(source, target)

    monkeypatch.setattr(os, "fsync", watched_fsync)
    monkeypatch.setattr(os, "replace", watched_replace)
    download_part(manifest_path, part, out, DownloadSettings(retries=0, timeout_seconds=10), server.url)
    assert out.read_bytes() == contents[entry["file"]]
    partial, folder = os.path.realpath(f"{out}.part"), os.path.realpath(out.parent)
    publishing = calls[calls.index(("fsync", partial)):]
    assert publishing[:3] == [("fsync", partial), ("replace", f"{out}.part", str(out)), ("fsync", folder)]


def test_snakemakes_log_is_uploaded_redacted_of_url_credentials_and_the_mirrors_token(tmp_path, monkeypatch):
    """The pipeline's parent run gets a copy of Snakemake's log under the same name, without the token (whose
    variable download.token_env names) or a URL's password; the log itself is left as it is."""
    import mlflow.artifacts
    from mlflow import MlflowClient

    from bertpipe import tracking

    token, password = secrets.token_hex(16), secrets.token_hex(16)
    monkeypatch.setenv("BERTPIPE_TEST_MIRROR_TOKEN", token)
    target = tracking.Target(uri=f"sqlite:///{tmp_path}/mlflow/mlflow.db", folder=str(tmp_path / "mlflow"))
    run = tracking.start_pipeline(target, {"dump": {"mirror": "https://dumps.example.org"}}, command=["snakemake"])
    log = tmp_path / ".snakemake/log/2026-01-02T030405.snakemake.log"
    log.parent.mkdir(parents=True)
    text = f"fetched https://reader:{password}@dumps.example.org/x\na job printed {token} by mistake\n"
    log.write_text(text)

    tracking.end_pipeline(target, "FINISHED", [str(log)], secret_variables=["BERTPIPE_TEST_MIRROR_TOKEN", None])

    assert log.read_text() == text
    uploaded = Path(mlflow.artifacts.download_artifacts(run_id=run.run_id, artifact_path=f"snakemake/{log.name}",
                                                        dst_path=str(tmp_path / "fetched"), tracking_uri=target.uri))
    assert uploaded.read_text() == "fetched https://dumps.example.org/x\na job printed REDACTED by mistake\n"
    assert MlflowClient(target.uri).get_run(run.run_id).info.status == "FINISHED"


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
    with pytest.raises(BertpipeError, match="redirects to .*another scheme, host or port; set download.redirects_to"):
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
