# Stage `corpus`: clean, sentence-split, train/valid/test split and shard each part; then add up the stats.
# A checkpoint: how many shards a part gives is known only after it has run.


checkpoint corpus:
    input:
        f"{RESULTS}/extract/{{part}}.jsonl",
    output:
        directory(f"{RESULTS}/corpus/parts/{{part}}"),
    params:
        corpus=settings_flags(CorpusSettings, config["corpus"]),
    resources:
        **slurm_job("corpus"),
    conda:
        "../../envs/corpus.yaml"
    log:
        f"{LOGS}/corpus/{{part}}.log",
    shell:
        "bertpipe --log-file {log:q} --run-name 'corpus {wildcards.part}'"
        " corpus build --input {input:q} --outdir {output:q} {params.corpus} 2> {log:q}"


rule corpus_stats:
    input:
        lambda wildcards: corpus_parts(),
    output:
        stats=f"{RESULTS}/corpus/stats.json",
        page=report(f"{RESULTS}/corpus/stats.html", caption="../report/corpus_stats.rst", category="Corpus"),
    params:
        split=settings_flags(CorpusSettings, config["corpus"], only=("split",)),
    conda:
        "../../envs/corpus.yaml"
    log:
        f"{LOGS}/corpus/stats.log",
    shell:
        "bertpipe --log-file {log:q} --run-name 'corpus stats'"
        " corpus summarize {input:q} {params.split} --out {output.stats:q} --page {output.page:q} 2> {log:q}"
