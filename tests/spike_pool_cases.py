"""Helpers shared by the fused stem's tests on every backend (tests/test_spike_pool.py: numba on CPU;
tests/test_spike_pool_triton.py: Triton on a GPU or interpreted). Not collected: no test_ prefix."""
from __future__ import annotations

import torch
from torch import nn

from dst.kernels import spike_pool
from dst.layers import MultiStep
from neuron_cases import make_input


def stem_input(shape, dtype, seed=0, scale=1.0, device="cpu", channels_last=True):
    x = (make_input(shape, dtype, seed) * scale).to(device)
    return x.contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)


def max_pool(k, s, p):
    return MultiStep(nn.MaxPool2d(k, stride=s, padding=p))


def run(neuron, pool, x, T, upstream_seed=1, fused=None):
    """(pooled spikes, dL/dx, the graph node that made the spikes) of spike_maxpool(..., fused), for L = sum(spikes *
    a fixed random upstream)."""
    return _run(lambda xx: spike_pool.spike_maxpool(neuron, pool, xx, T, fused), x, upstream_seed)


def run_unfused(neuron, pool, x, T, upstream_seed=1):
    """The same through the two modules one after the other (what spike_maxpool falls back to)."""
    return _run(lambda xx: pool(neuron(xx, repeat=T)), x, upstream_seed)


def _run(fn, x, upstream_seed):
    x = x.detach().clone().requires_grad_(True)
    y = fn(x)
    g = torch.randn(y.shape, generator=torch.Generator().manual_seed(upstream_seed), dtype=torch.float64)
    (gx,) = torch.autograd.grad((y * g.to(y.dtype).to(y.device)).sum(), [x])
    return y.detach(), gx, type(y.grad_fn).__name__
