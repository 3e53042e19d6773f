# Stage `extract`: WikiExtractor --json, one job per dump part.


rule extract:
    input:
        f"{DUMP_DIR}/{{part}}.bz2",
    output:
        f"{RESULTS}/extract/{{part}}.jsonl",
    threads: config["extract"]["threads"]
    resources:
        **slurm_job("extract"),
    conda:
        "../../envs/extract.yaml"
    log:
        f"{LOGS}/extract/{{part}}.log",
    shell:
        "bertpipe --log-file {log:q} --run-name 'extract {wildcards.part}'"
        " extract --input {input:q} --out {output:q} --threads {threads} 2> {log:q}"
