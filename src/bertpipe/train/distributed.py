"""Process group set-up from torchrun's environment (env://), rank helpers, and preemption signals."""

import datetime
import logging
import os
import signal
import socket

import torch
import torch.distributed as dist


def init(timeout_minutes: float = None) -> tuple:
    """(rank, world size, device): one process per device; NCCL on GPUs, gloo on CPUs; a plain run is rank 0 of 1.
    Safe to call again: later calls return the same. `timeout_minutes`: of every collective and barrier (the first
    call's; torch's default without it)."""
    cuda = torch.cuda.is_available()
    if "RANK" not in os.environ:
        return 0, 1, torch.device("cuda" if cuda else "cpu")
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if not dist.is_initialized():
        if cuda:
            torch.cuda.set_device(local_rank)
        # NCCL binds the group to this rank's GPU (unnamed, it guesses from the global rank and warns of hangs).
        dist.init_process_group(backend="nccl" if cuda else "gloo",
                                device_id=torch.device("cuda", local_rank) if cuda else None,
                                **({"timeout": datetime.timedelta(minutes=timeout_minutes)} if timeout_minutes else {}))
        # Which machine each rank runs on (Slurm's node name: nodes may share a host name).
        node = os.environ.get("SLURMD_NODENAME") or socket.gethostname()
        logging.getLogger(__name__).info("rank %d of %d on node %s", dist.get_rank(), dist.get_world_size(), node)
    return dist.get_rank(), dist.get_world_size(), torch.device("cuda", local_rank) if cuda else torch.device("cpu")


def all_sums(values: list, device) -> list:
    """The sums of `values` over all ranks (themselves when not distributed), in one all-reduce."""
    if not dist.is_initialized():
        return list(values)
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(tensor)
    return tensor.tolist()


def all_sum(value: float, device) -> float:
    """The sum of `value` over all ranks."""
    return all_sums([value], device)[0]


def gather_objects(value) -> list:
    """Every rank's `value`, in rank order, on every rank."""
    if not dist.is_initialized():
        return [value]
    gathered = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, value)
    return gathered


def broadcast_object(value):
    """Rank 0's `value`, on every rank."""
    if not dist.is_initialized():
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def decided_on_rank_zero(decide):
    """`decide()` run on rank 0 alone, its result on every rank; an error there is raised on every rank (a
    BertpipeError with rank 0's message), so that no rank waits in a collective for a rank that has stopped."""
    from bertpipe import BertpipeError

    result = error = None
    if not dist.is_initialized() or dist.get_rank() == 0:
        try:
            result = decide()
        except Exception as failure:
            if not dist.is_initialized():
                raise
            error = failure
    result, message = broadcast_object((result, str(error) if error else None))
    if error:
        raise error
    if message:
        raise BertpipeError(f"rank 0 stopped the run: {message}")
    return result


class StopRequest:
    """SIGTERM or SIGINT (a kill, `scancel`, Ctrl-C), SIGUSR1 or SIGURG (a cluster's preemption or time-limit
    warning) asks the trainer to checkpoint and exit; every rank learns of it at the same step, whichever rank got
    the signal. SIGURG is the Slurm profile's time-limit warning: every other process ignores it by default, so Slurm
    can signal a whole job step with it (see stages/launch.py)."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1, signal.SIGURG)

    def __init__(self):
        self.received = None  # the number of the signal received, on this rank
        self.previous = {number: signal.signal(number, self._handle) for number in self.SIGNALS}

    def release(self):
        """Give the signals back to the handlers they had (a trainer run inside a longer-lived process)."""
        for number, handler in self.previous.items():
            signal.signal(number, handler)

    def _handle(self, number, frame):
        self.received = self.received or number

    def requested(self, device):
        """None, or the signal (a signal.Signals) that some rank received: the same answer on every rank."""
        if all_sum(float(self.received is not None), device) == 0:
            return None
        return signal.Signals(next(number for number in gather_objects(self.received) if number))
