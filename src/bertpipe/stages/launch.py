"""`bertpipe launch`: runs `bertpipe pretrain` under torchrun on one machine, or on several Slurm nodes.

One node (a workstation, or a one-node Slurm job): `torchrun --standalone --nproc-per-node G -m bertpipe pretrain ...`.
Several nodes: this process runs in the job's batch step, on the allocation's first node. It hosts the c10d
rendezvous store there, on its node's address (its NodeAddr in Slurm, not its name resolved: nodes may share a name's
address, as on a test machine) and a port the system assigns as the store binds it, so no other job can take the port
between a choice and its use. Then `srun` starts one task per node, each running `torchrun --nnodes N
--nproc-per-node G --rdzv-backend c10d --rdzv-endpoint ADDR:PORT --rdzv-conf is_host=false --rdzv-id JOB_ID`: every
node's torchrun connects to this process's store.

Stopping: SIGTERM or SIGINT makes the trainers checkpoint and stop, and launch exits with 128 + the signal (on one
node launch hands the signal to the trainers itself, see `supervise`). Slurm's time-limit warning is SIGURG
(`--signal=URG@<seconds>`), a signal every process ignores unless it asks for it; so it reaches the trainer (which
checkpoints and stops, see train/distributed.py) through Snakemake, the shell, srun and torchrun without stopping any
of them. A run that stopped before its last step has no `--done`
file (launch is given its path); launch then exits with STOPPED, so the workflow marks the job failed and its rerun
resumes from the checkpoint.
"""

import argparse
import functools
import os
import signal
import subprocess
import sys
from datetime import timedelta

from bertpipe import BertpipeError, settings
from bertpipe.redaction import redact
from bertpipe.settings import PretrainSettings, SlurmPretrain
from bertpipe.stopping import end_with_parent

STOPPED = 75  # EX_TEMPFAIL: stopped early with a checkpoint; run again to resume


def torchrun_command(nproc_per_node: int, command: list, nnodes: int = 1, endpoint: str = None,
                     rendezvous_id: str = None) -> list:
    """torchrun (as `python -m torch.distributed.run`, so the same interpreter) running `bertpipe <command>`."""
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(nproc_per_node)]
    if nnodes == 1:
        torchrun.append("--standalone")
    else:
        torchrun += ["--nnodes", str(nnodes), "--rdzv-backend", "c10d", "--rdzv-endpoint", endpoint,
                     "--rdzv-conf", "is_host=false", "--rdzv-id", rendezvous_id]
    return torchrun + ["-m", "bertpipe", *command]


def node_address(node: str) -> str:
    """The NodeAddr of Slurm node `node` (`scontrol show node`)."""
    result = subprocess.run(["scontrol", "show", "node", node], capture_output=True, text=True)
    if result.returncode != 0:
        raise BertpipeError(f"scontrol show node {node} failed: {result.stderr.strip()}")
    return parse_node_address(result.stdout, node)


def parse_node_address(scontrol_output: str, node: str) -> str:
    for field in scontrol_output.split():
        if field.startswith("NodeAddr="):
            return field.split("=", 1)[1]
    raise BertpipeError(f"scontrol show node {node} names no NodeAddr")


def rendezvous_store(address: str):
    """A c10d store served by this process until it ends, on a port the system assigns as it binds."""
    from torch.distributed import TCPStore

    # The agents' reads of it time out as theirs do by default (c10d's read_timeout, 60 s); the rendezvous itself
    # waits for the nodes as long as torchrun's --rdzv-conf join_timeout says.
    return TCPStore(address, 0, is_master=True, multi_tenant=True, wait_for_workers=False,
                    timeout=timedelta(seconds=60))


def multi_node_command(nnodes: int, nproc_per_node: int, cpus_per_node: int, gpus_per_node: int, command: list,
                       environ, store_port) -> list:
    """`srun` with one task per node, each running torchrun with a c10d rendezvous at a store on this node:
    `store_port(address)` starts it on that address and gives its port."""
    job = environ.get("SLURM_JOB_ID")
    node = environ.get("SLURMD_NODENAME")
    if not job or not node:
        raise BertpipeError(f"{nnodes} nodes need a Slurm job: run the workflow with `--profile slurm`, or set "
                            "pretrain.nodes to 1 for a run on this machine")
    address = node_address(node)
    port = store_port(address)
    endpoint = f"[{address}]:{port}" if ":" in address else f"{address}:{port}"
    step = ["srun", "--nodes", str(nnodes), "--ntasks", str(nnodes), "--ntasks-per-node", "1",
            "--cpus-per-task", str(cpus_per_node), "--kill-on-bad-exit=1"]
    if gpus_per_node:
        step.append(f"--gres=gpu:{gpus_per_node}")
    return step + torchrun_command(nproc_per_node, command, nnodes, endpoint, rendezvous_id=job)


