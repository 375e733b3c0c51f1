"""Multi-step neurons against a reference written here from SpikingJelly's equations (not from dst's code).

SpikingJelly (IFNode / LIFNode / ParametricLIFNode, step_mode='m'), per step t, starting from V = v_reset (or 0):
    IF:                 H = V + X
    LIF, decay_input:   H = V + (X - (V - Vr)) / tau        (Vr = 0 for a soft reset)
    LIF, !decay_input:  H = V - (V - Vr) / tau + X
    PLIF:               as LIF with 1/tau = sigmoid(w), w0 = -log(init_tau - 1)
    S = heaviside(H - Vth), heaviside(0) = 1
    hard reset:  V = H * (1 - S') + Vr * S'      soft reset:  V = H - Vth * S'      S' = S.detach() if detach_reset
    surrogate d/dx:  ATan  alpha/2 / (1 + (pi/2 alpha x)^2)      Sigmoid  alpha sig(alpha x)(1 - sig(alpha x))
"""
from __future__ import annotations

import math

import pytest
import torch

from dst import neuron as dn
from dst import surrogate as ds


# ----------------------------------------------------------------------------------------------------------------------
# The independent reference
# ----------------------------------------------------------------------------------------------------------------------
class RefSpike(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, kind, alpha):
        ctx.save_for_backward(x)
        ctx.kind, ctx.alpha = kind, alpha
        return (x >= 0).to(x.dtype)

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        a = ctx.alpha
        if ctx.kind == "atan":
            sg = (a / 2) / (1 + (math.pi / 2 * a * x) ** 2)
        else:
            sig = torch.sigmoid(a * x)
            sg = a * sig * (1 - sig)
        return grad * sg, None, None


def ref_multistep(x_seq, kind, *, tau=2.0, w=None, v_threshold=1.0, v_reset=0.0, detach_reset=True,
                  decay_input=True, surrogate="atan", alpha=None):
    if alpha is None:
        alpha = 2.0 if surrogate == "atan" else 4.0
    vr = 0.0 if v_reset is None else v_reset
    v = torch.full_like(x_seq[0], vr)
    out = []
    for t in range(x_seq.shape[0]):
        x = x_seq[t]
        if kind == "if":
            h = v + x
        elif kind == "lif":
            h = v + (x - (v - vr)) / tau if decay_input else v - (v - vr) / tau + x
        else:  # plif
            k = torch.sigmoid(w).to(x.dtype)
            h = v + (x - (v - vr)) * k if decay_input else v - (v - vr) * k + x
        s = RefSpike.apply(h - v_threshold, surrogate, alpha)
        sr = s.detach() if detach_reset else s
        if v_reset is None:
            v = h - v_threshold * sr
        else:
            v = h * (1 - sr) + v_reset * sr
        out.append(s)
    return torch.stack(out)


def make_pair(kind, *, v_reset=0.0, detach_reset=True, surrogate="atan", decay_input=True, init_tau=2.0,
              dtype=torch.float32):
    """(dst neuron, kwargs for ref_multistep) with the same settings."""
    common = dict(v_reset=v_reset, detach_reset=detach_reset, surrogate=surrogate)
    ref_kw = dict(v_reset=v_reset, detach_reset=detach_reset, surrogate=surrogate, decay_input=decay_input)
    if kind == "if":
        return dn.MultiStepIF(**common), ref_kw
    if kind == "lif":
        return dn.MultiStepLIF(tau=init_tau, decay_input=decay_input, **common), dict(ref_kw, tau=init_tau)
    neuron = dn.MultiStepPLIF(init_tau=init_tau, decay_input=decay_input, **common)
    w = torch.nn.Parameter(torch.tensor(-math.log(init_tau - 1.0)))
    return neuron, dict(ref_kw, w=w)


def make_input(T, dtype, shape=(3, 7), seed=0):
    g = torch.Generator().manual_seed(seed)
    # mean 0.6, std 0.8: neurons fire often but not always, and V goes negative sometimes (exercises the leak term)
    return (torch.randn(T, *shape, generator=g, dtype=torch.float64) * 0.8 + 0.6).to(dtype)


# by the gradient's dtype: PLIF's w is a float32 parameter whatever the input dtype, so its gradient is a float32 sum
# (whose order a fused backend may change: a few ulp)
TOL = {torch.float32: dict(rtol=1e-5, atol=1e-6), torch.float64: dict(rtol=1e-10, atol=1e-12)}


