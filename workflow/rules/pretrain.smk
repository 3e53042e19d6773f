# Stage `pretrain`: one torchrun job per phase (seq 128, then 512 from phase 1's weights), on pretrain.nodes nodes
# (several: a multi-node Slurm job, see slurm_pretrain_job). Checkpoints live beside the phase's `done.json` but are
# not outputs, so a failed, preempted or timed-out job's checkpoints survive and the rerun resumes from the newest
# one. To train a phase from scratch, delete its checkpoints folder.

rule pretrain:
    input:
        train=pretrain_data("train"),
        valid=pretrain_data("valid"),
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
        folder=lambda wildcards: f"{RESULTS}/pretrain/phase{wildcards.phase}",
        valid=lambda wildcards, input: (
            "--valid-data " + " ".join(shlex.quote(f) for f in input.valid) if input.valid else ""
        ),
        phase=lambda wildcards: " ".join(
            f"--{flag} {pretrain_phase(wildcards)[key]}"
            for flag, key in (
                ("seq-length", "seq_length"),
                ("batch-size", "batch_size"),
                ("gradient-accumulation-steps", "gradient_accumulation_steps"),
                ("train-iters", "train_iters"),
                ("lr", "lr"),
            )
        ),
        init=lambda wildcards, input: (
            f"--init-from {Path(input.previous[0]).parent}/checkpoints" if input.previous else ""
        ),
        precision={"fp32": "", "fp16": "--fp16 --fp32-layernorm --fp32-embedding", "bf16": "--bf16"}[
            PRETRAIN["precision"]
        ],
        model=" ".join(f"--{key.replace('_', '-')} {value}" for key, value in MODEL.items()),
        training=" ".join(
            f"--{key.replace('_', '-')} {PRETRAIN[key]}"
            for key in (
                "hysteresis", "weight_decay", "clip_grad", "lr_decay_style", "warmup", "seed",
                "save_interval", "keep_last", "eval_interval", "eval_iters", "log_interval", "num_workers",
            )
        ),
        launch=(
            f"--nodes {PRETRAIN['nodes']} --nproc-per-node {PRETRAIN['nproc_per_node']}"
            f" --cpus-per-node {SLURM['pretrain']['cpus_per_node']} --gpus-per-node {SLURM['pretrain']['gpus_per_node']}"
        ),
    threads: PRETRAIN["nproc_per_node"]
    resources:
        **slurm_pretrain_job(),
    conda:
        "../../envs/pretrain.yaml"
    log:
        f"{LOGS}/pretrain/phase{{phase}}.log",
    shell:
        "python -m bertpipe launch {params.launch} pretrain --use-tfrecords"
        " --train-data {input.train:q} {params.valid} --tokenizer-path {input.tokenizer:q}"
        " {params.phase} {params.model} {params.training} {params.precision} {params.init}"
        " --save {params.folder}/checkpoints --metrics {params.folder}/metrics.jsonl --loss-curve {output.curve:q}"
        " --done {output.done:q} > {log:q} 2>&1"
