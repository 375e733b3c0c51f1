"""TorchScript: a traced FSNN that loads with `torch.jit.load` alone (no dst, no Python source).

Tracing unrolls the loop over T (so T is fixed in the file; the batch size is not). The neurons' surrogate is an
autograd.Function, which tracing cannot serialise, so the traced copy spikes through a plain Heaviside with the same
forward, and runs the plain PyTorch neuron loop rather than a fused kernel.
"""
from __future__ import annotations

import copy
import io
import os
import warnings

import torch
from torch import nn

from dst.neuron import MultiStepNeuron
from dst.surrogate import Surrogate, heaviside


class _Heaviside(Surrogate):
    """Inference spike function: the same forward as every surrogate, without the autograd.Function (which tracing
    cannot serialise)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return heaviside(x)


def to_torchscript(model: nn.Module, example: torch.Tensor) -> torch.jit.ScriptModule:
    """Trace an eval copy of `model` on `example` (the loop over T unrolls: T is fixed, the batch size is not).
    Neurons run the plain PyTorch loop with a plain Heaviside, so the result loads with `torch.jit.load` alone."""
    model = copy.deepcopy(model).eval()
    for m in model.modules():
        if isinstance(m, MultiStepNeuron):
            m.surrogate = _Heaviside(m.surrogate.alpha)
            if hasattr(m, "backend"):
                m.backend = "torch"
    with torch.no_grad(), warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", category=FutureWarning)
        return torch.jit.trace(model, example, check_trace=False)


def save_torchscript(module: torch.jit.ScriptModule, path: str | os.PathLike) -> None:
    """Serialised in memory, then written by Python: torch.jit.save's own file writer, on a full disk, throws from
    its destructor while the first error unwinds, and the process aborts (SIGABRT, seen with `dst export` onto a
    full tmpfs) where a Python write raises OSError(ENOSPC) and the caller can clean up."""
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning)  # torch.jit is deprecated for torch.export
        torch.jit.save(module, buffer)
    with open(path, "wb") as f:
        f.write(buffer.getbuffer())


def load_torchscript(path: str | os.PathLike) -> torch.jit.ScriptModule:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        return torch.jit.load(str(path), map_location="cpu")
