"""How a stage stops on SIGTERM (Slurm's time limit, `scancel`, `kill`) or SIGINT (Ctrl-C): `Stopped` is raised
where it runs, so that every `finally` and `with` unwinds (temporary outputs are removed, child processes ended) and
its run ends as KILLED (cli.main).

Python runs a signal's handler in the main thread between two bytecodes, so a long call into native code (a
tokenizer's training) would hold the stop back until it returns, past Slurm's grace time; `interruptible` runs such
a call in a thread of its own while the main thread waits, ready to unwind."""

import signal
import threading

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Stopped(BaseException):
    """A stop signal reached a stage. A BaseException, as KeyboardInterrupt is, so that no `except Exception` takes it
    for a failure to work around."""

    def __init__(self, number: int):
        super().__init__(signal.Signals(number).name)
        self.number = number


def _stop(number, frame):
    for other in STOP_SIGNALS:  # a second signal must not cut the unwinding short (SIGKILL still can)
        signal.signal(other, signal.SIG_IGN)
    raise Stopped(number)


def stop_on_signals() -> dict:
    """Make SIGTERM and SIGINT raise Stopped in this (the main) thread; returns the handlers they had."""
    return {number: signal.signal(number, _stop) for number in STOP_SIGNALS}


def end_with_parent(number: int = signal.SIGKILL) -> None:
    """For a child process in a session of its own (Popen's preexec_fn): signal `number` to it once the process that
    started it ends, however that ends (SIGKILL included), so that it is never left behind, out of reach of the
    signals a terminal or Slurm sends."""
    import ctypes

    PR_SET_PDEATHSIG = 1
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, number)


def interruptible(function, *args, **kwargs):
    """`function(*args, **kwargs)`, run in a daemon thread while this thread waits for it, so that a stop signal is
    handled at once; the call is left to end with the process."""
    outcome = {}

    def call():
        try:
            outcome["value"] = function(*args, **kwargs)
        except BaseException as error:  # raised again in the waiting thread
            outcome["error"] = error

    worker = threading.Thread(target=call, name=getattr(function, "__name__", "call"), daemon=True)
    worker.start()
    worker.join()  # a lock wait, which a signal's handler interrupts
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]
