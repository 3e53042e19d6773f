"""Shared fixtures: the bundled sample, dump trees built from it, a local HTTP mirror, a workflow folder."""

import bz2
import hashlib
import http.server
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "data/mirror/enwiki/latest/enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2"
SAMPLE_ARTICLES = 106
CHUNK = 1 << 16  # DumpServer sends a body in pieces of this size
VENV_BIN = Path(sys.executable).parent
NO_TENSORFLOW = REPO / "tests/no_tensorflow"  # on PYTHONPATH, it makes `import tensorflow` fail


@pytest.fixture(scope="session")
def sample_xml() -> bytes:
    return bz2.decompress(SAMPLE.read_bytes())


def split_pages(xml: bytes) -> tuple:
    """(header up to and with </siteinfo>, list of <page> elements, footer) of a MediaWiki XML export."""
    header_end = xml.index(b"</siteinfo>") + len(b"</siteinfo>\n")
    pages = re.findall(rb"  <page>.*?</page>\n", xml[header_end:], flags=re.S)
    return xml[:header_end], pages, b"</mediawiki>\n"


def write_part(path: Path, header: bytes, pages: list, footer: bytes) -> dict:
    data = bz2.compress(header + b"".join(pages) + footer)
    path.write_bytes(data)
    return {"size": len(data), "sha1": hashlib.sha1(data).hexdigest()}


