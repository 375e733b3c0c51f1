"""Models: registry, every model builds and trains one step, parameter counts, stream outputs, AAP removal,
the full-spike property, the accumulation stream, a short training run; plus the MultiStep layers and the monitor."""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from dst.layers import MultiStep, conv_bn, mean_pool_time, repeat_time
from dst.loss import DSTLoss
from dst.models import STREAMS, DualStreamNet, StreamLogits, create_model, is_model, list_models, register_model
from dst.models.channels_last import weight_parameter
from dst.monitor import FiringRateMonitor
from dst.neuron import MultiStepIF, MultiStepNeuron, MultiStepPLIF

RESNETS = [f"{kind}_resnet{d}" for kind in ("fsnn", "sew", "spiking") for d in (18, 34, 50, 101, 152)]
DVS = ["fsnn_7b_net", "fsnn_wide_7b_net"]
NUM_CLASSES = 5


def is_dvs(name: str) -> bool:
    return name in DVS


def build(name: str, T: int = 2, **kw) -> DualStreamNet:
    if not is_dvs(name):
        kw.setdefault("T", T)
    return create_model(name, num_classes=NUM_CLASSES, **kw)


def sample_input(name: str, n: int = 2, T: int = 2, size: int | None = None, seed: int = 0) -> torch.Tensor:
    """Images [N, 3, 32, 32] for the ResNets; event frames [N, T, 2, 16, 16] for the DVS nets (7 ceil-mode pools
    take 16x16 to 1x1 as they take 128x128 to 1x1; smaller than 32x32 keeps the PLIF loops cheap)."""
    g = torch.Generator().manual_seed(seed)
    size = size or (16 if is_dvs(name) else 32)
    if is_dvs(name):  # event counts per pixel and polarity, [N, T, 2, H, W]
        return torch.poisson(torch.full((n, T, 2, size, size), 0.4), generator=g)
    return torch.randn(n, 3, size, size, generator=g)


def calibrate_bn(model: nn.Module, x: torch.Tensor) -> nn.Module:
    """Set every BN's running statistics to those of one train-mode forward on x, then switch to eval mode.
    (At init, running stats are mean 0 / var 1, which makes eval-mode nets on sparse spikes nearly silent.)"""
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    momenta = [bn.momentum for bn in bns]
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None  # cumulative average: after one batch, the batch statistics
    model.train()
    with torch.no_grad():
        model(x)
    for bn, m in zip(bns, momenta):
        bn.momentum = m
    return model.eval()


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def aap_module_ids(model: DualStreamNet) -> set[int]:
    ids = set()
    for parent, attr in model.aap_modules():
        mod = getattr(parent, attr)
        if mod is not None:
            ids |= {id(m) for m in mod.modules()}
    return ids


# ----------------------------------------------------------------------------------------------------------------------
# Registry
# ----------------------------------------------------------------------------------------------------------------------
def test_registry_lists_every_model():
    assert list_models() == sorted(RESNETS + DVS)
    assert list_models("fsnn_resnet*") == sorted(f"fsnn_resnet{d}" for d in (18, 34, 50, 101, 152))
    assert list_models("*7b*") == DVS
    assert is_model("fsnn_resnet18") and not is_model("resnet18")


def test_create_model_records_name_and_kwargs():
    m = create_model("sew_resnet18", T=3, num_classes=7)
    assert m.model_name == "sew_resnet18"
    assert m.model_kwargs == {"T": 3, "num_classes": 7}
    assert m.T == 3 and m.fc.out_features == 7


def test_register_twice_raises():
    def fsnn_resnet18():  # same name as a registered entry point
        raise AssertionError("must not be called")

    with pytest.raises(ValueError, match="twice"):
        register_model(fsnn_resnet18)


def test_default_configurations():
    """fsnn_*: the DST model (IAND + AAP, IF neuron); sew_*: ADD without AAP; spiking_*: no AAP; DVS nets: PLIF."""
    fsnn, sew, spk = create_model("fsnn_resnet18"), create_model("sew_resnet18"), create_model("spiking_resnet18")
    assert (fsnn.connect, fsnn.has_aap, fsnn.T, fsnn.fc.out_features) == ("IAND", True, 4, 1000)
    assert (sew.connect, sew.has_aap) == ("ADD", False)
    assert not spk.has_aap and spk.style == "spiking"
    assert all(type(m) is MultiStepIF for m in fsnn.modules() if isinstance(m, MultiStepNeuron))
    dvs = create_model("fsnn_7b_net")
    assert dvs.has_aap and dvs.fc.out_features == 11 and dvs.fc.in_features == 32
    assert all(type(m) is MultiStepPLIF for m in dvs.modules() if isinstance(m, MultiStepNeuron))
    wide = create_model("fsnn_wide_7b_net")
    assert wide.fc.out_features == 10 and wide.fc.in_features == 128


