"""Stateless layers on [T, N, ...] sequences.

Conv, BN, pooling and linear layers have no state across time, so they run once on the whole sequence with T folded
into the batch ([T, N, ...] -> [T*N, ...]), which is much faster than a loop over T. BatchNorm statistics are then
taken over T*N samples, as in SpikingJelly's SeqToANNContainer and the SEW/DST code.
"""
from __future__ import annotations

import torch
from torch import nn


class MultiStep(nn.Sequential):
    """Runs its (stateless) children on [T, N, ...] by folding T into the batch."""

    def forward(self, x_seq: torch.Tensor) -> torch.Tensor:
        t, n = x_seq.shape[:2]
        y = super().forward(x_seq.flatten(0, 1))
        return y.unflatten(0, (t, n))


def conv_bn(in_ch: int, out_ch: int, kernel: int, stride: int = 1, groups: int = 1) -> MultiStep:
    """Conv (no bias: BN follows) + BN over a [T, N, C, H, W] sequence."""
    return MultiStep(
        nn.Conv2d(in_ch, out_ch, kernel, stride=stride, padding=kernel // 2, groups=groups, bias=False),
        nn.BatchNorm2d(out_ch),
    )


def repeat_time(x: torch.Tensor, T: int) -> torch.Tensor:
    """[N, ...] -> [T, N, ...] without copying (the analog image is presented at every step)."""
    return x.unsqueeze(0).expand(T, *x.shape)


def mean_pool_time(x_seq: torch.Tensor) -> torch.Tensor:
    """[T, N, C, H, W] -> [N, C]: global average pool, then the mean over time (a firing rate for spikes)."""
    return x_seq.mean(dim=(0, 3, 4))
