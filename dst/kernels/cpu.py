"""Fused multi-step neuron implementations that run without a GPU.

- `NumbaImpl`: compiled loops (numba; float32, float64 and bfloat16 CPU tensors): one pass over T forward, one backward.
- `EagerImpl`: the same algorithm with plain torch ops, one time step at a time (any device and float dtype, e.g.
  float16 on CPU, CUDA without Triton, or no numba). No autograd graph per step, and only X is kept for backward.

Both keep only the input X between forward and backward and recompute H[t] in backward (H is cheap to recompute,
while storing it would cost a [T, ...] tensor per neuron).
"""
from __future__ import annotations

import functools
import os

import numpy as np
import torch

from dst.kernels import numba_threads
from dst.kernels.layout import Rows, forward_buffers, row_stride, rows_layout
from dst.kernels.spec import IF, LIF, NeuronSpec
from dst.surrogate import SURROGATE_GRADS, heaviside

# Block sizes (elements per step) of the numba kernels. Each block streams T rows of B contiguous elements, and long
# rows matter (every block start restarts the hardware prefetch streams): measured on x = [4, 2M] and [16, 2M] float32,
# 2 threads, going from 4096-element forward blocks and a 64 KiB backward scratch to these sizes took forward from
# ~1.1x to ~0.8x and backward from ~2.4x to ~1.6x the time of a 3-array elementwise numba loop (and the kernels' four
# steps per pass then took backward to ~1.2x of torch.add(x, g, alpha=0.5, out=...)).
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


# ----------------------------------------------------------------------------------------------------------------------
# The torch formulas (EagerImpl), in the reference's operation order
# ----------------------------------------------------------------------------------------------------------------------
def charge(spec: NeuronSpec, v: torch.Tensor, x: torch.Tensor, k) -> torch.Tensor:
    """dst.neuron's charge for spec.kind, same operations in the same order (bit-identical results)."""
    if spec.kind == IF:
        return v + x
    if spec.kind == LIF:
        return v + (x - (v - spec.rest)) * k
    return v - (v - spec.rest) * k + x


