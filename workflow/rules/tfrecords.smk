# Stage `tfrecords`: masked-LM + next-sentence instances, one job per corpus shard and sequence length.

PHASE_OF_LENGTH = {phase["seq_length"]: phase for phase in config["tfrecords"]["phases"]}


rule tfrecords:
    input:
        corpus=f"{RESULTS}/corpus/parts/{{part}}",
        tokenizer=f"{RESULTS}/tokenizer",
    output:
        records=f"{RESULTS}/tfrecords/seq{{seq}}/{{split}}/{{part}}/shard-{{shard}}.tfrecord",
        index=f"{RESULTS}/tfrecords/seq{{seq}}/{{split}}/{{part}}/shard-{{shard}}.{INDEX}",
        stats=f"{RESULTS}/tfrecords/seq{{seq}}/{{split}}/{{part}}/shard-{{shard}}.stats.json",
    params:
        instances=lambda wildcards: settings_flags(
            InstanceSpec, {**config["tfrecords"], **PHASE_OF_LENGTH[int(wildcards.seq)]}
        ),
        seed=settings_flags(TFRecordsSettings, config["tfrecords"], only=("seed",)),
    priority: training_priority
    resources:
        **slurm_job("tfrecords"),
    conda:
        "../../envs/tfrecords.yaml"
    log:
        f"{LOGS}/tfrecords/seq{{seq}}/{{split}}/{{part}}/shard-{{shard}}.log",
    shell:
        "bertpipe --log-file {log:q} tfrecords build"
        " --input {input.corpus:q}/{wildcards.split}/shard-{wildcards.shard}.jsonl"
        " --tokenizer {input.tokenizer:q} --out {output.records:q} --stats {output.stats:q}"
        " {params.instances} {params.seed} 2> {log:q}"


rule tfrecords_stats:
    input:
        lambda wildcards: tfrecord_files(wildcards.seq, wildcards.split, "stats.json"),
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
        " tfrecords summarize {input:q} --out {output.stats:q} --page {output.page:q} 2> {log:q}"
