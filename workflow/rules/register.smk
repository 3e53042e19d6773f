# Stage `register`: the exported folder as a LoggedModel of the register run and a new version of config
# mlflow.registered_model, which gets alias mlflow.registered_alias; its lineage as tags, its evaluation as the
# LoggedModel's metrics.


rule register:
    input:
        model=f"{RESULTS}/export/huggingface",
        evaluation=f"{RESULTS}/evaluate/metrics.json",
        manifest=f"{RESULTS}/corpus/manifest.json",
        tokenizer=f"{RESULTS}/tokenizer",
        train=lambda wildcards: [
            f for phase in PRETRAIN["phases"] for f in tfrecord_files(phase["seq_length"], "train", "tfrecord")
        ],
        done=[f"{RESULTS}/pretrain/phase{number}/done.json" for number in range(1, LAST_PHASE + 1)],
    output:
        report(f"{RESULTS}/register/model-version.json", caption="../report/register.rst", category="Model"),
    params:
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
        " --train-data {input.train:q} --training-done {input.done:q} --out {output:q} 2> {log:q}"