# ----------------------------------------------------------------------------------------------------------------------
# Every model builds and runs forward + backward
# ----------------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", list_models())
def test_every_model_forward_backward(name):
    torch.manual_seed(0)
    T = 1 if name.endswith(("50", "101", "152")) else 2
    model = build(name, T=T)
    model.train()
    x = sample_input(name, T=T, size=32)
    out = model(x)
    has_aap = name.startswith("fsnn")
    assert isinstance(out, StreamLogits) == has_aap
    logits = list(out) if has_aap else [out]
    for z in logits:
        assert z.shape == (2, NUM_CLASSES) and z.dtype == torch.float32 and torch.isfinite(z).all()
    y = torch.tensor([1, 3])
    DSTLoss()(out, y).total.backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None, f"{pname} got no gradient"
        assert torch.isfinite(p.grad).all(), pname
    first_conv = next(m for m in model.modules() if isinstance(m, nn.Conv2d))
    assert weight_parameter(first_conv).grad.abs().sum() > 0  # the surrogate gradient reaches the encoding layer
    assert model.fc.bias.grad.abs().sum() > 0


# ----------------------------------------------------------------------------------------------------------------------
# Parameter counts
# ----------------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["fsnn_resnet18", "sew_resnet18", "spiking_resnet18", "fsnn_resnet50"])
def test_resnets_run_channels_last_by_default(name):
    """The image enters in channels-last order and every conv and BN (both streams) then sees channels-last inputs;
    channels_last=False keeps NCHW. Same weights, same outputs up to float rounding either way."""
    torch.manual_seed(0)
    kw = {"aap": False} if name.startswith("spiking") else {}
    cl = calibrate_bn(build(name, **kw), sample_input(name, n=4))
    nchw = calibrate_bn(build(name, channels_last=False, **kw), sample_input(name, n=4))
    nchw.load_state_dict(cl.state_dict())
    assert cl.channels_last and not nchw.channels_last

    def conv_input_layouts(model):
        seen = []
        def layout(x):  # (a 1x1 map, or a single channel, is both: not counted)
            cl, nchw = x.is_contiguous(memory_format=torch.channels_last), x.is_contiguous()
            return "either" if cl and nchw else "cl" if cl else "nchw" if nchw else "other"
        hooks = [m.register_forward_hook(lambda mod, inp, out: seen.append(layout(inp[0])))
                 for m in model.modules() if isinstance(m, (nn.Conv2d, nn.BatchNorm2d))]
        with torch.no_grad():
            out = model(sample_input(name, n=4, seed=1))
        for h in hooks:
            h.remove()
        return set(seen) - {"either"}, out

    cl_layouts, cl_out = conv_input_layouts(cl)
    nchw_layouts, nchw_out = conv_input_layouts(nchw)
    assert cl_layouts == {"cl"} and nchw_layouts == {"nchw"}
    for a, b in zip(cl_out if isinstance(cl_out, tuple) else [cl_out], nchw_out if isinstance(nchw_out, tuple)
                    else [nchw_out]):
        # a spike that flips on a rounding difference moves a logit by one spike's weight: rare, and small
        assert torch.allclose(a, b, atol=1e-3, rtol=1e-3) or (a - b).abs().gt(1e-3).float().mean() < 0.05


def test_resnet18_parameter_counts():
    plain = create_model("fsnn_resnet18", aap=False)
    with_aap = create_model("fsnn_resnet18", aap=True)
    assert n_params(plain) == 11_689_512  # = torchvision's ResNet-18: the spiking neurons add nothing (IF)
    assert n_params(with_aap) - n_params(plain) == 177_856
    aap_params = sum(p.numel() for parent, attr in with_aap.aap_modules() for p in getattr(parent, attr).parameters())
    assert aap_params == 177_856
    assert n_params(create_model("sew_resnet18")) == 11_689_512


