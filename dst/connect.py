"""Element-wise connect functions g(s, d) joining a block's spikes s with its shortcut d, and the junction of a SEW
block: its output g(s, d) and, with the AAP, the accumulation stream a + s.

On binary inputs IAND, AND, OR and XOR return binary outputs, so the network stays full-spike.
ADD (SEW ResNet's default) returns 0, 1 or 2: kept only as the non-full-spike baseline.
"""
from __future__ import annotations

from typing import Callable

import torch

from dst.kernels.dispatch import is_tracing

ConnectFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def iand(s: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
    return d * (1.0 - s)


def and_(s: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
    return s * d


def or_(s: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
    return s + d - s * d


def xor(s: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
    return d * (1.0 - s) + s * (1.0 - d)


def add(s: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
    return s + d


CONNECT_FUNCTIONS: dict[str, ConnectFn] = {"IAND": iand, "AND": and_, "OR": or_, "XOR": xor, "ADD": add}
SPIKE_ONLY = frozenset({"IAND", "AND", "OR", "XOR"})


def get_connect(name: str) -> ConnectFn:
    key = name.upper()
    if key not in CONNECT_FUNCTIONS:
        raise ValueError(f"unknown connect function {name!r}; choose one of {sorted(CONNECT_FUNCTIONS)}")
    return CONNECT_FUNCTIONS[key]


def join(connect: ConnectFn, s: torch.Tensor, d: torch.Tensor,
         a: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(connect(s, d), a + s): a SEW block's output and, when the accumulation stream a is given (the AAP, after its
    transition P), the stream past the block; (connect(s, d), None) without one.

    IAND, the FSNN's connect function, runs as one autograd node (`IANDJunction`) on spikes: the same values and
    gradients as the torch expressions, in fewer passes over memory. Other connect functions, and IAND under tracing
    (so that an exported TorchScript holds plain ops), run as the expressions.
    """
    if connect is iand and not is_tracing():
        if a is None:
            return IANDJunction.apply(s, d), None
        return IANDJunction.apply(s, d, a)
    return connect(s, d), (None if a is None else a + s)


class IANDJunction(torch.autograd.Function):
    """o = IAND(s, d) = d * (1 - s), and a_out = a + s when a is given, as one graph node.

    o is computed as d - d * s in one kernel (equal to d * (1 - s) where s is binary, as a neuron's spikes are).
    Backward writes dL/dd = g_o - g_o * s and dL/ds = g_a - g_o * d in one kernel each: the AAP's gradient g_a joins
    dL/ds inside that kernel instead of in a separate accumulation of s's two gradients, and passes on as dL/da.
    Autograd's graph of the expressions runs two kernels forward and four backward (with the accumulation) here.
    Saves s and d (the expression saves d and 1 - s)."""

    @staticmethod
    def forward(ctx, s, d, a=None):
        ctx.save_for_backward(s, d)
        o = torch.addcmul(d, d, s, value=-1.0)
        return o if a is None else (o, a + s)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g_o, g_a=None):
        s, d = ctx.saved_tensors
        need_s, need_d = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        gs = gd = None
        if need_s:
            gs = torch.addcmul(g_a if g_a is not None else g_o.new_zeros(()), g_o, d, value=-1.0)
        if need_d:
            gd = torch.addcmul(g_o, g_o, s, value=-1.0)
        return gs, gd, g_a
