"""Fused kernels of the multi-step neurons: forward and backward through time in one pass each, saving only the input.

    from dst.kernels import multistep, spike_maxpool
    spikes = multistep(x_seq, neuron.kernel_spec(), k, backend="auto")
    pooled = spike_maxpool(model.stem_neuron, model.maxpool, bn_out, T)      # the stem's neuron + max pool, fused

The package, by concept:
- spec.py        what a kernel knows of a neuron (NeuronSpec, Charge, SurrogateKind) and the constants it reads
                 (KernelConstants, rendered in each backend's slot layout). A neuron gives its own spec
                 (`MultiStepNeuron.kernel_spec()`); nothing here imports dst.neuron.
- dispatch.py    the protocols a backend implements (NeuronImpl, SpikePoolImpl), the registry of backends, the
                 choice of one per tensor ("auto"), and is_tracing.
- autograd.py    the autograd Functions that call an implementation's forward and hand-written backward.
- eager.py       the algorithm in torch ops, one step at a time: any device and float dtype.
- numba/         the CPU backend (float32, float64, bfloat16): neuron and fused-stem kernels, their launchers,
                 numba's thread pool.
- triton/        the CUDA backend (float32, float64, bfloat16, float16): neuron and fused-stem kernels and their
                 launchers; tested on CPU through Triton's interpreter.
- spike_pool.py  when the stem's neuron and max pool run fused, and when they run as the two modules.
- layout.py, memory.py   a [T, ...] tensor as T dense rows without copying; huge pages for large CPU outputs.
Every implementation is checked against `MultiStepNeuron.multistep_reference`, the oracle (tests/test_kernels*.py,
tests/test_spike_pool*.py): spikes bit-identical, gradients within float tolerance.
"auto" picks triton on CUDA when Triton is installed, numba on CPU, and eager otherwise.
"""
from __future__ import annotations

import torch

from dst.kernels.autograd import FusedMultiStep, repeated
from dst.kernels.dispatch import BACKENDS, available, select_impl
from dst.kernels.spec import NeuronSpec
from dst.kernels.spike_pool import spike_maxpool


def multistep(x_seq: torch.Tensor, spec: NeuronSpec, k=None, backend: str = "auto",
              repeat: int | None = None) -> torch.Tensor:
    """Spikes [T, ...] of the neuron `spec` driven by x_seq [T, ...], starting from rest.

    k: the decay 1/tau of LIF (a float) or PLIF (a 0-d tensor from sigmoid(w), whose gradient flows back); None for IF.
    repeat=T: x_seq is one input [...] presented at each of T steps (same spikes as x_seq expanded over T).
    """
    impl = select_impl(repeated(x_seq, repeat), spec, backend)
    if isinstance(k, torch.Tensor):
        return FusedMultiStep.apply(x_seq, k, None, spec, impl, repeat)
    return FusedMultiStep.apply(x_seq, None, None if k is None else float(k), spec, impl, repeat)


__all__ = ["multistep", "spike_maxpool", "available", "BACKENDS"]
