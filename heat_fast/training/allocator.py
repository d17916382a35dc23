"""glibc malloc settings that keep a training step's large activations mapped between steps.

PyTorch's CPU allocator takes every tensor from malloc. glibc serves a block above
M_MMAP_THRESHOLD (128 KiB at first, raised by itself only up to the largest block freed so
far) with a fresh ``mmap`` and gives it back with ``munmap`` on free, and returns free memory
at the top of the heap to the kernel above M_TRIM_THRESHOLD. An AT step allocates and frees
the same activations K + 1 times, so each of them is faulted in again, page by zero-filled
page, in every forward. :func:`keep_freed_memory` raises both thresholds so freed activations
stay in the heap and are reused; the process keeps its peak heap (what the step needs anyway).

The same settings can be made without this module, before the process starts, through the
environment: ``MALLOC_MMAP_THRESHOLD_=<bytes> MALLOC_TRIM_THRESHOLD_=<bytes>`` (or
``GLIBC_TUNABLES=glibc.malloc.mmap_threshold=<bytes>:glibc.malloc.trim_threshold=<bytes>``).
``HEAT_FAST_MALLOC_TUNING=0`` turns :func:`keep_freed_memory` off.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 1 << 30  # no activation below 1 GiB gets its own mapping
TRIM_THRESHOLD = 1 << 31  # keep up to 2 GiB of free heap instead of returning it
DISABLE_ENV = "HEAT_FAST_MALLOC_TUNING"


@functools.lru_cache(maxsize=None)
def keep_freed_memory() -> bool:
    """Set glibc's M_MMAP_THRESHOLD and M_TRIM_THRESHOLD for this process (once); True if
    they were set, False where malloc is not glibc's or ``HEAT_FAST_MALLOC_TUNING=0``."""
    if os.environ.get(DISABLE_ENV, "").strip() == "0":
        return False
    name = ctypes.util.find_library("c")
    try:
        mallopt = ctypes.CDLL(name).mallopt
    except (OSError, AttributeError, TypeError):
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(
        mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
