"""The fused stem's Triton kernels (dst/kernels/triton/spike_pool_kernels.py) against the two modules run apart on the same
device, and against the neuron's reference loop.

Runs on a CUDA device (pytest -m gpu tests/test_spike_pool_triton.py on a GPU machine), or on CPU tensors through
Triton's interpreter: tests/test_kernels.py runs this file in a subprocess with TRITON_INTERPRET=1 and
DST_TRITON_TEST_DEVICE=cpu. Without either, it skips.
"""
from __future__ import annotations

import pytest
import torch
from torch import nn

triton = pytest.importorskip("triton")

from dst.layers import MultiStep  # noqa: E402
from neuron_cases import TOL, make_neuron, triton_test_device  # noqa: E402
from spike_pool_cases import max_pool, run, run_unfused, stem_input  # noqa: E402

DEVICE = triton_test_device()
pytestmark = pytest.mark.gpu

FUSED = "FusedSpikeMaxPoolBackward"
LAYOUTS = [True, False]
LAYOUT_IDS = ["channels-last", "nchw"]


def _neuron(name, backend="triton", dtype=torch.float32, **kw):
    return make_neuron(name, backend, **kw).to(device=DEVICE, dtype=dtype)


def _input(shape, dtype=torch.float32, seed=0, scale=1.0, channels_last=True):
    return stem_input(shape, dtype, seed, scale, DEVICE, channels_last)


def _check(name, pool, x, T, reference_loop=True, **kw):
    """Fused = the unfused modules on the Triton neuron, bit for bit in the spikes; for float32/float64 also = the
    reference loop. Gradients within the dtype's tolerance. Returns the fused spikes and dL/dx."""
    y, gx, node = run(_neuron(name, dtype=x.dtype, **kw), pool, x, T, fused=True)
    assert node == FUSED
    y_unfused, gx_unfused, node_unfused = run_unfused(_neuron(name, dtype=x.dtype, **kw), pool, x, T)
    assert node_unfused != FUSED
    assert y.dtype == x.dtype and y.shape == y_unfused.shape and y.stride() == y_unfused.stride()
    assert torch.equal(y, y_unfused), f"{(y != y_unfused).sum().item()} of {y.numel()} pooled spikes differ"
    assert gx.dtype == x.dtype and gx.stride() == x.stride()
    torch.testing.assert_close(gx, gx_unfused, **TOL[x.dtype])
    if reference_loop:
        y_ref, gx_ref, _ = run_unfused(_neuron(name, "torch", dtype=x.dtype, **kw), pool, x, T)
        assert torch.equal(y, y_ref)
        torch.testing.assert_close(gx, gx_ref, **TOL[x.dtype])
    return y, gx


@pytest.mark.parametrize("name", ["if", "lif", "lif-nodecay"])
@pytest.mark.parametrize("T", [1, 4])
@pytest.mark.parametrize("geometry", [(3, 2, 1), (2, 2, 0), (3, 1, 1), (5, 2, 2), (3, 3, 0)])
@pytest.mark.parametrize("channels_last", LAYOUTS, ids=LAYOUT_IDS)
def test_matches_unfused_modules(name, T, geometry, channels_last):
    y, gx = _check(name, max_pool(*geometry), _input((2, 5, 11, 9), channels_last=channels_last), T)
    assert 0 < y.sum() < y.numel() and gx.abs().sum() > 0


@pytest.mark.parametrize("kw", [dict(v_reset=None), dict(detach_reset=False), dict(v_reset=None, detach_reset=False),
                                dict(surrogate="sigmoid"), dict(v_threshold=0.5, v_reset=-0.2)],
                         ids=["soft", "no-detach", "soft-no-detach", "sigmoid", "threshold-reset"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16, torch.float16],
                         ids=["f32", "f64", "bf16", "f16"])
def test_neuron_options_and_dtypes(kw, dtype):
    # bf16/fp16 against the unfused Triton modules only: the reference loop's spikes at low precision are the Triton
    # neuron's business (tests/test_kernels_triton.py), and the interpreter rounds bf16 its own way.
    _check("lif", max_pool(3, 2, 1), _input((3, 4, 8, 10), dtype, seed=2), 4,
           reference_loop=dtype in (torch.float32, torch.float64), **kw)


@pytest.mark.parametrize("scale", [0.0, -1.0, 100.0], ids=["silent", "negative", "saturated"])
def test_ties_send_the_gradient_where_the_pool_does(scale):
    """Every window a tie: the gradient goes to each window's first position, as PyTorch's max pool sends it."""
    x = _input((2, 3, 9, 7)) * 0 + scale
    _, gx = _check("if", max_pool(3, 2, 1), x.contiguous(memory_format=torch.channels_last), 4)
    assert gx.abs().sum() > 0


@pytest.mark.parametrize("case", ["plif", "eager-backend", "ceil-mode", "forward-hook"])
def test_falls_back_to_the_modules(case):
    neuron = _neuron("plif" if case == "plif" else "if", "eager" if case == "eager-backend" else "triton")
    pool = MultiStep(nn.MaxPool2d(3, 2, 1, ceil_mode=True)) if case == "ceil-mode" else max_pool(3, 2, 1)
    seen = []
    handle = neuron.register_forward_hook(lambda m, i, o: seen.append(o)) if case == "forward-hook" else None
    x = _input((2, 4, 8, 8))
    try:
        y, _, node = run(neuron, pool, x, 4, fused=True)
    finally:
        if handle is not None:
            handle.remove()
    assert node != FUSED and bool(seen) == (case == "forward-hook")
    assert torch.equal(y, run_unfused(neuron, pool, x, 4)[0])


def test_model_stem_runs_fused():
    """fsnn_resnet18 on Triton neurons: its stem (neuron + pool) runs the fused kernel and gives what the modules give
    (the whole model against the reference loop: tests/test_kernels_triton.py)."""
    from dst.models import create_model
    model = create_model("fsnn_resnet18", T=2, num_classes=5, neuron_kwargs={"backend": "triton"}).to(DEVICE)
    x = model.stem_bn(model.stem_conv(_input((2, 3, 32, 32), seed=4).contiguous(memory_format=torch.channels_last)))
    y, _, node = run(model.stem_neuron, model.maxpool, x, 2, fused=True)
    assert node == FUSED and torch.equal(y, run_unfused(model.stem_neuron, model.maxpool, x, 2)[0])


@pytest.mark.parametrize("fused", [None, False])
def test_not_fused_unless_asked(fused):
    """Not yet run on a GPU, the Triton kernels are not the default: fused=None (and False) runs the modules."""
    x = _input((2, 4, 8, 8))
    y, _, node = run(_neuron("if"), max_pool(3, 2, 1), x, 4, fused=fused)
    assert node != FUSED
    assert torch.equal(y, run(_neuron("if"), max_pool(3, 2, 1), x, 4, fused=True)[0])


@pytest.mark.skipif(DEVICE != "cuda", reason="a size that only makes sense on a GPU")
@pytest.mark.parametrize("channels_last", LAYOUTS, ids=LAYOUT_IDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["f32", "bf16"])
def test_stem_sized_on_gpu(channels_last, dtype):
    """fsnn_resnet18's stem at 224 px: batch 8, 64 channels, 112 x 112 into the pool."""
    _check("if", max_pool(3, 2, 1), _input((8, 64, 112, 112), dtype, seed=5, channels_last=channels_last), 4,
           reference_loop=dtype == torch.float32)
