"""The fused multi-step neuron on CPU through numba: float32, float64 and bfloat16 tensors, one pass over T forward,
one backward (the kernels are in neuron_kernels.py; this is the launch side).

Only the input X is kept between forward and backward; backward recomputes H[t]. Work is split into blocks of
elements per time step, run in parallel on numba's threads (threads.py says how many).
"""
from __future__ import annotations

import numpy as np
import torch

from dst.kernels.layout import Rows, forward_buffers, rows_layout
from dst.kernels.numba import launch
from dst.kernels.numba import threads as numba_threads
from dst.kernels.spec import NeuronSpec, SurrogateKind

# Block sizes (elements per step) of the kernels. Each block streams T rows of B contiguous elements; long rows matter,
# since every block start restarts the hardware prefetch streams (benchmarks/results/design-measurements.md).
FORWARD_BLOCK = 131072          # forward keeps one row of V per block: 512 KiB in float32
BACKWARD_SCRATCH = 1 << 19      # backward keeps H for the whole block, T x B values: 2 MiB in float32 (Sigmoid: x2)
MIN_BLOCK = 1024


def _round_block(b: int) -> int:
    return max(MIN_BLOCK, b // 64 * 64)


def _split(M: int, B: int, threads: int) -> int:
    """B, lowered so that every thread gets at least two blocks when M allows (load balance)."""
    per_thread = -(-M // (2 * threads))
    return max(MIN_BLOCK, min(B, -(-per_thread // 64) * 64))


def _forward_block(M: int, threads: int) -> int:
    return _split(M, _round_block(FORWARD_BLOCK), threads)


def _backward_block(T: int, M: int, threads: int) -> int:
    return _split(M, _round_block(BACKWARD_SCRATCH // max(T, 1)), threads)


def _one_step_like(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(an empty [1, ...] tensor shaped like x[:1], in x's memory order; its [1, M] row)."""
    layout = rows_layout(x)
    return Rows(layout.perm, 1, layout.M).empty(x[:1])


class NumbaImpl:
    name = "numba"

    @staticmethod
    def supports(x: torch.Tensor, spec: NeuronSpec) -> bool:
        return (x.device.type == "cpu" and x.dtype in (torch.float32, torch.float64, torch.bfloat16)
                and spec.surrogate in ("atan", "sigmoid") and launch.numba_available())

    @staticmethod
    def forward(x: torch.Tensor, spec: NeuronSpec, k) -> torch.Tensor:
        layout, out, out_rows, rows = forward_buffers(x)
        if x.numel() == 0:
            return out
        xf, xrs = launch.flat_rows(rows)
        n = numba_threads.threads(x.numel())
        with numba_threads.Threads(n):
            kind = int(spec.kind)
            launch.compiled(launch.kernels().forward_kernel(kind, spec.hard, x.dtype == torch.float64))(
                xf, xrs, launch.numpy_view(out_rows.view(-1)), layout.T, layout.M, _forward_block(layout.M, n),
                launch.constants(spec, k, x.dtype), kind, spec.hard)
        return out

    @staticmethod
    def backward(x: torch.Tensor, g: torch.Tensor, spec: NeuronSpec, k):
        return NumbaImpl._backward(x, g, spec, k, sum_time=False)

    @staticmethod
    def backward_summed(x: torch.Tensor, g: torch.Tensor, spec: NeuronSpec, k):
        """backward for an input repeated over T (x[t] the same tensor): (dL/dX summed over T, shaped x[0], dL/dk).
        The kernel sums in registers where it can (T = 4, ATan, no dL/dk), else the [T, ...] gradient is summed."""
        if x.shape[0] == 4 and spec.surrogate_kind == SurrogateKind.ATAN and not spec.learn_k:
            gx, gk = NumbaImpl._backward(x, g, spec, k, sum_time=True)
            return gx[0], gk
        gx, gk = NumbaImpl._backward(x, g, spec, k, sum_time=False)
        summed = _one_step_like(x)[0][0]
        return torch.sum(gx, dim=0, out=summed), gk

    @staticmethod
    def _backward(x: torch.Tensor, g: torch.Tensor, spec: NeuronSpec, k, sum_time: bool):
        layout = rows_layout(x)
        gx, gx_rows = _one_step_like(x) if sum_time else layout.empty(x)
        n = numba_threads.threads(x.numel())
        B = _backward_block(layout.T, layout.M, n)
        nblk = (layout.M + B - 1) // B
        partial = np.zeros(max(nblk, 1), dtype=np.float64)
        if x.numel():
            xf, xrs = launch.flat_rows(layout.rows_of(x.detach()))
            gf, grs = launch.flat_rows(layout.rows_of(g.detach().to(x.dtype)))
            with numba_threads.Threads(n):
                flags = (int(spec.kind), spec.hard, spec.detach_reset,
                         spec.surrogate_kind == SurrogateKind.SIGMOID, spec.learn_k)
                launch.compiled(launch.kernels().backward_kernel(*flags, x.dtype == torch.float64))(
                    xf, xrs, gf, grs, launch.numpy_view(gx_rows.view(-1)), layout.T, layout.M, B, launch.constants(spec, k, x.dtype),
                    *flags, partial, sum_time)
        gk = torch.tensor(partial.sum(), dtype=torch.float64) if spec.learn_k else None
        return gx, gk

