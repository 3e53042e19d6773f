"""memory.fix_mmap_threshold: once a large block was freed, glibc serves a smaller one from the heap, where freed
space stays resident; with the threshold fixed, it gets a mapping of its own, given back when freed."""

import subprocess
import sys

import pytest

# In a fresh process: free a 24 MiB block (that raises glibc's threshold to 24 MiB unless it is fixed), then fill and
# free an 8 MiB one, and print how many MiB of resident anonymous memory its free gave back.
PROBE = """
import sys, numpy as np
from bertpipe.memory import fix_mmap_threshold
if sys.argv[1] == "fixed":
    assert fix_mmap_threshold()
def resident_mib():
    status = open("/proc/self/status").read()
    return int(status.split("RssAnon:")[1].split()[0]) / 1024
big = np.ones(24 << 20, dtype=np.uint8); del big
block = np.ones(8 << 20, dtype=np.uint8)
before = resident_mib()
del block
print(before - resident_mib())
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc and /proc: Linux only")
def test_after_a_large_block_is_freed_a_smaller_one_goes_back_to_the_system_only_with_the_threshold_fixed():
    def given_back_mib(mode):
        result = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, check=True)
        return float(result.stdout)

    assert given_back_mib("glibc's default") < 1, "the default's threshold rose: the block stayed in the heap"
    assert given_back_mib("fixed") > 7
