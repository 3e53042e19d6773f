"""The download stage against a real HTTP server on 127.0.0.1 serving a dump tree laid out like the mirror."""

import hashlib
import json

import pytest

from bertpipe import BertpipeError
from bertpipe.download import download_part, part_name, write_manifest
from bertpipe.settings import DownloadSettings
from tests.conftest import DumpServer, make_dump_tree, run_bertpipe


def manifest_for(tmp_path, server, date="20260101"):
    out = tmp_path / "dl" / "manifest.json"
    write_manifest(server.url, "enwiki", date, out, timeout=10)
    return out, json.loads(out.read_text())


def test_full_download_of_every_part(tmp_path, mirror):
    server, contents = mirror
    manifest_path, manifest = manifest_for(tmp_path, server)
    assert manifest["date"] == "20260101"
    assert sorted(manifest["parts"]) == sorted(part_name(name) for name in contents)
    for part, entry in manifest["parts"].items():
        out = tmp_path / "dl" / entry["file"]
        download_part(manifest_path, part, out, DownloadSettings(retries=0, timeout_seconds=10))
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

    download_part(manifest_path, part, out, DownloadSettings(retries=2, backoff_seconds=0, timeout_seconds=10))

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

    download_part(manifest_path, part, out, DownloadSettings(retries=0, timeout_seconds=10))

    assert out.read_bytes() == contents[entry["file"]]
    assert server.sent[f"/enwiki/20260101/{entry['file']}"] == entry["size"] - have


def test_transient_server_error_is_retried(tmp_path, mirror):
    server, contents = mirror
    manifest_path, manifest = manifest_for(tmp_path, server)
    part, entry = sorted(manifest["parts"].items())[0]
    server.fail_with[f"/enwiki/20260101/{entry['file']}"] = 503
    out = tmp_path / "dl" / entry["file"]
    download_part(manifest_path, part, out, DownloadSettings(retries=1, backoff_seconds=0, timeout_seconds=10))
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
                          "--retries", 0)

    assert result.returncode == 1
    actual = hashlib.sha1(contents[entry["file"]]).hexdigest()
    assert entry["file"] in result.stderr and wrong in result.stderr and actual in result.stderr
    assert "Traceback" not in result.stderr
    assert list((tmp_path / "dl").iterdir()) == [manifest_path], "neither the output nor a partial file is left"


def test_missing_part_404_fails_clearly(tmp_path, mirror):
    server, contents = mirror
    manifest_path, manifest = manifest_for(tmp_path, server)
    part, entry = sorted(manifest["parts"].items())[0]
    (server.root / "enwiki/20260101" / entry["file"]).unlink()
    out = tmp_path / "dl" / entry["file"]

    result = run_bertpipe("download", "part", "--manifest", manifest_path, "--part", part, "--out", out)

    assert result.returncode == 1
    assert "404" in result.stderr and entry["file"] in result.stderr
    assert "Traceback" not in result.stderr
    assert not out.exists()


def test_missing_dump_date_fails_clearly(tmp_path, mirror):
    server, _ = mirror
    with pytest.raises(BertpipeError, match=r"20991231/dumpstatus.json: 404"):
        write_manifest(server.url, "enwiki", "20991231", tmp_path / "manifest.json", timeout=10)
    assert not (tmp_path / "manifest.json").exists()


def test_unfinished_dump_is_refused(tmp_path, sample_xml):
    root = tmp_path / "mirror"
    make_dump_tree(root, sample_xml, parts=1, date="20260201", status="in-progress")
    with DumpServer(root) as server, pytest.raises(BertpipeError, match="in-progress"):
        write_manifest(server.url, "enwiki", "20260201", tmp_path / "manifest.json", timeout=10)


def test_local_folder_mirror_works_like_http(tmp_path, sample_xml):
    root = tmp_path / "mirror"
    contents = make_dump_tree(root, sample_xml, parts=2)
    for mirror_url in (str(root), root.as_uri()):
        folder = tmp_path / mirror_url.replace("/", "_")
        write_manifest(mirror_url, "enwiki", "20260101", folder / "manifest.json", timeout=10)
        manifest = json.loads((folder / "manifest.json").read_text())
        for part, entry in manifest["parts"].items():
            download_part(folder / "manifest.json", part, folder / entry["file"], DownloadSettings(retries=0))
            assert (folder / entry["file"]).read_bytes() == contents[entry["file"]]