def after_reset(spec: NeuronSpec, h: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    if spec.v_reset is None:
        return h - spec.v_threshold * s
    return h * (1.0 - s) + spec.v_reset * s


class EagerImpl:
    name = "eager"

    @staticmethod
    def supports(x: torch.Tensor, spec: NeuronSpec) -> bool:
        return x.is_floating_point() and spec.surrogate in SURROGATE_GRADS

    @staticmethod
    def forward(x: torch.Tensor, spec: NeuronSpec, k) -> torch.Tensor:
        out = torch.empty_like(x)
        v = torch.full_like(x[0], spec.rest)
        for t in range(x.shape[0]):
            h = charge(spec, v, x[t], k)
            s = heaviside(h - spec.v_threshold)
            out[t] = s
            v = after_reset(spec, h, s)
        return out

    @staticmethod
    def backward(x: torch.Tensor, g: torch.Tensor, spec: NeuronSpec, k):
        T = x.shape[0]
        gx = torch.empty_like(x)
        # Recompute H into the gradient buffer; step t is overwritten by dL/dX[t] once H[t] (and H[t-1]) are used.
        v = torch.full_like(x[0], spec.rest)
        for t in range(T):
            h = charge(spec, v, x[t], k)
            gx[t] = h
            v = after_reset(spec, h, heaviside(h - spec.v_threshold))
        surrogate_grad = SURROGATE_GRADS[spec.surrogate]
        gv = None
        gk = torch.zeros((), dtype=torch.float64, device=x.device) if spec.learn_k else None
        for t in range(T - 1, -1, -1):
            h = gx[t]  # read before gx[t] is overwritten below
            u = h - spec.v_threshold
            sg = surrogate_grad(u, spec.alpha)
            gh = g[t] * sg
            if gv is not None:
                if spec.v_reset is None:
                    dvdh = 1.0 if spec.detach_reset else 1.0 - spec.v_threshold * sg
                else:
                    dvdh = 1.0 - heaviside(u)
                    if not spec.detach_reset:
                        dvdh = dvdh + (spec.v_reset - h) * sg
                gh = gh + gv * dvdh
            if spec.learn_k:
                if t == 0:
                    vprev = torch.full_like(h, spec.rest)
                else:
                    hp = gx[t - 1]
                    vprev = after_reset(spec, hp, heaviside(hp - spec.v_threshold))
                dk = x[t] - (vprev - spec.rest) if spec.kind == LIF else -(vprev - spec.rest)
                gk += (gh * dk).sum(dtype=torch.float64)
            if spec.kind == IF:
                gx[t] = gh
                gv = gh
            else:
                gx[t] = gh * k if spec.kind == LIF else gh
                gv = gh * (1.0 - k)
        return gx, gk


# ----------------------------------------------------------------------------------------------------------------------
# Numba
# ----------------------------------------------------------------------------------------------------------------------
_NUMBA = None  # the kernels module once imported, False if numba is unavailable


def _numba_kernels():
    global _NUMBA
    if _NUMBA is None:
        if os.environ.get("DST_DISABLE_NUMBA", "") in ("1", "true", "yes"):
            _NUMBA = False
        else:
            try:
                from dst.kernels import _numba_kernels as kernels
                _NUMBA = kernels
            except ImportError:
                _NUMBA = False
    return _NUMBA


def numba_available() -> bool:
    return bool(_numba_kernels())


def numpy_view(t: torch.Tensor) -> np.ndarray:
    """t as a numpy array over the same memory; bfloat16 (which numpy lacks) as its uint16 bit patterns, which the
    kernels read and write as bfloat16 (see _numba_kernels' _ld / _st)."""
    if t.dtype == torch.bfloat16:
        return t.view(torch.int16).numpy().view(np.uint16)
    return t.numpy()


def _flat(rows: torch.Tensor) -> tuple[np.ndarray, int]:
    """A [T, M] row view (inner stride 1) as a 1-D numpy buffer over the same memory, and its row stride."""
    T, M = rows.shape
    rs = row_stride(rows)
    span = (T - 1) * rs + M
    return numpy_view(torch.as_strided(rows, (span,), (1,))), rs


def _as_dtype(value: float, dtype: torch.dtype, via: torch.dtype = torch.float64) -> float:
    """The value as a tensor of `dtype` holds it, converted through `via`."""
    return torch.tensor(value, dtype=via).to(dtype).item()


def _constants(spec: NeuronSpec, k, dtype: torch.dtype) -> np.ndarray:
    """The kernels' constants (see C_* in _numba_kernels), in the compute dtype (float32 for bfloat16).

    They follow what eager PyTorch on CPU does with a Python scalar: add/sub cast it to the tensor dtype (so for
    bfloat16 the threshold in H - v_th, and `rest` in V - rest, are bf16-rounded), mul keeps it in the compute dtype
    and rounds the product (v_th * S, v_reset * S, and LIF's * k). k: a Python float (LIF) or PLIF's 0-d tensor in
    the data dtype, read on every call (it changes as w trains); the array is cached per (spec, k, dtype), since
    building it costs ~40 us of tensor round trips. Read-only: shared between calls.
    """
    k = 0.0 if k is None else (k.item() if isinstance(k, torch.Tensor) else float(k))
    return _constants_cached(spec, k, dtype)


@functools.lru_cache(maxsize=256)
def _constants_cached(spec: NeuronSpec, k: float, dtype: torch.dtype) -> np.ndarray:
    if spec.surrogate == "atan":
        a, ha = spec.atan_scale, spec.alpha / 2
    else:
        a, ha = spec.alpha, spec.alpha
    reset = spec.v_reset if spec.v_reset is not None else 0.0
    opmath = torch.float64 if dtype == torch.float64 else torch.float32
    values = [_as_dtype(spec.v_threshold, dtype), reset, _as_dtype(spec.rest, dtype), k, a, ha, 1.0, 0.0,
              _as_dtype(spec.v_threshold, dtype, via=opmath), _as_dtype(reset, dtype, via=opmath),
              _as_dtype(spec.rest, dtype)]
    c = np.array(values, dtype=np.float64 if dtype == torch.float64 else np.float32)
    c.flags.writeable = False
    return c


def _flat_out(rows: torch.Tensor) -> np.ndarray:
    return numpy_view(rows.view(-1))


def _kernel(kernel):
    """A parallel numba kernel, or its serial build where parallel kernels would abort a fork."""
    return _numba_kernels().serial_of(kernel) if numba_threads.serial_only() else kernel


def _one_step_like(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(an empty [1, ...] tensor shaped like x[:1], in x's memory order; its [1, M] row)."""
    layout = rows_layout(x)
    return Rows(layout.perm, 1, layout.M).empty(x[:1])


class NumbaImpl:
    name = "numba"

    @staticmethod
    def supports(x: torch.Tensor, spec: NeuronSpec) -> bool:
        return (x.device.type == "cpu" and x.dtype in (torch.float32, torch.float64, torch.bfloat16)
                and spec.surrogate in ("atan", "sigmoid") and numba_available())

    @staticmethod
    def forward(x: torch.Tensor, spec: NeuronSpec, k) -> torch.Tensor:
        layout, out, out_rows, rows = forward_buffers(x)
        if x.numel() == 0:
            return out
        xf, xrs = _flat(rows)
        n = numba_threads.threads(x.numel())
        with numba_threads.Threads(n):
            _kernel(_numba_kernels().forward_kernel(spec.kind, spec.hard, x.dtype == torch.float64))(
                xf, xrs, _flat_out(out_rows), layout.T, layout.M, _forward_block(layout.M, n),
                _constants(spec, k, x.dtype), spec.kind, spec.hard)
        return out

    @staticmethod
    def backward(x: torch.Tensor, g: torch.Tensor, spec: NeuronSpec, k):
        return NumbaImpl._backward(x, g, spec, k, sum_time=False)

    @staticmethod
    def backward_summed(x: torch.Tensor, g: torch.Tensor, spec: NeuronSpec, k):
        """backward for an input repeated over T (x[t] the same tensor): (dL/dX summed over T, shaped x[0], dL/dk).
        The kernel sums in registers where it can (T = 4, ATan, no dL/dk), else the [T, ...] gradient is summed."""
        if x.shape[0] == 4 and spec.surrogate_id == 0 and not spec.learn_k:
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
            xf, xrs = _flat(layout.rows_of(x.detach()))
            gf, grs = _flat(layout.rows_of(g.detach().to(x.dtype)))
            with numba_threads.Threads(n):
                flags = (spec.kind, spec.hard, spec.detach_reset, spec.surrogate_id == 1, spec.learn_k)
                _kernel(_numba_kernels().backward_kernel(*flags, x.dtype == torch.float64))(
                    xf, xrs, gf, grs, _flat_out(gx_rows), layout.T, layout.M, B, _constants(spec, k, x.dtype),
                    *flags, partial, sum_time)
        gk = torch.tensor(partial.sum(), dtype=torch.float64) if spec.learn_k else None
        return gx, gk


__all__ = ["EagerImpl", "NumbaImpl", "numba_available", "charge", "after_reset"]
