# Stage `corpus`: clean, sentence-split, train/valid/test split and shard each corpus job's documents (a dump part's,
# or a group of your own files'); then add up the stats and list the input files in the corpus's manifest.
# A checkpoint: how many shards a job gives is known only after it has run.


# A group of your files, listed for its job (`corpus build --input @LIST`): thousands of paths would pass the
# length a command line may have.
rule corpus_files:
    input:
        lambda wildcards: SOURCE_JOBS[wildcards.part],
    output:
        f"{RESULTS}/corpus/files/{{part}}.txt",
    log:
        f"{LOGS}/corpus/files/{{part}}.log",
    run:
        # "./" before a relative path: the command reads a line that starts with - or @ as a flag or another list.
        Path(output[0]).write_text("".join(f"{path}\n" if Path(path).is_absolute() else f"./{path}\n" for path in input))


checkpoint corpus:
    input:
        unpack(corpus_inputs),
    output:
        directory(f"{RESULTS}/corpus/parts/{{part}}"),
    params:
        inputs=lambda wildcards, input: shlex.quote(input.articles if WIKIPEDIA else f"@{input.listing}"),
        corpus=settings_flags(CorpusSettings, config["corpus"], skip=() if WIKIPEDIA else ("min_paragraph_words",)),
        source=settings_flags(SourceSettings, config["source"], only=BUILD_SETTINGS[config["source"]["format"]]),
    resources:
        **slurm_job("corpus"),
    conda:
        "../../envs/corpus.yaml"
    log:
        f"{LOGS}/corpus/{{part}}.log",
    shell:
        "bertpipe --log-file {log:q} --run-name 'corpus {wildcards.part}'"
        " corpus build --input {params.inputs} --outdir {output:q} {params.corpus} {params.source} 2> {log:q}"


# The corpus jobs' folders, listed for the commands that read them all (`@LIST`): a corpus of thousands of jobs.
rule corpus_jobs:
    input:
        lambda wildcards: corpus_parts(),
    output:
        f"{RESULTS}/corpus/jobs.txt",
    log:
        f"{LOGS}/corpus/jobs.log",
    run:
        Path(output[0]).write_text("".join(f"{folder}\n" for folder in input))


rule corpus_stats:
    input:
        parts=lambda wildcards: corpus_parts(),
        listing=f"{RESULTS}/corpus/jobs.txt",
        dump=f"{DUMP_DIR}/manifest.json" if WIKIPEDIA else [],
    output:
        stats=f"{RESULTS}/corpus/stats.json",
        manifest=f"{RESULTS}/corpus/manifest.json",
        page=report(f"{RESULTS}/corpus/stats.html", caption="../report/corpus_stats.rst", category="Corpus"),
    params:
        split=settings_flags(CorpusSettings, config["corpus"], only=("split",)),
        source=settings_flags(SourceSettings, config["source"], only=("format", "name", "license")),
        dump=lambda wildcards, input: f"--dump-manifest {shlex.quote(input.dump)}" if WIKIPEDIA else "",
    conda:
        "../../envs/corpus.yaml"
    log:
        f"{LOGS}/corpus/stats.log",
    shell:
        "bertpipe --log-file {log:q} --run-name 'corpus stats'"
        " corpus summarize @{input.listing:q} {params.split} {params.source} {params.dump} --out {output.stats:q}"
        " --manifest {output.manifest:q} --page {output.page:q} 2> {log:q}"
