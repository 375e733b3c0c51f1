"""Numba's thread pool as the CPU kernels use it: how many threads a call gets, and what a forked child does.

Layer. The kernels keep numba's default threading layer (TBB here); NUMBA_THREADING_LAYER chooses another. 'omp' was
tried as the default and dropped: it made one process's CPU training step faster, but the demo's 2-rank DVS training
(one thread per rank) about twice as slow, and one of those runs hung in a forked DataLoader worker. Much of what
'omp' gained was probably torch's OpenMP workers spinning after each torch op on the cores numba's TBB threads then
wanted; dst shortens that spin instead (dst/__init__.py). Numba's 'omp' pool is a second libgomp (the system's; torch
ships its own), so it does not share torch's workers either. The figures: benchmarks/results/design-measurements.md.

Fork. GNU OpenMP is not fork-safe. Numba aborts a forked child that launches a parallel kernel after its parent did
("fork() called from a process already using GNU OpenMP"). So, where the user chose 'omp' on GNU OpenMP, a child
forked after the kernels ran uses their serial builds instead (see `serial_only`).
"""
from __future__ import annotations

import os
import sys

import torch

# Below this many elements (T x M) a call runs on one thread: waking the pool costs tens of microseconds, more than
# the work itself.
PARALLEL_MIN_ELEMENTS = 1 << 16

_forked_from_gnu_omp = False


def _gnu_omp_in_use() -> bool:
    parallel = sys.modules.get("numba.np.ufunc.parallel")   # not imported: numba's pool never ran here
    if parallel is None or not parallel._is_initialized or parallel._threading_layer != "omp":
        return False
    from numba.np.ufunc import omppool
    return omppool.openmp_vendor == "GNU"


def _after_fork_in_child() -> None:
    global _forked_from_gnu_omp
    _forked_from_gnu_omp = _forked_from_gnu_omp or _gnu_omp_in_use()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def serial_only() -> bool:
    """True in a process forked (at any depth) from one whose numba pool ran on GNU OpenMP: parallel kernels would
    abort it."""
    return _forked_from_gnu_omp


def threads(elements: int) -> int:
    """Threads for a call over `elements` values: torch's count (so `torch.set_num_threads` governs both), one for
    small calls and in a child that cannot run parallel kernels."""
    if elements < PARALLEL_MIN_ELEMENTS or _forked_from_gnu_omp:
        return 1
    import numba
    return max(1, min(torch.get_num_threads(), numba.config.NUMBA_NUM_THREADS))


class Threads:
    """Run numba's parallel loops on n threads; numba's setting is changed (and restored) only when it differs."""

    def __init__(self, n: int):
        self._n = n

    def __enter__(self):
        self._old = None
        if _forked_from_gnu_omp:    # serial kernels: numba's pool must not even be asked
            return
        import numba
        self._numba = numba
        self._old = numba.get_num_threads()
        if self._old != self._n:
            numba.set_num_threads(self._n)

    def __exit__(self, *exc):
        if self._old is not None and self._old != self._n:
            self._numba.set_num_threads(self._old)
