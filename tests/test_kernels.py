"""Fused multi-step neuron kernels (dst/kernels) against the oracle, `MultiStepNeuron.multistep_reference`.

Spikes must be bit-identical; gradients w.r.t. the input (and PLIF's w) equal within float tolerance. The CPU kernels
(numba, eager) run here; the Triton kernel runs on CPU under TRITON_INTERPRET=1 in a subprocess (test at the end) and
on a GPU through tests/test_kernels_triton.py (pytest -m gpu).
"""
from __future__ import annotations

import mmap
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from dst import kernels
from dst import neuron as dn
from dst.kernels import dispatch, eager
from dst.kernels.layout import rows_layout
from dst.kernels.numba import launch as numba_launch
from dst.kernels.numba import neuron as numba_neuron
from dst.kernels.numba import threads as numba_threads
from dst.kernels.spec import Charge
from neuron_cases import NEURONS, TOL, make_input, make_neuron, spikes_and_grads

REPO = Path(__file__).resolve().parents[1]

CPU_IMPLS = ["eager"] + (["numba"] if kernels.available()["numba"] else [])
needs_numba = pytest.mark.skipif(not kernels.available()["numba"], reason="numba is not installed")


def compare(name, backend, x, dtype=None, **kw):
    """Run `backend` and the reference on the same neuron and input; assert identical spikes, close gradients."""
    dtype = dtype or x.dtype
    neuron = make_neuron(name, backend, **kw).to(dtype if dtype != torch.bfloat16 else torch.float32)
    g = torch.Generator().manual_seed(1)
    upstream = torch.randn(x.shape, generator=g, dtype=torch.float64).to(dtype)
    y, grads = spikes_and_grads(neuron, x, upstream)
    neuron.backend = "torch"
    y_ref, grads_ref = spikes_and_grads(neuron, x, upstream)
    assert y.dtype == dtype and y.shape == x.shape
    assert torch.equal(y, y_ref), f"{(y != y_ref).sum().item()} of {y.numel()} spikes differ"
    for got, want in zip(grads, grads_ref):
        assert got.dtype == want.dtype and got.shape == want.shape
        torch.testing.assert_close(got, want, **TOL[dtype])
    return y, grads


# ----------------------------------------------------------------------------------------------------------------------
# Equivalence with the oracle
# ----------------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("impl", CPU_IMPLS)
@pytest.mark.parametrize("name", list(NEURONS))
@pytest.mark.parametrize("v_reset", [0.0, None], ids=["hard", "soft"])
@pytest.mark.parametrize("detach_reset", [True, False], ids=["detach", "nodetach"])
@pytest.mark.parametrize("surrogate", ["atan", "sigmoid"])
@pytest.mark.parametrize("T", [1, 4, 6])  # the kernels take steps four at a time, then one by one
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
def test_matches_reference(impl, name, v_reset, detach_reset, surrogate, T, dtype):
    x = make_input((T, 3, 37), dtype, seed=T)
    y, grads = compare(name, impl, x, v_reset=v_reset, detach_reset=detach_reset, surrogate=surrogate)
    assert 0 < y.sum() < y.numel()
    assert grads[0].abs().sum() > 0


@pytest.mark.parametrize("impl", CPU_IMPLS)
@pytest.mark.parametrize("name", list(NEURONS))
@pytest.mark.parametrize("T", [16, 32])
def test_long_sequences(impl, name, T):
    compare(name, impl, make_input((T, 2, 50), torch.float32, seed=3), detach_reset=False)


@pytest.mark.parametrize("impl", CPU_IMPLS)
@pytest.mark.parametrize("name", list(NEURONS))
def test_several_blocks(impl, name, monkeypatch):
    """More elements per step than one kernel block, and a ragged last block, for T = 4 too. The real blocks are
    large (see dst/kernels/numba/neuron.py), so they are shrunk here: 1024 forward, 2048/T backward (rounded up to 1024)."""
    monkeypatch.setattr(numba_neuron, "FORWARD_BLOCK", 1024)
    monkeypatch.setattr(numba_neuron, "BACKWARD_SCRATCH", 2048)
    compare(name, impl, make_input((3, 2, 4099), torch.float32, seed=5), detach_reset=False, v_reset=None)
    compare(name, impl, make_input((4, 2, 4099), torch.float32, seed=7), detach_reset=False)   # T = 4's own passes
    compare(name, impl, make_input((4, 1, 5000), torch.bfloat16, seed=8), v_reset=None)
    compare(name, impl, make_input((7, 1, 9001), torch.float32, seed=6), surrogate="sigmoid")
    compare(name, impl, make_input((3, 1, 5000), torch.bfloat16, seed=13), surrogate="sigmoid")