def threads_per_process(nproc_per_node: int, cpus_per_node: int, environ, usable_cpus: int) -> int:
    """CPU threads for each training process: the job's CPUs on a node shared among its processes. The job's CPUs
    are the fewest of `cpus_per_node`, the `usable_cpus` this process may run on (a Slurm allocation's), and the
    rule's threads, which Snakemake passes as OMP_NUM_THREADS (capped by --cores on a workstation)."""
    cpus = min(cpus_per_node, usable_cpus, int(environ.get("OMP_NUM_THREADS") or cpus_per_node))
    return max(1, cpus // nproc_per_node)


def launch(nnodes: int, nproc_per_node: int, command: list, cpus_per_node: int, gpus_per_node: int, done=None) -> int:
    """Runs `bertpipe <command>` across `nnodes` x `nproc_per_node` processes; returns the exit status, STOPPED
    where it succeeded without writing the file `done` (the trainer's --done)."""
    stores = []  # the rendezvous store lives as long as this call: the nodes' torchruns use it to the end

    def store_port(address):
        stores.append(rendezvous_store(address))
        return stores[-1].port

    if nnodes == 1:
        argv = torchrun_command(nproc_per_node, command)
    else:
        argv = multi_node_command(nnodes, nproc_per_node, cpus_per_node, gpus_per_node, command, os.environ,
                                  store_port)
    # torchrun keeps an OMP_NUM_THREADS it is given (else 1 per process when there are several), and srun passes it on.
    threads = threads_per_process(nproc_per_node, cpus_per_node, os.environ, len(os.sched_getaffinity(0)))
    return supervise(argv, done, {**os.environ, "OMP_NUM_THREADS": str(threads)}, own_session=nnodes == 1)


def _forward(process: subprocess.Popen, number: int) -> None:
    """Signal `number` to the trainers under torchrun `process` (its children, each in a session of its own; not what
    they start, such as compile workers), or to torchrun itself while it has started none. A hang-up (a closed
    terminal) reaches them as SIGTERM, on which they checkpoint."""
    import psutil

    number = signal.SIGTERM if number == signal.SIGHUP else number
    try:
        trainers = psutil.Process(process.pid).children()
    except psutil.NoSuchProcess:
        return
    for target in trainers or [psutil.Process(process.pid)]:
        try:
            target.send_signal(number)
        except psutil.NoSuchProcess:
            pass


def supervise(argv: list, done, environ=None, own_session: bool = False) -> int:
    """Runs `argv` (in `environ`) to its end; its exit status: 128 + the signal where SIGTERM, SIGINT or SIGHUP
    stopped it, STOPPED where it succeeded without writing `done`.

    `own_session` (torchrun on this machine): the command runs in a session of its own, out of reach of a terminal's
    Ctrl-C, and this process hands each signal it gets to the trainers, which checkpoint and exit, so that torchrun
    ends cleanly; torchrun's own handling would end in a traceback and kill them 30 s later. Otherwise (srun on
    several nodes) Slurm signals every process of the job step, and a terminal every process of its foreground
    group, so the trainers get each signal themselves and this process stays to report how they ended."""
    threads = (environ or {}).get("OMP_NUM_THREADS")
    print("launch:", redact(" ".join(argv)), *([f"({threads} threads a process)"] if threads else []), flush=True)
    process, received = None, []

    def handle(number, frame):
        received.append(number)
        if own_session and process is not None:
            _forward(process, number)

    # (Handlers, unlike ignored signals, are reset in the child when it starts.)
    previous = {number: signal.signal(number, handle) for number in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)}
    try:
        # Out of the session, torchrun would outlive a launch killed outright: it ends with it (torchrun then hands
        # the trainers SIGTERM).
        ends_with_launch = functools.partial(end_with_parent, signal.SIGTERM) if own_session else None
        process = subprocess.Popen(argv, env=environ, start_new_session=own_session, preexec_fn=ends_with_launch)
        if received and own_session:  # a signal that came before the command started
            _forward(process, received[0])
        status = process.wait()
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)
    if received:
        print(f"launch: stopped by {signal.Signals(received[0]).name}; exit status {128 + received[0]}", flush=True)
        return 128 + received[0]
    if status != 0:
        return status
    if done and not os.path.exists(done):
        print(f"launch: training stopped before its last step (a time-limit warning or preemption) and left a "
              f"checkpoint; run the workflow again to resume from it. Exit status {STOPPED}.", flush=True)
        return STOPPED
    return 0


def add_arguments(parser) -> None:
    parser.description = __doc__
    settings.add_arguments(parser, PretrainSettings, only=("nodes", "nproc_per_node"))
    settings.add_arguments(parser, SlurmPretrain, only=("cpus_per_node", "gpus_per_node"))
    parser.add_argument("--done", help="the launched pretrain's --done file (given to it): a run that ends without it "
                                       f"stopped early, and launch exits {STOPPED}")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="the bertpipe command, e.g. pretrain ...")
    # Not a run of its own: the command it launches is tracked (by its rank 0).
    parser.set_defaults(run=run, label=None, inputs=(), tracked=False)


def run(args, tracking_run) -> None:
    if not args.command:
        raise BertpipeError("name the command to launch, e.g. `bertpipe launch --nodes 2 pretrain ...`")
    # The launched command is tracked as this one would be, with this job's log.
    command = [*tracking_run.target.arguments(), *(["--log-file", args.log_file] if args.log_file else []),
               *(["--run-name", args.run_name] if args.run_name else []), *args.command,
               *(["--done", args.done] if args.done else [])]
    raise SystemExit(launch(args.nodes, args.nproc_per_node, command, cpus_per_node=args.cpus_per_node,
                            gpus_per_node=args.gpus_per_node, done=args.done))
