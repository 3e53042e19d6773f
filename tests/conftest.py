"""Shared fixtures: the bundled sample, dump trees built from it, a local HTTP mirror, a workflow folder."""

import bz2
import functools
import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

from bench.harness import SAMPLE, corpus
from bench.harness.mirror import DumpServer, split_pages
from bench.harness.workflow import copy_workflow

REPO = Path(__file__).resolve().parents[1]
SAMPLE_ARTICLES = 106
VENV_BIN = Path(sys.executable).parent
NO_TENSORFLOW = REPO / "tests/no_tensorflow"  # on PYTHONPATH, it makes `import tensorflow` fail


@pytest.fixture(scope="session")
def sample_xml() -> bytes:
    return bz2.decompress(SAMPLE.read_bytes())


@functools.lru_cache(maxsize=8)
def bz2_compressed(xml: bytes) -> bytes:
    """bz2 of `xml`, once per worker: the dump trees of many tests hold the same parts."""
    return bz2.compress(xml)


def write_part(path: Path, header: bytes, pages: list, footer: bytes) -> dict:
    data = bz2_compressed(header + b"".join(pages) + footer)
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


@pytest.fixture
def workflow_dir(tmp_path):
    return copy_workflow(tmp_path / "wf")


# For the tests whose point is where the workflow runs (Slurm, a tracking server), not what it learns: the demo with
# one shard per split, one sequence length, the text masked once (less to write and to evaluate) and one phase of 40
# steps, every step's losses logged. Every rule still runs (16 jobs, the demo's 27); two phases run in
# test_workflow.py.
SMALL_PIPELINE = {
    "slurm": {"pretrain": {"cpus_per_node": 1}},  # one thread: the suite's other workers have the second core
    "corpus": {"shard_max_mb": 16},
    "tfrecords": {"dupe_factor": 1, "phases": [{"seq_length": 128, "max_predictions": 20}]},
    "pretrain": {"save_interval": 20, "eval_interval": 20, "log_interval": 1, "phases": [
        {"seq_length": 128, "batch_size": 8, "gradient_accumulation_steps": 1, "train_iters": 40, "lr": 1.0e-3}]}}


@pytest.fixture(scope="session")
def sample_corpus(tmp_path_factory):
    """The bundled sample through extract and corpus (split 8,1,1): the folder of its one part."""
    return corpus.sample_corpus(tmp_path_factory.mktemp("corpus"), "8,1,1", shard_max_mb=1, part="enwiki-sample")


# `make test` runs three workers, a test file at a time each (pytest-xdist's loadfile): the first takes the files
# that mostly wait (on Slurm's scheduler and the executor's status polls, on servers that start and stop) and the
# other two the files that compute, so on two cores the waiting overlaps the computing instead of holding one of two
# workers. A worker whose kind of file has run out takes the other kind. Within a kind, files run in this order: the
# longest first, so that the short ones fill in around them.
WAITING = ("test_slurm.py", "test_tracking_replay.py", "test_download.py", "test_workflow_mirror_credentials.py")
LONGEST_FIRST = (*WAITING, "test_workflow.py", "test_mlflow_server.py", "test_pretrain.py", "test_workflow_mirror.py")


def pytest_collection_modifyitems(items):
    rank = {name: index for index, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: a file keeps its own order


def pytest_xdist_make_scheduler(config, log):
    if config.getvalue("dist") != "loadfile":
        return None
    from xdist.scheduler import LoadFileScheduling

    class WaitingApart(LoadFileScheduling):
        """loadfile with the WAITING files on the first worker and the others on the rest; a worker gets its next
        file when it runs the last test of its file (loadfile queues it two tests early, which holds a long file
        behind a short two-test one while another worker runs out of work)."""

        def _reschedule(self, node):
            if self.workqueue and not node.shutting_down and self._pending_of(self.assigned_work[node]) > 1:
                return
            super()._reschedule(node)

        def _assign_work_unit(self, node):
            waits = node.gateway.id == "gw0"
            kind = [file for file in self.workqueue if (file.rsplit("/", 1)[-1] in WAITING) == waits]
            if kind:  # the parent takes the queue's first file: make it the first of this worker's kind
                self.workqueue.move_to_end(kind[0], last=False)
            super()._assign_work_unit(node)

    return WaitingApart(config, log)