@needs_numba
@pytest.mark.parametrize("name", ["if", "lif", "plif"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["f32", "bf16"])
@pytest.mark.parametrize("T", [4, 6, 16])
def test_specialised_kernels_equal_the_generic_ones(name, dtype, T, monkeypatch):
    """IF and LIF with the usual flags (hard, detached reset, ATan) run kernels compiled for those flags; PLIF runs the
    specialised forward and the generic backward (dL/dk). Same arithmetic with the branches folded: spikes and
    gradients bit-identical to the generic kernels', over several blocks, and spikes equal to the reference."""
    from dst.kernels.numba import neuron_kernels as nk
    kind = make_neuron(name, "numba").kernel_spec().kind
    assert nk.forward_kernel(kind, True, False) is not nk.forward_kernel(kind, False, False)
    assert nk.forward_kernel(kind, True, True) is nk.forward_kernel(kind, False, False)       # float64: generic
    assert (nk.backward_kernel(kind, True, True, False, name == "plif", False)
            is not nk.backward_kernel(kind, True, True, False, True, False)) == (name != "plif")
    monkeypatch.setattr(numba_neuron, "FORWARD_BLOCK", 1024)
    monkeypatch.setattr(numba_neuron, "BACKWARD_SCRATCH", 4096)
    x = make_input((T, 2, 3001), dtype, seed=T)
    upstream = torch.randn(x.shape, generator=torch.Generator().manual_seed(2), dtype=torch.float64).to(dtype)
    specialised = spikes_and_grads(make_neuron(name, "numba"), x, upstream)
    monkeypatch.setattr(nk, "SPECIALISED_KINDS", ())
    generic = spikes_and_grads(make_neuron(name, "numba"), x, upstream)
    reference = spikes_and_grads(make_neuron(name, "torch"), x, upstream)
    assert torch.equal(specialised[0], generic[0]) and torch.equal(specialised[0], reference[0])
    assert 0 < specialised[0].sum() < specialised[0].numel()
    for got, want in zip(specialised[1], generic[1]):
        assert torch.equal(got, want)


@needs_numba
def test_block_sizes():
    """Long rows (see dst/kernels/numba/neuron.py), at least two blocks per thread when M allows, never under MIN_BLOCK; small calls run
    on one thread."""
    assert numba_neuron._forward_block(1 << 21, 2) == numba_neuron.FORWARD_BLOCK
    assert numba_neuron._backward_block(4, 1 << 21, 2) == numba_neuron.BACKWARD_SCRATCH // 4
    assert numba_neuron._backward_block(16, 1 << 21, 2) == numba_neuron.BACKWARD_SCRATCH // 16
    assert numba_neuron._backward_block(4096, 1 << 21, 2) == numba_neuron.MIN_BLOCK
    assert numba_neuron._forward_block(100_000, 2) == 25_024                  # 4 blocks of a multiple of 64
    assert numba_neuron._forward_block(100, 8) == numba_neuron.MIN_BLOCK
    assert numba_threads.threads(100) == 1


@needs_numba
def test_constants_follow_a_changing_k():
    """The constants are cached, but PLIF's k is read on every call: a changed w changes the result."""
    spec = dn.MultiStepPLIF().kernel_spec()
    c1 = numba_launch.constants(spec, torch.tensor(0.25), torch.float32)
    c2 = numba_launch.constants(spec, torch.tensor(0.5), torch.float32)
    C_K = numba_launch.kernels().C_K
    assert c1[C_K] == 0.25 and c2[C_K] == 0.5
    assert numba_launch.constants(spec, torch.tensor(0.25), torch.float32) is c1
    assert not c1.flags.writeable


def inexact_constants(name: str) -> dict:
    """Neuron kwargs with a threshold, reset, alpha and tau that are not round numbers (1/tau = 1/3 is inexact)."""
    kw = dict(v_threshold=0.7, v_reset=-0.1, alpha=3.0, detach_reset=False)
    if name.startswith("lif"):
        kw["tau"] = 3.0
    elif name.startswith("plif"):
        kw["init_tau"] = 3.0
    return kw


@pytest.mark.parametrize("impl", CPU_IMPLS)
@pytest.mark.parametrize("name", list(NEURONS))
def test_other_constants(impl, name):
    """Threshold, reset, alpha and tau that are not round numbers (1/3 is inexact: the order of operations shows)."""
    kw = inexact_constants(name)
    compare(name, impl, make_input((6, 4, 11), torch.float32, seed=7), **kw)
    compare(name, impl, make_input((6, 4, 11), torch.float64, seed=8), **{**kw, "v_reset": None})


@pytest.mark.parametrize("impl", CPU_IMPLS)
@pytest.mark.parametrize("name", list(NEURONS))
@pytest.mark.parametrize("surrogate", ["atan", "sigmoid"])
@pytest.mark.parametrize("v_reset", [0.0, None], ids=["hard", "soft"])
@pytest.mark.parametrize("T", [4, 8])  # T = 4 has forward and backward passes of its own, H kept in registers
def test_bfloat16_matches_reference(impl, name, surrogate, v_reset, T):
    """bf16: the kernels round every forward intermediate as eager bf16 ops do, so spikes are identical."""
    x = make_input((T, 4, 33), torch.bfloat16, seed=9)
    compare(name, impl, x, v_reset=v_reset, surrogate=surrogate, detach_reset=False)


@pytest.mark.parametrize("impl", CPU_IMPLS)
@pytest.mark.parametrize("name", list(NEURONS))
def test_bfloat16_inexact_constants_and_blocks(impl, name):
    """Constants that bf16 cannot hold (0.7, -0.1, 1/3), a long sequence, and more than one kernel block."""
    kw = inexact_constants(name)
    compare(name, impl, make_input((6, 4, 11), torch.bfloat16, seed=10), **kw)
    compare(name, impl, make_input((6, 4, 11), torch.bfloat16, seed=11), **{**kw, "v_reset": None})
    compare(name, impl, make_input((24, 2, 50), torch.bfloat16, seed=12))
    compare(name, impl, make_input((3, 1, 5000), torch.bfloat16, seed=13), surrogate="sigmoid")


def test_float16_uses_the_eager_kernel():
    x = make_input((5, 3, 21), torch.float16, seed=14)
    assert dispatch.select_impl(x, dn.MultiStepIF().kernel_spec()).name == "eager"
    neuron = dn.MultiStepLIF()
    y = neuron(x)
    assert torch.equal(y, neuron.multistep_reference(x))


# ----------------------------------------------------------------------------------------------------------------------
# Layouts: the kernels work in place on dense steps and keep the input's layout
# ----------------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("impl", CPU_IMPLS)
@pytest.mark.parametrize("name", ["if", "plif"])
def test_layouts(impl, name):
    T, N, C, H, W = 3, 2, 5, 4, 6
    base = make_input((T * N, C, H, W), torch.float32, seed=11)
    # channels-last folded over T (what MultiStep(Conv, BN) returns for channels-last inputs)
    x_cl = base.to(memory_format=torch.channels_last).unflatten(0, (T, N))
    assert not x_cl.is_contiguous()
    y, _ = compare(name, impl, x_cl)
    assert y.stride() == x_cl.stride()  # channels-last stays channels-last
    # the stem: one image expanded over T (stride 0)
    img = make_input((N, C, H, W), torch.float32, seed=12)
    x_exp = img.unsqueeze(0).expand(T, *img.shape)
    assert x_exp.stride(0) == 0
    compare(name, impl, x_exp)
    # a transposed, non-dense view
    x_t = make_input((N, T, C * H), torch.float32, seed=13).transpose(0, 1)
    compare(name, impl, x_t)
    x_slice = make_input((T, N, 2 * C), torch.float32, seed=14)[:, :, ::2]
    compare(name, impl, x_slice)


@pytest.mark.parametrize("impl", CPU_IMPLS)
@pytest.mark.parametrize("name", list(NEURONS))
@pytest.mark.parametrize("surrogate", ["atan", "sigmoid"])
@pytest.mark.parametrize("T", [1, 4, 6])  # numba sums over T in its kernel at T = 4 (ATan, no PLIF), elsewhere after
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["f32", "bf16"])
def test_repeated_input(impl, name, surrogate, T, dtype):
    """neuron(x, repeat=T) (the stem: one input at every step) against the reference on x.expand(T, ...): identical
    spikes, dL/dx summed over T within tolerance, for NCHW and channels-last x."""
    neuron = make_neuron(name, impl, surrogate=surrogate, detach_reset=False).to(torch.float32)
    for x in (make_input((2, 5, 4, 6), dtype, seed=T),
              make_input((2, 5, 4, 6), dtype, seed=T + 1).to(memory_format=torch.channels_last)):
        upstream = make_input((T, *x.shape), dtype, seed=20) - 0.6
        params = [x.requires_grad_(True), *neuron.parameters()]
        neuron.backend = impl
        y = neuron(x, repeat=T)
        grads = torch.autograd.grad((y * upstream).sum(), params)
        neuron.backend = "torch"
        y_ref = neuron(x.unsqueeze(0).expand(T, *x.shape))
        grads_ref = torch.autograd.grad((y_ref * upstream).sum(), params)
        assert y.shape == (T, *x.shape) and torch.equal(y, y_ref)
        assert 0 < y.sum() < y.numel()
        assert grads[0].shape == x.shape
        if impl == "numba":  # its gradient keeps the input's layout (the stem's BN backward then stays channels-last)
            assert grads[0].stride() == x.stride()
        for got, want in zip(grads, grads_ref):
            torch.testing.assert_close(got, want, **TOL[dtype])


