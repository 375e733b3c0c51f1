"""What the Triton launchers share: whether Triton is here, the compile options of every launch, the dtype constants,
and the constants tensors. Nothing here imports Triton until a kernel is launched (importing it costs a noticeable
fraction of a second, which no CPU-only process should pay).

Arithmetic is in float32 (float64 for float64 tensors). For bfloat16/float16 tensors every intermediate of the forward
is rounded to the tensor dtype after each operation, as eager PyTorch on CUDA does (Python scalars kept in float32),
so spikes equal the reference loop's on the GPU. (Eager PyTorch on CPU rounds an added or subtracted scalar to bf16
first, and the numba kernels follow that. So under TRITON_INTERPRET on CPU tensors, bf16 spikes can differ from the
CPU reference at inexact thresholds; the interpreter's own bf16 rounding is not exact either.)
"""
from __future__ import annotations

import functools
import importlib.util
import os

import torch

from dst.kernels.spec import TRITON_LAYOUT, KernelConstants, NeuronSpec

# Warps per program; DST_TRITON_WARPS overrides it (for tuning runs).
NUM_WARPS = int(os.environ.get("DST_TRITON_WARPS", "4"))
# Compile options of every launch. No FP fusion: Triton would contract LIF's (X - (V - rest)) * k + V into one fused
# multiply-add, rounded once, where eager PyTorch rounds the product and the sum apart; a spike at the threshold could
# then differ from the reference loop's (tests/test_triton_compile.py checks the forward PTX has no fma).
LAUNCH_OPTIONS = dict(num_warps=NUM_WARPS, enable_fp_fusion=False)


@functools.lru_cache(maxsize=1)
def triton_available() -> bool:
    """Whether Triton is installed (looked up once, without importing it)."""
    return importlib.util.find_spec("triton") is not None


def interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def supports_tensor(x: torch.Tensor) -> bool:
    """A tensor the Triton kernels can take: on CUDA (or any tensor under the interpreter), in a float dtype."""
    return ((x.is_cuda or interpreting()) and triton_available()
            and x.dtype in (torch.float32, torch.float64, torch.bfloat16, torch.float16))


def kernels(module: str):
    """dst.kernels.triton.<module> (imports Triton: only once a kernel is launched)."""
    return importlib.import_module(f"dst.kernels.triton.{module}")


def pow2(n: int) -> int:
    """The smallest power of two >= n (Triton's tile sizes)."""
    return 1 << max(0, n - 1).bit_length()


@functools.lru_cache(maxsize=None)
def dtype_args(dtype: torch.dtype) -> dict:
    """The kernels' dtype constants for tensors of `dtype`: LOW (round every forward intermediate to it), DT (it, as
    a Triton dtype) and CDT (the compute dtype). Built once per dtype (every launch reads them); only unpacked by the
    callers, never modified."""
    tl = kernels("neuron_kernels").tl
    dt = {torch.float32: tl.float32, torch.float64: tl.float64, torch.bfloat16: tl.bfloat16,
          torch.float16: tl.float16}[dtype]
    return dict(LOW=dtype in (torch.bfloat16, torch.float16), DT=dt,
                CDT=tl.float64 if dtype == torch.float64 else tl.float32)


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


_CONSTANTS: dict = {}


def constants(spec: NeuronSpec, dtype: torch.dtype, device) -> torch.Tensor:
    """KernelConstants.for_cuda in TRITON_LAYOUT, in the compute dtype, on the device (built once per spec, dtype and
    device)."""
    key = (spec, dtype, str(device))
    c = _CONSTANTS.get(key)
    if c is None:
        values = KernelConstants.for_cuda(spec, dtype).values(TRITON_LAYOUT)
        c = _CONSTANTS[key] = torch.tensor(values, dtype=torch.float64).to(_compute_dtype(dtype)).to(device)
    return c


def k_tensor(k, dtype: torch.dtype, device) -> torch.Tensor:
    """The decay k as a 1-element tensor in the compute dtype: PLIF's learned value as it is now, or a constant's
    cached tensor (eager PyTorch multiplies by a Python float in the compute dtype)."""
    cdt = _compute_dtype(dtype)
    if isinstance(k, torch.Tensor):
        return k.detach().reshape(1).to(cdt)
    key = ("k", 0.0 if k is None else float(k), dtype, str(device))
    t = _CONSTANTS.get(key)
    if t is None:
        t = _CONSTANTS[key] = torch.tensor([0.0 if k is None else float(k)], dtype=torch.float64).to(cdt).to(device)
    return t
