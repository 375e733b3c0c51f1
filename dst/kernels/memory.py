"""Large CPU outputs backed by transparent huge pages (THP).

A fresh multi-megabyte CPU tensor is mmap'ed by malloc and then faulted in 4 KiB at a time: for a 32 MiB spike tensor
that is 8192 page faults, which cost more than the kernel's own arithmetic (measured here: ~15 ms of faults against
~5 ms of work). Advising the kernel to back the buffer with 2 MiB pages before the first touch cuts that to a few
dozen faults. This only applies where the system's THP mode is "madvise" (with "always" it happens anyway, with
"never" it cannot); DST_THP=0 turns it off. PyTorch can do the same for every allocation with THP_MEM_ALLOC_ENABLE=1.
"""
from __future__ import annotations

import ctypes
import os
import sys

import torch

MADV_HUGEPAGE = 14
HUGE_PAGE = 2 << 20
MIN_BYTES = 4 << 20

_madvise = None  # the libc function once looked up, False when THP advice is unavailable or off


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
                    fn = libc.madvise
                    fn.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
                    fn.restype = ctypes.c_int
                    _madvise = fn
            except (OSError, AttributeError):
                _madvise = False
    return _madvise


def advise_huge_pages(t: torch.Tensor) -> torch.Tensor:
    """Ask for huge pages for the 2 MiB-aligned interior of a large, not yet touched CPU tensor."""
    if t.device.type != "cpu":
        return t
    nbytes = t.numel() * t.element_size()
    if nbytes < MIN_BYTES:
        return t
    madvise = _thp_madvise()
    if madvise:
        p = t.data_ptr()
        lo = (p + HUGE_PAGE - 1) // HUGE_PAGE * HUGE_PAGE
        hi = (p + nbytes) // HUGE_PAGE * HUGE_PAGE
        if hi > lo:
            madvise(lo, hi - lo, MADV_HUGEPAGE)  # advice only: a failure just leaves 4 KiB pages
    return t