def test_resnet50_aap_parameter_count():
    plain = create_model("fsnn_resnet50", aap=False)
    with_aap = create_model("fsnn_resnet50", aap=True)
    assert n_params(plain) == 25_557_032  # = torchvision's ResNet-50
    assert n_params(with_aap) - n_params(plain) == 2_792_704
    # four transitions: layer1 (stride 1, 64->256) and the three stride-2 stage entries
    assert len(with_aap.aap_modules()) == 4


# ----------------------------------------------------------------------------------------------------------------------
# Output types and stream selection
# ----------------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["fsnn_resnet18", "fsnn_7b_net"])
@pytest.mark.parametrize("mode", ["eval", "train"])
def test_aap_model_streams(name, mode):
    torch.manual_seed(0)
    x = sample_input(name)
    model = calibrate_bn(build(name), sample_input(name, seed=1))
    getattr(model, mode)()
    out = model(x)
    assert type(out) is StreamLogits and out._fields == STREAMS == ("fsnn", "dsnn")
    assert not torch.equal(out.fsnn, out.dsnn)
    z_f = model(x, stream="fsnn")
    assert isinstance(z_f, torch.Tensor) and torch.equal(z_f, out.fsnn)
    if mode == "eval":  # in train mode the previous forwards moved the AAP's BN statistics; in eval nothing moves
        assert torch.equal(model(x, stream="dsnn"), out.dsnn)
    with pytest.raises(ValueError, match="stream"):
        model(x, stream="both")


@pytest.mark.parametrize("name,kw", [("fsnn_resnet18", {"aap": False}), ("sew_resnet18", {}),
                                     ("spiking_resnet18", {}), ("fsnn_7b_net", {"aap": False})])
def test_model_without_aap_returns_a_tensor(name, kw):
    torch.manual_seed(0)
    x = sample_input(name)
    model = calibrate_bn(build(name, **kw), x)
    out = model(x)
    assert type(out) is torch.Tensor and out.shape == (2, NUM_CLASSES)
    assert torch.equal(model(x, stream="fsnn"), out)
    with pytest.raises(ValueError, match="no AAP"):
        model(x, stream="dsnn")


def test_fsnn_stream_does_not_run_the_aap():
    model = build("fsnn_resnet18").eval()
    calls = []
    for parent, attr in model.aap_modules():
        getattr(parent, attr).register_forward_hook(lambda *a: calls.append(1))
    model(sample_input("fsnn_resnet18"), stream="fsnn")
    assert calls == []
    model(sample_input("fsnn_resnet18"))
    assert len(calls) == 3


@pytest.mark.parametrize("name", ["fsnn_resnet18", "fsnn_wide_7b_net"])
def test_aap_parameters_move_only_the_dsnn_logits(name):
    torch.manual_seed(0)
    x = sample_input(name)
    model = calibrate_bn(build(name), x)
    before = model(x)
    with torch.no_grad():
        for parent, attr in model.aap_modules():
            for p in getattr(parent, attr).parameters():
                p.add_(torch.randn_like(p) * 0.5)
    after = model(x)
    assert torch.equal(after.fsnn, before.fsnn)
    assert not torch.allclose(after.dsnn, before.dsnn)


# ----------------------------------------------------------------------------------------------------------------------
# The accumulation stream: a_l = P(a_{l-1}) + s_l
# ----------------------------------------------------------------------------------------------------------------------
def test_accumulation_counts_block_spikes_within_a_stage():
    """In ResNet-18's first stage (P = identity) a_2 = o_0 + s_1 + s_2: integers in [0, 3], with s taken before g."""
    torch.manual_seed(0)
    x = sample_input("fsnn_resnet18")
    model = calibrate_bn(build("fsnn_resnet18"), x)
    record = {}
    model.maxpool.register_forward_hook(lambda m, i, o: record.__setitem__("o0", o))
    for k in (0, 1):
        model.blocks[k].residual.register_forward_hook(lambda m, i, o, k=k: record.__setitem__(f"s{k + 1}", o))
    model.blocks[1].register_forward_hook(lambda m, i, o: record.__setitem__("a2", o[1]))
    model(x)
    a2 = record["a2"]
    assert torch.equal(a2, record["o0"] + record["s1"] + record["s2"])
    assert set(a2.unique().tolist()) == {0.0, 1.0, 2.0, 3.0}


