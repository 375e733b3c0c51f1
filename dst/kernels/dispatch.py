"""Which implementation runs a fused kernel: the protocols every backend implements, the registry, and selection.

Two kinds of fused kernel exist, each behind a Protocol:
- `NeuronImpl`: a multi-step neuron, forward and backward through time (every backend has one);
- `SpikePoolImpl`: the ResNet stem's neuron fused with the max pool after it (numba and Triton).
A `Backend` names one implementation of each. "auto" picks, per tensor, the first backend in AUTO_ORDER for its
device type that supports the tensor: Triton on CUDA, numba on CPU, eager otherwise. "torch" is not a backend here:
it is the neurons' plain reference loop (dst/neuron.py), which also runs under tracing (`is_tracing`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Protocol

import torch

from dst.kernels import eager
from dst.kernels.numba import launch as numba_launch
from dst.kernels.numba import neuron as numba_neuron
from dst.kernels.numba import spike_pool as numba_spike_pool
from dst.kernels.spec import NeuronSpec
from dst.kernels.triton import neuron as triton_neuron
from dst.kernels.triton import spike_pool as triton_spike_pool


class NeuronImpl(Protocol):
    """A fused multi-step neuron. x: [T, ...] inputs; g: dL/dS [T, ...]; k: the decay (float, PLIF's 0-d tensor, or
    None for IF). Only x is kept between forward and backward: backward recomputes H."""

    name: str

    @staticmethod
    def supports(x: torch.Tensor, spec: NeuronSpec) -> bool: ...

    @staticmethod
    def forward(x: torch.Tensor, spec: NeuronSpec, k) -> torch.Tensor:
        """Spikes [T, ...], in x's memory order."""

    @staticmethod
    def backward(x: torch.Tensor, g: torch.Tensor, spec: NeuronSpec, k) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(dL/dX [T, ...], dL/dk as a float64 0-d tensor when spec.learn_k, else None)."""

    @staticmethod
    def backward_summed(x: torch.Tensor, g: torch.Tensor, spec: NeuronSpec, k
                        ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """backward for one input repeated over T (x[t] the same tensor): dL/dX summed over T, shaped x[0]."""


class SpikePoolImpl(Protocol):
    """The stem's neuron fused with a square max pool (kernel k, stride s, padding p) over T repeated steps of x
    [N, C, H, W]. `by_default`: whether "auto" runs it unasked (only once measured on its device)."""

    name: str
    by_default: bool

    @staticmethod
    def supports(x: torch.Tensor) -> bool: ...

    @staticmethod
    def forward(x, spec: NeuronSpec, decay, T: int, k: int, s: int, p: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(pooled spikes [T, N, C, OH, OW], the winning window position of each as int8)."""

    @staticmethod
    def backward(x, grad_out, sel, spec: NeuronSpec, decay, T: int, k: int, s: int, p: int) -> torch.Tensor:
        """dL/dx [N, C, H, W], summed over the T steps."""


@dataclass(frozen=True)
class Backend:
    name: str
    neuron: NeuronImpl
    spike_pool: SpikePoolImpl | None
    installed: Callable[[], bool]


REGISTRY: dict[str, Backend] = {
    "triton": Backend("triton", triton_neuron.TritonImpl, triton_spike_pool.TritonSpikePool,
                      triton_neuron.triton_available),
    "numba": Backend("numba", numba_neuron.NumbaImpl, numba_spike_pool.NumbaSpikePool, numba_launch.numba_available),
    "eager": Backend("eager", eager.EagerImpl, None, lambda: True),
}
# What "auto" tries, in order, by device type; any other device runs eager.
AUTO_ORDER = {"cuda": ("triton", "eager"), "cpu": ("numba", "eager")}
# What a neuron's `backend` may be: "auto", "torch" (the reference loop), or a registered backend.
BACKENDS = ("auto", "torch", *REGISTRY)


def auto_order(x: torch.Tensor) -> tuple[str, ...]:
    return AUTO_ORDER.get(x.device.type, ("eager",))


def select_impl(x: torch.Tensor, spec: NeuronSpec, backend: str = "auto") -> NeuronImpl:
    """The neuron implementation that runs `backend` on x; ValueError if it cannot."""
    if backend == "auto":
        for name in auto_order(x):
            impl = REGISTRY[name].neuron
            if impl.supports(x, spec):
                return impl
        raise ValueError(f"no fused kernel supports a {x.dtype} tensor on {x.device}")
    if backend not in REGISTRY:
        raise ValueError(f"unknown backend {backend!r}; choose one of {BACKENDS}")
    impl = REGISTRY[backend].neuron
    if not impl.supports(x, spec):
        installed = ", ".join(f"{b.name} installed: {b.installed()}" for b in REGISTRY.values() if b.name != "eager")
        raise ValueError(f"backend {backend!r} cannot run a {x.dtype} tensor on {x.device} with surrogate "
                         f"{spec.surrogate!r} ({installed})")
    return impl


def select_spike_pool(x: torch.Tensor, backend: str | None, fused: bool | None) -> SpikePoolImpl | None:
    """The fused stem implementation for a neuron's backend on x, where it applies and is wanted: fused=None runs
    one that is on by default, True also one that is not yet, False none."""
    if fused is False or backend is None:
        return None
    if backend == "auto":
        backend = auto_order(x)[0]
    entry = REGISTRY.get(backend)
    impl = entry.spike_pool if entry is not None else None
    if impl is None or (fused is None and not impl.by_default) or not impl.supports(x):
        return None
    return impl


def is_tracing() -> bool:
    """Whether torch.compile, torch.export, TorchScript tracing or scripting is running: they cannot look inside the
    fused kernels, so the neurons run their reference loop of plain torch ops."""
    compiler = torch.compiler
    return (compiler.is_compiling() or compiler.is_exporting() or torch.jit.is_tracing()
            or torch.jit.is_scripting())


def available() -> dict[str, bool]:
    """Which backends can run here (for benchmarks and bug reports)."""
    return {"triton": triton_neuron.triton_available() and torch.cuda.is_available(),
            "numba": numba_launch.numba_available(), "eager": True}
