# Stage `evaluate`: the final checkpoint on every record of the test split.


rule evaluate:
    input:
        done=f"{LAST_PHASE_DIR}/done.json",
        test=lambda wildcards: tfrecord_files(LAST_SEQ_LENGTH, "test", "tfrecord"),
        indexes=lambda wildcards: tfrecord_files(LAST_SEQ_LENGTH, "test", INDEX),
    output:
        report(f"{RESULTS}/evaluate/metrics.json", caption="../report/evaluate.rst", category="Evaluation"),
    params:
        checkpoints=f"{LAST_PHASE_DIR}/checkpoints",
        evaluate=settings_flags(EvaluateSettings, config["evaluate"]),
        precision=settings_flags(TrainingSettings, PRETRAIN, only=("precision",)),
    resources:
        **slurm_job("evaluate"),
    conda:
        "../../envs/evaluate.yaml"
    log:
        f"{LOGS}/evaluate.log",
    shell:
        "bertpipe --log-file {log:q} --run-name evaluate"
        " evaluate --checkpoint {params.checkpoints:q} --test-data {input.test:q}"
        " {params.evaluate} {params.precision} --out {output:q} 2> {log:q}"
