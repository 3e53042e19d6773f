"""Outputs are published whole or not at all: a writer killed outright (SIGKILL, which no code can unwind) leaves a
temporary output, which the next write of the same target removes; a live writer's is left alone."""

import os
import signal
import subprocess
import sys
import time

import pytest

from bertpipe import atomic

WRITER = """
import sys, time
from bertpipe.atomic import {kind}
with {kind}(sys.argv[1]) as temp:
    {make}
    print(temp, flush=True)
    time.sleep(600)  # killed here, mid-write
"""


@pytest.mark.parametrize("kind, make", [("atomic_file", "temp.write_text('half')"),
                                        ("atomic_dir", "(temp / 'part').write_text('half')")])
def test_a_temporary_output_of_a_killed_writer_is_removed_by_the_next_write(tmp_path, kind, make):
    target = tmp_path / "out" / "shard-0000.tfrecord"
    writer = subprocess.Popen([sys.executable, "-c", WRITER.format(kind=kind, make=make), str(target)],
                              stdout=subprocess.PIPE, text=True)
    left = writer.stdout.readline().strip()
    writer.send_signal(signal.SIGKILL)
    writer.wait()
    other_host = target.parent / f".{target.name}.tmp-node17-4242"  # another node's writer, maybe writing now
    other_host.write_text("recent")
    hours_ago = time.time() - 2 * atomic.ABANDONED_SECONDS
    stale_elsewhere = target.parent / f".{target.name}.tmp-node18-4242"
    stale_elsewhere.write_text("old")
    os.utime(stale_elsewhere, (hours_ago, hours_ago))
    assert os.path.exists(left)
    with getattr(atomic, kind)(target) as temp:
        assert not os.path.exists(left) and not stale_elsewhere.exists() and other_host.exists()
        if kind == "atomic_file":
            temp.write_text("whole")
        else:
            (temp / "part").write_text("whole")
    assert sorted(p.name for p in target.parent.iterdir()) == [other_host.name, target.name]


NATIVE = """
import hashlib, sys
from bertpipe.stopping import Stopped, interruptible, stop_on_signals
stop_on_signals()
try:
    print("ready", flush=True)
    interruptible(hashlib.pbkdf2_hmac, "sha256", b"x", b"y", 10**10)  # hours of C, as a tokenizer's training
except Stopped as stop:
    print(f"stopped by {stop}", flush=True)
    sys.exit(143)
"""


def test_a_stop_signal_is_taken_during_a_long_native_call_run_interruptible():
    """Python runs a handler between bytecodes: during hours of C in the main thread a SIGTERM would wait for the
    call to return. Run `interruptible`, the main thread waits on a lock, which the signal interrupts."""
    process = subprocess.Popen([sys.executable, "-c", NATIVE], stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout.readline() == "ready\n"
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) == 143 and process.stdout.read() == "stopped by SIGTERM\n"
    finally:
        process.kill()
