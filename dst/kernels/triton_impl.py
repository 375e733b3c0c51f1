"""The fused multi-step neuron on CUDA through Triton (also on CPU tensors under TRITON_INTERPRET=1, for tests): the
launch side. The kernels live in dst/kernels/_triton_kernels.py, imported on first use.

Arithmetic is in float32 (float64 for float64 tensors). For bfloat16/float16 tensors every intermediate of the forward
is rounded to the tensor dtype after each operation, as eager PyTorch on CUDA does (Python scalars kept in float32),
so spikes equal the reference loop's on the GPU. (Eager PyTorch on CPU rounds an added or subtracted scalar to bf16
first; the CPU kernels follow that, see dst/kernels/cpu.py. So under TRITON_INTERPRET on CPU tensors, bf16 spikes can
differ from the CPU reference at inexact thresholds; the interpreter's own bf16 rounding is not exact either.)
"""
from __future__ import annotations

import functools
import importlib.util
import os

import torch

from dst.kernels.layout import forward_buffers, row_stride, rows_layout
from dst.kernels.spec import NeuronSpec

# Elements per program and warps per program; DST_TRITON_BLOCK / DST_TRITON_WARPS override them (for tuning runs).
BLOCK = int(os.environ.get("DST_TRITON_BLOCK", "1024"))
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


def _kernels():
    """dst/kernels/_triton_kernels.py (imports Triton: only once a kernel is launched)."""
    from dst.kernels import _triton_kernels
    return _triton_kernels


