# Stage `evaluate`: the final checkpoint on every record of the test split, and on the common test set (the test split
# packed at evaluate.common_seq_length under one fixed mask, the same for either recipe).


rule evaluate:
    input:
        done=f"{LAST_PHASE_DIR}/done.json",
        test=lambda wildcards: tfrecord_files(LAST_SEQ_LENGTH, "test", "tfrecord"),
        indexes=lambda wildcards: tfrecord_files(LAST_SEQ_LENGTH, "test", INDEX),
        common=lambda wildcards: tfrecord_files(COMMON_SEQ_LENGTH, "test", "tfrecord", kind=COMMON_KIND),
        common_indexes=lambda wildcards: tfrecord_files(COMMON_SEQ_LENGTH, "test", INDEX, kind=COMMON_KIND),
        test_list=tfrecords_list(LAST_SEQ_LENGTH, "test", "tfrecord"),
        common_list=tfrecords_list(COMMON_SEQ_LENGTH, "test", "tfrecord", kind=COMMON_KIND),
        tokenizer=f"{RESULTS}/tokenizer",
    output:
        metrics=report(f"{RESULTS}/evaluate/metrics.json", caption="../report/evaluate.rst", category="Evaluation"),
        fill_mask=report(f"{RESULTS}/evaluate/fill-mask.html", caption="../report/fill_mask.rst",
                         category="Evaluation"),
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
        " evaluate --checkpoint {params.checkpoints:q} --test-data @{input.test_list:q} --tokenizer {input.tokenizer:q}"
        " --common-test-data @{input.common_list:q}"
        " {params.evaluate} {params.precision} --out {output.metrics:q} --fill-mask {output.fill_mask:q} 2> {log:q}"
