# Paths shared by the rules, and what the checkpoints tell: the corpus jobs (the dump's parts, from
# download_manifest, or groups of your own files) and each job's corpus shards (corpus).
import json
from pathlib import Path

from bertpipe import BertpipeError
from bertpipe.settings import (
    Config,
    CorpusSettings,
    DownloadSettings,
    DumpSettings,
    EvaluateSettings,
    InstanceSpec,
    MlflowSettings,
    ModelSettings,
    ModernSettings,
    PhaseSettings,
    PretrainSettings,
    SlurmPretrain,
    SourceSettings,
    TFRecordsSettings,
    TokenizerSettings,
    TrainingSettings,
)
from bertpipe.settings import flags as settings_flags  # a section's values as the flags of its bertpipe command
from bertpipe.sources import BUILD_SETTINGS, corpus_jobs
from bertpipe.splits import splits_with_documents

RESULTS = config["results"]
DUMP_DIR = f"{config['resources']}/dumps/{config['dump']['wiki']}/{config['dump']['date']}"
LOGS = "logs"


wildcard_constraints:
    part=r"[^/]+",
    seq=r"\d+",
    split=r"train|valid|test",
    shard=r"\d+",


def dump_parts():
    """The names of the dump's article parts, from the manifest (runs the checkpoint first)."""
    manifest = checkpoints.download_manifest.get().output[0]
    return sorted(json.loads(Path(manifest).read_text())["parts"])


# Your own files (source.format loose_json or plain_text): the corpus jobs and their files, known now, so that a
# path that is not there stops the run before any job.
WIKIPEDIA = config["source"]["format"] == "wikipedia"
try:
    SOURCE_JOBS = {} if WIKIPEDIA else corpus_jobs(config["source"]["files"], config["source"]["group_mb"])
except BertpipeError as error:
    raise WorkflowError(str(error))


def corpus_job_names():
    """The corpus jobs: the dump's parts (runs the manifest checkpoint first), or the groups of your files."""
    return dump_parts() if WIKIPEDIA else sorted(SOURCE_JOBS)


def corpus_parts():
    """The corpus folder of every corpus job."""
    return [f"{RESULTS}/corpus/parts/{part}" for part in corpus_job_names()]


def corpus_inputs(wildcards):
    """A dump part's extracted articles, or the list of a group of your files and the files themselves."""
    if WIKIPEDIA:
        return {"articles": f"{RESULTS}/extract/{wildcards.part}.jsonl"}
    return {"listing": f"{RESULTS}/corpus/files/{wildcards.part}.txt", "files": SOURCE_JOBS[wildcards.part]}


INDEX = "tfrecord.index.npy"  # the record index the tfrecords stage writes beside each file (tfrecord_reader.index_path)


def tfrecord_files(seq, split, suffix, kind="seq"):
    """`shard-NNNN.<suffix>` of every corpus shard of `split` at sequence length `seq` (runs the corpus checkpoints):
    the recipe's records (`kind` seq), or the common test set's (`kind` common/seq)."""
    files = []
    for part in corpus_job_names():
        folder = Path(checkpoints.corpus.get(part=part).output[0], split)
        for shard in sorted(folder.glob("shard-*.jsonl")):
            files.append(f"{RESULTS}/tfrecords/{kind}{seq}/{split}/{part}/{shard.stem}.{suffix}")
    return files


def tfrecords_list(seq, split, suffix, kind="seq"):
    """The file that lists tfrecord_files(seq, split, suffix, kind), one a line (rule tfrecords_list), which the
    commands that read them all take as `@LIST`: Snakemake runs a command through `bash -c`, whose one argument may
    hold 128 KiB, some two thousand shards' paths."""
    return f"{RESULTS}/tfrecords/{kind}{seq}/{split}/{suffix}.list"


# Splits with a positive weight in corpus.split ("1000,1,1"; missing weights are 0): the others have no shards.
SPLITS_WITH_DOCUMENTS = splits_with_documents(config["corpus"]["split"])


def tfrecords_stats():
    return [
        f"{RESULTS}/tfrecords/seq{phase['seq_length']}/{split}/stats.json"
        for phase in config["tfrecords"]["phases"]
        for split in config["tfrecords"]["splits"]
        if split in SPLITS_WITH_DOCUMENTS
    ]


# Pretraining phases: each needs TFRecords of its sequence length; phase N > 1 starts from phase N - 1.
PRETRAIN = config["pretrain"]


def pretrain_phase(wildcards):
    return PRETRAIN["phases"][int(wildcards.phase) - 1]


def previous_phase(wildcards):
    number = int(wildcards.phase)
    return [f"{RESULTS}/pretrain/phase{number - 1}/done.json"] if number > 1 else []


def pretrain_data(split, suffix="tfrecord", listed=False):
    """The phase's TFRecord files of `split` (or, with suffix INDEX, their record indexes), or with `listed` the
    file that lists them."""
    if split not in SPLITS_WITH_DOCUMENTS:
        return []
    files = tfrecords_list if listed else tfrecord_files
    return lambda wildcards: files(pretrain_phase(wildcards)["seq_length"], split, suffix)


# Training is the longest job, so the jobs on its way run first (Snakemake starts the ready job of highest priority):
# phase 1 starts as soon as its own TFRecords are made, while the other lengths' and the test split's are made.
FIRST_SEQ_LENGTH = PRETRAIN["phases"][0]["seq_length"]


def training_priority(wildcards):
    return int(int(wildcards.seq) == FIRST_SEQ_LENGTH and wildcards.split != "test")


# The final model: the last phase's checkpoints, evaluated on that phase's sequence length.
LAST_PHASE = len(PRETRAIN["phases"])
LAST_PHASE_DIR = f"{RESULTS}/pretrain/phase{LAST_PHASE}"
LAST_SEQ_LENGTH = PRETRAIN["phases"][-1]["seq_length"]
COMMON_SEQ_LENGTH = config["evaluate"]["common_seq_length"]


# The tfrecords job's command: bert2019's instances (build) or modern's packed sequences (pack).
PHASE_OF_LENGTH = {phase["seq_length"]: phase for phase in config["tfrecords"]["phases"]}

# The common test set's records: under modern, where a phase has its length, the recipe's own packed test records
# (the same command made them); otherwise the test split packed apart (tfrecords_common).
COMMON_KIND = "seq" if config["recipe"] == "modern" and COMMON_SEQ_LENGTH in PHASE_OF_LENGTH else "common/seq"


def tfrecords_command(wildcards):
    """The step and its flags for the recipe."""
    if config["recipe"] == "modern":
        return f"pack --seq-length {int(wildcards.seq)}"
    return " ".join(
        (
            "build",
            settings_flags(InstanceSpec, {**config["tfrecords"], **PHASE_OF_LENGTH[int(wildcards.seq)]}),
            settings_flags(TFRecordsSettings, config["tfrecords"], only=("seed",)),
        )
    )