def test_repeat_must_be_positive():
    with pytest.raises(ValueError, match="repeat must be >= 1"):
        dn.MultiStepIF()(torch.zeros(2, 3), repeat=0)


def test_rows_layout_views_without_copy():
    x = make_input((12, 5, 4, 6), torch.float32).to(memory_format=torch.channels_last).unflatten(0, (3, 4))
    layout = rows_layout(x)
    rows = layout.rows_of(x)
    assert rows.data_ptr() == x.data_ptr() and rows.shape == (3, 4 * 5 * 4 * 6) and rows.stride(1) == 1
    out, out_rows = layout.empty(x)
    assert out.shape == x.shape and out.stride() == x.stride() and out_rows.is_contiguous()


def test_gradient_layout_differs_from_input():
    """Upstream gradients in another layout (or expanded, as from .sum()) give the same result."""
    neuron = dn.MultiStepLIF()
    x = make_input((4, 2, 3, 5, 5), torch.float32).requires_grad_(True)
    y = neuron(x)
    (g_sum,) = torch.autograd.grad(y.sum(), x)
    neuron.backend = "torch"
    (g_ref,) = torch.autograd.grad(neuron(x).sum(), x)
    torch.testing.assert_close(g_sum, g_ref, **TOL[torch.float32])
    up = make_input((4, 2, 3, 5, 5), torch.float32, seed=2).transpose(3, 4).contiguous().transpose(3, 4)
    neuron.backend = "auto"
    (g1,) = torch.autograd.grad(neuron(x), x, up)
    neuron.backend = "torch"
    (g2,) = torch.autograd.grad(neuron(x), x, up)
    torch.testing.assert_close(g1, g2, **TOL[torch.float32])


