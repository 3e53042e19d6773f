"""A real Slurm cluster on this machine for the Slurm tests and the scale rehearsal: munge, slurmctld and one slurmd
per node, started from Debian's packages (installed here when missing) and stopped by PID. See
../shared/docs/slurm-on-one-machine.md for why each setting is what it is."""

import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from bench.harness.debian import apt_install

# The plugin's job step drops SLURM_* variables (SLURM_CONF included) before it calls srun, so the configuration must
# be where every Slurm command looks by default.
SLURM_CONF = Path("/etc/slurm/slurm.conf")
PACKAGES = ("slurmctld", "slurmd", "slurm-client", "munge")
START_DEADLINE = 60  # seconds for the nodes to come up idle


def install_slurm() -> None:
    """Debian's Slurm and munge, when slurmctld is missing."""
    apt_install(PACKAGES, ("slurmctld", "slurmd", "munged"), "the Slurm tests")


def slurm_conf(folder: Path, spool: Path, nodes: list, cpus: int, memory_mb: int) -> str:
    """slurm.conf for a cluster whose nodes all run on this machine (127.0.0.1), state and logs under `folder`, each
    slurmd's spool under `spool`.

    One node takes this machine's short host name; several get their own names and slurmd ports."""
    lines = [
        "ClusterName=bertpipe-test",
        "SlurmctldHost=localhost",
        "SlurmUser=root",
        "SlurmdUser=root",
        "AuthType=auth/munge",
        # No cgroups here (and no systemd): processes are tracked through /proc.
        "ProctrackType=proctrack/linuxproc",
        "TaskPlugin=task/none",
        "JobAcctGatherType=jobacct_gather/none",
        "AccountingStorageType=accounting_storage/none",
        # The record of every finished job, which the tests read.
        "JobCompType=jobcomp/filetxt",
        f"JobCompLoc={folder}/jobcomp.txt",
        "SelectType=select/cons_tres",
        "SelectTypeParameters=CR_Core_Memory",
        "DefMemPerCPU=500",  # without it a job takes the whole node's memory and jobs run one at a time
        # squeue is the executor's status command (no accounting): finished jobs must stay visible to it.
        "MinJobAge=300",
        "ReturnToService=2",
        "MailProg=/bin/true",
        f"StateSaveLocation={folder}/state",
        f"SlurmdSpoolDir={spool}/%n",
        f"SlurmctldPidFile={folder}/slurmctld.pid",
        f"SlurmdPidFile={folder}/slurmd-%n.pid",
        f"SlurmctldLogFile={folder}/slurmctld.log",
        f"SlurmdLogFile={folder}/slurmd-%n.log",
    ]
    if len(nodes) == 1:
        lines.append(f"NodeName={nodes[0]} NodeAddr=127.0.0.1 CPUs={cpus} RealMemory={memory_mb} State=UNKNOWN")
    else:
        for index, name in enumerate(nodes):
            lines.append(f"NodeName={name} NodeHostname=localhost NodeAddr=127.0.0.1 Port={17001 + index} "
                         f"CPUs={cpus} RealMemory={memory_mb} State=UNKNOWN")
    lines.append(f"PartitionName=debug Nodes={','.join(nodes)} Default=YES MaxTime=INFINITE State=UP")
    return "\n".join(lines) + "\n"


def running(command: str) -> bool:
    """Whether a process of this name runs (from /proc: procps may be missing on a bare Debian)."""
    for stat in Path("/proc").glob("[0-9]*/comm"):
        try:
            if stat.read_text().strip() == command:
                return True
        except OSError:  # the process ended while we looked
            continue
    return False


def munge_works() -> bool:
    encode = subprocess.run(["munge", "-n"], capture_output=True)
    if encode.returncode != 0:
        return False
    return subprocess.run(["unmunge"], input=encode.stdout, capture_output=True).returncode == 0


