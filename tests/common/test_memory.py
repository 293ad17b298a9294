"""Freed memory is kept for the next call: a large array allocated again faults no pages in."""

from __future__ import annotations

import subprocess
import sys

# In a worker thread, as the services run their models: allocates and fills a detector-input
# sized array 20 times, and prints the minor page faults that took.
_PROGRAM = """
import resource, sys
from concurrent.futures import ThreadPoolExecutor
import numpy as np
from services.common.memory import retain_freed_memory
if sys.argv[1] == "retain":
    assert retain_freed_memory()
def calls():
    np.ones(640 * 640 * 3, np.float32)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(20):
        np.ones(640 * 640 * 3, np.float32)
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
with ThreadPoolExecutor(1) as thread:
    print(thread.submit(calls).result())
"""


def _page_faults(mode: str) -> int:
    done = subprocess.run(
        [sys.executable, "-c", _PROGRAM, mode], capture_output=True, text=True, check=True
    )
    return int(done.stdout)


def test_retained_memory_is_reused_without_page_faults() -> None:
    # glibc's default trims the freed block off the thread's heap: allocations fault pages in
    # (about 700 for these 20 arrays of 1,200 pages each).
    default, retained = _page_faults("default"), _page_faults("retain")
    assert default > 200
    assert retained < default / 10
