"""Conv weights stored channels-last (dst/models/channels_last.py): the conv sees a channels-last weight, every parameter
is contiguous (DeepSpeed broadcasts parameters as byte views, ZeRO flattens them), and state_dict keeps the standard
form, so checkpoints move between channels-last and NCHW models."""
from __future__ import annotations

import copy

import torch
from torch import nn
from torch.nn.utils import parametrize

from dst.loss import DSTLoss
from dst.models import create_model
from dst.models.channels_last import standard_state_dict, weight_parameter


def build(**kw):
    torch.manual_seed(0)
    return create_model("fsnn_resnet18", T=2, num_classes=10, **kw)


def convs(model):
    return [m for m in model.modules() if isinstance(m, nn.Conv2d)]


def test_convs_see_channels_last_weights_stored_as_contiguous_parameters():
    model = build()
    reordered = [c for c in convs(model) if c.kernel_size != (1, 1) and c.in_channels // c.groups > 1]
    assert len(reordered) == 17  # the stem and the 16 3x3 convs of ResNet-18 (the AAP's are depthwise)
    for c in reordered:
        assert parametrize.is_parametrized(c, "weight")
        assert c.weight.is_contiguous(memory_format=torch.channels_last) and not c.weight.is_contiguous()
    for name, p in model.named_parameters():
        assert p.is_contiguous(), name
        p.data.view(torch.uint8)  # what DeepSpeed's parameter broadcast does
    # an NCHW model is left as it was
    for c in convs(build(channels_last=False)):
        assert not parametrize.is_parametrized(c) and c.weight.is_contiguous()


def test_state_dict_is_the_standard_one_and_moves_between_layouts():
    cl, nchw = build(), build(channels_last=False)
    sd = cl.state_dict()
    assert sd.keys() == nchw.state_dict().keys()
    for key, value in nchw.state_dict().items():
        assert sd[key].shape == value.shape and sd[key].is_contiguous(), key
    x = torch.randn(2, 3, 32, 32)
    nchw.load_state_dict(sd)
    other = build()
    with torch.no_grad():
        other.blocks[0].residual[0][0].weight.mul_(0)  # different weights, replaced by the load below
    other.load_state_dict(nchw.state_dict())
    for m in (cl, nchw, other):
        m.eval()
    with torch.no_grad():
        want = cl(x).fsnn
        torch.testing.assert_close(nchw(x).fsnn, want, rtol=1e-5, atol=1e-5)
        assert torch.equal(other(x).fsnn, want)


def test_standard_state_dict_of_parameter_names():
    """What DeepSpeed's zero_to_fp32 rebuilds (keys from named_parameters) loads after standard_state_dict."""
    model = build()
    by_name = {n: p.detach().clone() for n, p in model.named_parameters()}
    by_name.update({n: b.clone() for n, b in model.named_buffers()})
    assert any(k.endswith("parametrizations.weight.original") for k in by_name)
    sd = standard_state_dict(by_name)
    assert sd.keys() == model.state_dict().keys()
    fresh = build(channels_last=False)
    fresh.load_state_dict(sd)
    for key, value in model.state_dict().items():
        assert torch.equal(fresh.state_dict()[key], value), key


def test_gradients_and_optimizer_steps_reach_the_stored_weight():
    model = build()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    conv = model.blocks[0].residual[0][0]
    before = conv.weight.detach().clone()
    DSTLoss()(model(torch.randn(2, 3, 32, 32)), torch.tensor([1, 2])).total.backward()
    assert weight_parameter(conv).grad.abs().sum() > 0
    opt.step()
    assert not torch.equal(conv.weight, before)


def test_deep_copies_are_independent():
    model = build()
    copied = copy.deepcopy(model)
    with torch.no_grad():
        weight_parameter(copied.blocks[0].residual[0][0]).zero_()
    assert weight_parameter(model.blocks[0].residual[0][0]).abs().sum() > 0
