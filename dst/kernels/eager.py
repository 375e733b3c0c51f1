"""The fused multi-step neuron in plain torch ops, one time step at a time: any device and float dtype (float16 on
CPU, CUDA without Triton, a machine without numba).

The same algorithm as the compiled backends: no autograd graph per step, only X kept for backward, and H[t]
recomputed in backward (H is cheap to recompute, while storing it would cost a [T, ...] tensor per neuron). `charge`
and `after_reset` restate dst/neuron.py's equations with the same operations in the same order, so spikes are
bit-identical to the reference loop.
"""
from __future__ import annotations

import torch

from dst.kernels.spec import Charge, NeuronSpec
from dst.surrogate import SURROGATE_GRADS, heaviside


def charge(spec: NeuronSpec, v: torch.Tensor, x: torch.Tensor, k) -> torch.Tensor:
    """dst.neuron's charge for spec.kind, same operations in the same order (bit-identical results)."""
    if spec.kind == Charge.IF:
        return v + x
    if spec.kind == Charge.LIF:
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
                dk = x[t] - (vprev - spec.rest) if spec.kind == Charge.LIF else -(vprev - spec.rest)
                gk += (gh * dk).sum(dtype=torch.float64)
            if spec.kind == Charge.IF:
                gx[t] = gh
                gv = gh
            else:
                gx[t] = gh * k if spec.kind == Charge.LIF else gh
                gv = gh * (1.0 - k)
        return gx, gk

    @staticmethod
    def backward_summed(x: torch.Tensor, g: torch.Tensor, spec: NeuronSpec, k):
        """backward, then the sum over T (no kernel of its own for a repeated input)."""
        gx, gk = EagerImpl.backward(x, g, spec, k)
        return gx.sum(0), gk
