# Stage `tokenizer`: SentencePiece or WordPiece, trained on a bounded sample of the train split.


rule tokenizer:
    input:
        lambda wildcards: corpus_parts(),
    output:
        directory(f"{RESULTS}/tokenizer"),
    params:
        kind=config["tokenizer"]["kind"],
        model_type=config["tokenizer"]["model_type"],
        vocab_size=config["tokenizer"]["vocab_size"],
        lowercase="--lowercase" if config["tokenizer"]["lowercase"] else "--no-lowercase",
        coverage=config["tokenizer"]["character_coverage"],
        sentences=config["tokenizer"]["input_sentence_size"],
        seed=config["tokenizer"]["seed"],
        vocab_file=(
            f"--vocab-file {config['tokenizer']['vocab_file']}" if config["tokenizer"]["vocab_file"] else ""
        ),
    threads: config["tokenizer"]["threads"]
    resources:
        **slurm_job("tokenizer"),
    conda:
        "../../envs/tokenizer.yaml"
    log:
        f"{LOGS}/tokenizer.log",
    shell:
        "python -m bertpipe tokenizer --corpus {input:q} --outdir {output:q} --kind {params.kind}"
        " --model-type {params.model_type} --vocab-size {params.vocab_size} {params.lowercase}"
        " --character-coverage {params.coverage} --input-sentence-size {params.sentences} --seed {params.seed}"
        " {params.vocab_file} --threads {threads} 2> {log:q}"