# ----------------------------------------------------------------------------------------------------------------------
# The kernels' equations are dst.neuron's
# ----------------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", list(NEURONS))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16], ids=["f32", "f64", "bf16"])
def test_kernel_charge_is_neuron_charge(name, dtype):
    neuron = make_neuron(name, "auto", v_reset=-0.2).to(torch.float32)
    spec = neuron.kernel_spec()
    assert spec.kind == {"if": Charge.IF, "lif": Charge.LIF, "plif": Charge.LIF}.get(name, Charge.LIF_NO_DECAY_INPUT)
    v, x = make_input((1000,), dtype, seed=1), make_input((1000,), dtype, seed=2)
    k = neuron.decay(x)
    with torch.no_grad():
        assert torch.equal(eager.charge(spec, v, x, k), neuron.charge(v, x))


def test_unknown_neurons_use_the_reference():
    class Quadratic(dn.MultiStepIF):
        def charge(self, v, x):
            return v + x * x

    n = Quadratic()
    assert n.kernel_spec() is None
    x = make_input((4, 10), torch.float32)
    assert torch.equal(n(x), n.multistep_reference(x))
    with pytest.raises(ValueError, match="does not know"):
        Quadratic(backend="numba" if "numba" in CPU_IMPLS else "eager")(x)

    class Custom(dn.Surrogate):
        name = "custom"

    assert dn.MultiStepIF(surrogate=Custom()).kernel_spec() is None