def run_and_grad(fn, x, params=()):
    x = x.detach().clone().requires_grad_(True)
    y = fn(x)
    g = torch.Generator().manual_seed(1)
    upstream = torch.randn(y.shape, generator=g, dtype=torch.float64).to(y.dtype)
    grads = torch.autograd.grad((y * upstream).sum(), [x, *params])
    return y.detach(), grads


# ----------------------------------------------------------------------------------------------------------------------
# Sanity of the reference itself (so a bug shared by reference and dst would still be caught)
# ----------------------------------------------------------------------------------------------------------------------
def test_reference_if_hand_computed():
    # IF, hard reset: inputs 0.6, 0.6 (H=1.2 fires, reset to 0), 1.0 (H=1 fires at exactly threshold), 0.3, 0.3, 0.5
    x = torch.tensor([0.6, 0.6, 1.0, 0.3, 0.3, 0.5], dtype=torch.float64).view(6, 1)
    assert ref_multistep(x, "if").flatten().tolist() == [0, 1, 1, 0, 0, 1]
    # soft reset keeps the excess 0.2 after step 1: 0.6, 1.2->0.2, 1.2->0.2, 0.5, 0.8, 1.3
    assert ref_multistep(x, "if", v_reset=None).flatten().tolist() == [0, 1, 1, 0, 0, 1]
    x2 = torch.tensor([0.6, 0.6, 0.7], dtype=torch.float64).view(3, 1)
    assert ref_multistep(x2, "if", v_reset=None).flatten().tolist() == [0, 1, 0]  # 0.6, 1.2->0.2, 0.9
    assert ref_multistep(x2, "if").flatten().tolist() == [0, 1, 0]                # 0.6, 1.2->0, 0.7


def test_reference_lif_hand_computed():
    # LIF tau=2, decay_input, Vr=0: H = V/2 + X/2. Constant X=1.5: H=0.75, 1.125 (fire) -> 0, 0.75, 1.125 (fire)
    x = torch.full((4, 1), 1.5, dtype=torch.float64)
    assert ref_multistep(x, "lif").flatten().tolist() == [0, 1, 0, 1]
    # not decay_input: H = V/2 + X. X=0.6: 0.6, 0.9, 1.05 (fire)
    x = torch.full((3, 1), 0.6, dtype=torch.float64)
    assert ref_multistep(x, "lif", decay_input=False).flatten().tolist() == [0, 0, 1]


# ----------------------------------------------------------------------------------------------------------------------
# Surrogates
# ----------------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name,alpha", [("atan", None), ("atan", 3.0), ("sigmoid", None), ("sigmoid", 1.5)])
def test_surrogate_forward_and_gradient(name, alpha):
    sur = ds.create_surrogate(name, alpha)
    a = {"atan": 2.0, "sigmoid": 4.0}[name] if alpha is None else alpha
    assert sur.alpha == a
    x = torch.tensor([-2.0, -0.5, -1e-3, 0.0, 1e-3, 0.5, 2.0], dtype=torch.float64, requires_grad=True)
    y = sur(x)
    assert y.tolist() == [0, 0, 0, 1, 1, 1, 1]  # heaviside(0) = 1
    assert y.dtype == x.dtype
    (g,) = torch.autograd.grad(y.sum(), x)
    xd = x.detach()
    if name == "atan":
        expect = a / 2 / (1 + (math.pi / 2 * a * xd) ** 2)
    else:
        expect = a * torch.sigmoid(a * xd) * (1 - torch.sigmoid(a * xd))
    torch.testing.assert_close(g, expect, rtol=1e-12, atol=0)
    torch.testing.assert_close(sur.grad(xd), expect, rtol=1e-12, atol=0)
    # peak of the surrogate at 0: alpha/2 (ATan) and alpha/4 (Sigmoid)
    assert g[3].item() == pytest.approx(a / 2 if name == "atan" else a / 4)


def test_surrogate_without_grad_and_bad_name():
    x = torch.tensor([-1.0, 0.0, 1.0])
    assert ds.ATan()(x).tolist() == [0.0, 1.0, 1.0]
    with pytest.raises(ValueError, match="surrogate"):
        ds.create_surrogate("relu")
    s = ds.Sigmoid()
    assert ds.create_surrogate(s) is s


