# Stage `export`: the final checkpoint and the tokenizer as a HuggingFace transformers folder.


rule export:
    input:
        done=f"{LAST_PHASE_DIR}/done.json",
        tokenizer=f"{RESULTS}/tokenizer",
    output:
        directory(f"{RESULTS}/export/huggingface"),
    params:
        checkpoints=f"{LAST_PHASE_DIR}/checkpoints",
    resources:
        **slurm_job("export"),
    conda:
        "../../envs/export.yaml"
    log:
        f"{LOGS}/export.log",
    shell:
        "bertpipe --log-file {log:q} --run-name export"
        " export --checkpoint {params.checkpoints:q} --tokenizer {input.tokenizer:q}"
        " --out {output:q} 2> {log:q}"