def test_dvs_accumulation_is_pooled_with_the_spikes():
    """7B-Net: a_1 = o_0 + s_1, then the same MaxPool2x2 as the spike stream; a_2 = MaxPool(a_1) + s_2, ..."""
    torch.manual_seed(0)
    x = sample_input("fsnn_7b_net")
    model = calibrate_bn(build("fsnn_7b_net"), x)
    record, pooled = {}, []
    model.stages[0].register_forward_hook(lambda m, i, o: record.__setitem__("o0", o))
    for k in (1, 2):
        model.stages[k].residual.register_forward_hook(lambda m, i, o, k=k: record.__setitem__(f"s{k}", o))
        model.stages[k].register_forward_hook(lambda m, i, o, k=k: record.__setitem__(f"a{k}", o[1]))
    model.pool.register_forward_hook(lambda m, i, o: pooled.append(o))
    model(x)
    a1 = record["o0"] + record["s1"]
    assert torch.equal(record["a1"], a1)
    a1_pooled = nn.functional.max_pool2d(a1.flatten(0, 1), 2, ceil_mode=True).unflatten(0, a1.shape[:2])
    assert torch.equal(pooled[1], a1_pooled)  # pool calls alternate: spikes o_1, accumulation a_1, spikes o_2, ...
    assert torch.equal(record["a2"], a1_pooled + record["s2"])
    assert record["a2"].max() >= 2  # integers beyond {0, 1}: the accumulation counts
    _, a_last = model.forward_streams(x, with_aap=True)
    assert a_last.shape == (2, 2, 32, 1, 1)  # [T, N, C, 1, 1] after 7 ceil-mode pools from 16x16


# ----------------------------------------------------------------------------------------------------------------------
# Removing the AAP leaves the FSNN bit-identical
# ----------------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["fsnn_resnet18", "fsnn_resnet50", "fsnn_7b_net", "fsnn_wide_7b_net"])
def test_remove_aap_keeps_fsnn_logits_bit_for_bit(name):
    torch.manual_seed(0)
    T = 1 if name == "fsnn_resnet50" else 2
    model = build(name, T=T)
    x = sample_input(name, T=T)
    calibrate_bn(model, sample_input(name, T=T, seed=1))  # non-trivial running statistics for the eval check
    stripped = copy.deepcopy(model).remove_aap()
    assert isinstance(stripped, DualStreamNet) and not stripped.has_aap and model.has_aap
    stripped_state = copy.deepcopy(stripped.state_dict())

    keys, all_keys = set(stripped.state_dict()), set(model.state_dict())
    assert not any("aap" in k for k in keys), sorted(k for k in keys if "aap" in k)
    assert all_keys - keys == {k for k in all_keys if "aap" in k}
    assert (all_keys - keys != set()) == (name != "fsnn_7b_net")  # 7B-Net's AAP (MaxPool only) has no parameters
    fresh = build(name, T=T, aap=False)
    assert n_params(stripped) == n_params(fresh)
    assert stripped.aap_modules() == [] or all(getattr(p, a) is None for p, a in stripped.aap_modules())

    z_eval = None
    for mode in ("eval", "train"):
        model.train(mode == "train")
        stripped.train(mode == "train")
        with torch.no_grad():
            z_model = model(x)
            z_stripped = stripped(x)
        assert type(z_stripped) is torch.Tensor
        assert torch.equal(z_stripped, z_model.fsnn), mode
        z_eval = z_model.fsnn if mode == "eval" else z_eval

    # the stripped model is exactly the no-AAP architecture: its weights load strictly into a fresh aap=False build
    # (the state taken before the train-mode forward above moved the BN statistics)
    fresh.load_state_dict(stripped_state, strict=True)
    with torch.no_grad():
        assert torch.equal(fresh.eval()(x), z_eval)


def test_remove_aap_gradients_of_the_fsnn_stream_are_unchanged():
    """Backward through the FSNN stream alone is the same with and without the AAP present."""
    torch.manual_seed(0)
    model = build("fsnn_resnet18").train()
    stripped = copy.deepcopy(model).remove_aap()
    x, y = sample_input("fsnn_resnet18"), torch.tensor([0, 4])
    nn.functional.cross_entropy(model(x).fsnn, y).backward()
    nn.functional.cross_entropy(stripped(x), y).backward()
    grads = dict(stripped.named_parameters())
    for pname, p in model.named_parameters():
        if "aap" in pname:
            continue
        assert torch.equal(p.grad, grads[pname].grad), pname


