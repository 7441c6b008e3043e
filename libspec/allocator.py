"""Make freed tensor memory go back to the operating system (glibc's malloc).

glibc serves a request above its mmap threshold with a map of its own, unmapped on free; below
it, from a heap that keeps freed blocks. The threshold starts at 128 KB and *rises* to the size of
each mapped block freed (up to 32 MB), so a job that copies weights one module at a time (8-32 MB
each) soon has them all served from the heap, where fragmentation keeps them resident: measured
on spec-convert, 0.4 GB of a 1.1 GB peak. Fixing the threshold at 1 MB keeps every tensor-sized
block mapped and returned on free.
"""

from __future__ import annotations

import ctypes
import ctypes.util

M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter number (malloc.h)
THRESHOLD_BYTES = 1 << 20


def map_large_allocations(threshold_bytes: int = THRESHOLD_BYTES) -> bool:
    """Fix glibc's mmap threshold for this process; False where there is no glibc (nothing changes)."""
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
        mallopt = libc.mallopt if libc is not None else None
    except (OSError, AttributeError):
        return False
    return bool(mallopt is not None and mallopt(M_MMAP_THRESHOLD, threshold_bytes))
