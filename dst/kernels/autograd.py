"""The autograd Functions around the fused kernels: each saves its input (and little else) and calls the chosen
implementation's hand-written backward (dispatch.NeuronImpl, dispatch.SpikePoolImpl)."""
from __future__ import annotations

import torch

from dst.layers import repeat_time


def repeated(x: torch.Tensor, repeat: int | None) -> torch.Tensor:
    """x itself, or x [N, ...] presented at each of `repeat` steps as [T, N, ...] (a view, no copy)."""
    return x if repeat is None else repeat_time(x, repeat)


class FusedMultiStep(torch.autograd.Function):
    """spikes = neuron(x) with a hand-written backward through time. Saves x (and k) only.

    repeat=T: x is one input [N, ...] presented at each of T steps (the stem's analog image); the gradient w.r.t. x
    is the sum over the steps (NeuronImpl.backward_summed)."""

    @staticmethod
    def forward(ctx, x, k_tensor, k_const, spec, impl, repeat):
        k = k_tensor if k_tensor is not None else k_const
        out = impl.forward(repeated(x, repeat), spec, k)
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
        else:
            gx, gk = ctx.impl.backward_summed(repeated(x, ctx.repeat), grad_spikes, ctx.spec, k)
        if k_tensor is not None and ctx.needs_input_grad[1] and gk is not None:
            gk = gk.to(dtype=k_tensor.dtype, device=k_tensor.device).reshape(k_tensor.shape)
        else:
            gk = None
        return (gx if ctx.needs_input_grad[0] else None), gk, None, None, None, None


class FusedSpikeMaxPool(torch.autograd.Function):
    """Pooled spikes of a neuron driven by the same x at each of T steps; saves x and one byte per output (the winning
    window position)."""

    @staticmethod
    def forward(ctx, x, impl, spec, decay, T, k, s, p):
        out, sel = impl.forward(x, spec, decay, T, k, s, p)
        ctx.impl, ctx.spec, ctx.decay, ctx.geometry = impl, spec, decay, (T, k, s, p)
        ctx.save_for_backward(x, sel)
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out):
        x, sel = ctx.saved_tensors
        gx = ctx.impl.backward(x, grad_out, sel, ctx.spec, ctx.decay, *ctx.geometry) if ctx.needs_input_grad[0] \
            else None
        return gx, None, None, None, None, None, None, None
