"""What the numba launchers share: importing the kernels (numba is optional), numpy views of tensors, the constants
array, and the serial build where a forked child needs it."""
from __future__ import annotations

import functools
import os

import numpy as np
import torch

from dst.kernels.layout import row_stride
from dst.kernels.numba import threads
from dst.kernels.spec import NUMBA_LAYOUT, KernelConstants, NeuronSpec

_MODULES: dict = {}   # kernel module name -> the module once imported, or False where numba is unavailable


def kernels(module: str = "neuron_kernels"):
    """dst.kernels.numba.<module> (imports numba: only once a kernel runs), or False without numba or with
    DST_DISABLE_NUMBA set."""
    found = _MODULES.get(module)
    if found is None:
        found = False
        if os.environ.get("DST_DISABLE_NUMBA", "") not in ("1", "true", "yes"):
            try:
                found = __import__(f"dst.kernels.numba.{module}", fromlist=["_"])
            except ImportError:
                found = False
        _MODULES[module] = found
    return found


def numba_available() -> bool:
    return bool(kernels())


def compiled(kernel):
    """A parallel numba kernel, or its serial build where parallel kernels would abort a fork (threads.serial_only)."""
    return kernels().serial_of(kernel) if threads.serial_only() else kernel


def numpy_view(t: torch.Tensor) -> np.ndarray:
    """t as a numpy array over the same memory; bfloat16 (which numpy lacks) as its uint16 bit patterns, which the
    kernels read and write as bfloat16 (see neuron_kernels' _ld / _st)."""
    if t.dtype == torch.bfloat16:
        return t.view(torch.int16).numpy().view(np.uint16)
    return t.numpy()


def flat_rows(rows: torch.Tensor) -> tuple[np.ndarray, int]:
    """A [T, M] row view (inner stride 1) as a 1-D numpy buffer over the same memory, and its row stride."""
    T, M = rows.shape
    rs = row_stride(rows)
    span = (T - 1) * rs + M
    return numpy_view(torch.as_strided(rows, (span,), (1,))), rs


def constants(spec: NeuronSpec, k, dtype: torch.dtype) -> np.ndarray:
    """KernelConstants.for_cpu in NUMBA_LAYOUT, in the compute dtype (float32 for bfloat16). k: a Python float (LIF),
    PLIF's 0-d tensor in the data dtype (read on every call: it changes as w trains), or None (IF). The array is
    cached per (spec, k, dtype), since building it costs tens of microseconds of tensor round trips; it is read-only,
    shared between calls."""
    k = 0.0 if k is None else (k.item() if isinstance(k, torch.Tensor) else float(k))
    return _constants_cached(spec, k, dtype)


@functools.lru_cache(maxsize=256)
def _constants_cached(spec: NeuronSpec, k: float, dtype: torch.dtype) -> np.ndarray:
    values = KernelConstants.for_cpu(spec, k, dtype).values(NUMBA_LAYOUT)
    c = np.array(values, dtype=np.float64 if dtype == torch.float64 else np.float32)
    c.flags.writeable = False
    return c
