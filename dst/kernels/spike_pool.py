"""The stem's neuron and the max pool after it, fused: `pool(neuron(x, repeat=T))` in one kernel each way.

    o = spike_maxpool(model.stem_neuron, model.maxpool, bn_out, T)

Two implementations, picked by the neuron's backend ("auto": the device's own):
- numba (CPU): channels-last float32/float64/bfloat16 (dst/kernels/numba/spike_pool.py); on by default;
- triton (CUDA, or CPU tensors under TRITON_INTERPRET=1 for tests): any layout, float32/float64/bfloat16/float16
  (dst/kernels/triton/spike_pool.py). Tested through Triton's interpreter but not yet run on a GPU, so it runs only
  when asked for (fused=True; the ResNets' fused_stem=True) until benchmarks/gpu_check.sh has measured it there.
The same spikes (bit for bit) and gradients (up to summation order) as the two modules run one after the other,
which is what runs whenever a fused kernel does not apply: a backend or device without one (the reference loop,
eager, numba without numba installed, a CPU tensor that is not channels-last float32/float64/bfloat16), PLIF's learned
decay, a pool other than a plain square MaxPool2d, under tracing, and whenever anything watches either module (a
forward or backward hook on the neuron, the pool or their children, or a global one): firing-rate monitors, spike
checks and energy counts see the stem's spikes as they always did. See dst/kernels/numba/spike_pool_kernels.py for what
the fusion saves.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn.modules import module as nn_module

from dst.kernels.autograd import FusedSpikeMaxPool
from dst.kernels.dispatch import SpikePoolImpl, is_tracing, select_spike_pool
from dst.kernels.spec import NeuronSpec


def _square(value) -> int | None:
    if isinstance(value, int):
        return value
    if isinstance(value, (tuple, list)) and len(value) == 2 and value[0] == value[1]:
        return int(value[0])
    return None


def _plain_max_pool(pool: nn.Module) -> tuple[int, int, int] | None:
    """(kernel, stride, padding) of a square nn.MaxPool2d (dilation 1, floor mode, no indices), else None."""
    if isinstance(pool, nn.Sequential) and len(pool) == 1:
        pool = pool[0]
    if type(pool) is not nn.MaxPool2d or pool.return_indices or pool.ceil_mode or _square(pool.dilation) != 1:
        return None
    k, s, p = _square(pool.kernel_size), _square(pool.stride if pool.stride is not None else pool.kernel_size), \
        _square(pool.padding)
    if k is None or s is None or p is None or k * k > 127:   # the winning window position is kept as an int8
        return None
    return k, s, p


def _watched(*modules: nn.Module) -> bool:
    """Whether a hook (forward or backward, on the modules, their children, or global) would see them run."""
    if (nn_module._global_forward_hooks or nn_module._global_forward_pre_hooks or nn_module._global_backward_hooks
            or nn_module._global_backward_pre_hooks):
        return True
    return any(m._forward_hooks or m._forward_pre_hooks or m._backward_hooks or m._backward_pre_hooks
               for mod in modules for m in mod.modules())


def _fusable(neuron: nn.Module, pool: nn.Module, x: torch.Tensor, fused: bool | None
             ) -> tuple[SpikePoolImpl, NeuronSpec, float | None, tuple[int, int, int]] | None:
    """(the implementation, the neuron's spec, its decay k or None, the pool's (kernel, stride, padding)) where a
    fused kernel applies and is wanted (see spike_maxpool), else None."""
    if is_tracing() or x.dim() != 4:
        return None
    impl = select_spike_pool(x, getattr(neuron, "backend", None), fused)
    if impl is None:
        return None
    spec = neuron.kernel_spec() if hasattr(neuron, "kernel_spec") else None
    geometry = _plain_max_pool(pool)
    if spec is None or spec.learn_k or geometry is None or _watched(neuron, pool):
        return None
    decay = neuron.decay(x)
    if decay is not None and not isinstance(decay, float):
        return None
    k, s, p = geometry
    if x.shape[2] + 2 * p < k or x.shape[3] + 2 * p < k or 2 * p > k:
        return None   # the pool's own error message says what is wrong
    return impl, spec, decay, geometry


def spike_maxpool(neuron: nn.Module, pool: nn.Module, x: torch.Tensor, T: int,
                  fused: bool | None = None) -> torch.Tensor:
    """pool(neuron(x, repeat=T)) for x [N, C, H, W] presented at each of T steps: pooled spikes [T, N, C, OH, OW].

    fused: None runs the fused kernel where it is on by default (an implementation's by_default: numba, on CPU),
    True also where it is not yet (Triton), False never; wherever the kernel cannot run, the modules do."""
    fusable = _fusable(neuron, pool, x, fused)
    if fusable is None or T < 1:
        return pool(neuron(x, repeat=T))
    impl, spec, decay, (k, s, p) = fusable
    return FusedSpikeMaxPool.apply(x, impl, spec, decay, T, k, s, p)


__all__ = ["spike_maxpool"]