# ----------------------------------------------------------------------------------------------------------------------
# Full-spike property of the spike stream
# ----------------------------------------------------------------------------------------------------------------------
def conv_inputs(model: DualStreamNet, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """Inputs of every Conv2d of the spike stream except the encoding (stem) conv, from one forward."""
    skip = aap_module_ids(model)
    convs = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Conv2d) and id(m) not in skip]
    stem_name = convs[0][0]
    assert stem_name in ("stem_conv", "stages.0.0.0"), stem_name
    seen: dict[str, torch.Tensor] = {}
    handles = [m.register_forward_hook(lambda mod, inp, out, n=n: seen.__setitem__(n, inp[0].detach()))
               for n, m in convs[1:]]
    try:
        model(x)
    finally:
        for h in handles:
            h.remove()
    assert set(seen) == {n for n, _ in convs[1:]}  # every one of them ran
    return seen


def is_binary(t: torch.Tensor) -> bool:
    return bool(((t == 0) | (t == 1)).all())


@pytest.mark.parametrize("name,connect", [("fsnn_resnet18", "IAND"), ("fsnn_resnet18", "AND"), ("fsnn_resnet18", "OR"),
                                          ("fsnn_resnet18", "XOR"), ("fsnn_resnet50", "IAND"),
                                          ("fsnn_7b_net", "IAND"), ("fsnn_wide_7b_net", "OR")])
def test_spike_stream_is_full_spike(name, connect):
    torch.manual_seed(0)
    T = 1 if name == "fsnn_resnet50" else 2
    model = build(name, T=T, connect=connect).train()  # AAP present: it must not leak into the spike stream
    x = sample_input(name, T=T)
    seen = conv_inputs(model, x)
    bad = [n for n, t in seen.items() if not is_binary(t)]
    assert bad == []
    assert all(t.dtype == torch.float32 for t in seen.values())
    # and the check is not vacuous: most convs receive spikes (a few deep 1x1 maps at this tiny size may be silent)
    assert sum(bool(t.sum() > 0) for t in seen.values()) >= 0.6 * len(seen)


@pytest.mark.parametrize("name,kw", [("sew_resnet18", {}), ("fsnn_resnet18", {"connect": "ADD"}),
                                     ("fsnn_7b_net", {"connect": "ADD"})])
def test_add_connect_is_not_full_spike(name, kw):
    torch.manual_seed(0)
    x = sample_input(name)
    seen = conv_inputs(calibrate_bn(build(name, **kw), x), x)
    assert any(not is_binary(t) for t in seen.values())


def test_final_fc_sees_firing_rates():
    torch.manual_seed(0)
    x = sample_input("fsnn_resnet18")
    model = calibrate_bn(build("fsnn_resnet18", aap=False), x)
    got = {}
    model.fc.register_forward_hook(lambda m, i, o: got.__setitem__("x", i[0]))
    model(x)
    assert got["x"].shape == (2, 512)
    assert got["x"].min() >= 0 and got["x"].max() <= 1 and got["x"].max() > 0


# ----------------------------------------------------------------------------------------------------------------------
# A few optimisation steps lower the DST loss
# ----------------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["fsnn_resnet18", "fsnn_7b_net"])
def test_training_lowers_dst_loss(name):
    torch.manual_seed(0)
    model = build(name, T=2).train()
    n, steps, lr = (4, 10, 3e-3) if name == "fsnn_resnet18" else (8, 12, 1e-2)
    x = sample_input(name, n=n, T=2, size=16, seed=3)
    y = torch.arange(n) % 4
    loss_fn = DSTLoss()
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    losses = []
    for _ in range(steps):
        out = model(x)
        loss = loss_fn(out, y)
        opt.zero_grad(set_to_none=True)
        loss.total.backward()
        opt.step()
        losses.append((loss.total.item(), loss.fsnn.item(), loss.dsnn.item()))
    first, last = losses[0], losses[-1]
    assert all(torch.isfinite(torch.tensor(v)).all() for v in losses)
    assert last[0] < 0.7 * first[0], losses
    assert last[1] < first[1] and last[2] < first[2], losses  # both streams learn


