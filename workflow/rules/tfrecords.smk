# Stage `tfrecords`: masked-LM + next-sentence instances, one job per corpus shard and sequence length.

TFRECORDS = config["tfrecords"]
PHASE_OF_LENGTH = {phase["seq_length"]: phase for phase in TFRECORDS["phases"]}


rule tfrecords:
    input:
        corpus=f"{RESULTS}/corpus/parts/{{part}}",
        tokenizer=f"{RESULTS}/tokenizer",
    output:
        records=f"{RESULTS}/tfrecords/seq{{seq}}/{{split}}/{{part}}/shard-{{shard}}.tfrecord",
        stats=f"{RESULTS}/tfrecords/seq{{seq}}/{{split}}/{{part}}/shard-{{shard}}.stats.json",
    params:
        max_predictions=lambda wildcards: PHASE_OF_LENGTH[int(wildcards.seq)]["max_predictions"],
        whole_word_mask="--whole-word-mask" if TFRECORDS["whole_word_mask"] else "--no-whole-word-mask",
    resources:
        **slurm_job("tfrecords"),
    conda:
        "../../envs/tfrecords.yaml"
    log:
        f"{LOGS}/tfrecords/seq{{seq}}/{{split}}/{{part}}/shard-{{shard}}.log",
    shell:
        "python -m bertpipe tfrecords build --input {input.corpus:q}/{wildcards.split}/shard-{wildcards.shard}.jsonl"
        " --tokenizer {input.tokenizer:q} --out {output.records:q} --stats {output.stats:q}"
        " --seq-length {wildcards.seq} --max-predictions {params.max_predictions}"
        f" --dupe-factor {TFRECORDS['dupe_factor']} --short-seq-prob {TFRECORDS['short_seq_prob']}"
        f" --masked-lm-prob {TFRECORDS['masked_lm_prob']} --seed {TFRECORDS['seed']}"
        " {params.whole_word_mask} 2> {log:q}"


rule tfrecords_stats:
    input:
        lambda wildcards: tfrecord_files(wildcards.seq, wildcards.split, "stats.json"),
    output:
        report(
            f"{RESULTS}/tfrecords/seq{{seq}}/{{split}}/stats.json",
            caption="../report/tfrecords_stats.rst",
            category="TFRecords",
        ),
    resources:
        **slurm_job("tfrecords_stats"),
    conda:
        "../../envs/tfrecords.yaml"
    log:
        f"{LOGS}/tfrecords/seq{{seq}}/{{split}}/stats.log",
    shell:
        "python -m bertpipe tfrecords summarize {input:q} --out {output:q} 2> {log:q}"
