"""The Triton kernel against the oracle (`MultiStepNeuron.multistep_reference`) on the same device.

Runs on a CUDA device (pytest -m gpu tests/test_kernels_triton.py on a GPU machine), or on CPU tensors through Triton's
interpreter: tests/test_kernels.py runs this file in a subprocess with TRITON_INTERPRET=1 and
DST_TRITON_TEST_DEVICE=cpu (the interpreter must be switched on before Triton is imported). Without either, it skips.
"""
from __future__ import annotations

import pytest
import torch

triton = pytest.importorskip("triton")

from dst import neuron as dn  # noqa: E402
from dst.kernels.dispatch import select_impl  # noqa: E402
import neuron_cases as cases  # noqa: E402
from neuron_cases import NEURONS, TOL, spikes_and_grads, triton_test_device  # noqa: E402

DEVICE = triton_test_device()
pytestmark = pytest.mark.gpu

INTERPRETER_BF16_ROUNDING = DEVICE == "cpu"

DTYPES = [torch.float32, torch.float64, torch.bfloat16, torch.float16]
DTYPE_IDS = ["f32", "f64", "bf16", "f16"]


def make_neuron(name, backend, **kw):
    return cases.make_neuron(name, backend, **kw).to(DEVICE)


def make_input(shape, dtype, seed=0):
    return cases.make_input(shape, dtype, seed).to(DEVICE)


def compare(name, x, **kw):
    neuron = make_neuron(name, "triton", **kw)
    if x.dtype == torch.float64:
        neuron = neuron.double()
    assert select_impl(x, neuron.kernel_spec(), "triton").name == "triton"
    g = torch.Generator().manual_seed(1)
    upstream = torch.randn(x.shape, generator=g, dtype=torch.float64).to(x.dtype).to(DEVICE)
    y, grads = spikes_and_grads(neuron, x, upstream)
    neuron.backend = "torch"
    y_ref, grads_ref = spikes_and_grads(neuron, x, upstream)
    assert y.dtype == x.dtype and y.shape == x.shape and y.device == x.device
    if INTERPRETER_BF16_ROUNDING and x.dtype == torch.bfloat16:
        # Triton's interpreter rounds float32 -> bfloat16 half-up instead of to nearest even (checked: ~1% of ties
        # differ), so the kernel's emulation of eager bf16 rounding can flip a spike at a tie there. On a GPU the
        # conversion is exact and so is this comparison.
        assert (y == y_ref).float().mean() >= 0.97
        for got, want in zip(grads, grads_ref):
            assert got.dtype == want.dtype and got.shape == want.shape and torch.isfinite(got.float()).all()
        return y, grads
    assert torch.equal(y, y_ref), f"{(y != y_ref).sum().item()} of {y.numel()} spikes differ"
    for got, want in zip(grads, grads_ref):
        assert got.dtype == want.dtype and got.shape == want.shape
        torch.testing.assert_close(got, want, **TOL[x.dtype])
    return y, grads


@pytest.mark.parametrize("name", list(NEURONS))
@pytest.mark.parametrize("v_reset", [0.0, None], ids=["hard", "soft"])
@pytest.mark.parametrize("detach_reset", [True, False], ids=["detach", "nodetach"])
@pytest.mark.parametrize("surrogate", ["atan", "sigmoid"])
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_matches_reference(name, v_reset, detach_reset, surrogate, dtype):
    y, grads = compare(name, make_input((5, 3, 37), dtype, seed=2), v_reset=v_reset, detach_reset=detach_reset,
                       surrogate=surrogate)
    assert 0 < y.sum() < y.numel() and grads[0].abs().sum() > 0


@pytest.mark.parametrize("name", list(NEURONS))
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["f32", "bf16"])
def test_one_step_long_sequences_and_constants(name, dtype):
    compare(name, make_input((1, 4, 9), dtype, seed=3))
    compare(name, make_input((24, 2, 30), dtype, seed=4), detach_reset=False)
    kw = dict(v_threshold=0.7, v_reset=-0.1, alpha=3.0, detach_reset=False)
    if name.startswith("lif"):
        kw["tau"] = 3.0
    elif name.startswith("plif"):
        kw["init_tau"] = 3.0
    compare(name, make_input((6, 4, 11), dtype, seed=5), **kw)