def _programs(M: int) -> int:
    """Programs in a launch: one per BLOCK elements of a time step."""
    return -(-M // BLOCK)


@functools.lru_cache(maxsize=None)
def _dtype_args(dtype: torch.dtype) -> dict:
    """The kernels' dtype constants for tensors of `dtype`: LOW (round every forward intermediate to it), DT (it, as
    a Triton dtype) and CDT (the compute dtype). Built once per dtype (every launch reads them); only unpacked by the
    callers, never modified."""
    tl = _kernels().tl
    dt = {torch.float32: tl.float32, torch.float64: tl.float64, torch.bfloat16: tl.bfloat16,
          torch.float16: tl.float16}[dtype]
    return dict(LOW=dtype in (torch.bfloat16, torch.float16), DT=dt,
                CDT=tl.float64 if dtype == torch.float64 else tl.float32)


def _constants(spec: NeuronSpec, dtype: torch.dtype, device) -> torch.Tensor:
    """[th, reset, rest, a, ha, th rounded, V0] in the compute dtype. 'rounded' = as a value of the tensor dtype
    (what eager PyTorch gets for v_reset * S, v_th * S and full_like(x, v_reset))."""
    cdt = torch.float64 if dtype == torch.float64 else torch.float32
    rnd = lambda v: torch.tensor(v, dtype=torch.float64).to(dtype).item()  # noqa: E731
    a, ha = (spec.atan_scale, spec.alpha / 2) if spec.surrogate == "atan" else (spec.alpha, spec.alpha)
    reset = spec.v_reset if spec.v_reset is not None else 0.0
    values = [spec.v_threshold, rnd(reset), spec.rest, a, ha, rnd(spec.v_threshold), rnd(spec.rest)]
    return torch.tensor(values, dtype=torch.float64).to(cdt).to(device)


_CONSTANTS: dict = {}


def _cached_constants(spec, dtype, device):
    key = (spec, dtype, str(device))
    c = _CONSTANTS.get(key)
    if c is None:
        c = _CONSTANTS[key] = _constants(spec, dtype, device)
    return c


def _k_tensor(k, dtype, device) -> torch.Tensor:
    cdt = torch.float64 if dtype == torch.float64 else torch.float32
    if isinstance(k, torch.Tensor):
        return k.detach().reshape(1).to(cdt)
    key = ("k", 0.0 if k is None else float(k), dtype, str(device))
    t = _CONSTANTS.get(key)
    if t is None:
        # eager PyTorch multiplies by a Python float in the compute dtype (float32 for bf16/fp16/fp32 tensors)
        t = _CONSTANTS[key] = torch.tensor([0.0 if k is None else float(k)], dtype=torch.float64).to(cdt).to(device)
    return t


class TritonImpl:
    name = "triton"

    @staticmethod
    def supports(x: torch.Tensor, spec: NeuronSpec) -> bool:
        return ((x.is_cuda or interpreting())
                and x.dtype in (torch.float32, torch.float64, torch.bfloat16, torch.float16)
                and spec.surrogate in ("atan", "sigmoid") and triton_available())

    @staticmethod
    def forward(x: torch.Tensor, spec: NeuronSpec, k) -> torch.Tensor:
        layout, out, out_rows, rows = forward_buffers(x)
        if x.numel() == 0:
            return out
        _kernels()._forward_kernel[(_programs(layout.M),)](
            rows, out_rows, _cached_constants(spec, x.dtype, x.device), _k_tensor(k, x.dtype, x.device),
            layout.M, row_stride(rows), layout.T,
            KIND=spec.kind, HARD=spec.hard, **_dtype_args(x.dtype), BLOCK=BLOCK, **LAUNCH_OPTIONS)
        return out

    @staticmethod
    def backward(x: torch.Tensor, g: torch.Tensor, spec: NeuronSpec, k):
        layout = rows_layout(x)
        gx, gx_rows = layout.empty(x)
        nprog = _programs(layout.M)
        partial = torch.zeros(max(nprog, 1), dtype=torch.float64 if x.dtype == torch.float64 else torch.float32,
                              device=x.device)
        if x.numel():
            rows = layout.rows_of(x.detach())
            g_rows = layout.rows_of(g.detach())
            _kernels()._backward_kernel[(nprog,)](
                rows, g_rows, gx_rows, _cached_constants(spec, x.dtype, x.device), _k_tensor(k, x.dtype, x.device),
                partial, layout.M, row_stride(rows), row_stride(g_rows), layout.T,
                KIND=spec.kind, HARD=spec.hard, DETACH=spec.detach_reset, SURROGATE=spec.surrogate_id,
                LEARN_K=spec.learn_k, **_dtype_args(x.dtype), BLOCK=BLOCK, **LAUNCH_OPTIONS)
        gk = partial.sum(dtype=torch.float64) if spec.learn_k else None
        return gx, gk


def _spike_pool_kernels():
    """dst/kernels/_triton_spike_pool.py (imports Triton: only once a kernel is launched)."""
    from dst.kernels import _triton_spike_pool
    return _triton_spike_pool


# Pooled outputs (forward) and inputs (backward) per program of the fused stem. Forward tiles are [16, BLOCK] for a
# 3x3 window (five of them live: x, V, H, S, spikes), so 128 keeps them in registers with 4 warps. Not yet measured
# on a GPU; DST_TRITON_SPIKE_POOL_BLOCK overrides it (for tuning runs).
SPIKE_POOL_BLOCK = int(os.environ.get("DST_TRITON_SPIKE_POOL_BLOCK", "128"))


def _pow2(n: int) -> int:
    return 1 << max(0, n - 1).bit_length()


class TritonSpikePool:
    """The stem's neuron fused with the max pool after it, on CUDA (dst/kernels/_triton_spike_pool.py); any layout,
    float32/float64/bfloat16/float16. The launch side of dst.kernels.spike_pool."""
    # Not the default until measured on a GPU (benchmarks/gpu_check.sh: ours-fused-stem against ours-unfused-stem):
    # it runs where asked for (fused_stem=True). Tested through Triton's interpreter and compiled for sm_90 only.
    by_default = False

    @staticmethod
    def supports(x: torch.Tensor) -> bool:
        return ((x.is_cuda or interpreting()) and triton_available()
                and x.dtype in (torch.float32, torch.float64, torch.bfloat16, torch.float16))

    @staticmethod
    def _last_c(x: torch.Tensor) -> bool:
        return x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()

    @staticmethod
    def forward(x, spec, decay, T, k, s, p):
        N, C, H, W = x.shape
        OH, OW = (H + 2 * p - k) // s + 1, (W + 2 * p - k) // s + 1
        last_c = TritonSpikePool._last_c(x)
        # [T, N, C, OH, OW] in x's memory order per step, as the unfused pool's output has it
        shape, order = ((T, N, OH, OW, C), (0, 1, 4, 2, 3)) if last_c else ((T, N, C, OH, OW), (0, 1, 2, 3, 4))
        out = torch.empty(shape, dtype=x.dtype, device=x.device).permute(*order)
        sel = torch.empty(shape, dtype=torch.int8, device=x.device).permute(*order)
        M = N * C * OH * OW
        if M:
            _spike_pool_kernels()._forward_kernel[(-(-M // SPIKE_POOL_BLOCK),)](
                x, out, sel, _cached_constants(spec, x.dtype, x.device), _k_tensor(decay, x.dtype, x.device),
                M, C, H, W, OH, OW, T, *x.stride(), *out.stride(),
                K=k, S=s, P=p, KK=_pow2(k * k), LAST_C=last_c, KIND=spec.kind, HARD=spec.hard,
                **_dtype_args(x.dtype), BLOCK=SPIKE_POOL_BLOCK, **LAUNCH_OPTIONS)
        return out, sel

    @staticmethod
    def backward(x, grad_out, sel, spec, decay, T, k, s, p):
        N, C, H, W = x.shape
        OH, OW = sel.shape[3], sel.shape[4]
        gx = torch.empty_like(x)                                   # keeps x's layout (dense x)
        M = N * C * H * W
        if M:
            _spike_pool_kernels()._backward_kernel[(-(-M // SPIKE_POOL_BLOCK),)](
                x.detach(), grad_out, sel, gx, _cached_constants(spec, x.dtype, x.device),
                _k_tensor(decay, x.dtype, x.device), M, C, H, W, OH, OW, T,
                *x.stride(), *grad_out.stride(), *sel.stride(), *gx.stride(),
                K=k, S=s, P=p, WINDOWS=-(-k // s), TP=_pow2(T), LAST_C=TritonSpikePool._last_c(x), KIND=spec.kind,
                HARD=spec.hard, DETACH=spec.detach_reset, SURROGATE=spec.surrogate_id, **_dtype_args(x.dtype),
                BLOCK=SPIKE_POOL_BLOCK, **LAUNCH_OPTIONS)
        return gx