# ----------------------------------------------------------------------------------------------------------------------
# Defaults
# ----------------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("cls", [dn.MultiStepIF, dn.MultiStepLIF, dn.MultiStepPLIF])
def test_defaults(cls):
    n = cls()
    assert n.v_threshold == 1.0
    assert n.v_reset == 0.0
    assert n.detach_reset is True
    assert isinstance(n.surrogate, ds.ATan) and n.surrogate.alpha == 2.0
    if cls is not dn.MultiStepIF:
        assert n.decay_input is True
    if cls is dn.MultiStepLIF:
        assert n.tau == 2.0
    if cls is dn.MultiStepPLIF:
        assert n.w.item() == pytest.approx(-math.log(2.0 - 1.0))
        assert n.w.sigmoid().item() == pytest.approx(0.5)
        assert [name for name, _ in n.named_parameters()] == ["w"]
    else:
        assert list(n.parameters()) == []


def test_plif_init_tau():
    n = dn.MultiStepPLIF(init_tau=3.0)
    assert n.w.item() == pytest.approx(-math.log(2.0))
    assert 1.0 / n.w.sigmoid().item() == pytest.approx(3.0)


def test_create_neuron():
    assert isinstance(dn.create_neuron("IF"), dn.MultiStepIF)
    assert isinstance(dn.create_neuron("lif", tau=4.0), dn.MultiStepLIF)
    n = dn.create_neuron("plif", init_tau=2.0, surrogate="sigmoid")
    assert isinstance(n, dn.MultiStepPLIF) and isinstance(n.surrogate, ds.Sigmoid) and n.surrogate.alpha == 4.0
    with pytest.raises(ValueError, match="unknown neuron"):
        dn.create_neuron("izhikevich")


def test_bad_neuron_args():
    with pytest.raises(ValueError, match="tau"):
        dn.MultiStepLIF(tau=1.0)
    with pytest.raises(ValueError, match="surrogate"):
        dn.MultiStepIF(surrogate="nope")
    with pytest.raises(ValueError, match=r"\[T, N"):
        dn.MultiStepIF()(torch.ones(5))


# ----------------------------------------------------------------------------------------------------------------------
# Equivalence with the reference: forward spikes exactly, input gradients (and PLIF's w gradient) tightly
# ----------------------------------------------------------------------------------------------------------------------
KINDS = ["if", "lif", "plif"]
RESETS = pytest.mark.parametrize("v_reset", [0.0, None], ids=["hard", "soft"])


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("T", [1, 4, 16])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("detach_reset", [True, False], ids=["detach", "nodetach"])
@RESETS
@pytest.mark.parametrize("surrogate", ["atan", "sigmoid"])
def test_matches_reference(kind, T, dtype, detach_reset, v_reset, surrogate):
    neuron, ref_kw = make_pair(kind, v_reset=v_reset, detach_reset=detach_reset, surrogate=surrogate)
    x = make_input(T, dtype, seed=T)
    params = [neuron.w] if kind == "plif" else []
    ref_params = [ref_kw["w"]] if kind == "plif" else []

    y, grads = run_and_grad(neuron, x, params)
    y_ref, grads_ref = run_and_grad(lambda z: ref_multistep(z, kind, **ref_kw), x, ref_params)

    assert y.dtype == dtype and y.shape == x.shape
    assert torch.equal(y, y_ref)
    assert 0 < y.sum() < y.numel() or T == 1  # the input makes some neurons fire and others not
    for g, g_ref in zip(grads, grads_ref):
        assert g.dtype == g_ref.dtype
        torch.testing.assert_close(g.reshape(g_ref.shape), g_ref, **TOL[g.dtype])
    assert grads[0].abs().sum() > 0


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("detach_reset", [True, False], ids=["detach", "nodetach"])
@RESETS
@pytest.mark.parametrize("surrogate", ["atan", "sigmoid"])
def test_multistep_reference_matches_reference(kind, detach_reset, v_reset, surrogate):
    """The dst oracle itself (what fused backends are checked against) equals the equations."""
    neuron, ref_kw = make_pair(kind, v_reset=v_reset, detach_reset=detach_reset, surrogate=surrogate)
    x = make_input(8, torch.float64, shape=(2, 3, 4, 4), seed=3)
    params = [neuron.w] if kind == "plif" else []
    ref_params = [ref_kw["w"]] if kind == "plif" else []
    y, grads = run_and_grad(neuron.multistep_reference, x, params)
    y_ref, grads_ref = run_and_grad(lambda z: ref_multistep(z, kind, **ref_kw), x, ref_params)
    assert torch.equal(y, y_ref)
    for g, g_ref in zip(grads, grads_ref):
        torch.testing.assert_close(g.reshape(g_ref.shape), g_ref, **TOL[g.dtype])


