"""Fused multi-step neuron kernels: forward and backward through time in one pass each, saving only the input.

    from dst.kernels import multistep, neuron_spec
    spikes = multistep(x_seq, neuron_spec(neuron), k, backend="auto")

Implementations (all checked against `MultiStepNeuron.multistep_reference`, the oracle, in tests/test_kernels*.py):
- "triton": Triton kernels for CUDA tensors (float32, float64, bfloat16, float16).
- "numba":  compiled CPU loops for float32, float64 and bfloat16 (numba is optional; without it "auto" uses "eager").
- "eager":  the same algorithm with torch ops one step at a time (any device and float dtype, e.g. float16 on CPU).
"auto" picks triton on CUDA when Triton is installed, numba on CPU, and eager otherwise.
Large CPU outputs are backed by transparent huge pages where the system allows it (dst/kernels/memory.py).
The neurons choose with their `backend` argument ("auto" by default, "torch" for the reference loop).
dst.kernels.spike_pool fuses the ResNet stem's neuron with the max pool after it (numba on CPU; Triton on CUDA when
asked for, until it has been measured on a GPU; tests/test_spike_pool*.py).
"""
from __future__ import annotations

import torch

from dst.kernels.cpu import EagerImpl, NumbaImpl, numba_available
from dst.kernels.spec import NeuronSpec, neuron_spec
from dst.kernels.triton_impl import TritonImpl, triton_available
from dst.layers import repeat_time

IMPLS = {"triton": TritonImpl, "numba": NumbaImpl, "eager": EagerImpl}
BACKENDS = ("auto", "torch", *IMPLS)


def select_impl(x: torch.Tensor, spec: NeuronSpec, backend: str = "auto"):
    """The implementation that runs `backend` on x; ValueError if it cannot."""
    if backend == "auto":
        for impl in ((TritonImpl, EagerImpl) if x.is_cuda else (NumbaImpl, EagerImpl)):
            if impl.supports(x, spec):
                return impl
        raise ValueError(f"no fused kernel supports a {x.dtype} tensor on {x.device}")
    if backend not in IMPLS:
        raise ValueError(f"unknown backend {backend!r}; choose one of {BACKENDS}")
    impl = IMPLS[backend]
    if not impl.supports(x, spec):
        raise ValueError(f"backend {backend!r} cannot run a {x.dtype} tensor on {x.device} with surrogate "
                         f"{spec.surrogate!r} (numba installed: {numba_available()}, "
                         f"triton installed: {triton_available()})")
    return impl


class FusedMultiStep(torch.autograd.Function):
    """spikes = neuron(x) with a hand-written backward through time. Saves x (and k) only.

    repeat=T: x is one input [N, ...] presented at each of T steps (the stem's analog image); the gradient w.r.t. x
    is the sum over the steps, which the numba kernel computes in place of a [T, N, ...] gradient and its sum."""

    @staticmethod
    def forward(ctx, x, k_tensor, k_const, spec, impl, repeat):
        k = k_tensor if k_tensor is not None else k_const
        out = impl.forward(_repeated(x, repeat), spec, k)
        ctx.spec, ctx.impl, ctx.k_const, ctx.repeat = spec, impl, k_const, repeat
        ctx.save_for_backward(x, k_tensor)
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_spikes):
        x, k_tensor = ctx.saved_tensors
        k = k_tensor if k_tensor is not None else ctx.k_const
        if ctx.repeat is None:
            gx, gk = ctx.impl.backward(x, grad_spikes, ctx.spec, k)
        elif hasattr(ctx.impl, "backward_summed"):
            gx, gk = ctx.impl.backward_summed(_repeated(x, ctx.repeat), grad_spikes, ctx.spec, k)
        else:
            gx, gk = ctx.impl.backward(_repeated(x, ctx.repeat), grad_spikes, ctx.spec, k)
            gx = gx.sum(0)
        if k_tensor is not None and ctx.needs_input_grad[1] and gk is not None:
            gk = gk.to(dtype=k_tensor.dtype, device=k_tensor.device).reshape(k_tensor.shape)
        else:
            gk = None
        return (gx if ctx.needs_input_grad[0] else None), gk, None, None, None, None


def _repeated(x: torch.Tensor, repeat: int | None) -> torch.Tensor:
    return x if repeat is None else repeat_time(x, repeat)


def multistep(x_seq: torch.Tensor, spec: NeuronSpec, k=None, backend: str = "auto",
              repeat: int | None = None) -> torch.Tensor:
    """Spikes [T, ...] of the neuron `spec` driven by x_seq [T, ...], starting from rest.

    k: the decay 1/tau of LIF (a float) or PLIF (a 0-d tensor from sigmoid(w), whose gradient flows back); None for IF.
    repeat=T: x_seq is one input [...] presented at each of T steps (same spikes as x_seq expanded over T).
    """
    impl = select_impl(_repeated(x_seq, repeat), spec, backend)
    if isinstance(k, torch.Tensor):
        return FusedMultiStep.apply(x_seq, k, None, spec, impl, repeat)
    return FusedMultiStep.apply(x_seq, None, None if k is None else float(k), spec, impl, repeat)


def available() -> dict[str, bool]:
    """Which implementations can run here (for benchmarks and bug reports)."""
    return {"triton": triton_available() and torch.cuda.is_available(), "numba": numba_available(), "eager": True}


__all__ = ["multistep", "neuron_spec", "NeuronSpec", "select_impl", "available", "BACKENDS", "IMPLS",
           "FusedMultiStep"]
