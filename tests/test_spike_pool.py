"""The stem's fused neuron + max pool (dst/kernels/spike_pool.py) against the two modules run apart, with the neuron's
reference loop as the oracle: identical spikes, the same gradients, and the unfused path wherever it must run."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from dst.kernels.numba import threads as numba_threads
from dst.kernels.numba.launch import numba_available
from dst.layers import MultiStep
from dst.models import create_model
from neuron_cases import TOL, make_neuron
from spike_pool_cases import max_pool as _pool
from spike_pool_cases import run as _run
from spike_pool_cases import stem_input as _stem_input

pytestmark = pytest.mark.skipif(not numba_available(), reason="the fused stem kernel needs numba")


def _reference(neuron_name, pool, x, T, **kw):
    """The unfused modules, the neuron on its reference loop."""
    return _run(make_neuron(neuron_name, "torch", **kw), pool, x, T)


@pytest.mark.parametrize("neuron_name", ["if", "lif", "lif-nodecay"])
@pytest.mark.parametrize("T", [1, 3, 4, 6])
@pytest.mark.parametrize("geometry", [(3, 2, 1), (2, 2, 0), (3, 1, 1), (5, 2, 2), (3, 3, 0)])
def test_matches_unfused_modules(neuron_name, T, geometry):
    pool = _pool(*geometry)
    x = _stem_input((2, 5, 11, 9), torch.float32)
    y, gx, node = _run(make_neuron(neuron_name, "auto"), pool, x, T)
    y_ref, gx_ref, node_ref = _reference(neuron_name, pool, x, T)
    assert node == "FusedSpikeMaxPoolBackward" and node_ref != node
    assert y.stride() == y_ref.stride()             # channels-last per step, as the unfused pool gives
    assert torch.equal(y, y_ref)
    torch.testing.assert_close(gx, gx_ref, **TOL[torch.float32])


@pytest.mark.parametrize("kw", [dict(v_reset=None), dict(detach_reset=False), dict(v_reset=None, detach_reset=False),
                                dict(surrogate="sigmoid"), dict(v_threshold=0.5, v_reset=-0.2)],
                         ids=["soft", "no-detach", "soft-no-detach", "sigmoid", "threshold-reset"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16], ids=["f32", "f64", "bf16"])
def test_neuron_options_and_dtypes(kw, dtype):
    pool = _pool(3, 2, 1)
    x = _stem_input((3, 4, 8, 10), dtype, seed=2)
    y, gx, node = _run(make_neuron("lif", "auto", **kw), pool, x, 4)
    y_ref, gx_ref, _ = _reference("lif", pool, x, 4, **kw)
    assert node == "FusedSpikeMaxPoolBackward"
    assert y.dtype == dtype and torch.equal(y, y_ref)
    torch.testing.assert_close(gx, gx_ref, **TOL[dtype])


@pytest.mark.parametrize("scale", [0.0, -1.0, 100.0], ids=["silent", "negative", "saturated"])
def test_ties_send_the_gradient_where_the_pool_does(scale):
    """With no spikes (or all) every window is a tie: the gradient goes to the window's first position, as PyTorch's
    max pool sends it, not spread or dropped."""
    pool = _pool(3, 2, 1)
    x = _stem_input((2, 3, 9, 7), torch.float32) * 0 + scale
    x = x.contiguous(memory_format=torch.channels_last)
    y, gx, node = _run(make_neuron("if", "auto"), pool, x, 4)
    y_ref, gx_ref, _ = _reference("if", pool, x, 4)
    assert node == "FusedSpikeMaxPoolBackward"
    assert torch.equal(y, y_ref)
    torch.testing.assert_close(gx, gx_ref, **TOL[torch.float32])
    assert gx.abs().sum() > 0                       # the surrogate passes gradient even where nothing fired


@pytest.mark.parametrize("geometry", [(3, 2, 1), (2, 2, 0), (5, 2, 2)])
def test_bfloat16_matches_the_reference(geometry):
    """bfloat16 (autocast's stem): spikes bit-identical to the reference loop's (every forward intermediate rounded
    as eager PyTorch rounds it), the gradient summed in float32 and rounded once."""
    pool = _pool(*geometry)
    x = _stem_input((2, 6, 11, 9), torch.bfloat16, seed=4)
    y, gx, node = _run(make_neuron("lif", "auto"), pool, x, 4)
    y_ref, gx_ref, _ = _reference("lif", pool, x, 4)
    assert node == "FusedSpikeMaxPoolBackward" and y.dtype == gx.dtype == torch.bfloat16
    assert torch.equal(y, y_ref) and 0 < y.sum() < y.numel()
    torch.testing.assert_close(gx, gx_ref, **TOL[torch.bfloat16])


def test_stem_sized_input_on_several_threads():
    """The stem of fsnn_resnet18 at 64 px (work split over the pool's rows and the input's rows)."""
    pool = _pool(3, 2, 1)
    x = _stem_input((4, 64, 32, 32), torch.float32, seed=3)
    y, gx, node = _run(make_neuron("if", "auto"), pool, x, 4)
    y_ref, gx_ref, _ = _reference("if", pool, x, 4)
    assert node == "FusedSpikeMaxPoolBackward"
    assert torch.equal(y, y_ref)
    torch.testing.assert_close(gx, gx_ref, **TOL[torch.float32])


@pytest.mark.parametrize("case", ["nchw", "f16", "plif", "torch-backend", "ceil-mode", "avg-pool", "fused-false",
                                  "forward-hook", "pool-hook", "backward-hook", "global-hook"])
def test_falls_back_to_the_modules(case):
    """Where the kernel does not apply, or something watches the modules, the modules run (and their hooks fire)."""
    neuron = make_neuron("plif" if case == "plif" else "if", "torch" if case == "torch-backend" else "auto")
    pool = _pool(3, 2, 1)
    if case == "ceil-mode":
        pool = MultiStep(nn.MaxPool2d(3, 2, 1, ceil_mode=True))
    elif case == "avg-pool":
        pool = MultiStep(nn.AvgPool2d(3, 2, 1))
    x = _stem_input((2, 4, 8, 8), torch.float16 if case == "f16" else torch.float32)
    if case == "nchw":
        x = x.contiguous()
    seen = []
    handle = None
    if case == "forward-hook":
        handle = neuron.register_forward_hook(lambda m, i, o: seen.append(o))
    elif case == "pool-hook":
        handle = pool[0].register_forward_hook(lambda m, i, o: seen.append(o))
    elif case == "backward-hook":
        handle = neuron.register_full_backward_hook(lambda m, gi, go: seen.append(go))
    elif case == "global-hook":
        handle = nn.modules.module.register_module_forward_hook(lambda m, i, o: seen.append(o))
    try:
        y, _, node = _run(neuron, pool, x, 4, fused=False if case == "fused-false" else None)
    finally:
        if handle is not None:
            handle.remove()
    assert node != "FusedSpikeMaxPoolBackward"
    assert bool(seen) == case.endswith("hook")
    assert torch.equal(y, pool(make_neuron("plif" if case == "plif" else "if", "torch")(x, repeat=4)).detach())


def test_serial_build_matches(monkeypatch):
    """A process forked from a GNU-OpenMP parent runs the kernels' serial builds (dst/kernels/numba/threads.py)."""
    pool = _pool(3, 2, 1)
    x = _stem_input((2, 4, 9, 9), torch.float32)
    y, gx, _ = _run(make_neuron("if", "auto"), pool, x, 4)
    monkeypatch.setattr(numba_threads, "serial_only", lambda: True)
    y_serial, gx_serial, node = _run(make_neuron("if", "auto"), pool, x, 4)
    assert node == "FusedSpikeMaxPoolBackward"
    assert torch.equal(y_serial, y) and torch.equal(gx_serial, gx)


def test_model_stem_runs_fused_and_equals_the_watched_model():
    """fsnn_resnet18 (channels-last): its stem runs the fused kernel, and a hook on the stem's neuron or
    fused_stem=False (either makes it run unfused) changes neither the output nor the gradients beyond summation
    order."""
    torch.manual_seed(0)
    model = create_model("fsnn_resnet18", T=2, num_classes=10, aap=False)
    x = torch.randn(2, 3, 48, 48, generator=torch.Generator().manual_seed(0)) * 3

    def step(watch: bool, fused_stem=None):
        seen = {}
        model.fused_stem = fused_stem

        def record_node(module, args):
            seen["node"] = type(args[0].grad_fn).__name__

        handles = [model.blocks[0].register_forward_pre_hook(record_node)]
        if watch:
            handles.append(model.stem_neuron.register_forward_hook(lambda m, i, o: None))
        model.zero_grad(set_to_none=True)
        logits = model(x)                           # no AAP: the FSNN's logits
        logits.pow(2).sum().backward()
        for h in handles:
            h.remove()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        return logits.detach(), grads, seen["node"]

    z, grads, node = step(watch=False)
    for z_ref, grads_ref, node_ref in (step(watch=True), step(watch=False, fused_stem=False)):
        assert node == "FusedSpikeMaxPoolBackward" and node_ref != node
        torch.testing.assert_close(z, z_ref, rtol=1e-5, atol=1e-5)
        assert grads.keys() == grads_ref.keys() and "stem_conv.parametrizations.weight.original" in grads
        for name in grads:
            torch.testing.assert_close(grads[name], grads_ref[name], rtol=1e-4, atol=1e-5, msg=name)
