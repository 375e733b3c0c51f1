"""Neuron test cases shared by the kernel tests of every backend (tests/test_kernels.py: numba and eager on CPU;
tests/test_kernels_triton.py: Triton on a GPU or interpreted). Not collected: no test_ prefix."""
from __future__ import annotations

import os

import pytest
import torch

from dst import neuron as dn

# (neuron class, constructor kwargs): every charge equation the kernels know
NEURONS = {
    "if": (dn.MultiStepIF, {}),
    "lif": (dn.MultiStepLIF, {}),
    "lif-nodecay": (dn.MultiStepLIF, {"decay_input": False}),
    "plif": (dn.MultiStepPLIF, {}),
    "plif-nodecay": (dn.MultiStepPLIF, {"decay_input": False}),
}
# Gradient tolerance against the reference. bf16/fp16: the reference rounds every backward operation to the tensor
# dtype, the kernels compute backward in float32.
TOL = {torch.float32: dict(rtol=1e-5, atol=1e-6), torch.float64: dict(rtol=1e-10, atol=1e-12),
       torch.bfloat16: dict(rtol=5e-2, atol=5e-2), torch.float16: dict(rtol=1e-2, atol=1e-2)}


def triton_test_device() -> str:
    """Where a Triton test module runs: "cuda" on a GPU, or "cpu" through Triton's interpreter (TRITON_INTERPRET=1
    with DST_TRITON_TEST_DEVICE=cpu, as tests/test_kernels.py runs the modules); anywhere else the module is skipped.
    Call it at module level."""
    from dst.kernels.triton.launch import interpreting
    device = os.environ.get("DST_TRITON_TEST_DEVICE") or ("cuda" if torch.cuda.is_available() else "")
    if device == "cpu" and not interpreting():
        device = ""
    if not device:
        pytest.skip("needs a CUDA device, or TRITON_INTERPRET=1 with DST_TRITON_TEST_DEVICE=cpu (tests/test_kernels.py "
                    "runs it so)", allow_module_level=True)
    return device


def make_neuron(name, backend, **kw):
    cls, base = NEURONS[name]
    n = cls(backend=backend, **{**base, **kw})
    if isinstance(n, dn.MultiStepPLIF):  # a trained-looking w, so that k = sigmoid(w) is not exactly 0.5
        with torch.no_grad():
            n.w.fill_(-0.3)
    return n


def make_input(shape, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    # mean 0.6, std 0.8: neurons fire often but not always, and V goes negative sometimes (exercises the leak term)
    return (torch.randn(*shape, generator=g, dtype=torch.float64) * 0.8 + 0.6).to(dtype)


def spikes_and_grads(neuron, x, upstream):
    """(spikes, gradients of sum(spikes * upstream) w.r.t. x and the neuron's parameters)."""
    x = x.detach().clone().requires_grad_(True)
    y = neuron(x)
    grads = torch.autograd.grad((y * upstream).sum(), [x, *neuron.parameters()])
    return y.detach(), grads