# ----------------------------------------------------------------------------------------------------------------------
# Bad arguments
# ----------------------------------------------------------------------------------------------------------------------
def test_unknown_model_name():
    with pytest.raises(ValueError, match="unknown model 'resnet18'"):
        create_model("resnet18")


@pytest.mark.parametrize("name", ["fsnn_resnet18", "fsnn_7b_net"])
def test_unknown_neuron(name):
    with pytest.raises(ValueError, match="unknown neuron"):
        create_model(name, neuron="hodgkin_huxley")


@pytest.mark.parametrize("name", ["fsnn_resnet18", "fsnn_7b_net"])
def test_unknown_connect(name):
    with pytest.raises(ValueError, match="unknown connect"):
        create_model(name, connect="NAND")


@pytest.mark.parametrize("name", ["spiking_resnet18", "spiking_resnet50"])
def test_spiking_resnet_with_aap(name):
    with pytest.raises(ValueError, match="AAP"):
        create_model(name, aap=True)


def test_dvs_nets_take_T_from_the_frames():
    """The pipeline passes T to every model: a DVS net accepts it, and the frames' count defines T (training may
    use a random subset of the frames)."""
    torch.manual_seed(0)
    a = create_model("fsnn_7b_net", num_classes=NUM_CLASSES, T=4).eval()
    b = create_model("fsnn_7b_net", num_classes=NUM_CLASSES).eval()
    b.load_state_dict(a.state_dict())
    x = sample_input("fsnn_7b_net", T=3)
    assert torch.equal(a(x).fsnn, b(x).fsnn)
    assert a(sample_input("fsnn_7b_net", T=5)).fsnn.shape == (2, NUM_CLASSES)


def test_bad_resnet_args():
    with pytest.raises(ValueError, match="T must be"):
        create_model("fsnn_resnet18", T=0)
    with pytest.raises(TypeError):
        create_model("fsnn_resnet18", not_an_arg=1)


@pytest.mark.parametrize("name,shape", [("fsnn_resnet18", (2, 2, 3, 32, 32)), ("fsnn_resnet18", (3, 32, 32)),
                                        ("spiking_resnet18", (2, 2, 3, 32, 32)), ("fsnn_7b_net", (2, 2, 32, 32)),
                                        ("fsnn_wide_7b_net", (2, 2, 2, 2, 32, 32))])
def test_wrong_input_rank(name, shape):
    model = build(name).eval()
    with pytest.raises(ValueError, match="expects"):
        model(torch.zeros(shape))


def test_neuron_kwargs_reach_every_neuron():
    model = create_model("fsnn_resnet18", num_classes=2, neuron="lif",
                         neuron_kwargs={"tau": 3.0, "surrogate": "sigmoid", "detach_reset": False})
    neurons = [m for m in model.modules() if isinstance(m, MultiStepNeuron)]
    assert len(neurons) == 1 + 2 * 8 + 3  # stem, 2 per basic block, 3 downsample shortcuts
    assert all(n.tau == 3.0 and n.surrogate.name == "sigmoid" and not n.detach_reset for n in neurons)
    assert len({id(n) for n in neurons}) == len(neurons)  # one module per site, not a shared instance


# ----------------------------------------------------------------------------------------------------------------------
# MultiStep layers
# ----------------------------------------------------------------------------------------------------------------------
def per_step(module: nn.Module, x_seq: torch.Tensor) -> torch.Tensor:
    return torch.stack([module(x) for x in x_seq])


@pytest.mark.parametrize("make", [lambda: nn.Conv2d(3, 4, 3, stride=2, padding=1),
                                  lambda: nn.MaxPool2d(3, stride=2, padding=1),
                                  lambda: nn.AvgPool2d(2),
                                  lambda: nn.Sequential(nn.Conv2d(3, 5, 1, bias=False), nn.BatchNorm2d(5))])
def test_multistep_equals_per_step_loop(make):
    torch.manual_seed(0)
    layer = make()
    for m in layer.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-1, 1)
            m.running_var.uniform_(0.5, 2)
    layer.eval()
    wrapped = MultiStep(layer)
    x = torch.randn(4, 3, 3, 9, 9, requires_grad=True)
    y = wrapped(x)
    y_loop = per_step(layer, x)
    assert y.shape == y_loop.shape and y.shape[:2] == (4, 3)
    torch.testing.assert_close(y, y_loop, rtol=1e-5, atol=1e-6)
    g = torch.randn_like(y)
    (gx,) = torch.autograd.grad((y * g).sum(), x)
    (gx_loop,) = torch.autograd.grad((y_loop * g).sum(), x)
    torch.testing.assert_close(gx, gx_loop, rtol=1e-5, atol=1e-6)