@pytest.mark.parametrize("kind", ["lif", "plif"])
@RESETS
def test_leaky_without_decay_input(kind, v_reset):
    neuron, ref_kw = make_pair(kind, v_reset=v_reset, decay_input=False, detach_reset=False)
    x = make_input(6, torch.float64, seed=5) * 0.6
    params = [neuron.w] if kind == "plif" else []
    ref_params = [ref_kw["w"]] if kind == "plif" else []
    y, grads = run_and_grad(neuron, x, params)
    y_ref, grads_ref = run_and_grad(lambda z: ref_multistep(z, kind, **ref_kw), x, ref_params)
    assert torch.equal(y, y_ref)
    for g, g_ref in zip(grads, grads_ref):
        torch.testing.assert_close(g.reshape(g_ref.shape), g_ref, **TOL[g.dtype])


@pytest.mark.parametrize("kind", KINDS)
def test_nonzero_reset_and_threshold_and_alpha(kind):
    """v_reset != 0 exercises the (V - Vr) leak term; custom v_threshold and alpha are honoured."""
    kw = dict(v_threshold=0.8, v_reset=-0.3, alpha=3.0, detach_reset=False)
    neuron = {"if": dn.MultiStepIF, "lif": dn.MultiStepLIF, "plif": dn.MultiStepPLIF}[kind](**kw)
    ref_kw = dict(v_threshold=0.8, v_reset=-0.3, alpha=3.0, detach_reset=False)
    params, ref_params = [], []
    if kind == "plif":
        ref_kw["w"] = torch.nn.Parameter(torch.tensor(0.0, dtype=torch.float32))
        params, ref_params = [neuron.w], [ref_kw["w"]]
    x = make_input(10, torch.float64, seed=7)
    y, grads = run_and_grad(neuron, x, params)
    y_ref, grads_ref = run_and_grad(lambda z: ref_multistep(z, kind, **ref_kw), x, ref_params)
    assert torch.equal(y, y_ref)
    for g, g_ref in zip(grads, grads_ref):
        torch.testing.assert_close(g.reshape(g_ref.shape), g_ref, **TOL[g.dtype])


def test_plif_w_is_learned_and_used():
    """Changing w changes the dynamics (1/tau = sigmoid(w)), and matches the reference at the new value."""
    x = make_input(8, torch.float64, seed=11)
    neuron = dn.MultiStepPLIF()
    y0 = neuron(x)
    with torch.no_grad():
        neuron.w.fill_(2.0)  # 1/tau ~ 0.88: much less leak
    y1 = neuron(x)
    assert not torch.equal(y0, y1)
    assert torch.equal(y1, ref_multistep(x, "plif", w=torch.tensor(2.0)))


def test_detach_reset_changes_gradient_only():
    x = make_input(8, torch.float64, seed=2)
    y_a, (g_a,) = run_and_grad(dn.MultiStepIF(detach_reset=True), x)
    y_b, (g_b,) = run_and_grad(dn.MultiStepIF(detach_reset=False), x)
    assert torch.equal(y_a, y_b)
    assert not torch.allclose(g_a, g_b)


