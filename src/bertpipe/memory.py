"""The C heap of the process that evaluates the model: glibc's malloc, told to keep its mmap threshold fixed.

glibc serves an allocation above its mmap threshold (128 KiB at start) with a mapping of its own, returned to the
system when freed; but each time such a block is freed it raises the threshold to that block's size (up to 32 MiB),
so that later blocks below it come from the heap, where freed space of the wrong sizes stays resident. The unpadded
encoder's tensors change size with every batch (its tokens are the batch's real ones), so over a whole test split the
heap fragments and the process's resident memory keeps growing with the batches it has run. With the threshold
fixed, every large tensor gets a mapping of its own, returned when freed, and peak RSS stays flat in the number of
batches, at some CPU time spent on page faults (docs/benchmarks.md, "The heap's mmap threshold").

Training keeps glibc's default: there every step page-faults its tensors in again, which on a CPU costs a large share
of a small model's step, while its resident memory stays flat without the fix (bench/heap_threshold.py); on a GPU the
model's tensors are not on this heap at all.
"""

import ctypes
import logging

log = logging.getLogger(__name__)

M_MMAP_THRESHOLD = -3  # mallopt's parameter (malloc.h); setting it also turns off the dynamic adjustment
MMAP_THRESHOLD = 128 * 1024  # glibc's own initial value


def fix_mmap_threshold() -> bool:
    """Keep glibc's mmap threshold at 128 KiB in this process; False where the C library is not glibc."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        return bool(libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD))
    except (OSError, AttributeError):
        log.info("not glibc: the heap's mmap threshold is left as it is")
        return False