# ----------------------------------------------------------------------------------------------------------------------
# Backend selection
# ----------------------------------------------------------------------------------------------------------------------
@needs_numba
def test_auto_selects_numba_on_cpu_float():
    spec = dn.MultiStepIF().kernel_spec()
    assert dispatch.select_impl(torch.zeros(2, 3), spec).name == "numba"
    assert dispatch.select_impl(torch.zeros(2, 3, dtype=torch.float64), spec).name == "numba"
    assert dispatch.select_impl(torch.zeros(2, 3, dtype=torch.bfloat16), spec).name == "numba"
    assert dispatch.select_impl(torch.zeros(2, 3, dtype=torch.float16), spec).name == "eager"


def test_backend_arguments():
    assert dn.MultiStepIF().backend == "auto"
    for b in kernels.BACKENDS:
        assert dn.create_neuron("lif", backend=b).backend == b
    with pytest.raises(ValueError, match="unknown backend"):
        dn.MultiStepIF(backend="cupy")
    if not kernels.available()["triton"]:
        from dst.kernels.triton.launch import interpreting
        if not interpreting():
            with pytest.raises(ValueError, match="cannot run"):
                dn.MultiStepIF(backend="triton")(torch.zeros(2, 3))


def test_tracing_and_compile_see_the_reference(monkeypatch):
    def no_kernel(*args, **kwargs):
        raise AssertionError("a kernel ran under tracing")

    neuron = dn.MultiStepIF()
    x = make_input((3, 2, 4), torch.float32)
    monkeypatch.setattr(kernels, "multistep", no_kernel)
    traced = torch.jit.trace(neuron, x, check_trace=False)
    assert torch.equal(traced(x), neuron.multistep_reference(x))
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    assert torch.equal(neuron(x), neuron.multistep_reference(x))


# ----------------------------------------------------------------------------------------------------------------------
# What the fused path keeps for backward, and gradient plumbing
# ----------------------------------------------------------------------------------------------------------------------
def saved_bytes(fn, x):
    total = []

    def pack(t):
        total.append(t.numel() * t.element_size() if t.data_ptr() != x.data_ptr() else 0)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn(x)
    return sum(total)


@pytest.mark.parametrize("impl", CPU_IMPLS)
@pytest.mark.parametrize("name", ["if", "lif", "plif"])
def test_saves_only_the_input(impl, name):
    x = make_input((8, 4, 100), torch.float32).requires_grad_(True)
    fused = make_neuron(name, impl)
    ref = make_neuron(name, "torch")
    assert saved_bytes(fused, x) <= 8          # x itself (not counted) and at most the 0-d decay k
    assert saved_bytes(ref, x) >= 2 * x.numel() * 4


