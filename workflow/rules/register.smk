# Stage `register`: the exported folder as a LoggedModel of the register run and a new version of config
# mlflow.registered_model, which gets alias mlflow.registered_alias; its lineage as tags, its evaluation as the
# LoggedModel's metrics.

# The lists of the train split at each phase's length (common.smk, tfrecords_list), a length trained twice once.
TRAIN_LISTS = list(
    dict.fromkeys(tfrecords_list(phase["seq_length"], "train", "tfrecord") for phase in PRETRAIN["phases"])
)


rule register:
    input:
        model=f"{RESULTS}/export/huggingface",
        evaluation=f"{RESULTS}/evaluate/metrics.json",
        manifest=f"{RESULTS}/corpus/manifest.json",
        tokenizer=f"{RESULTS}/tokenizer",
        train=lambda wildcards: [
            f for phase in PRETRAIN["phases"] for f in tfrecord_files(phase["seq_length"], "train", "tfrecord")
        ],
        train_lists=TRAIN_LISTS,
        done=[f"{RESULTS}/pretrain/phase{number}/done.json" for number in range(1, LAST_PHASE + 1)],
    output:
        report(f"{RESULTS}/register/model-version.json", caption="../report/register.rst", category="Model"),
    params:
        train=" ".join(f"@{shlex.quote(path)}" for path in TRAIN_LISTS),
        name=settings_flags(
            MlflowSettings, config["mlflow"], only=("registered_model", "registered_alias", "upload_timeout_seconds")
        ),
    resources:
        **slurm_job("register"),
    conda:
        "../../envs/register.yaml"
    log:
        f"{LOGS}/register.log",
    shell:
        "bertpipe --log-file {log:q} --run-name register register --model {input.model:q} {params.name}"
        " --evaluation {input.evaluation:q} --manifest {input.manifest:q} --tokenizer {input.tokenizer:q}"
        " --train-data {params.train} --training-done {input.done:q} --out {output:q} 2> {log:q}"
