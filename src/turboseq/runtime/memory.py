"""Process-level memory tuning for CPU decoding.

Decoding allocates and frees tensors of [rows, vocab] floats at every step (tens of MB at batch 64 with
beams). glibc serves allocations above its mmap threshold (at most 32 MB by default) with fresh mmaps, so
every step pays a page fault per 4 KiB page it touches, which can cost more than the vocabulary-sized
operations themselves at large batches with beams. Raising the threshold and the trim threshold keeps
freed blocks in the heap for reuse. Set ``TURBOSEQ_MALLOC_TUNING=0`` to leave malloc untouched.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import mmap
import os
import sys
from contextlib import contextmanager

# mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_MMAP_THRESHOLD = 1 << 30  # blocks below 1 GiB come from the heap
_TRIM_THRESHOLD = 1 << 30  # up to 1 GiB of freed heap is kept for reuse

_tuned: bool | None = None


def tune_malloc() -> bool:
    """Apply the thresholds once per process (glibc only); returns whether they are in effect."""
    global _tuned
    if _tuned is None:
        _tuned = False
        if sys.platform.startswith("linux") and os.environ.get("TURBOSEQ_MALLOC_TUNING", "1") != "0":
            try:
                _tuned = _mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD) and _mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD)
            except (OSError, AttributeError):  # not glibc (musl has no mallopt)
                return False
    return _tuned


_LOAD_MMAP_THRESHOLD = 1 << 16  # while loading: blocks of 64 KiB and more are mappings of their own


@contextmanager
def loading():
    """Within the block (a model being loaded), large blocks are mapped on their own and given back when
    freed: loading frees a converted weight after every new one, and in a heap those holes, split by the
    smaller results, would pile up (80 MB for the opus-mt shape). The decoding thresholds apply again after,
    and free heap blocks are handed back."""
    tuned = tune_malloc()
    if tuned:
        _mallopt(_M_MMAP_THRESHOLD, _LOAD_MMAP_THRESHOLD)
    try:
        yield
    finally:
        if tuned:
            _mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD)
        release_free_memory()


@functools.cache
def _libc():
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    libc.madvise.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
    return libc


def _mallopt(param: int, value: int) -> bool:
    return bool(_libc().mallopt(param, value))


def drop_pages(begin: int, end: int) -> None:
    """Drop the whole pages inside the addresses [begin, end) from this process's memory (``MADV_DONTNEED``):
    only for a clean file mapping, whose pages a later read faults back in from the file."""
    first, last = -(-begin // mmap.PAGESIZE) * mmap.PAGESIZE, end // mmap.PAGESIZE * mmap.PAGESIZE
    if last > first:
        _libc().madvise(first, last - first, mmap.MADV_DONTNEED)


def release_free_memory() -> None:
    """Hand the heap's free blocks back to the system once (after a load: the float32 staging copies of weights
    converted to a reduced compute type would otherwise stay resident under the thresholds above)."""
    if sys.platform.startswith("linux"):
        try:
            _libc().malloc_trim(0)
        except (OSError, AttributeError):
            pass


def resident_bytes() -> int:
    """This process's resident memory, in bytes (0 where /proc is missing)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * mmap.PAGESIZE
    except OSError:
        return 0
