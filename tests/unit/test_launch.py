"""`bertpipe launch`: the torchrun and srun commands it builds, and what its exit status says."""

import socket
import sys

import pytest

from bertpipe import BertpipeError, cli
from bertpipe.stages import launch

SCONTROL_NODE = """NodeName=n2 Arch=x86_64 CoresPerSocket=1
   CPUAlloc=0 CPUEfctv=2 CPUTot=2 CPULoad=0.00
   NodeAddr=127.0.0.1 NodeHostName=localhost Port=17002 Version=22.05.8
   State=IDLE ThreadsPerCore=1 TmpDisk=0 Weight=1 Owner=N/A MCS_label=N/A
"""


def test_one_node_is_standalone_torchrun_with_the_same_interpreter():
    command = launch.torchrun_command(2, ["pretrain", "--train-iters", "5"])
    assert command == [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--standalone",
                       "-m", "bertpipe", "pretrain", "--train-iters", "5"]


def test_a_list_file_in_the_launched_command_reaches_the_trainers_unread(tmp_path):
    """The workflow names a split's shards as `@LIST`: launch hands it on as it is and each trainer reads it, so that
    thousands of shard paths stay off torchrun's and srun's command lines."""
    listing = tmp_path / "tfrecord.list"
    listing.write_text("a/shard-0000.tfrecord\nb/shard-0000.tfrecord\n")
    argv = ["launch", "--nproc-per-node", "2", "pretrain", "--use-tfrecords", "--train-data", f"@{listing}"]
    command = cli.parser(argv).parse_args(argv).command
    assert command == ["pretrain", "--use-tfrecords", "--train-data", f"@{listing}"]
    assert cli.parser(command).parse_args(command).train_data == ["a/shard-0000.tfrecord", "b/shard-0000.tfrecord"]


def test_several_nodes_meet_at_a_c10d_rendezvous_named_by_the_job():
    command = launch.torchrun_command(8, ["pretrain"], nnodes=4, endpoint="10.0.0.7:29411", rendezvous_id="1234")
    assert command[command.index("--nnodes") + 1] == "4"
    assert command[command.index("--rdzv-backend") + 1] == "c10d"
    assert command[command.index("--rdzv-endpoint") + 1] == "10.0.0.7:29411"
    assert command[command.index("--rdzv-id") + 1] == "1234"
    assert command[command.index("--rdzv-conf") + 1] == "is_host=false"  # the store is launch's, see below
    assert "--standalone" not in command


def test_the_head_address_is_the_nodes_nodeaddr():
    assert launch.parse_node_address(SCONTROL_NODE, "n2") == "127.0.0.1"
    with pytest.raises(BertpipeError, match="no NodeAddr"):
        launch.parse_node_address("NodeName=n2 State=IDLE", "n2")


def test_the_rendezvous_store_takes_its_port_as_it_binds_and_the_nodes_connect_to_it():
    """No probe-then-bind race: a port taken by another job cannot be chosen, since the store holds it from the
    moment the system assigns it; the nodes' torchruns are clients of it (is_host=false)."""
    from datetime import timedelta

    from torch.distributed import TCPStore

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        store = launch.rendezvous_store("127.0.0.1")
        assert store.port != taken.getsockname()[1]
    client = TCPStore("127.0.0.1", store.port, is_master=False, multi_tenant=True, timeout=timedelta(seconds=30))
    client.set("rendezvous", "1")
    assert store.get("rendezvous") == b"1"


def test_several_nodes_outside_a_slurm_job_are_refused_with_what_to_do():
    with pytest.raises(BertpipeError, match="--profile slurm"):
        launch.multi_node_command(2, 1, 1, 0, ["pretrain"], environ={}, store_port=None)


def test_the_launched_command_gets_the_done_file_the_tracking_flags_and_the_log(monkeypatch):
    launched = {}

    def fake_launch(nnodes, nproc_per_node, command, cpus_per_node, gpus_per_node, done):
        launched.update(nproc_per_node=nproc_per_node, command=command, done=done)
        return 0

    monkeypatch.setattr(launch, "launch", fake_launch)
    with pytest.raises(SystemExit) as exit:
        cli.main(["--tracking-uri", "sqlite:///m.db", "--tracking-dir", "t", "--log-file", "p.log", "launch",
                  "--nproc-per-node", "2", "--done", "d.json", "pretrain", "--seed", "1"])
    assert exit.value.code == 0
    assert launched == {"nproc_per_node": 2, "done": "d.json", "command": [
        "--tracking-dir", "t", "--experiment", "bertpipe", "--tracking-uri", "sqlite:///m.db", "--log-file", "p.log",
        "pretrain", "--seed", "1", "--done", "d.json"]}
    # torchrun parses the whole command line: none of bertpipe's flags may read to it as one of its own.
    from torch.distributed.run import get_args_parser

    torchrun = get_args_parser().parse_args(launch.torchrun_command(2, launched["command"])[3:])
    assert torchrun.training_script == "bertpipe" and torchrun.training_script_args == launched["command"]


def test_a_run_that_stops_early_exits_with_stopped_and_a_complete_one_with_0(tmp_path):
    done = tmp_path / "done.json"
    assert launch.supervise([sys.executable, "-c", "pass"], str(done)) == launch.STOPPED
    write_done = f"open({str(done)!r}, 'w').write('{{}}')"
    assert launch.supervise([sys.executable, "-c", write_done], str(done)) == 0


def test_a_failing_run_keeps_its_exit_status(tmp_path):
    assert launch.supervise([sys.executable, "-c", "exit(3)"], str(tmp_path / "done.json")) == 3


@pytest.mark.parametrize("nproc, cpus, environ, usable, threads", [
    (1, 2, {"OMP_NUM_THREADS": "2"}, 2, 2),  # the demo: one process, both cores (not Snakemake's 1 per process)
    (8, 64, {}, 64, 8),  # a GPU node: its CPUs shared among the 8 processes
    (8, 64, {"OMP_NUM_THREADS": "4"}, 64, 1),  # `--cores 4` on a workstation caps the job's threads
    (2, 32, {}, 2, 1),  # a 2-CPU allocation, whatever the config says
], ids=["demo", "gpu-node", "cores-cap", "allocation-cap"])
def test_each_process_gets_its_share_of_the_jobs_cpus(nproc, cpus, environ, usable, threads):
    assert launch.threads_per_process(nproc, cpus, environ, usable) == threads
