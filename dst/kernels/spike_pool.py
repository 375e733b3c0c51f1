"""The stem's neuron and the max pool after it, fused: `pool(neuron(x, repeat=T))` in one kernel each way.

    o = spike_maxpool(model.stem_neuron, model.maxpool, bn_out, T)

Two implementations, picked by the neuron's backend ("auto": the device's own):
- numba (CPU): channels-last float32/float64/bfloat16 (dst/kernels/_numba_spike_pool.py); on by default;
- triton (CUDA, or CPU tensors under TRITON_INTERPRET=1 for tests): any layout, float32/float64/bfloat16/float16
  (dst/kernels/_triton_spike_pool.py). Tested through Triton's interpreter but not yet run on a GPU, so it runs only
  when asked for (fused=True; the ResNets' fused_stem=True) until benchmarks/gpu_check.sh has measured it there.
The same spikes (bit for bit) and gradients (up to summation order) as the two modules run one after the other,
which is what runs whenever a fused kernel does not apply: a backend or device without one (the reference loop,
eager, numba without numba installed, a CPU tensor that is not channels-last float32/float64/bfloat16), PLIF's learned
decay, a pool other than a plain square MaxPool2d, under tracing, and whenever anything watches either module (a
forward or backward hook on the neuron, the pool or their children, or a global one): firing-rate monitors, spike
checks and energy counts see the stem's spikes as they always did. See dst/kernels/_numba_spike_pool.py for what the
fusion saves.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn.modules import module as nn_module

from dst.kernels import cpu, numba_threads
from dst.kernels.memory import advise_huge_pages
from dst.kernels.spec import neuron_spec
from dst.kernels.triton_impl import TritonSpikePool


def _kernel(name: str, *config):
    """The fused kernel `name` ("forward" or "backward") for a neuron configuration (imported on first use: numba is
    optional), serial where a fork needs it."""
    from dst.kernels import _numba_spike_pool
    return cpu._kernel(getattr(_numba_spike_pool, f"{name}_kernel")(*config))


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


class NumbaSpikePool:
    """CPU: the numba kernels (dst/kernels/_numba_spike_pool.py) on channels-last float32/float64/bfloat16 tensors."""
    by_default = True   # measured: benchmarks/results/latest.md (ours-unfused-stem, ours-fused-stem)

    @staticmethod
    def supports(x: torch.Tensor) -> bool:
        return (x.device.type == "cpu" and x.dtype in (torch.float32, torch.float64, torch.bfloat16)
                and x.is_contiguous(memory_format=torch.channels_last) and cpu.numba_available())

    @staticmethod
    def forward(x, spec, decay, T, k, s, p):
        N, C, H, W = x.shape
        OH, OW = (H + 2 * p - k) // s + 1, (W + 2 * p - k) // s + 1
        xl = x.detach().permute(0, 2, 3, 1)                      # [N, H, W, C], contiguous (channels-last)
        out = advise_huge_pages(torch.empty((T, N, OH, OW, C), dtype=x.dtype))
        sel = torch.empty((T, N, OH, OW, C), dtype=torch.int8)
        if out.numel():
            n = numba_threads.threads(out.numel())
            with numba_threads.Threads(n):
                _kernel("forward", spec.kind, spec.hard, x.dtype == torch.float64)(
                    cpu.numpy_view(xl), cpu.numpy_view(out), sel.numpy(), T, k, s, p,
                    cpu._constants(spec, decay, x.dtype), spec.kind, spec.hard)
        return out.permute(0, 1, 4, 2, 3), sel

    @staticmethod
    def backward(x, grad_out, sel, spec, decay, T, k, s, p):
        g = grad_out.to(x.dtype).permute(0, 1, 3, 4, 2).contiguous()     # [T, N, OH, OW, C]
        gx = advise_huge_pages(torch.empty_like(x, memory_format=torch.channels_last))
        if gx.numel():
            n = numba_threads.threads(g.numel())
            with numba_threads.Threads(n):
                flags = (spec.kind, spec.hard, spec.detach_reset, spec.surrogate_id == 1)
                _kernel("backward", *flags, x.dtype == torch.float64)(
                    cpu.numpy_view(x.detach().permute(0, 2, 3, 1)), cpu.numpy_view(g), sel.numpy(),
                    cpu.numpy_view(gx.permute(0, 2, 3, 1)), T, k, s, p, cpu._constants(spec, decay, x.dtype), *flags)
        return gx


# The neuron's backend -> the fused implementation it runs ("auto": the device's own)
_IMPLS = {"numba": NumbaSpikePool, "triton": TritonSpikePool}


def _fusable(neuron: nn.Module, pool: nn.Module, x: torch.Tensor, fused: bool | None):
    """(the implementation, the neuron's spec, its decay k or None, the pool's (kernel, stride, padding)) where a
    fused kernel applies and is wanted (see spike_maxpool), else None."""
    from dst.neuron import MultiStepLIF, _tracing
    backend = getattr(neuron, "backend", None)
    if backend == "auto":
        backend = "triton" if x.is_cuda else "numba"
    impl = _IMPLS.get(backend)
    if impl is None or fused is False or (fused is None and not impl.by_default):
        return None
    if _tracing() or x.dim() != 4 or not impl.supports(x):
        return None
    spec = neuron_spec(neuron)
    geometry = _plain_max_pool(pool)
    if spec is None or spec.learn_k or geometry is None or _watched(neuron, pool):
        return None
    decay = neuron.decay(x) if isinstance(neuron, MultiStepLIF) else None
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


__all__ = ["spike_maxpool", "FusedSpikeMaxPool", "NumbaSpikePool", "TritonSpikePool"]