# ----------------------------------------------------------------------------------------------------------------------
# Spikes binary, in the input dtype; bfloat16; stateless across forwards; non-contiguous input
# ----------------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("surrogate", ["atan", "sigmoid"])
def test_bfloat16(kind, surrogate):
    neuron, ref_kw = make_pair(kind, surrogate=surrogate)
    x = make_input(16, torch.bfloat16, shape=(8, 16), seed=4)
    xr = x.detach().clone().requires_grad_(True)
    y = neuron(xr)
    assert y.dtype == torch.bfloat16
    assert set(y.unique().tolist()) == {0.0, 1.0}
    # float32 dynamics on the same (bf16-rounded) input: bf16 rounding of V may flip a few near-threshold spikes
    y32 = ref_multistep(x.float(), kind, **ref_kw)
    agreement = (y.float() == y32).float().mean().item()
    assert agreement > 0.97, agreement
    # and it is the same spike count up to a few percent
    assert abs(y.float().sum().item() - y32.sum().item()) <= 0.03 * y.numel()
    y.float().sum().backward()
    assert xr.grad is not None and xr.grad.dtype == torch.bfloat16 and torch.isfinite(xr.grad.float()).all()
    if kind == "plif":
        assert neuron.w.grad is not None and torch.isfinite(neuron.w.grad)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16], ids=["f32", "f64", "bf16"])
def test_spikes_binary_in_input_dtype(kind, dtype):
    neuron = dn.create_neuron(kind)
    x = make_input(4, dtype, shape=(2, 3, 5, 5)) * 3  # large inputs: lots of both spikes and silence
    y = neuron(x)
    assert y.dtype == dtype and y.shape == x.shape
    assert set(y.unique().tolist()) == {0.0, 1.0}


@pytest.mark.parametrize("kind", KINDS)
def test_every_forward_starts_from_rest(kind):
    neuron = dn.create_neuron(kind)
    x = make_input(6, torch.float32, seed=9)
    y1 = neuron(x)
    y2 = neuron(x)
    assert torch.equal(y1, y2)
    # a different batch size in between leaves no state behind either
    neuron(make_input(3, torch.float32, shape=(5, 2), seed=10))
    assert torch.equal(neuron(x), y1)
    # starting from rest: a first step below threshold never fires (constant 0.9 < 1.0 at t=0)
    assert neuron(torch.full((2, 4), 0.9))[0].sum() == 0


@pytest.mark.parametrize("kind", KINDS)
def test_time_steps_are_independent_of_batch(kind):
    """Each sample evolves on its own: splitting the batch gives the same spikes."""
    neuron = dn.create_neuron(kind)
    x = make_input(5, torch.float32, shape=(6, 4), seed=12)
    y = neuron(x)
    assert torch.equal(torch.cat([neuron(x[:, :2]), neuron(x[:, 2:])], dim=1), y)


@pytest.mark.parametrize("kind", KINDS)
def test_non_contiguous_input(kind):
    """The models feed expanded (stride-0) and transposed sequences; results must not depend on memory layout."""
    neuron = dn.create_neuron(kind)
    img = make_input(1, torch.float32, shape=(2, 3, 4), seed=13)[0]
    x_exp = img.unsqueeze(0).expand(5, *img.shape)
    y_ref = ref_multistep(x_exp.contiguous(), kind, **make_pair(kind)[1])
    assert torch.equal(neuron(x_exp), y_ref)
    x_t = make_input(4, torch.float32, shape=(3, 2), seed=14).transpose(0, 1).contiguous().transpose(0, 1)
    assert not x_t.is_contiguous()
    assert torch.equal(neuron(x_t), ref_multistep(x_t.contiguous(), kind, **make_pair(kind)[1]))


def test_gradient_through_time():
    """With detach_reset, an input at t=0 still influences spikes at t>0 through V (charge is not detached)."""
    x = torch.tensor([[0.5], [0.7]], dtype=torch.float64, requires_grad=True)
    y = dn.MultiStepIF()(x)
    assert y.flatten().tolist() == [0.0, 1.0]
    (g,) = torch.autograd.grad(y[1].sum(), x)
    assert g[0].item() != 0 and g[0].item() == pytest.approx(g[1].item())


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16], ids=["f32", "f64", "bf16"])
def test_inference_mode_gives_the_same_spikes(kind, dtype):
    """Evaluation runs without autograd (no_grad / inference_mode): same spikes as a training forward."""
    neuron = dn.create_neuron(kind)
    x = make_input(8, dtype, shape=(4, 6), seed=15)
    y_train = neuron(x.clone().requires_grad_(True)).detach()
    with torch.no_grad():
        y_nograd = neuron(x)
    with torch.inference_mode():
        y_inf = neuron(x)
    assert torch.equal(y_nograd, y_train) and torch.equal(y_inf, y_train)
    assert not y_nograd.requires_grad