def make_dump_tree(root: Path, xml: bytes, parts: int = 2, wiki: str = "enwiki", date: str = "20260101",
                   status: str = "done") -> dict:
    """A mirror tree `<root>/<wiki>/<date>/` with dumpstatus.json and the sample split into `parts` dump parts.

    Returns {part file name: bytes}."""
    header, pages, footer = split_pages(xml)
    folder = root / wiki / date
    folder.mkdir(parents=True, exist_ok=True)
    files, contents = {}, {}
    per_part = -(-len(pages) // parts)
    for index in range(parts):
        chunk = pages[index * per_part:(index + 1) * per_part]
        name = f"{wiki}-{date}-pages-articles{index + 1}.xml-p{index * per_part + 1}p{(index + 1) * per_part}.bz2"
        meta = write_part(folder / name, header, chunk, footer)
        files[name] = {**meta, "url": f"/{wiki}/{date}/{name}", "md5": "not-checked"}
        contents[name] = (folder / name).read_bytes()
    status_doc = {"jobs": {"articlesdump": {"status": status, "updated": "2026-01-02 03:04:05", "files": files},
                           "metacurrentdump": {"status": "done", "files": {}}}, "version": "0.8"}
    (folder / "dumpstatus.json").write_text(json.dumps(status_doc))
    return contents


class DumpServer:
    """A local HTTP mirror on 127.0.0.1 serving a folder, with Range and If-Range support (a file's ETag is its
    sha1), a folder index, a count of the bytes sent per path, and faults to inject: drop the connection after N
    bytes, or answer a status code, once each; redirect a path; send a path slowly, as a slow link does. It can
    require an Authorization header on every request, and call a function as it handles each one."""

    def __init__(self, root: Path, certificate=None):
        """`certificate`: (cert file, key file) to serve https instead of http."""
        self.root = root
        self.sent = {}  # path -> bytes of body sent
        self.requests = []  # (path, Range header or None)
        self.headers = []  # (path, {header: value}) of every request
        self.drop_after = {}  # path -> bytes to send before closing the connection, once
        self.fail_with = {}  # path -> status code to answer, once
        self.redirect = {}  # path -> the Location to answer with (302)
        self.seconds_per_chunk = {}  # path -> seconds between chunks of CHUNK bytes
        self.authorization = None  # the Authorization header every request must carry (401 without it), or None
        self.on_request = None  # called with each request's path while the client waits for the answer
        self.lock = threading.Lock()
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_GET(self):
                path = self.path.split("?")[0]
                with server.lock:
                    server.requests.append((path, self.headers.get("Range")))
                    server.headers.append((path, dict(self.headers)))
                if server.on_request:
                    server.on_request(path)
                if server.authorization and self.headers.get("Authorization") != server.authorization:
                    return self._reply(401, b"", headers={"WWW-Authenticate": 'Basic realm="mirror"'})
                with server.lock:  # a refused request leaves the faults for the next one
                    fail = server.fail_with.pop(path, None)
                    drop = server.drop_after.pop(path, None)
                    location = server.redirect.get(path)
                    pause = server.seconds_per_chunk.get(path, 0)
                if fail:
                    return self._reply(fail, b"injected failure")
                if location:
                    self.send_response(302)
                    self.send_header("Location", location)
                    self.send_header("Content-Length", "0")
                    return self.end_headers()
                target = server.root / path.lstrip("/")
                if target.is_dir():
                    links = "".join(f'<a href="{p.name}/">{p.name}/</a>\n' for p in sorted(target.iterdir()))
                    return self._reply(200, f"<html><body>{links}</body></html>".encode(), "text/html")
                if not target.is_file():
                    return self._reply(404, b"not found")
                data = target.read_bytes()
                etag = f'"{hashlib.sha1(data).hexdigest()}"'
                start, status = 0, 200
                match = re.match(r"bytes=(\d+)-$", self.headers.get("Range", ""))
                if match and self.headers.get("If-Range", etag) != etag:
                    match = None  # the file changed since the client's bytes: the whole file, as RFC 9110 says
                if match:
                    start, status = int(match.group(1)), 206
                    if start >= len(data):
                        return self._reply(416, b"", headers={"Content-Range": f"bytes */{len(data)}"})
                body = data[start:]
                self.send_response(status)
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Accept-Ranges", "bytes")
                self.send_header("ETag", etag)
                if status == 206:
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                self.end_headers()
                if drop is not None:
                    body = body[:drop]
                    self.close_connection = True
                with server.lock:  # counted before sending: once the client has the bytes, the count is there
                    server.sent[path] = server.sent.get(path, 0) + len(body)
                for begin in range(0, len(body), CHUNK):
                    if pause:
                        time.sleep(pause)  # a slow link's pace, not synchronisation
                    self.wfile.write(body[begin:begin + CHUNK])

            def _reply(self, status, body, content_type="text/plain", headers=None):
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                for name, value in (headers or {}).items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(body)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        scheme = "http"
        if certificate:
            import ssl

            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(*map(str, certificate))
            self.httpd.socket = context.wrap_socket(self.httpd.socket, server_side=True)
            scheme = "https"
        self.url = f"{scheme}://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join()


@pytest.fixture
def mirror(tmp_path, sample_xml):
    """A two-part dump tree served over HTTP on 127.0.0.1: yields (server, {file name: bytes})."""
    root = tmp_path / "mirror"
    contents = make_dump_tree(root, sample_xml, parts=2)
    with DumpServer(root) as server:
        yield server, contents


def run_bertpipe(*args, cwd=None):
    return subprocess.run([str(VENV_BIN / "bertpipe"), *map(str, args)], capture_output=True, text=True, cwd=cwd)


def bertpipe_in_process(capsys, *args) -> tuple:
    """`bertpipe <args>` in this process, for checks that need no process of their own (no interpreter start, no
    imports again): (exit status, stdout, stderr)."""
    from bertpipe import cli

    try:
        status = cli.main([str(a) for a in args])
    except SystemExit as exit:  # argparse's errors
        status = exit.code
    out, err = capsys.readouterr()
    return status, out, err


def copy_workflow(folder: Path) -> Path:
    """A copy of the workflow (Snakefile, configs, workflow/, envs/, data/, src/, the slurm/ profile) in `folder`, to
    run Snakemake in as a fresh clone would."""
    folder.mkdir(parents=True)
    for name in ("Snakefile", "config.yaml", "config.demo.yaml"):
        shutil.copy(REPO / name, folder / name)
    for name in ("workflow", "envs", "data", "src", "slurm"):
        shutil.copytree(REPO / name, folder / name, ignore=shutil.ignore_patterns("__pycache__"))
    return folder


@pytest.fixture
def workflow_dir(tmp_path):
    return copy_workflow(tmp_path / "wf")


def snakemake(folder: Path, *args, check=True):
    """Run Snakemake in `folder` with the venv's tools first on PATH; returns the CompletedProcess."""
    env = {**os.environ, "PATH": f"{VENV_BIN}{os.pathsep}{os.environ['PATH']}"}
    result = subprocess.run([str(VENV_BIN / "snakemake"), *map(str, args)], cwd=folder, env=env,
                            capture_output=True, text=True)
    if check and result.returncode != 0:
        raise AssertionError(f"snakemake {' '.join(map(str, args))} failed:\n{result.stdout}\n{result.stderr}")
    return result


# For the tests whose point is where the workflow runs (Slurm, a tracking server), not what it learns: the demo with
# one shard per split, one sequence length and one phase of 40 steps, every step's losses logged. Every rule still
# runs (16 jobs, the demo's 27); two phases run in test_workflow.py.
SMALL_PIPELINE = {
    "slurm": {"pretrain": {"cpus_per_node": 1}},  # one thread: the suite's other worker has the second core
    "corpus": {"shard_max_mb": 16},
    "tfrecords": {"phases": [{"seq_length": 128, "max_predictions": 20}]},
    "pretrain": {"save_interval": 20, "eval_interval": 20, "log_interval": 1, "phases": [
        {"seq_length": 128, "batch_size": 8, "gradient_accumulation_steps": 1, "train_iters": 40, "lr": 1.0e-3}]}}


@pytest.fixture(scope="session")
def sample_corpus(tmp_path_factory):
    """The bundled sample through extract and corpus (split 8,1,1): the folder of its one part."""
    from bertpipe.settings import CorpusSettings
    from bertpipe.stages.corpus import build_part
    from bertpipe.stages.extract import extract_part

    folder = tmp_path_factory.mktemp("corpus")
    extract_part(SAMPLE, folder / "articles.jsonl", processes=2)
    build_part(folder / "articles.jsonl", folder / "enwiki-sample", CorpusSettings(split="8,1,1", shard_max_mb=1))
    return folder / "enwiki-sample"


# The longest test files first: `make test` runs two workers a file at a time (pytest-xdist's loadfile, reordering
# off), so these start at once and the short files fill in around them.
LONGEST_FIRST = ("test_slurm.py", "test_workflow.py", "test_mlflow_server.py", "test_workflow_mirror.py",
                 "test_pretrain.py")


def pytest_collection_modifyitems(items):
    rank = {name: index for index, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: a file keeps its own order
