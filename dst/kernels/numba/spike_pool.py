"""The fused stem (the stem's neuron and the max pool after it) on CPU through numba: channels-last float32,
float64 and bfloat16 tensors. The launch side of spike_pool_kernels.py, which says what the fusion saves."""
from __future__ import annotations

import torch

from dst.kernels.memory import advise_huge_pages
from dst.kernels.numba import launch
from dst.kernels.numba import threads as numba_threads
from dst.kernels.spec import SurrogateKind


def _kernel(name: str, *config):
    """The fused kernel `name` ("forward" or "backward") for a neuron configuration, serial where a fork needs it."""
    return launch.compiled(getattr(launch.kernels("spike_pool_kernels"), f"{name}_kernel")(*config))


class NumbaSpikePool:
    name = "numba"
    by_default = True   # measured: benchmarks/results/latest.md (ours-unfused-stem, ours-fused-stem)

    @staticmethod
    def supports(x: torch.Tensor) -> bool:
        return (x.device.type == "cpu" and x.dtype in (torch.float32, torch.float64, torch.bfloat16)
                and x.is_contiguous(memory_format=torch.channels_last) and launch.numba_available())

    @staticmethod
    def forward(x, spec, decay, T, k, s, p):
        N, C, H, W = x.shape
        OH, OW = (H + 2 * p - k) // s + 1, (W + 2 * p - k) // s + 1
        xl = x.detach().permute(0, 2, 3, 1)                      # [N, H, W, C], contiguous (channels-last)
        out = advise_huge_pages(torch.empty((T, N, OH, OW, C), dtype=x.dtype))
        sel = torch.empty((T, N, OH, OW, C), dtype=torch.int8)
        if out.numel():
            n = numba_threads.threads(out.numel())
            kind = int(spec.kind)
            with numba_threads.Threads(n):
                _kernel("forward", kind, spec.hard, x.dtype == torch.float64)(
                    launch.numpy_view(xl), launch.numpy_view(out), sel.numpy(), T, k, s, p,
                    launch.constants(spec, decay, x.dtype), kind, spec.hard)
        return out.permute(0, 1, 4, 2, 3), sel

    @staticmethod
    def backward(x, grad_out, sel, spec, decay, T, k, s, p):
        g = grad_out.to(x.dtype).permute(0, 1, 3, 4, 2).contiguous()     # [T, N, OH, OW, C]
        gx = advise_huge_pages(torch.empty_like(x, memory_format=torch.channels_last))
        if gx.numel():
            n = numba_threads.threads(g.numel())
            with numba_threads.Threads(n):
                flags = (int(spec.kind), spec.hard, spec.detach_reset, spec.surrogate_kind == SurrogateKind.SIGMOID)
                _kernel("backward", *flags, x.dtype == torch.float64)(
                    launch.numpy_view(x.detach().permute(0, 2, 3, 1)), launch.numpy_view(g), sel.numpy(),
                    launch.numpy_view(gx.permute(0, 2, 3, 1)), T, k, s, p, launch.constants(spec, decay, x.dtype),
                    *flags)
        return gx