@pytest.mark.parametrize("name", ["if", "plif"])
def test_layouts_and_several_programs(name):
    T, N, C, H, W = 3, 2, 5, 12, 20      # 1200 elements per step: two programs, the second one ragged
    base = make_input((T * N, C, H, W), torch.float32, seed=6)
    x_cl = base.to(memory_format=torch.channels_last).unflatten(0, (T, N))
    y, _ = compare(name, x_cl)
    assert y.stride() == x_cl.stride()
    img = make_input((N, C, H, W), torch.float32, seed=7)
    compare(name, img.unsqueeze(0).expand(T, *img.shape))
    compare(name, make_input((N, T, C * H), torch.float32, seed=8).transpose(0, 1))


@pytest.mark.parametrize("name", ["if", "lif", "plif"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
def test_repeated_input(name, dtype):
    """neuron(x, repeat=T), the stem's one input at every step: same spikes as the reference on x expanded over T,
    dL/dx (summed over T) and dL/dw within tolerance, NCHW and channels-last."""
    T = 4
    neuron = make_neuron(name, "triton", detach_reset=False).to(dtype)
    for x in (make_input((2, 5, 4, 6), dtype, seed=11),
              make_input((2, 5, 4, 6), dtype, seed=12).to(memory_format=torch.channels_last)):
        upstream = make_input((T, *x.shape), dtype, seed=13) - 0.6
        params = [x.requires_grad_(True), *neuron.parameters()]
        neuron.backend = "triton"
        y = neuron(x, repeat=T)
        grads = torch.autograd.grad((y * upstream).sum(), params)
        neuron.backend = "torch"
        y_ref = neuron(x.unsqueeze(0).expand(T, *x.shape))
        grads_ref = torch.autograd.grad((y_ref * upstream).sum(), params)
        assert y.shape == (T, *x.shape) and torch.equal(y, y_ref) and 0 < y.sum() < y.numel()
        assert grads[0].shape == x.shape
        for got, want in zip(grads, grads_ref):
            torch.testing.assert_close(got, want, **TOL[dtype])


def test_whole_model_matches_reference_loop():
    """fsnn_resnet18 with the AAP, channels-last, stem neuron on a repeated input: the Triton neurons give the same
    logits (both streams) and the same parameter gradients as the reference loop, in every layout the model makes."""
    from dst.models import create_model
    from dst.models.channels_last import weight_parameter

    def run(backend):
        torch.manual_seed(0)
        model = create_model("fsnn_resnet18", T=2, num_classes=5, neuron_kwargs={"backend": backend}).to(DEVICE)
        x = make_input((2, 3, 32, 32), torch.float32, seed=14)
        out = model(x)
        (out.fsnn.square().sum() + out.dsnn.square().sum()).backward()
        convs = (model.stem_conv, model.blocks[0].residual[0][0], model.blocks[-1].residual[0][0])
        return out, [weight_parameter(conv).grad.clone() for conv in convs]

    out, grads = run("triton")
    ref, grads_ref = run("torch")
    assert torch.equal(out.fsnn, ref.fsnn)
    torch.testing.assert_close(out.dsnn, ref.dsnn, rtol=1e-5, atol=1e-5)
    for got, want in zip(grads, grads_ref):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


@pytest.mark.skipif(DEVICE != "cuda", reason="a size that only makes sense on a GPU")
@pytest.mark.parametrize("name", ["if", "lif", "plif"])
def test_large_on_gpu(name):
    compare(name, make_input((4, 32, 64, 32, 32), torch.float32, seed=9))
    compare(name, make_input((16, 8, 64, 16, 16), torch.bfloat16, seed=10), detach_reset=False)


@pytest.mark.skipif(DEVICE != "cuda", reason="auto selection on CUDA")
def test_auto_selects_triton_on_cuda():
    x = make_input((2, 3), torch.float32)
    assert select_impl(x, dn.MultiStepIF().kernel_spec()).name == "triton"
