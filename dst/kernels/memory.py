"""Large CPU outputs backed by transparent huge pages (THP).

A fresh multi-megabyte CPU tensor is mmap'ed by malloc and then faulted in 4 KiB at a time: for a 32 MiB spike tensor
that is 8192 page faults, which can cost more than the kernel's own arithmetic. Advising the kernel to back the buffer with 2 MiB pages before the first touch cuts that to a few
dozen faults. This only applies where the system's THP mode is "madvise" (with "always" it happens anyway, with
"never" it cannot); DST_THP=0 turns it off. PyTorch can do the same for every allocation with THP_MEM_ALLOC_ENABLE=1.

Only fresh memory is advised. In a training loop glibc usually hands back memory freed a moment ago (its mmap
threshold grows to the sizes it sees freed), already faulted in: advising that does no good and does harm, since
it splits the heap's mapping and later regrowth then faults in 2 MiB pages that must be zeroed. So the advice is given
only where the buffer's first page is not resident yet (mincore). What both choices measured:
benchmarks/results/design-measurements.md.
"""
from __future__ import annotations

import ctypes
import mmap
import os
import sys

import torch

MADV_HUGEPAGE = 14
HUGE_PAGE = 2 << 20
MIN_BYTES = 4 << 20

_madvise = None  # (madvise, mincore) from libc once looked up, False when THP advice is unavailable or off


def _thp_madvise():
    global _madvise
    if _madvise is None:
        _madvise = False
        if sys.platform.startswith("linux") and os.environ.get("DST_THP", "1") not in ("0", "false", "no"):
            try:
                with open("/sys/kernel/mm/transparent_hugepage/enabled") as f:
                    mode = f.read()
                if "[madvise]" in mode:
                    libc = ctypes.CDLL(None, use_errno=True)
                    madvise, mincore = libc.madvise, libc.mincore
                    madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
                    mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_char_p]
                    madvise.restype = mincore.restype = ctypes.c_int
                    _madvise = (madvise, mincore)
            except (OSError, AttributeError):
                _madvise = False
    return _madvise


def _resident(mincore, page_address: int) -> bool:
    """Whether the page at page_address is in memory already (True also when the kernel cannot say)."""
    vec = ctypes.create_string_buffer(1)
    return mincore(page_address, mmap.PAGESIZE, vec) != 0 or bool(vec.raw[0] & 1)


def advise_huge_pages(t: torch.Tensor) -> torch.Tensor:
    """Ask for huge pages for the 2 MiB-aligned interior of a large CPU tensor just allocated, if its memory is fresh
    (not faulted in yet; see the module docstring)."""
    if t.device.type != "cpu":
        return t
    nbytes = t.numel() * t.element_size()
    if nbytes < MIN_BYTES:
        return t
    libc = _thp_madvise()
    if libc:
        madvise, mincore = libc
        p = t.data_ptr()
        lo = (p + HUGE_PAGE - 1) // HUGE_PAGE * HUGE_PAGE
        hi = (p + nbytes) // HUGE_PAGE * HUGE_PAGE
        if hi > lo and not _resident(mincore, lo):
            madvise(lo, hi - lo, MADV_HUGEPAGE)  # advice only: a failure just leaves 4 KiB pages
    return t
