# Stage `tokenizer`: SentencePiece or WordPiece, trained on a bounded sample of the train split.


rule tokenizer:
    input:
        corpus=lambda wildcards: corpus_parts(),
        listing=f"{RESULTS}/corpus/jobs.txt",
        # an adopted vocab.txt: a new one reruns the tokenizer and what it feeds
        vocab=config["tokenizer"]["vocab_file"] or [],
    output:
        directory(f"{RESULTS}/tokenizer"),
    params:
        tokenizer=settings_flags(TokenizerSettings, config["tokenizer"], skip=("threads",)),
    threads: config["tokenizer"]["threads"]
    resources:
        **slurm_job("tokenizer"),
    conda:
        "../../envs/tokenizer.yaml"
    log:
        f"{LOGS}/tokenizer.log",
    shell:
        "bertpipe --log-file {log:q} --run-name tokenizer"
        " tokenizer --corpus @{input.listing:q} --outdir {output:q} {params.tokenizer}"
        " --threads {threads} 2> {log:q}"