def test_plif_gradient_only_for_w_and_accumulates():
    neuron = make_neuron("plif", "auto")
    x = make_input((5, 3, 20), torch.float32)   # no grad wanted for x
    neuron(x).sum().backward()
    g1 = neuron.w.grad.clone()
    neuron(x).sum().backward()
    torch.testing.assert_close(neuron.w.grad, 2 * g1)
    neuron.backend = "torch"
    neuron.w.grad = None
    neuron(x).sum().backward()
    torch.testing.assert_close(g1, neuron.w.grad, rtol=1e-5, atol=1e-6)


def test_inference_and_empty_inputs():
    neuron = dn.MultiStepLIF()
    x = make_input((4, 3, 10), torch.float32)
    with torch.no_grad():
        y = neuron(x)
    assert not y.requires_grad and torch.equal(y, neuron.multistep_reference(x))
    empty = torch.zeros(4, 0, 3, requires_grad=True)
    y = neuron(empty)
    assert y.shape == empty.shape
    y.sum().backward()
    assert empty.grad.shape == empty.shape


@pytest.mark.parametrize("impl", CPU_IMPLS)
def test_double_backward_is_refused(impl):
    x = make_input((3, 4), torch.float32).requires_grad_(True)
    y = dn.MultiStepIF(backend=impl)(x)
    (g,) = torch.autograd.grad(y.sum(), x, create_graph=True)
    with pytest.raises(RuntimeError):
        g.sum().backward()


def test_models_train_identically_with_fused_neurons():
    """A whole model: same logits (spikes are identical), same parameter gradients within tolerance."""
    from dst.models import create_model

    torch.manual_seed(0)
    model = create_model("fsnn_resnet18", T=2, num_classes=10)
    x = torch.randn(2, 3, 32, 32)
    y = torch.tensor([1, 7])

    def step(backend):
        for m in model.modules():
            if isinstance(m, dn.MultiStepNeuron):
                m.backend = backend
        model.zero_grad()
        out = model(x)
        loss = torch.nn.functional.cross_entropy(out.fsnn, y) + torch.nn.functional.cross_entropy(out.dsnn, y)
        loss.backward()
        return out, {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    out_fused, grads_fused = step("auto")
    out_ref, grads_ref = step("torch")
    assert torch.equal(out_fused.fsnn, out_ref.fsnn) and torch.equal(out_fused.dsnn, out_ref.dsnn)
    assert grads_fused.keys() == grads_ref.keys()
    for n in grads_ref:
        torch.testing.assert_close(grads_fused[n], grads_ref[n], rtol=1e-4, atol=1e-5, msg=n)


# ----------------------------------------------------------------------------------------------------------------------
# Huge pages for large CPU outputs
# ----------------------------------------------------------------------------------------------------------------------
def test_huge_page_advice_is_harmless():
    from dst.kernels.memory import advise_huge_pages

    big = advise_huge_pages(torch.empty(3 << 20))     # 12 MiB: advised where THP is in madvise mode
    big.fill_(1.5)
    assert big.sum().item() == 1.5 * (3 << 20)
    small = torch.zeros(10)
    assert advise_huge_pages(small) is small


def test_huge_pages_advised_for_fresh_memory_only(monkeypatch):
    """Memory glibc hands back already faulted in (the usual case in a training loop) is left alone: advising it
    splits the heap mapping and costs 2 MiB page faults later."""
    from dst.kernels import memory
    libc = memory._thp_madvise()
    if not libc:
        pytest.skip("transparent huge pages are not in madvise mode here (or DST_THP=0)")
    calls = []
    monkeypatch.setattr(memory, "_madvise", (lambda addr, n, advice: calls.append((addr, n, advice)) or 0, libc[1]))
    # 40 MiB of anonymous memory never touched (torch.empty might get memory the heap already holds)
    region = mmap.mmap(-1, 40 << 20)
    fresh = torch.frombuffer(region, dtype=torch.uint8)
    memory.advise_huge_pages(fresh)
    assert len(calls) == 1 and calls[0][1] >= 32 << 20 and calls[0][2] == memory.MADV_HUGEPAGE
    fresh.fill_(1)                                      # faulted in: the same memory, now resident
    memory.advise_huge_pages(fresh)
    assert len(calls) == 1
    del fresh
    region.close()


VECTORISED_CHECK = """
import re, sys, torch
from dst.kernels.numba import neuron_kernels as k
from dst.kernels.numba.neuron import NumbaImpl
from dst.neuron import MultiStepIF, MultiStepLIF, MultiStepPLIF
# IF and LIF as they come run the specialised kernels (dst/kernels/numba/neuron_kernels.py); a soft reset and PLIF's
# backward, the generic ones
for neuron in (MultiStepIF(), MultiStepLIF(), MultiStepLIF(v_reset=None), MultiStepPLIF()):
    spec, kk = neuron.kernel_spec(), (0.5 if isinstance(neuron, MultiStepLIF) else None)
    for T in (4, 16):  # T = 4 has passes of its own; other T go four steps at a time through an H scratch
        x = torch.randn(T, 100000)
        NumbaImpl.forward(x, spec, kk)
        NumbaImpl.backward(x, torch.randn_like(x), spec, kk)
        NumbaImpl.backward_summed(x[:1].expand(T, -1), torch.randn_like(x), spec, kk)
scalar = []
for name in ("_charge_fire4_from_rest", "_recompute_bptt_atan4", "_recompute_bptt_atan4_summed", "_charge_fire4",
             "_charge_keep4", "_bptt_atan4"):
    irs = getattr(k, name).inspect_llvm()
    assert len(irs) >= 2, (name, list(irs))                  # specialised and generic builds
    scalar += [name for ir in irs.values() if not re.search(r"<(4|8|16) x float>", ir)]
irs = k._recompute_bptt_atan4_dk.inspect_llvm()              # PLIF at T = 4: generic only
assert irs
scalar += ["_recompute_bptt_atan4_dk" for ir in irs.values() if not re.search(r"<(4|8|16) x float>", ir)]
print("scalar:", scalar)
sys.exit(1 if scalar else 0)
"""


@needs_numba
def test_step_loops_vectorise(tmp_path):
    """LLVM vectorises the kernels' per-step loops (float32). Written differently they run scalar and 4-10x slower:
    a store branch inside the T = 4 backward loop once did that, unnoticed by every equality test. Compiled afresh
    (an empty NUMBA_CACHE_DIR) in a subprocess: kernels loaded from the cache carry no IR to inspect."""
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path), PYTHONPATH=str(REPO))
    proc = subprocess.run([sys.executable, "-c", VECTORISED_CHECK], capture_output=True, text=True, env=env,
                          cwd=REPO, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]