def test_multistep_bn_train_uses_stats_over_t_and_n():
    torch.manual_seed(0)
    block = conv_bn(2, 3, 1)
    conv = block[0]
    x = torch.randn(5, 4, 2, 6, 6)
    x[3:] += 2.0  # later steps have another mean: statistics over T*N differ from per-step statistics
    y = block(x)
    z = conv(x.flatten(0, 1))
    mu, var = z.mean(dim=(0, 2, 3), keepdim=True), z.var(dim=(0, 2, 3), unbiased=False, keepdim=True)
    torch.testing.assert_close(y, ((z - mu) / torch.sqrt(var + 1e-5)).unflatten(0, (5, 4)), rtol=1e-4, atol=1e-5)


def test_conv_bn_shapes():
    block = conv_bn(4, 8, 3, stride=2)
    conv, bn = block
    assert conv.bias is None and conv.padding == (1, 1) and conv.stride == (2, 2) and bn.num_features == 8
    assert block(torch.zeros(3, 2, 4, 10, 10)).shape == (3, 2, 8, 5, 5)


def test_repeat_time_and_mean_pool_time():
    x = torch.randn(2, 3, 4, 4)
    r = repeat_time(x, 5)
    assert r.shape == (5, 2, 3, 4, 4) and r.data_ptr() == x.data_ptr() and r.stride(0) == 0
    assert all(torch.equal(r[t], x) for t in range(5))
    seq = torch.randn(3, 2, 6, 4, 4)
    torch.testing.assert_close(mean_pool_time(seq), seq.mean(dim=0).mean(dim=(2, 3)))


# ----------------------------------------------------------------------------------------------------------------------
# Firing-rate monitor
# ----------------------------------------------------------------------------------------------------------------------
def test_monitor_rates_and_hook_removal():
    torch.manual_seed(0)
    x = sample_input("fsnn_resnet18")
    model = calibrate_bn(build("fsnn_resnet18"), x)
    neurons = {n: m for n, m in model.named_modules() if isinstance(m, MultiStepNeuron)}
    spikes = {}
    handles = [m.register_forward_hook(lambda mod, i, o, n=n: spikes.__setitem__(n, o)) for n, m in neurons.items()]
    with FiringRateMonitor(model) as mon:
        model(x)
        assert all(len(m._forward_hooks) == 2 for m in neurons.values())
    for h in handles:
        h.remove()
    assert all(len(m._forward_hooks) == 0 for m in model.modules())
    rates = mon.rates
    assert set(rates) == set(neurons)
    assert all(0.0 <= r <= 1.0 for r in rates.values())
    assert 0.0 < mon.mean_rate < 1.0
    for n, s in spikes.items():
        assert rates[n] == pytest.approx(s.float().mean().item(), rel=1e-6)
    total = sum(s.numel() for s in spikes.values())
    assert mon.mean_rate == pytest.approx(sum(s.float().sum().item() for s in spikes.values()) / total, rel=1e-6)
    # outside the `with` block nothing is recorded any more
    model(x * 3)
    assert mon.rates == rates


def test_monitor_accumulates_weighted_by_count_and_resets():
    neuron = MultiStepIF()
    net = nn.Sequential(neuron)
    with FiringRateMonitor(net) as mon:
        net(torch.full((1, 4), 2.0))   # 4 spikes of 4
        net(torch.zeros(1, 12))        # 0 spikes of 12
        assert mon.rates == {"0": pytest.approx(4 / 16)}
        mon.reset()
        assert mon.rates == {} and mon.mean_rate == 0.0
        net(torch.full((2, 3), 2.0))
        assert mon.rates == {"0": 1.0}
    assert not neuron._forward_hooks


def test_monitor_removes_hooks_on_error():
    net = nn.Sequential(MultiStepIF())
    with pytest.raises(RuntimeError, match="boom"):
        with FiringRateMonitor(net):
            raise RuntimeError("boom")
    assert not net[0]._forward_hooks
