# Stage `corpus`: clean, sentence-split, train/valid/test split and shard each part; then add up the stats.
# A checkpoint: how many shards a part gives is known only after it has run.


checkpoint corpus:
    input:
        f"{RESULTS}/extract/{{part}}.jsonl",
    output:
        directory(f"{RESULTS}/corpus/parts/{{part}}"),
    params:
        split=config["corpus"]["split"],
        min_chars=config["corpus"]["min_chars"],
        min_paragraph_words=config["corpus"]["min_paragraph_words"],
        shard_max_bytes=int(config["corpus"]["shard_max_mb"] * 2**20),
    resources:
        **slurm_job("corpus"),
    conda:
        "../../envs/corpus.yaml"
    log:
        f"{LOGS}/corpus/{{part}}.log",
    shell:
        "python -m bertpipe corpus build --input {input:q} --outdir {output:q} --split {params.split:q}"
        " --min-chars {params.min_chars} --min-paragraph-words {params.min_paragraph_words}"
        " --shard-max-bytes {params.shard_max_bytes} 2> {log:q}"


rule corpus_stats:
    input:
        lambda wildcards: corpus_parts(),
    output:
        report(f"{RESULTS}/corpus/stats.json", caption="../report/corpus_stats.rst", category="Corpus"),
    params:
        split=config["corpus"]["split"],
    resources:
        **slurm_job("corpus_stats"),
    conda:
        "../../envs/corpus.yaml"
    log:
        f"{LOGS}/corpus/stats.log",
    shell:
        "python -m bertpipe corpus summarize {input:q} --split {params.split:q} --out {output:q} 2> {log:q}"
