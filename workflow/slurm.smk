# Slurm resources of every job, from config["slurm"], for `snakemake --profile slurm` (slurm/config.yaml): the
# partition and account, each rule's runtime and memory (its CPUs are its threads), and the pretrain job's nodes,
# GPUs, CPUs, memory, time and time-limit warning. The local executor ignores them.
SLURM = config["slurm"]


def slurm_placement(partition):
    placement = {"slurm_partition": partition} if partition else {}
    if SLURM["account"]:
        placement["slurm_account"] = SLURM["account"]
    return placement


def slurm_job(rule):
    """A job of `rule`: one task with the rule's threads as CPUs; with `gpus`, on the pretrain jobs' partition."""
    job = dict(SLURM["jobs"][rule])
    gpus = job.pop("gpus", 0)
    if not gpus:
        return slurm_placement(SLURM["partition"]) | job
    return slurm_placement(SLURM["pretrain"]["partition"] or SLURM["partition"]) | job | {"gpu": gpus}


def slurm_pretrain_job():
    """A pretrain phase on pretrain.nodes nodes. One node: one task, as any rule. Several: an MPI-style job
    (`mpi`, `nodes`, `tasks`), whose shell runs in the batch step on the first node, where `bertpipe launch` starts
    one srun task per node, each running torchrun.
    SIGURG before the time limit goes to every job step (not to the batch shell); the trainer checkpoints on it and
    everything else ignores it (see src/bertpipe/stages/launch.py)."""
    job = SLURM["pretrain"]
    nodes = PRETRAIN["nodes"]
    resources = slurm_placement(job["partition"] or SLURM["partition"]) | {
        "runtime": job["runtime"],
        "mem_mb": job["mem_mb"],
        "cpus_per_task": job["cpus_per_node"],
        "slurm_extra": f"--signal=URG@{job['warning_seconds']}",
    }
    if nodes > 1:
        resources |= {"nodes": nodes, "tasks": nodes, "mpi": "srun"}
    if job["gpus_per_node"] and nodes == 1:
        resources["gpu"] = job["gpus_per_node"]
    elif job["gpus_per_node"]:
        # --gres counts per node (--gpus would count for the whole job); tasks_per_gpu 0 keeps the plugin from
        # asking for --ntasks-per-gpu=<tasks>.
        resources |= {"gres": f"gpu:{job['gpus_per_node']}", "tasks_per_gpu": 0}
    return resources
