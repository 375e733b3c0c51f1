"""Surrogate gradients for the Heaviside spike function.

Forward is always heaviside(x) = 1[x >= 0] (SpikingJelly's convention, so spikes at exactly the threshold fire);
backward replaces the Dirac delta with the derivative of a smooth function. Formulas match SpikingJelly's
`surrogate.ATan` and `surrogate.Sigmoid` so training curves are comparable to the literature.
"""
from __future__ import annotations

import math

import torch
from torch import nn


def heaviside(x: torch.Tensor) -> torch.Tensor:
    return (x >= 0).to(x.dtype)


def atan_grad(x: torch.Tensor, alpha: float) -> torch.Tensor:
    """d/dx of (1/pi) * atan(pi/2 * alpha * x) + 1/2."""
    return (alpha / 2) / (1 + (math.pi / 2 * alpha * x).square())


def sigmoid_grad(x: torch.Tensor, alpha: float) -> torch.Tensor:
    """d/dx of sigmoid(alpha * x)."""
    sg = torch.sigmoid(alpha * x)
    return alpha * sg * (1 - sg)


class _SpikeFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, grad_fn_name: str, alpha: float) -> torch.Tensor:
        if x.requires_grad:
            ctx.save_for_backward(x)
        ctx.grad_fn_name, ctx.alpha = grad_fn_name, alpha
        return heaviside(x)

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        (x,) = ctx.saved_tensors
        return grad_out * SURROGATE_GRADS[ctx.grad_fn_name](x, ctx.alpha), None, None


SURROGATE_GRADS = {"atan": atan_grad, "sigmoid": sigmoid_grad}


class Surrogate(nn.Module):
    """heaviside forward, smooth gradient backward. `name` selects the gradient (see SURROGATE_GRADS)."""

    name = "atan"
    default_alpha = 2.0

    def __init__(self, alpha: float | None = None):
        super().__init__()
        self.alpha = float(self.default_alpha if alpha is None else alpha)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _SpikeFunction.apply(x, self.name, self.alpha)

    def grad(self, x: torch.Tensor) -> torch.Tensor:
        """The surrogate derivative itself (used by fused kernels that compute backward by hand)."""
        return SURROGATE_GRADS[self.name](x, self.alpha)

    def extra_repr(self) -> str:
        return f"alpha={self.alpha}"


class ATan(Surrogate):
    name, default_alpha = "atan", 2.0


class Sigmoid(Surrogate):
    name, default_alpha = "sigmoid", 4.0


SURROGATES = {"atan": ATan, "sigmoid": Sigmoid}


def create_surrogate(spec: str | Surrogate | None = "atan", alpha: float | None = None) -> Surrogate:
    if isinstance(spec, Surrogate):
        return spec
    name = (spec or "atan").lower()
    if name not in SURROGATES:
        raise ValueError(f"unknown surrogate {spec!r}; choose one of {sorted(SURROGATES)}")
    return SURROGATES[name](alpha)
