"""glibc's allocator told to keep freed activation-sized blocks for the next operation, on a CPU run.

Why: an eager forward pass allocates and frees activation-sized tensors at every operation. By default glibc serves
a block past its mmap threshold (128 KiB at start, raised as such blocks are freed) with a fresh mapping and unmaps
it on free, and hands the heap's free top back to the kernel past its trim threshold, so a batch faults much of its
working set in again, page by page. A 32k-token run of SmolLM2-135M in bf16 took 0.6-1.3M minor page faults that
way on a 2-core AMX Xeon, 0.28M (most of them loading) with the thresholds below, and scored 1.08x faster
(benchmarks/RESULTS.md).

Fixing the mmap threshold at its ceiling (32 MiB on 64-bit glibc; larger blocks are still mapped) puts activations
on the heap, and a high trim threshold keeps what they free there for the next batch; `trim_heap` hands it back
(a model's scoring is over, or a measurement wants RSS to show what is in use). Setting only the trim threshold is
worse than neither: it turns off glibc's adaptive mmap threshold, and every block past 128 KiB is then mapped
afresh. Nothing here changes a number the run computes, only where its memory comes from; where the C library is
not glibc (musl, macOS) nothing is done.
"""

from __future__ import annotations

import ctypes
import functools
import gc

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc's malloc.h
MMAP_THRESHOLD = 32 << 20  # glibc's ceiling for it on 64-bit (DEFAULT_MMAP_THRESHOLD_MAX)
TRIM_THRESHOLD = 1 << 30  # a freed heap top is kept up to this much


@functools.cache
def _glibc():
    """The allocator this process runs on when it is glibc's (mallopt, malloc_trim), else None."""
    try:
        libc = ctypes.CDLL(None)  # the process's own symbols: the C library it is linked with, no search
    except (OSError, TypeError):
        return None
    return libc if hasattr(libc, "gnu_get_libc_version") else None  # glibc only


@functools.cache
def keep_freed_memory() -> bool:
    """Set both thresholds for this process, once (a later call returns the first one's outcome): whether glibc
    took them."""
    libc = _glibc()
    if libc is None:
        return False
    # the mmap threshold first: the trim threshold alone would be the worse setting
    return bool(libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) and libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))


def trim_heap() -> None:
    """Hand the heap's free memory back to the kernel, so that RSS shows what is in use now."""
    libc = _glibc()
    if libc is not None:
        libc.malloc_trim(0)


def release_memory() -> None:
    """A model and its activations are dropped: collect what Python still holds, then give the freed heap back."""
    gc.collect()
    trim_heap()
