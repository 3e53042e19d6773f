# Stage `pretrain`: one torchrun job per phase (seq 128, then 512 from phase 1's weights), on pretrain.nodes nodes
# (several: a multi-node Slurm job, see slurm_pretrain_job). Checkpoints live beside the phase's `done.json` but are
# not outputs, so a failed, preempted or timed-out job's checkpoints survive and the rerun resumes from the newest
# one that is whole. Snakemake also reruns a phase when its inputs or settings changed: where what changed is part of
# the run's identity (the checkpoints record it: the tokenizer's and the data's content hashes, every identity
# setting, the phase-1 checkpoint phase 2 started from), they are another run's, so they are moved aside to
# `checkpoints.stale-<time>` and the phase starts afresh; where only how it runs changed, it resumes. To train a
# phase from scratch, delete its checkpoints.


rule pretrain:
    input:
        train=pretrain_data("train"),
        valid=pretrain_data("valid"),
        train_list=pretrain_data("train", listed=True),
        valid_list=pretrain_data("valid", listed=True),
        train_index=pretrain_data("train", INDEX),
        valid_index=pretrain_data("valid", INDEX),
        tokenizer=f"{RESULTS}/tokenizer",
        previous=previous_phase,
    output:
        done=f"{RESULTS}/pretrain/phase{{phase}}/done.json",
        curve=report(
            f"{RESULTS}/pretrain/phase{{phase}}/loss-curve.png",
            caption="../report/loss_curve.rst",
            category="Training",
            subcategory="phase {phase}",
        ),
    params:
        folder=lambda wildcards: shlex.quote(f"{RESULTS}/pretrain/phase{wildcards.phase}"),
        valid=lambda wildcards, input: f"--valid-data @{shlex.quote(input.valid_list)}" if input.valid_list else "",
        init=lambda wildcards, input: (
            f"--init-from {shlex.quote(str(Path(input.previous[0]).parent / 'checkpoints'))}" if input.previous else ""
        ),
        settings=lambda wildcards: " ".join(
            (
                settings_flags(Config, config, only=("recipe",)),
                settings_flags(ModernSettings, config["modern"]) if config["recipe"] == "modern" else "",
                settings_flags(ModelSettings, config["model"]),
                settings_flags(PhaseSettings, pretrain_phase(wildcards)),
                settings_flags(TrainingSettings, PRETRAIN),
            )
        ),
        launch=" ".join(
            (
                settings_flags(PretrainSettings, PRETRAIN, only=("nodes", "nproc_per_node")),
                settings_flags(SlurmPretrain, config["slurm"]["pretrain"], only=("cpus_per_node", "gpus_per_node")),
            )
        ),
    # The node's CPUs for this job (Snakemake sets OMP_NUM_THREADS to them; launch shares them among the processes).
    threads: config["slurm"]["pretrain"]["cpus_per_node"]
    priority: 2  # before any other ready job: it is the longest (common.smk, training_priority)
    resources:
        **slurm_pretrain_job(),
    conda:
        "../../envs/pretrain.yaml"
    log:
        f"{LOGS}/pretrain/phase{{phase}}.log",
    shell:
        "bertpipe --log-file {log:q} --run-name 'pretrain phase {wildcards.phase}'"
        " launch {params.launch} --done {output.done:q}"
        " pretrain --use-tfrecords --train-data @{input.train_list:q} {params.valid} --tokenizer-path {input.tokenizer:q}"
        " {params.settings} {params.init} --save {params.folder}/checkpoints --stale-checkpoints set-aside"
        " --metrics {params.folder}/metrics.jsonl"
        " --loss-curve {output.curve:q} > {log:q} 2>&1"
