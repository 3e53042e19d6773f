# Stage `export`: the final checkpoint and the tokenizer as a HuggingFace transformers folder, with a model card
# (README.md) made of what the earlier stages recorded.


rule export:
    input:
        tokenizer=f"{RESULTS}/tokenizer",
        # The model card's facts.
        done=[f"{RESULTS}/pretrain/phase{number}/done.json" for number in range(1, LAST_PHASE + 1)],
        corpus=f"{RESULTS}/corpus/stats.json",
        tfrecords=[f"{RESULTS}/tfrecords/seq{phase['seq_length']}/train/stats.json" for phase in PRETRAIN["phases"]],
        evaluation=f"{RESULTS}/evaluate/metrics.json",
    output:
        directory(f"{RESULTS}/export/huggingface"),
    params:
        checkpoints=f"{LAST_PHASE_DIR}/checkpoints",
        name=settings_flags(MlflowSettings, config["mlflow"], only=("registered_model",)),
    resources:
        **slurm_job("export"),
    conda:
        "../../envs/export.yaml"
    log:
        f"{LOGS}/export.log",
    shell:
        "bertpipe --log-file {log:q} --run-name export"
        " export --checkpoint {params.checkpoints:q} --tokenizer {input.tokenizer:q}"
        " {params.name} --corpus-stats {input.corpus:q}"
        " --training-done {input.done:q} --tfrecords-stats {input.tfrecords:q} --evaluation {input.evaluation:q}"
        " --out {output:q} 2> {log:q}"
