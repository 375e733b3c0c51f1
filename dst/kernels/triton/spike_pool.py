"""The fused stem (the stem's neuron and the max pool after it) on CUDA through Triton: any layout, float32, float64,
bfloat16 and float16. The launch side of spike_pool_kernels.py."""
from __future__ import annotations

import os

import torch

from dst.kernels.triton import launch
from dst.kernels.triton.launch import LAUNCH_OPTIONS

# Pooled outputs (forward) and inputs (backward) per program. Forward tiles are [16, BLOCK] for a 3x3 window (five of
# them live: x, V, H, S, spikes), so 128 keeps them in registers with 4 warps. Not yet measured on a GPU;
# DST_TRITON_SPIKE_POOL_BLOCK overrides it (for tuning runs).
SPIKE_POOL_BLOCK = int(os.environ.get("DST_TRITON_SPIKE_POOL_BLOCK", "128"))


def _last_c(x: torch.Tensor) -> bool:
    return x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()


class TritonSpikePool:
    name = "triton"
    # Not the default until measured on a GPU (benchmarks/gpu_check.sh: ours-fused-stem against ours-unfused-stem):
    # it runs where asked for (fused_stem=True). Tested through Triton's interpreter and compiled for sm_90 only.
    by_default = False

    @staticmethod
    def supports(x: torch.Tensor) -> bool:
        return launch.supports_tensor(x)

    @staticmethod
    def forward(x, spec, decay, T, k, s, p):
        N, C, H, W = x.shape
        OH, OW = (H + 2 * p - k) // s + 1, (W + 2 * p - k) // s + 1
        last_c = _last_c(x)
        # [T, N, C, OH, OW] in x's memory order per step, as the unfused pool's output has it
        shape, order = ((T, N, OH, OW, C), (0, 1, 4, 2, 3)) if last_c else ((T, N, C, OH, OW), (0, 1, 2, 3, 4))
        out = torch.empty(shape, dtype=x.dtype, device=x.device).permute(*order)
        sel = torch.empty(shape, dtype=torch.int8, device=x.device).permute(*order)
        M = N * C * OH * OW
        if M:
            launch.kernels("spike_pool_kernels")._forward_kernel[(-(-M // SPIKE_POOL_BLOCK),)](
                x, out, sel, launch.constants(spec, x.dtype, x.device), launch.k_tensor(decay, x.dtype, x.device),
                M, C, H, W, OH, OW, T, *x.stride(), *out.stride(),
                K=k, S=s, P=p, KK=launch.pow2(k * k), LAST_C=last_c, KIND=int(spec.kind), HARD=spec.hard,
                **launch.dtype_args(x.dtype), BLOCK=SPIKE_POOL_BLOCK, **LAUNCH_OPTIONS)
        return out, sel

    @staticmethod
    def backward(x, grad_out, sel, spec, decay, T, k, s, p):
        N, C, H, W = x.shape
        OH, OW = sel.shape[3], sel.shape[4]
        gx = torch.empty_like(x)                                   # keeps x's layout (dense x)
        M = N * C * H * W
        if M:
            launch.kernels("spike_pool_kernels")._backward_kernel[(-(-M // SPIKE_POOL_BLOCK),)](
                x.detach(), grad_out, sel, gx, launch.constants(spec, x.dtype, x.device),
                launch.k_tensor(decay, x.dtype, x.device), M, C, H, W, OH, OW, T,
                *x.stride(), *grad_out.stride(), *sel.stride(), *gx.stride(),
                K=k, S=s, P=p, WINDOWS=-(-k // s), TP=launch.pow2(T), LAST_C=_last_c(x), KIND=int(spec.kind),
                HARD=spec.hard, DETACH=spec.detach_reset, SURROGATE=int(spec.surrogate_kind),
                **launch.dtype_args(x.dtype), BLOCK=SPIKE_POOL_BLOCK, **LAUNCH_OPTIONS)
        return gx