# ----------------------------------------------------------------------------------------------------------------------
# Triton, interpreted on CPU (a GPU runs the same checks natively: pytest -m gpu tests/test_kernels_triton.py)
# ----------------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("test_file, at_least", [("test_kernels_triton.py", 100), ("test_spike_pool_triton.py", 80)])
def test_triton_kernels_in_interpreter(test_file, at_least):
    """The neuron's kernels, and the fused stem's (dst/kernels/triton/spike_pool_kernels.py)."""
    pytest.importorskip("triton")
    env = dict(os.environ, TRITON_INTERPRET="1", DST_TRITON_TEST_DEVICE="cpu")
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider",
                           str(REPO / "tests" / test_file)],
                          capture_output=True, text=True, env=env, cwd=REPO, timeout=600)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    summary = proc.stdout.strip().splitlines()[-1]
    assert " passed" in summary and int(summary.split(" passed")[0].split()[-1]) >= at_least, summary


def test_torch_export_traces_the_reference_loop(monkeypatch):
    """Under torch.export (as under torch.compile and TorchScript) the neurons run their reference loop of plain torch
    ops: the fused kernels are opaque to the tracer. The exported program still computes the same spikes."""
    calls = []
    real = kernels.multistep
    monkeypatch.setattr(kernels, "multistep", lambda *a, **k: calls.append(1) or real(*a, **k))

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.neuron = dn.MultiStepLIF()

        def forward(self, x):
            return self.neuron(x)

    x = make_input((4, 2, 3), torch.float32)
    with torch.no_grad():
        program = torch.export.export(Net(), (x,))
    assert calls == [] and dispatch.is_tracing() is False
    assert torch.equal(program.module()(x), Net()(x)) and calls == [1]
