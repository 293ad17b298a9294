"""Freed memory stays in the process for the next call instead of going back to the kernel.

Every call allocates the same large arrays (a 640x640 float input of 4.9 MB, decoded photos)
and frees them. glibc serves blocks that large with mmap, or trims them off the heap, so the
next call faults every page in afresh: 15 % of the detect service's CPU per small photo
(py-spy, benchmarks/bench_inference.py). Raising glibc's thresholds keeps up to
RETAINED_BYTES of freed memory for reuse.
"""

from __future__ import annotations

import ctypes
import ctypes.util

# glibc's largest mmap threshold on 64-bit systems; a 12 MP decode (36 MB) is still mapped.
RETAINED_BYTES = 32 * 1024 * 1024

# mallopt parameters, from glibc's malloc.h.
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3


def retain_freed_memory(limit: int = RETAINED_BYTES, keep: int | None = None) -> bool:
    """Blocks up to `limit` bytes come from the heap, and up to `keep` (default `limit`) freed
    bytes stay there: a `keep` above `limit` keeps several such blocks freed together.

    False where the C library has no mallopt (musl, macOS): memory is then handled as before.
    """
    name = ctypes.util.find_library("c")
    try:
        mallopt = ctypes.CDLL(name).mallopt
    except (OSError, AttributeError, TypeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return bool(mallopt(_M_MMAP_THRESHOLD, limit)) and bool(
        mallopt(_M_TRIM_THRESHOLD, limit if keep is None else keep)
    )
