"""Your own plain-text corpus through the workflow's corpus stage (Snakemake, `bertpipe corpus`, MLflow), grouped
into jobs, and the whole DAG from it in a dry run; a file added reruns only the job that reads it, nothing changed
reruns nothing. (The loose-JSON sample runs to a registered model in test_mlflow_server.py.)"""

import json
import re

import pytest
import yaml

from bench.harness.workflow import copy_workflow, snakemake

pytestmark = pytest.mark.slow

PARAGRAPH = ("The harbour was rebuilt after the storm of {n}, when the old pier\nwas washed away. Fishing boats "
             "returned within a month, and the market\nreopened the following spring.")
CORPUS_STAGE = ("--cores", "2", "results/corpus/stats.json", "--configfile", "config.demo.yaml", "own.yaml")


def write_texts(folder, names):
    for index, name in enumerate(names):
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("\n\n".join(PARAGRAPH.format(n=1800 + 10 * index + k) for k in range(8)) + "\n")


def output_of(result) -> str:
    return result.stdout + result.stderr


def jobs_of(output: str, rule: str) -> list:
    """The `part` wildcards of the `rule` jobs Snakemake printed."""
    return re.findall(rf"^(?:local)?(?:rule|checkpoint) {rule}:\n(?:    .*\n)*?    wildcards: part=(\S+)", output, re.M)


@pytest.fixture(scope="module")
def plain_text(tmp_path_factory):
    """A workflow folder whose corpus is 12 plain-text files in two folders (documents separated by blank lines,
    grouped by at most 8 KB), after the corpus stage ran: (folder, Snakemake's output)."""
    workflow = copy_workflow(tmp_path_factory.mktemp("own") / "wf")
    write_texts(workflow / "texts", [f"{folder}/notes-{n:02d}.txt" for folder in ("2024", "2025") for n in range(6)])
    (workflow / "own.yaml").write_text(yaml.safe_dump({
        "source": {"format": "plain_text", "files": ["texts/**/*.txt"], "documents": "blank_line",
                   "group_mb": 8 / 1024, "name": "Harbour notes"},
        "corpus": {"split": "8,1,1", "min_chars": 50}}))
    return workflow, output_of(snakemake(workflow, *CORPUS_STAGE))


def test_plain_text_files_are_split_into_documents_and_grouped_into_jobs(plain_text):
    workflow, output = plain_text
    listed = {path.stem: [line.removeprefix("./") for line in path.read_text().splitlines()]
              for path in (workflow / "results/corpus/files").glob("*.txt")}
    assert 1 < len(listed) < 12 and sorted(sum(listed.values(), [])) == sorted(
        str(path.relative_to(workflow)) for path in (workflow / "texts").rglob("*.txt"))
    assert sorted(jobs_of(output, "corpus")) == sorted(listed)
    stats = json.loads((workflow / "results/corpus/stats.json").read_text())
    assert (stats["files"], stats["documents_in"], stats["documents_dropped"]) == (12, 96, 0)
    assert stats["source"] == {"format": "plain_text", "name": "Harbour notes", "license": None}
    documents = [json.loads(line) for shard in (workflow / "results/corpus/parts").rglob("shard-*.jsonl")
                 for line in shard.read_text().splitlines()]
    assert len(documents) == 96 and all(d["id"].startswith("text-") for d in documents)
    assert documents[0]["text"].split("\n")[0].startswith("The harbour was rebuilt after the storm of 18"), \
        "wrapped lines joined into one sentence"
    manifest = json.loads((workflow / "results/corpus/manifest.json").read_text())
    assert manifest["corpus_hash"] == stats["corpus_hash"] and len(manifest["files"]) == 12
    assert not list((workflow / "resources").glob("**/*")), "nothing downloaded: the DAG starts at the corpus"


def test_the_whole_dag_from_plain_text_in_a_dry_run(plain_text):
    workflow, _ = plain_text
    output = output_of(snakemake(workflow, "-n", "--printshellcmds", "--cores", "2", "all", "--configfile",
                                 "config.demo.yaml", "own.yaml"))
    for rule in ("tokenizer", "tfrecords", "pretrain", "evaluate", "export", "register"):
        assert re.search(rf"^{rule}\s+\d+$", output, re.M), (rule, output)
    assert not re.search(r"^(download|extract)", output, re.M)
    # The commands that read every shard of a split name a list of them, so that their length does not grow with
    # the corpus: a command line of thousands of shards would pass what `bash -c` takes.
    shards = len(list((workflow / "results/corpus/parts").glob("*/train/shard-*.jsonl")))
    readers = [line for line in output.splitlines()
               if re.search(r" (tfrecords summarize|pretrain --use-tfrecords|evaluate --checkpoint|register --model) ",
                            line)]
    assert shards > 1 and len(readers) == 6 + 2 + 1 + 1, output  # summaries, phases, evaluate, register
    for line in readers:
        assert "shard-" not in line and re.search(r"@results/tfrecords/\S+\.list", line), line


def test_a_file_added_reruns_only_the_job_that_reads_it_and_nothing_changed_reruns_nothing(plain_text):
    workflow, _ = plain_text
    assert "Nothing to be done" in output_of(snakemake(workflow, "-n", *CORPUS_STAGE))
    before = {path.stem: path.read_text() for path in (workflow / "results/corpus/files").glob("*.txt")}
    write_texts(workflow / "texts", ["2025/notes-03b.txt"])
    output = output_of(snakemake(workflow, "-n", *CORPUS_STAGE))
    (rerun,) = jobs_of(output, "corpus")
    assert jobs_of(output, "corpus_files") == [rerun] and re.search(r"^corpus_stats\s+1$", output, re.M)
    assert rerun in before or rerun.startswith("notes-03b.txt"), "the group the new file joins"
    (workflow / "texts/2025/notes-03b.txt").unlink()
    assert "Nothing to be done" in output_of(snakemake(workflow, "-n", *CORPUS_STAGE))
