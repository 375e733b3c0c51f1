"""The fused multi-step neuron on CUDA through Triton (also on CPU tensors under TRITON_INTERPRET=1, for tests): the
launch side of neuron_kernels.py. Rounding follows eager PyTorch on CUDA (launch.py)."""
from __future__ import annotations

import os

import torch

from dst.kernels.layout import forward_buffers, row_stride, rows_layout
from dst.kernels.spec import NeuronSpec
from dst.kernels.triton import launch
from dst.kernels.triton.launch import LAUNCH_OPTIONS, triton_available

# Elements per program; DST_TRITON_BLOCK overrides it (for tuning runs).
BLOCK = int(os.environ.get("DST_TRITON_BLOCK", "1024"))


def _programs(M: int) -> int:
    """Programs in a launch: one per BLOCK elements of a time step."""
    return -(-M // BLOCK)


class TritonImpl:
    name = "triton"

    @staticmethod
    def supports(x: torch.Tensor, spec: NeuronSpec) -> bool:
        return launch.supports_tensor(x) and spec.surrogate in ("atan", "sigmoid")

    @staticmethod
    def forward(x: torch.Tensor, spec: NeuronSpec, k) -> torch.Tensor:
        layout, out, out_rows, rows = forward_buffers(x)
        if x.numel() == 0:
            return out
        launch.kernels("neuron_kernels")._forward_kernel[(_programs(layout.M),)](
            rows, out_rows, launch.constants(spec, x.dtype, x.device), launch.k_tensor(k, x.dtype, x.device),
            layout.M, row_stride(rows), layout.T,
            KIND=int(spec.kind), HARD=spec.hard, **launch.dtype_args(x.dtype), BLOCK=BLOCK, **LAUNCH_OPTIONS)
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
            launch.kernels("neuron_kernels")._backward_kernel[(nprog,)](
                rows, g_rows, gx_rows, launch.constants(spec, x.dtype, x.device),
                launch.k_tensor(k, x.dtype, x.device), partial, layout.M, row_stride(rows), row_stride(g_rows),
                layout.T, KIND=int(spec.kind), HARD=spec.hard, DETACH=spec.detach_reset,
                SURROGATE=int(spec.surrogate_kind), LEARN_K=spec.learn_k, **launch.dtype_args(x.dtype), BLOCK=BLOCK,
                **LAUNCH_OPTIONS)
        gk = partial.sum(dtype=torch.float64) if spec.learn_k else None
        return gx, gk

    @staticmethod
    def backward_summed(x: torch.Tensor, g: torch.Tensor, spec: NeuronSpec, k):
        """backward, then the sum over T (no kernel of its own for a repeated input)."""
        gx, gk = TritonImpl.backward(x, g, spec, k)
        return gx.sum(0), gk


__all__ = ["TritonImpl", "triton_available"]
