# Stage `tfrecords`: one job per corpus shard and sequence length, of the recipe's kind: bert2019's masked-LM +
# next-sentence instances (`tfrecords build`, dupe_factor masked copies), or modern's packed sequences (`tfrecords
# pack`, once, masked as it trains; common.smk, tfrecords_command). A change of recipe changes the command, so Snakemake
# rebuilds them.

rule tfrecords:
    input:
        corpus=f"{RESULTS}/corpus/parts/{{part}}",
        tokenizer=f"{RESULTS}/tokenizer",
    output:
        records=f"{RESULTS}/tfrecords/seq{{seq}}/{{split}}/{{part}}/shard-{{shard}}.tfrecord",
        index=f"{RESULTS}/tfrecords/seq{{seq}}/{{split}}/{{part}}/shard-{{shard}}.{INDEX}",
        stats=f"{RESULTS}/tfrecords/seq{{seq}}/{{split}}/{{part}}/shard-{{shard}}.stats.json",
    params:
        command=tfrecords_command,
    priority: training_priority
    resources:
        **slurm_job("tfrecords"),
    conda:
        "../../envs/tfrecords.yaml"
    log:
        f"{LOGS}/tfrecords/seq{{seq}}/{{split}}/{{part}}/shard-{{shard}}.log",
    shell:
        "bertpipe --log-file {log:q} tfrecords {params.command}"
        " --input {input.corpus:q}/{wildcards.split}/shard-{wildcards.shard}.jsonl"
        " --tokenizer {input.tokenizer:q} --out {output.records:q} --stats {output.stats:q} 2> {log:q}"


# The common test set (evaluate.common_seq_length): the test split packed whatever the recipe, so that evaluate scores
# either recipe's model on the same tokens under one fixed mask.
use rule tfrecords as tfrecords_common with:
    output:
        records=f"{RESULTS}/tfrecords/common/seq{{seq}}/{{split}}/{{part}}/shard-{{shard}}.tfrecord",
        index=f"{RESULTS}/tfrecords/common/seq{{seq}}/{{split}}/{{part}}/shard-{{shard}}.{INDEX}",
        stats=f"{RESULTS}/tfrecords/common/seq{{seq}}/{{split}}/{{part}}/shard-{{shard}}.stats.json",
    params:
        command=lambda wildcards: f"pack --seq-length {int(wildcards.seq)}",
    log:
        f"{LOGS}/tfrecords/common/seq{{seq}}/{{split}}/{{part}}/shard-{{shard}}.log",


# A split's files of one kind, listed for the commands that read them all (common.smk, tfrecords_list).
rule tfrecords_list:
    input:
        lambda wildcards: tfrecord_files(wildcards.seq, wildcards.split, wildcards.suffix, kind=wildcards.kind),
    output:
        f"{RESULTS}/tfrecords/{{kind}}{{seq}}/{{split}}/{{suffix}}.list",
    wildcard_constraints:
        kind=r"seq|common/seq",
        suffix=r"tfrecord|stats\.json",
    log:
        f"{LOGS}/tfrecords/{{kind}}{{seq}}/{{split}}/{{suffix}}.list.log",
    run:
        Path(output[0]).write_text("".join(f"{path}\n" for path in input))


rule tfrecords_stats:
    input:
        stats=lambda wildcards: tfrecord_files(wildcards.seq, wildcards.split, "stats.json"),
        listing=lambda wildcards: tfrecords_list(wildcards.seq, wildcards.split, "stats.json"),
    output:
        stats=f"{RESULTS}/tfrecords/seq{{seq}}/{{split}}/stats.json",
        page=report(
            f"{RESULTS}/tfrecords/seq{{seq}}/{{split}}/stats.html",
            caption="../report/tfrecords_stats.rst",
            category="TFRecords",
            subcategory="seq {seq}",
        ),
    conda:
        "../../envs/tfrecords.yaml"
    log:
        f"{LOGS}/tfrecords/seq{{seq}}/{{split}}/stats.log",
    shell:
        "bertpipe --log-file {log:q} --run-name 'tfrecords seq{wildcards.seq} {wildcards.split}'"
        " tfrecords summarize @{input.listing:q} --out {output.stats:q} --page {output.page:q} 2> {log:q}"
