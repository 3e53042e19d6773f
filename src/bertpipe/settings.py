"""Every setting of the pipeline, once: its name, type, default, limits and meaning.

Each section of `config.yaml` is a dataclass here, and everything else derives from it:
- `workflow/schemas/config.schema.yaml` is `config_schema()` and `docs/settings.md` is `settings_table()` (`make
  settings` writes both; a test keeps the files equal to them);
- each `bertpipe <stage>` command takes its flags from `add_arguments` (same names, defaults and limits), and the
  rules pass the config's values back through `flags`, so a command run by hand behaves as the workflow's job;
- `check(config)` finds what the schema cannot: settings that contradict each other, named by their keys.
The defaults are the full-scale settings (`config.yaml` holds exactly these; a test says so). This module imports
nothing heavy: the Snakefile reads it on every start, Slurm jobs included.
"""

import argparse
import dataclasses
import re
import shlex
import types
import typing

from bertpipe import BertpipeError
from bertpipe.redaction import credentials_in
from bertpipe.splits import SPLITS, splits_with_documents
from bertpipe.tokenizer_folder import SPECIAL_TOKENS

# What any English Wikipedia tokenizer has to hold besides the special tokens: ASCII letters, digits and punctuation.
ASCII_ALPHABET = {True: 26 + 10 + 32, False: 52 + 10 + 32}  # by `lowercase`
# Positions an instance cannot mask: [CLS] and two [SEP] (google-research/bert never masks them).
SPECIAL_POSITIONS = 3
# What a resume does with a checkpoint of another run (`bertpipe pretrain --stale-checkpoints`, train/checkpoint.py).
STALE_POLICIES = ("refuse", "set-aside")


# How a training setting bears on a run, said where the setting is defined (a test requires it of every setting
# that reaches the trainer). IDENTITY: it changes the mathematics of the run (data, model, objective, optimizer,
# schedule, steps, batch shape, precision, seeds), so a checkpoint of another value is of another run: the workflow
# sets it aside and trains afresh, `bertpipe pretrain` alone refuses. EXECUTION: it changes only how the same
# computation is carried out or observed (intervals, workers, timeouts, kernels, compilation, which change rounding
# at most), so a resume across a change is allowed and logged.
IDENTITY, EXECUTION = "identity", "execution"