def wait_until(condition, deadline_seconds: float, what: str, interval: float = 0.2) -> None:
    """Polls `condition` until it is true; fails naming `what` after the deadline."""
    deadline = time.monotonic() + deadline_seconds
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not after {deadline_seconds} s")
        time.sleep(interval)


class SlurmCluster:
    """munge (unless one already answers), slurmctld and a slurmd per node, in the foreground as children of this
    process; `stop()` ends each by its PID, in reverse order, and restores /etc/slurm/slurm.conf."""

    def __init__(self, folder: Path, nodes: int = 1, cpus: int = 2, memory_mb: int = 20000):
        self.folder = folder
        self.nodes = ([socket.gethostname().split(".")[0]] if nodes == 1
                      else [f"n{index}" for index in range(1, nodes + 1)])
        self.cpus, self.memory_mb = cpus, memory_mb
        self.processes = []  # (name, Popen), in start order
        self.saved_conf = None
        # slurmd makes Unix sockets in its spool folder, whose paths may not pass 108 bytes: not under a test's
        # tmp_path (pytest-xdist's are long), but in a short folder of its own.
        self.spool = Path(tempfile.mkdtemp(prefix="slurmd-"))

    def start(self) -> "SlurmCluster":
        if running("slurmctld"):
            raise RuntimeError("a slurmctld is already running on this machine; the tests start their own")
        self.folder.mkdir(parents=True, exist_ok=True)
        (self.folder / "state").mkdir(exist_ok=True)
        for name in self.nodes:
            (self.spool / name).mkdir(exist_ok=True)
        if SLURM_CONF.exists():
            self.saved_conf = SLURM_CONF.read_bytes()
        SLURM_CONF.parent.mkdir(parents=True, exist_ok=True)
        SLURM_CONF.write_text(slurm_conf(self.folder, self.spool, self.nodes, self.cpus, self.memory_mb))
        try:
            if not munge_works():
                Path("/run/munge").mkdir(parents=True, exist_ok=True)
                shutil.chown("/run/munge", "munge", "munge")
                self._spawn("munged", ["/usr/sbin/munged", "--foreground"], user="munge")
                wait_until(munge_works, START_DEADLINE, "munged answering")
            self._spawn("slurmctld", ["slurmctld", "-D"])
            for name in self.nodes:
                self._spawn(f"slurmd {name}", ["slurmd", "-D"] + (["-N", name] if len(self.nodes) > 1 else []))
            wait_until(self._all_idle, START_DEADLINE, f"Slurm nodes {self.nodes} idle")
        except BaseException:
            self.stop()
            raise
        return self

    def _spawn(self, name: str, command: list, user=None) -> None:
        log = open(self.folder / f"{name.replace(' ', '-')}.out", "wb")
        groups = {"user": user, "group": user, "extra_groups": []} if user else {}
        self.processes.append((name, subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, **groups)))
        log.close()

    def _all_idle(self) -> bool:
        for name, process in self.processes:
            if process.poll() is not None:
                raise RuntimeError(f"{name} exited with {process.returncode}; see {self.folder}")
        states = subprocess.run(["sinfo", "-h", "-N", "-o", "%N %T"], capture_output=True, text=True).stdout.split()
        return states[1::2] == ["idle"] * len(self.nodes)

    def stop(self) -> None:
        for name, process in reversed(self.processes):
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
        self.processes.clear()
        shutil.rmtree(self.spool, ignore_errors=True)
        if self.saved_conf is not None:
            SLURM_CONF.write_bytes(self.saved_conf)
        elif SLURM_CONF.exists():
            SLURM_CONF.unlink()

    def job_records(self) -> list:
        """The finished jobs as jobcomp/filetxt records them: one dict of its KEY=value fields per job."""
        path = self.folder / "jobcomp.txt"
        if not path.exists():
            return []
        return [dict(field.split("=", 1) for field in line.split() if "=" in field)
                for line in path.read_text().splitlines() if line.strip()]