def setting(default, help: str, run: str = None, **limits):
    """A dataclass field with its meaning, JSON-schema limits (minimum, maximum, exclusiveMinimum, enum, pattern,
    minLength) and, for a training setting, its part in a run (`run`: IDENTITY or EXECUTION). A list or dataclass
    default is copied for every instance."""
    metadata = {"help": help, **limits, **({"run": run} if run else {})}
    if isinstance(default, list) or dataclasses.is_dataclass(default):
        return dataclasses.field(default_factory=lambda: _copy(default), metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def _copy(value):
    if isinstance(value, list):
        return [_copy(item) for item in value]
    return dataclasses.replace(value) if dataclasses.is_dataclass(value) else value


# -- the sections of config.yaml -----------------------------------------------------------------------------------
@dataclasses.dataclass
class SlurmJob:
    """One Slurm job of a rule: its CPUs are the rule's threads."""

    runtime: int = setting(60, "minutes", minimum=1)
    mem_mb: int = setting(4000, "memory (MB)", minimum=1)
    gpus: int = setting(0, "GPUs of the job (then on slurm.pretrain's partition)", minimum=0)


def _job(runtime, mem_mb, gpus=0):
    return SlurmJob(runtime=runtime, mem_mb=mem_mb, gpus=gpus)


@dataclasses.dataclass
class SlurmJobs:
    """Per rule: runtime and memory of one job."""

    download_manifest: SlurmJob = setting(_job(10, 1000), "the dump's manifest")
    download: SlurmJob = setting(_job(240, 1000), "one job per dump part")
    extract: SlurmJob = setting(_job(240, 8000), "one job per dump part, extract.threads CPUs")
    corpus: SlurmJob = setting(_job(240, 8000), "one job per dump part")
    tokenizer: SlurmJob = setting(_job(720, 64000), "tokenizer.input_sentence_size sentences in memory")
    tfrecords: SlurmJob = setting(_job(120, 4000), "one job per corpus shard and sequence length")
    evaluate: SlurmJob = setting(_job(120, 32000, gpus=1), "the final model on the whole test split, on a GPU")
    export: SlurmJob = setting(_job(30, 16000), "the HuggingFace folder")
    register: SlurmJob = setting(_job(60, 4000), "uploads the exported model to the tracking server")


@dataclasses.dataclass
class SlurmPretrain:
    """The pretrain jobs (one per phase) on pretrain.nodes nodes."""

    partition: str | None = setting(None, "null: slurm.partition (GPU nodes are often a partition of their own)")
    gpus_per_node: int = setting(8, "pretrain.nproc_per_node processes use them; 0 on CPU nodes", minimum=0)
    cpus_per_node: int = setting(64, "CPUs of each node's task", minimum=1)
    mem_mb: int = setting(480000, "memory per node (MB)", minimum=1)
    runtime: int = setting(2880, "minutes; a phase that needs more stops at a checkpoint and the next run resumes",
                           minimum=1)
    warning_seconds: int = setting(600, "Slurm warns the trainer (SIGURG) this long before the time limit: it "
                                        "checkpoints and stops", minimum=1)


@dataclasses.dataclass
class SlurmSettings:
    """`snakemake --profile slurm all`: where each job goes and its size; local runs ignore it."""

    partition: str | None = setting(None, "every job's partition (sbatch --partition); null: the cluster's default")
    account: str | None = setting(None, "sbatch --account; null: none")
    jobs: SlurmJobs = setting(SlurmJobs(), "per rule: runtime (minutes) and memory (MB) of one job")
    pretrain: SlurmPretrain = setting(SlurmPretrain(), "the pretrain jobs")


@dataclasses.dataclass
class SourceSettings:
    """What the corpus is made of: a Wikimedia dump (the dump, download and extract sections), or your own files."""

    format: str = setting("wikipedia", "wikipedia: the dump named by the dump section; loose_json: JSON lines, "
                                       "a record a line as Megatron's loose JSON (source.text_key, source.id_key); "
                                       "plain_text: text files (source.documents)",
                          enum=["wikipedia", "loose_json", "plain_text"])
    files: list[str] = setting([], "loose_json and plain_text: the input files, as paths or glob patterns (** "
                                   "for any folders below), absolute or relative to the folder Snakemake runs in; "
                                   "each must exist, each pattern must match a file; .gz, .bz2, .xz and .zst "
                                   "files are read decompressed")
    name: str | None = setting(None, "what the model card and MLflow call the corpus; null: from its format",
                               minLength=1)
    license: str | None = setting(None, "the corpus's licence, as the model card's metadata states it (e.g. mit, "
                                        "cc-by-4.0); null: other", minLength=1)
    text_key: str = setting("text", "loose_json: the key of a record's text", minLength=1)
    id_key: str | None = setting("id", "loose_json: the key of a record's id, which decides its split; a record "
                                       "without it (or with null here) is split by a hash of its text", minLength=1)
    documents: str = setting("file", "plain_text: file (a document per file) or blank_line (documents separated "
                                     "by a blank line)", enum=["file", "blank_line"])
    group_mb: float = setting(64.0, "files smaller than this share corpus jobs of at most this size (neighbours in "
                                    "path order), so that thousands of small files are not thousands of jobs; 0: "
                                    "a job per file", minimum=0)
    bad_input: str = setting("stop", "a record that is not JSON or has no text, text that is not UTF-8, an empty "
                                     "file: stop (the job fails, naming the file and line) or skip (left out, and "
                                     "counted in the corpus stage's metrics)", enum=["stop", "skip"])


@dataclasses.dataclass
class DumpSettings:
    """Which Wikimedia dump to download."""

    mirror: str = setting("https://dumps.wikimedia.org", "an http(s) URL, a file:// URL or a local folder laid "
                                                          "out like the mirror (<wiki>/<date>/dumpstatus.json); "
                                                          "without credentials (they go in ~/.netrc or "
                                                          "download.token_env)", minLength=1)
    wiki: str = setting("enwiki", "the wiki's database name", pattern="^[a-z_]+wiki[a-z]*$")
    date: str = setting("latest", "YYYYMMDD, or 'latest': resolved once (<wiki>/latest/, else the newest finished "
                                  "dated dump)", pattern="^(latest|[0-9]{8})$")


@dataclasses.dataclass
class DownloadSettings:
    """Fetching the dump's parts."""

    retries: int = setting(5, "attempts after the first, on dropped connections, timeouts, 5xx, 408 and 429",
                           minimum=0)
    backoff_seconds: float = setting(2.0, "before the first retry; doubles on each further one", minimum=0)
    timeout_seconds: float = setting(60.0, "without data from the server", exclusiveMinimum=0)
    redirects_to_other_hosts: bool = setting(False, "follow the mirror's redirects to other hosts (never from https "
                                                    "to http); off: only to the mirror's own host")
    token_env: str | None = setting(None, "the environment variable holding the mirror's token, sent as "
                                          "'Authorization: Bearer' to the mirror's own scheme, host and port only; "
                                          "null: no token (a user and password go in ~/.netrc or the file NETRC names)",
                                    pattern="^[A-Za-z_][A-Za-z0-9_]*$")


@dataclasses.dataclass
class ExtractSettings:
    """WikiExtractor on each dump part."""

    threads: int = setting(4, "WikiExtractor processes per dump part", minimum=1)


@dataclasses.dataclass
class CorpusSettings:
    """Cleaning, sentences, the train/valid/test split and shards."""

    split: str = setting("1000,1,1", "train,valid,test weights by document, as Megatron's split ('/' also "
                                     "separates; missing weights are 0)", pattern="^[0-9.]+([,/][0-9.]+){0,2}$")
    min_chars: int = setting(200, "documents with fewer characters of text (after cleaning) are dropped", minimum=0)
    min_paragraph_words: int = setting(5, "source.format wikipedia: shorter paragraphs (section headings, list stubs) "
                                          "are dropped", minimum=0)
    shard_max_mb: float = setting(64.0, "a shard is closed before it would pass this size (a tfrecords job holds "
                                        "one)", exclusiveMinimum=0)


@dataclasses.dataclass
class TokenizerSettings:
    """The tokenizer, trained on a sample of the train split."""

    kind: str = setting("sentencepiece", "sentencepiece, or wordpiece (BERT's vocab.txt, trained with HuggingFace "
                                         "tokenizers)", enum=["sentencepiece", "wordpiece"])
    model_type: str = setting("unigram", "sentencepiece only: unigram or bpe", enum=["unigram", "bpe"])
    vocab_size: int = setting(30522, "BERT's; SentencePiece may give fewer on a small corpus", minimum=16)
    lowercase: bool = setting(True, "lowercase (and, for wordpiece, strip accents) before tokenizing")
    character_coverage: float = setting(0.9999, "sentencepiece: the share of characters the alphabet covers",
                                        exclusiveMinimum=0, maximum=1)
    input_sentence_size: int = setting(10_000_000, "train on a uniform sample of at most this many train "
                                                   "sentences, so memory stays bounded", minimum=1)
    vocab_file: str | None = setting(None, "wordpiece only: adopt this vocab.txt (e.g. Google's) instead of "
                                           "training one")
    seed: int = setting(12345, "the sentence sample's and SentencePiece's seed")
    threads: int = setting(16, "training threads", minimum=1)


@dataclasses.dataclass
class TFRecordsPhase:
    """One set of TFRecords: a sequence length and its masked positions."""

    seq_length: int = setting(128, "tokens per instance, [CLS] and [SEP]s included", minimum=8)
    max_predictions: int = setting(20, "masked positions per instance (padded)", minimum=1)


@dataclasses.dataclass
class InstanceSettings:
    """How instances are made from documents, at every sequence length."""

    dupe_factor: int = setting(10, "times each document is used, with other masks", minimum=1)
    short_seq_prob: float = setting(0.1, "share of instances cut shorter than seq_length", minimum=0, maximum=1)
    masked_lm_prob: float = setting(0.15, "share of tokens masked", exclusiveMinimum=0, maximum=1)
    whole_word_mask: bool = setting(False, "mask every piece of a word together")


@dataclasses.dataclass
class InstanceSpec(InstanceSettings, TFRecordsPhase):
    """What the instances of one set of TFRecords are: a phase's shape and the instance settings."""


@dataclasses.dataclass
class TFRecordsSettings(InstanceSettings):
    """Masked-LM + next-sentence instances, as google-research/bert's create_pretraining_data.py."""

    phases: list[TFRecordsPhase] = setting(
        [TFRecordsPhase(128, 20), TFRecordsPhase(512, 80)],
        "one set of TFRecords per sequence length, as NVIDIA's and Megatron's two phases", minItems=1)
    splits: list[str] = setting(["train", "valid", "test"], "the corpus splits made into TFRecords", minItems=1,
                                uniqueItems=True, items={"enum": ["train", "valid", "test"]})
    seed: int = setting(12345, "with the shard's name, the seed of its instances")


@dataclasses.dataclass
class ModelSettings:
    """The encoder's sizes (BERT-Large's by default): BERT's under the bert2019 recipe, ModernBERT's under modern."""

    num_layers: int = setting(24, "transformer layers", minimum=1, run=IDENTITY)
    hidden_size: int = setting(1024, "a multiple of num_attention_heads", minimum=1, run=IDENTITY)
    intermediate_size: int = setting(4096, "the feed-forward layer's width", minimum=1, run=IDENTITY)
    num_attention_heads: int = setting(16, "attention heads per layer", minimum=1, run=IDENTITY)
    max_position_embeddings: int = setting(512, "the longest sequence the model takes", minimum=8, run=IDENTITY)
    hidden_dropout: float = setting(0.1, "dropout after embeddings, attention output and feed-forward", minimum=0,
                                    maximum=1, run=IDENTITY)
    attention_dropout: float = setting(0.1, "dropout of the attention probabilities", minimum=0, maximum=1,
                                       run=IDENTITY)
    layernorm_epsilon: float = setting(1e-12, "LayerNorm's epsilon (BERT's; ModernBERT's is 1e-5)", exclusiveMinimum=0,
                                       run=IDENTITY)


@dataclasses.dataclass
class ModernSettings:
    """The modern recipe's own settings (ModernBERT's attention and rotary positions, the masks drawn as it trains);
    its sizes are model's. The bert2019 recipe reads none of them."""

    local_attention: int = setting(128, "the local layers' sliding window (keys up to half of it away on either "
                                        "side)", minimum=2, run=IDENTITY)
    global_attn_every_n_layers: int = setting(3, "every n-th layer, from the first, attends to the whole document; "
                                                 "the others are local", minimum=1, run=IDENTITY)
    global_rope_theta: float = setting(160000.0, "the rotary base of the global layers", exclusiveMinimum=0,
                                       run=IDENTITY)
    local_rope_theta: float = setting(10000.0, "the rotary base of the local layers", exclusiveMinimum=0,
                                      run=IDENTITY)
    mask_rate: float = setting(0.3, "the share of a packed sequence's tokens masked as it trains (ModernBERT's and "
                                    "MosaicBERT's 30%)", exclusiveMinimum=0, maximum=1, run=IDENTITY)
    whole_word_mask: bool = setting(False, "mask every piece of a word together", run=IDENTITY)


@dataclasses.dataclass
class PhaseSettings:
    """One pretraining phase: a job of its own, on TFRecords of its seq_length."""

    seq_length: int = setting(128, "the TFRecords it trains on (tfrecords.phases must list this length)", minimum=8,
                              run=IDENTITY)
    batch_size: int = setting(32, "sequences per process and micro-batch", minimum=1, run=IDENTITY)
    gradient_accumulation_steps: int = setting(1, "micro-batches per step; the global batch is batch_size x this x "
                                                  "processes", minimum=1, run=IDENTITY)
    train_iters: int = setting(900000, "optimizer steps of the phase", minimum=1, run=IDENTITY)
    lr: float = setting(1e-4, "peak learning rate", exclusiveMinimum=0, run=IDENTITY)
    lr_decay_iters: int | None = setting(None, "steps over which the LR decays; null: train_iters", minimum=1,
                                         run=IDENTITY)


@dataclasses.dataclass
class TrainingSettings:
    """How the trainer trains, in every phase."""

    precision: str = setting("fp16", "fp32, fp16 (dynamic loss scaling) or bf16", enum=["fp32", "fp16", "bf16"],
                             run=IDENTITY)
    loss_scale: float | None = setting(None, "fp16: a fixed loss scale; null: dynamic", exclusiveMinimum=0,
                                       run=IDENTITY)
    loss_scale_window: int = setting(1000, "fp16: steps without overflow before the scale doubles", minimum=1,
                                     run=IDENTITY)
    min_scale: float = setting(1.0, "fp16: the dynamic scale's floor", exclusiveMinimum=0, run=IDENTITY)
    hysteresis: int = setting(2, "fp16: overflows tolerated before the scale halves", minimum=1, run=IDENTITY)
    optimizer: str = setting("adam", "adam: AdamW (Megatron's); lamb: NVIDIA's LAMB (apex FusedLAMB's semantics), "
                                     "for global batches of 32K to 64K with lr 4e-3 to 6e-3", enum=["adam", "lamb"],
                             run=IDENTITY)
    weight_decay: float = setting(0.01, "decoupled, not on biases and LayerNorm", minimum=0, run=IDENTITY)
    clip_grad: float = setting(1.0, "gradient norm clipping; 0: none", minimum=0, run=IDENTITY)
    lr_decay_style: str = setting("linear", "the LR schedule after warmup; wsd: warmup-stable-decay, the peak LR "
                                            "until the last decay_fraction of the steps, then 1 - sqrt decay to 0 "
                                            "(ModernBERT's trapezoid)",
                                  enum=["linear", "cosine", "exponential", "constant", "wsd"], run=IDENTITY)
    decay_fraction: float = setting(0.1, "wsd: the share of the decay steps taken by the final decay", minimum=0,
                                    maximum=1, run=IDENTITY)
    warmup: float = setting(0.01, "fraction of the LR decay steps spent warming up", minimum=0, maximum=1, run=IDENTITY)
    seed: int = setting(1234, "initial weights, data order, dropout and (modern) masks", run=IDENTITY)
    save_interval: int = setting(2000, "steps between checkpoints", minimum=1, run=EXECUTION)
    keep_last: int = setting(2, "checkpoints kept", minimum=1, run=EXECUTION)
    eval_interval: int = setting(2000, "steps between validations", minimum=1, run=EXECUTION)
    eval_iters: int = setting(20, "global batches of the valid split per validation", minimum=1, run=EXECUTION)
    log_interval: int = setting(50, "steps between log lines (every step goes to metrics.jsonl)", minimum=1,
                                run=EXECUTION)
    num_workers: int = setting(2, "reader processes per training process, making the next steps' batches",
                               minimum=0, run=EXECUTION)
    deterministic: bool = setting(False, "deterministic kernels (bitwise resume on a CPU), slower on a GPU",
                                  run=EXECUTION)
    compile: bool = setting(True, "train the model under torch.compile: faster on a GPU, slower on a CPU, where "
                                  "compiling costs more than it saves; compiled, bert2019's encoder computes the "
                                  "padding (the real-token count changes every batch and would recompile it) and "
                                  "modern's attention runs eager between compiled layers (its documents' lengths "
                                  "change every batch); checkpoints hold the plain model's weights either way",
                            run=EXECUTION)
    dist_timeout_minutes: float = setting(30.0, "how long a process waits in a collective for the others (a rank "
                                                "that hangs or is lost) before the run fails", exclusiveMinimum=0,
                                          run=EXECUTION)


@dataclasses.dataclass
class PretrainSettings(TrainingSettings):
    """Pretraining: the trainer's settings, its processes and its phases (one job each, in order; phase N > 1 starts
    from phase N - 1's weights)."""

    nproc_per_node: int = setting(8, "training processes per node (one per GPU)", minimum=1, run=IDENTITY)
    nodes: int = setting(1, "more than 1: a multi-node Slurm job (--profile slurm); world size nodes x "
                            "nproc_per_node", minimum=1, run=IDENTITY)
    phases: list[PhaseSettings] = setting(
        [PhaseSettings(), PhaseSettings(seq_length=512, batch_size=8, gradient_accumulation_steps=4,
                                        train_iters=100000)],
        "one job each, in order; each needs TFRecords of its seq_length", minItems=1)


@dataclasses.dataclass
class EvaluateSettings:
    """The final model on the test split."""

    batch_size: int = setting(32, "test-split sequences per forward pass; every test record is read once", minimum=1)
    common_seq_length: int = setting(128, "the common test set: the test split's documents packed at this length under "
                                          "one fixed 15% mask, the same tokens for either recipe's model", minimum=8)


@dataclasses.dataclass
class MlflowSettings:
    """Tracking and the model registry."""

    tracking_uri: str | None = setting(
        None, "null: a SQLite database under <results>/mlflow; on a cluster, your tracking server's URL (credentials "
              "go in MLFLOW_TRACKING_USERNAME/PASSWORD or MLFLOW_TRACKING_TOKEN, never here)",
        pattern="^(https?|sqlite|postgresql|mysql|file|databricks)(\\+[a-z0-9]+)?:")
    experiment: str = setting("bertpipe", "the MLflow experiment of every run", minLength=1)
    registered_model: str = setting("bertpipe-bert", "the Model Registry name each pipeline run adds a version to",
                                    pattern="^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    # An MLflow alias: letters, digits, _ and -, but not latest (models:/<name>/latest is the highest version) nor
    # v1, v2, ... (models:/<name>@v1 is version 1), which MLflow refuses.
    registered_alias: str = setting(
        "newest", "the alias the newest registered version gets (moved from the version before): load it as "
                  "models:/<registered_model>@<alias>; MLflow keeps latest and v<number> for itself",
        pattern="^(?![Ll][Aa][Tt][Ee][Ss][Tt]$)(?![Vv][0-9]+$)[A-Za-z0-9_-]{1,255}$")
    upload_timeout_seconds: int = setting(3600, "seconds for each request of the model's upload (a BERT-Large folder "
                                                "is 1.3 GB); API calls keep MLflow's short timeout", minimum=1)


@dataclasses.dataclass
class Config:
    """bertpipe's configuration (config.yaml, overlaid by --configfile files)."""

    results: str = setting("results", "every stage's outputs", minLength=1)
    resources: str = setting("resources", "downloaded dump parts", minLength=1)
    recipe: str = setting("bert2019", "bert2019: BERT as published (next-sentence pairs, masks written dupe_factor "
                                      "times into the TFRecords); modern: ModernBERT's encoder, masked-LM only, "
                                      "documents packed into full sequences, masks drawn as it trains",
                          enum=["bert2019", "modern"])
    slurm: SlurmSettings = setting(SlurmSettings(), SlurmSettings.__doc__)
    source: SourceSettings = setting(SourceSettings(), SourceSettings.__doc__)
    dump: DumpSettings = setting(DumpSettings(), DumpSettings.__doc__)
    download: DownloadSettings = setting(DownloadSettings(), DownloadSettings.__doc__)
    extract: ExtractSettings = setting(ExtractSettings(), ExtractSettings.__doc__)
    corpus: CorpusSettings = setting(CorpusSettings(), CorpusSettings.__doc__)
    tokenizer: TokenizerSettings = setting(TokenizerSettings(), TokenizerSettings.__doc__)
    tfrecords: TFRecordsSettings = setting(TFRecordsSettings(), TFRecordsSettings.__doc__)
    model: ModelSettings = setting(ModelSettings(), ModelSettings.__doc__)
    modern: ModernSettings = setting(ModernSettings(), ModernSettings.__doc__)
    pretrain: PretrainSettings = setting(PretrainSettings(), PretrainSettings.__doc__)
    evaluate: EvaluateSettings = setting(EvaluateSettings(), EvaluateSettings.__doc__)
    mlflow: MlflowSettings = setting(MlflowSettings(), MlflowSettings.__doc__)


# -- types -----------------------------------------------------------------------------------------------------------
def _base(annotation):
    """(the type without `| None`, whether None is allowed)."""
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        return args[0], True
    return annotation, False


def _item_type(annotation):
    return typing.get_args(annotation)[0] if typing.get_origin(annotation) is list else None


def from_dict(cls, values: dict):
    """`cls` from a (validated) config section."""
    kwargs = {}
    for field in dataclasses.fields(cls):
        if field.name not in values:
            continue
        value, kind = values[field.name], _base(field.type)[0]
        item = _item_type(kind)
        if dataclasses.is_dataclass(kind):
            value = from_dict(kind, value)
        elif item is not None and dataclasses.is_dataclass(item):
            value = [from_dict(item, entry) for entry in value]
        kwargs[field.name] = value
    return cls(**kwargs)


def run_part(values, part: str) -> dict:
    """The settings of dataclass instance `values` whose part in a run is `part` (IDENTITY or EXECUTION)."""
    return {f.name: getattr(values, f.name) for f in dataclasses.fields(values) if f.metadata.get("run") == part}


# -- the JSON schema -------------------------------------------------------------------------------------------------
_JSON_TYPES = {int: "integer", float: "number", str: "string", bool: "boolean"}
_LIMITS = ("minimum", "maximum", "exclusiveMinimum", "enum", "pattern", "minLength", "minItems", "uniqueItems", "items")


def _field_schema(field, default) -> dict:
    """The schema of one setting whose default (in its section's default) is `default`."""
    kind, nullable = _base(field.type)
    item = _item_type(kind)
    limits = {key: field.metadata[key] for key in _LIMITS if key in field.metadata}
    if dataclasses.is_dataclass(kind):
        schema = _object_schema(kind, default)
    elif item is not None:
        schema = {"type": "array", **limits}
        if dataclasses.is_dataclass(item):
            schema["items"] = _object_schema(item, item())
        elif item in _JSON_TYPES:
            schema["items"] = {"type": _JSON_TYPES[item]}
        schema["default"] = _jsonable(default)
    else:
        schema = {"type": [_JSON_TYPES[kind], "null"] if nullable else _JSON_TYPES[kind], **limits}
        if "enum" in limits:
            del schema["type"]
            schema["enum"] = limits["enum"] + ([None] if nullable else [])
        schema["default"] = default
    schema["description"] = field.metadata["help"]
    return schema


def _object_schema(cls, default) -> dict:
    fields = dataclasses.fields(cls)
    # A key whose default is null may be left out (the schema's default fills it in); the others are required, so
    # config.yaml says every full-scale setting.
    return {"type": "object", "additionalProperties": False,
            "required": [f.name for f in fields if getattr(default, f.name) is not None],
            "properties": {f.name: _field_schema(f, getattr(default, f.name)) for f in fields}}


def _default(field):
    return field.default_factory() if field.default is dataclasses.MISSING else field.default


def _jsonable(value):
    if dataclasses.is_dataclass(value):
        return dataclasses.asdict(value)
    if isinstance(value, list):
        return [_jsonable(v) for v in value]
    return value


def config_schema() -> dict:
    """The JSON schema of the whole config (workflow/schemas/config.schema.yaml)."""
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", "description": Config.__doc__,
            **_object_schema(Config, Config())}


def defaults() -> dict:
    """The default config, as config.yaml holds it."""
    return dataclasses.asdict(Config())


def _inline(value) -> str:
    """A default as YAML flow text."""
    if dataclasses.is_dataclass(value):
        return "{" + ", ".join(f"{k}: {_inline(v)}" for k, v in dataclasses.asdict(value).items()) + "}"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {_inline(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(_inline(v) for v in value) + "]"
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)


def _type_text(field) -> str:
    kind, nullable = _base(field.type)
    item = _item_type(kind)
    if dataclasses.is_dataclass(kind):
        name = "mapping"
    elif item is not None:
        name = "list"
    elif "enum" in field.metadata:
        name = " \\| ".join(field.metadata["enum"])
    else:
        name = _JSON_TYPES[kind]
    limits = ", ".join(f"{k} {field.metadata[k]}" for k in ("minimum", "exclusiveMinimum", "maximum")
                       if k in field.metadata)
    return f"{name}{' or null' if nullable else ''}{f' ({limits})' if limits else ''}"


def settings_table() -> str:
    """docs/settings.md: every config key with its type, default and meaning."""
    lines = ["# Settings", "",
             "Generated from `src/bertpipe/settings.py` by `make settings`; a test keeps it current.",
             "`config.yaml` holds these defaults: the full-scale settings. Each stage setting is also the flag of the",
             "`bertpipe` command that uses it, with the same default (`pretrain.save_interval` is",
             "`bertpipe pretrain --save-interval`; a phase's settings are the flags of one pretrain job).",
             "A training setting marked *identity* is part of what a run is: after a change, a phase's checkpoints are",
             "another run's, so the workflow sets them aside and trains afresh (and `bertpipe pretrain` alone refuses",
             "to resume them); one marked *execution* changes only how the run is carried out, and a resume crosses",
             "it.", ""]

    def section(cls, default, prefix, title):
        lines.extend([f"## `{title}`" if title else "## top level", "", " ".join(cls.__doc__.split()), "",
                      "| key | type | default | meaning |", "|---|---|---|---|"])
        nested = []
        for field in dataclasses.fields(cls):
            kind = _base(field.type)[0]
            item = _item_type(kind)
            value = getattr(default, field.name)
            shown = f"`{_inline(value)}`"
            if dataclasses.is_dataclass(kind) and prefix == "":  # a section of its own
                nested.append((kind, value, field.name))
                continue
            if dataclasses.is_dataclass(kind) and not all(_base(f.type)[0] in _JSON_TYPES
                                                          for f in dataclasses.fields(kind)):
                nested.append((kind, value, f"{prefix}{field.name}"))
                shown = "below"
            elif item is not None and dataclasses.is_dataclass(item):
                nested.append((item, item(), f"{prefix}{field.name}[]"))
            part = f" *{field.metadata['run']}*" if "run" in field.metadata else ""
            lines.append(f"| `{prefix}{field.name}` | {_type_text(field)} | {shown} | {field.metadata['help']}{part} |")
        lines.append("")
        for kind, value, name in nested:
            section(kind, value, f"{name}.", name)

    section(Config, Config(), "", "")
    return "\n".join(lines)


# -- the command line ------------------------------------------------------------------------------------------------
def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _checked(kind, field, name):
    """An argparse type: `kind` within the field's limits."""
    meta = field.metadata

    def parse(text: str):
        if text == "" and _base(field.type)[1]:
            return None  # how `flags` gives null to a setting whose default is not null
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r}: expected {_JSON_TYPES[kind]}") from None
        if "minimum" in meta and value < meta["minimum"]:
            raise argparse.ArgumentTypeError(f"{text}: must be at least {meta['minimum']}")
        if "exclusiveMinimum" in meta and value <= meta["exclusiveMinimum"]:
            raise argparse.ArgumentTypeError(f"{text}: must be more than {meta['exclusiveMinimum']}")
        if "maximum" in meta and value > meta["maximum"]:
            raise argparse.ArgumentTypeError(f"{text}: must be at most {meta['maximum']}")
        if "pattern" in meta and not re.match(meta["pattern"], value):
            raise argparse.ArgumentTypeError(f"{text!r}: must match {meta['pattern']}")
        return value

    parse.__name__ = name
    return parse


def scalar_fields(cls, skip=()) -> list:
    """The fields of `cls` that are flags: not lists or nested sections, not in `skip`."""
    return [f for f in dataclasses.fields(cls) if f.name not in skip and _base(f.type)[0] in _JSON_TYPES]


def add_arguments(parser, cls, skip=(), only=None) -> None:
    """One flag per setting of `cls` (those in `only`, if given), with its type, limits, default and meaning."""
    for field in scalar_fields(cls, skip):
        if only is not None and field.name not in only:
            continue
        kind, nullable = _base(field.type)
        default = _default(field)
        help_text = f"{field.metadata['help']} (default: {_inline(default)})".replace("%", "%%")  # argparse formats
        flag = _flag(field.name)
        if kind is bool:
            parser.add_argument(flag, dest=field.name, action=argparse.BooleanOptionalAction, default=default,
                                help=help_text)
            continue
        choices = field.metadata.get("enum")
        parser.add_argument(flag, dest=field.name, type=_checked(kind, field, field.name), default=default,
                            choices=choices, metavar="{" + ",".join(choices) + "}" if choices else field.name.upper(),
                            help=help_text)


def from_args(cls, args, only=None, **given):
    """`cls` from the parsed flags of `add_arguments` (those in `only`, if given; the others keep their defaults) and
    `given` values for the settings it skipped."""
    return cls(**{f.name: getattr(args, f.name) for f in scalar_fields(cls, skip=given)
                  if only is None or f.name in only}, **given)


def flags(cls, values, skip=(), only=None) -> str:
    """The flags (shell-quoted) that give a `bertpipe` command the settings `values` (a config section, a dict or a
    `cls`): what a rule passes, so its job gets the config's values and not the command's defaults."""
    if dataclasses.is_dataclass(values):
        values = dataclasses.asdict(values)
    words = []
    for field in scalar_fields(cls, skip):
        if only is not None and field.name not in only:
            continue
        value = values.get(field.name, _default(field))  # as the schema fills in a key left out
        if _base(field.type)[0] is bool:
            words.append(_flag(field.name) if value else "--no-" + _flag(field.name)[2:])
        elif value is not None:
            words += [_flag(field.name), shlex.quote(str(value))]
        elif _default(field) is not None:
            words += [_flag(field.name), "''"]  # null (the flag's parser reads '' as null)
    return " ".join(words)


# -- what the schema cannot check ------------------------------------------------------------------------------------
def mirror_credentials_fault(mirror: str, mirror_key: str, token_key: str):
    """Why the mirror URL `mirror` is refused, naming the setting or flag `mirror_key` and saying where credentials go
    instead (`token_key`: the token's setting or flag); None when it carries no credentials."""
    found = credentials_in(mirror)
    if not found:
        return None
    return (f"{mirror_key} carries credentials ({'; '.join(found)}): they would reach job command lines and logs; "
            "take them out of the URL and put a user and password in ~/.netrc (or the file the NETRC environment "
            f"variable names), a token in an environment variable named by {token_key}")


def check(config: Config) -> list:
    """What is wrong in a schema-valid config across its keys: one message per fault, naming the keys."""
    errors = []
    for key in ("results", "resources"):
        if not getattr(config, key).strip():
            errors.append(f"{key}: an empty path; name a folder")
    try:
        with_documents = splits_with_documents(config.corpus.split)
    except BertpipeError as error:
        errors.append(f"corpus.split: {error}")
        with_documents = list(SPLITS)
    for split in ("train", "test"):
        if split not in with_documents or split not in config.tfrecords.splits:
            need = "pretrain trains on" if split == "train" else "evaluate reads"
            errors.append(f"corpus.split {config.corpus.split!r} / tfrecords.splits {config.tfrecords.splits}: "
                          f"{need} the {split} split; give it a weight in corpus.split and list it in "
                          "tfrecords.splits")

    source = config.source
    if source.format == "wikipedia" and source.files:
        errors.append(f"source.files lists {len(source.files)} files, which source.format wikipedia does not read; "
                      "set source.format to loose_json or plain_text, or source.files to []")
    if source.format != "wikipedia" and not source.files:
        errors.append(f"source.format {source.format}: source.files lists no file; name the corpus's files or glob "
                      "patterns")

    tokenizer = config.tokenizer
    floor = len(SPECIAL_TOKENS) + ASCII_ALPHABET[tokenizer.lowercase]
    if tokenizer.vocab_file is None and tokenizer.vocab_size < floor:
        errors.append(f"tokenizer.vocab_size {tokenizer.vocab_size}: too small for the {len(SPECIAL_TOKENS)} special "
                      f"tokens and the ASCII alphabet (tokenizer.lowercase {str(tokenizer.lowercase).lower()}); "
                      f"use at least {floor}")
    if tokenizer.vocab_file is not None and tokenizer.kind != "wordpiece":
        errors.append(f"tokenizer.vocab_file is a WordPiece vocab.txt: set tokenizer.kind to wordpiece, or "
                      f"vocab_file to null (tokenizer.kind is {tokenizer.kind})")

    lengths = [phase.seq_length for phase in config.tfrecords.phases]
    for length in sorted({n for n in lengths if lengths.count(n) > 1}):
        errors.append(f"tfrecords.phases: seq_length {length} is listed {lengths.count(length)} times; list each "
                      "length once")
    for index, phase in enumerate(config.tfrecords.phases):
        room = phase.seq_length - SPECIAL_POSITIONS
        if phase.max_predictions > room:
            errors.append(f"tfrecords.phases[{index}].max_predictions {phase.max_predictions}: a sequence of "
                          f"seq_length {phase.seq_length} holds at most {room} maskable tokens")
        if phase.seq_length > config.model.max_position_embeddings:
            errors.append(f"tfrecords.phases[{index}].seq_length {phase.seq_length} is above "
                          f"model.max_position_embeddings {config.model.max_position_embeddings}")

    model = config.model
    if model.hidden_size % model.num_attention_heads:
        errors.append(f"model.hidden_size {model.hidden_size} is not divisible by model.num_attention_heads "
                      f"{model.num_attention_heads}")
    elif config.recipe == "modern" and (model.hidden_size // model.num_attention_heads) % 2:
        errors.append(f"model.hidden_size {model.hidden_size} / model.num_attention_heads "
                      f"{model.num_attention_heads}: recipe modern's rotary positions turn pairs of a head's "
                      "dimensions; give each head an even width")

    if config.evaluate.common_seq_length > model.max_position_embeddings:
        errors.append(f"evaluate.common_seq_length {config.evaluate.common_seq_length} is above "
                      f"model.max_position_embeddings {model.max_position_embeddings}")
    for index, phase in enumerate(config.pretrain.phases):
        if phase.seq_length > model.max_position_embeddings:
            errors.append(f"pretrain.phases[{index}].seq_length {phase.seq_length} is above "
                          f"model.max_position_embeddings {model.max_position_embeddings}")
        if phase.seq_length not in lengths:
            errors.append(f"pretrain.phases[{index}].seq_length {phase.seq_length} has no TFRecords: add it to "
                          f"tfrecords.phases (now {sorted(lengths)})")

    mirror_fault = mirror_credentials_fault(config.dump.mirror, "dump.mirror", "download.token_env")
    if mirror_fault:
        errors.append(mirror_fault)
    if config.mlflow.tracking_uri and re.match(r"^[^:/]+://[^/@]*:[^/@]*@", config.mlflow.tracking_uri):
        errors.append("mlflow.tracking_uri holds a password: it would reach job command lines and logs; put the "
                      "credentials in MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD (or MLFLOW_TRACKING_TOKEN)")

    job = config.slurm.pretrain
    if 0 < job.gpus_per_node < config.pretrain.nproc_per_node:
        errors.append(f"slurm.pretrain.gpus_per_node {job.gpus_per_node} is below pretrain.nproc_per_node "
                      f"{config.pretrain.nproc_per_node}: each training process needs a GPU of its own")
    return errors
