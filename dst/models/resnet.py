"""Spiking ResNets for ImageNet: FSNN/DSNN with the AAP (DST), SEW-ResNet (ADD) and Spiking ResNet baselines.

Spike stream (block l):    s_l = SN(BN(Conv(... SN(BN(Conv(o_{l-1}))) ...)))      o_l = g(s_l, D(o_{l-1}))
Accumulation stream (AAP): a_l = P(a_{l-1}) + s_l                                  a_0 = o_0
with D = identity or SN(BN(Conv1x1/stride)), P = identity or an AAP transition where D is not identity.
"""
from __future__ import annotations

import torch
from torch import nn

from dst.connect import get_connect, join
from dst.kernels.spike_pool import spike_maxpool
from dst.layers import MultiStep, conv_bn
from dst.models.base import DualStreamNet, neuron_factory
from dst.models.channels_last import store_conv_weights_channels_last
from dst.models.registry import register_model


def aap_transition(in_ch: int, out_ch: int, stride: int) -> MultiStep:
    """P at a stage transition. Stride 2: depthwise Conv3x3/s2 -> Conv1x1 -> BN -> ReLU; stride 1: Conv1x1 -> BN -> ReLU."""
    layers: list[nn.Module] = []
    if stride != 1:
        layers.append(nn.Conv2d(in_ch, in_ch, 3, stride=stride, padding=1, groups=in_ch, bias=False))
    layers += [nn.Conv2d(in_ch, out_ch, 1, bias=False), nn.BatchNorm2d(out_ch), nn.ReLU(inplace=True)]
    return MultiStep(*layers)


class SEWBlock(nn.Module):
    """A SEW-style residual block: spikes s from the residual branch, o = g(s, D(x)); with the AAP, a = P(a) + s."""

    def __init__(self, residual: nn.Sequential, downsample: nn.Module | None, connect: str,
                 aap_transition: nn.Module | None):
        super().__init__()
        self.residual = residual
        self.downsample = downsample
        self.connect_name = connect.upper()
        self.connect = get_connect(connect)
        self.aap_transition = aap_transition

    def forward(self, o: torch.Tensor, a: torch.Tensor | None = None):
        s = self.residual(o)
        d = o if self.downsample is None else self.downsample(o)
        if a is not None and self.aap_transition is not None:
            a = self.aap_transition(a)
        return join(self.connect, s, d, a)

    def extra_repr(self) -> str:
        return f"connect={self.connect_name}"


class SpikingResNetBlock(nn.Module):
    """Spiking ResNet block (Zheng et al. 2021): o = SN(BN(Conv(...)) + D(x)), D = BN(Conv1x1) where shapes change.
    The last neuron sits after the addition, so there is no separate s and no AAP."""

    def __init__(self, residual: nn.Sequential, downsample: nn.Module | None, neuron: nn.Module):
        super().__init__()
        self.residual = residual
        self.downsample = downsample
        self.neuron = neuron

    def forward(self, o: torch.Tensor, a: torch.Tensor | None = None):
        d = o if self.downsample is None else self.downsample(o)
        return self.neuron(self.residual(o) + d), None


def residual_branch(kind: str, in_ch: int, planes: int, stride: int, make_neuron, last_neuron: bool) -> nn.Sequential:
    """[Conv-BN-SN] x 2 (basic) or x 3 (bottleneck, 1x1 -> 3x3/stride -> 1x1 x4); last SN optional."""
    if kind == "basic":
        stages = [(in_ch, planes, 3, stride), (planes, planes, 3, 1)]
    else:
        stages = [(in_ch, planes, 1, 1), (planes, planes, 3, stride), (planes, planes * 4, 1, 1)]
    layers: list[nn.Module] = []
    for i, (cin, cout, k, st) in enumerate(stages):
        layers.append(conv_bn(cin, cout, k, st))
        if i < len(stages) - 1 or last_neuron:
            layers.append(make_neuron())
    return nn.Sequential(*layers)


class SpikingResNet(DualStreamNet):
    """ImageNet spiking ResNet. style='sew' gives the FSNN/DSNN (spike-only connect + optional AAP) and SEW-ResNet;
    style='spiking' gives Spiking ResNet. Input: images [N, 3, H, W], presented at each of T steps.

    channels_last (default): the image is put in channels-last memory order on entry, so every conv, BN and neuron
    downstream runs channels-last (conv outputs follow their input's order, the neurons keep it), and the kxk conv
    weights are stored channels-last as well (dst/models/channels_last.py: no weight reorder on every call); faster on
    CPU and GPU (benchmarks/results/design-measurements.md). Results equal NCHW's up to float rounding.

    fused_stem: the stem's neuron and max pool as one kernel each way (dst/kernels/spike_pool.py): None where that is
    the default (CPU), True also on CUDA (Triton; not yet measured on a GPU), False never."""

    def __init__(self, block: str, layers: list[int], *, num_classes: int = 1000, T: int = 4, connect: str = "IAND",
                 aap: bool = True, neuron: str = "if", neuron_kwargs: dict | None = None,
                 zero_init_residual: bool = False, style: str = "sew", channels_last: bool = True,
                 fused_stem: bool | None = None):
        super().__init__()
        if block not in ("basic", "bottleneck"):
            raise ValueError(f"block must be 'basic' or 'bottleneck', got {block!r}")
        if style not in ("sew", "spiking"):
            raise ValueError(f"style must be 'sew' or 'spiking', got {style!r}")
        if style == "spiking" and aap:
            raise ValueError("Spiking ResNet has no separate block spikes s, so it cannot carry an AAP")
        if T < 1:
            raise ValueError(f"T must be >= 1, got {T}")
        get_connect(connect)  # validate early
        self.T, self.aap, self.style, self.connect = T, bool(aap), style, connect.upper()
        self.channels_last = bool(channels_last)
        self.fused_stem = fused_stem
        make_neuron = neuron_factory(neuron, neuron_kwargs)
        expansion = 1 if block == "basic" else 4

        self.stem_conv = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
        self.stem_bn = nn.BatchNorm2d(64)
        self.stem_neuron = make_neuron()
        self.maxpool = MultiStep(nn.MaxPool2d(3, stride=2, padding=1))

        blocks: list[nn.Module] = []
        in_ch = 64
        for stage, (planes, n) in enumerate(zip((64, 128, 256, 512), layers)):
            for i in range(n):
                stride = 2 if (stage > 0 and i == 0) else 1
                out_ch = planes * expansion
                needs_downsample = stride != 1 or in_ch != out_ch
                if style == "sew":
                    downsample = (nn.Sequential(conv_bn(in_ch, out_ch, 1, stride), make_neuron())
                                  if needs_downsample else None)
                    p = aap_transition(in_ch, out_ch, stride) if (aap and needs_downsample) else None
                    blocks.append(SEWBlock(residual_branch(block, in_ch, planes, stride, make_neuron, True),
                                           downsample, connect, p))
                else:
                    downsample = conv_bn(in_ch, out_ch, 1, stride) if needs_downsample else None
                    blocks.append(SpikingResNetBlock(residual_branch(block, in_ch, planes, stride, make_neuron, False),
                                                     downsample, make_neuron()))
                in_ch = out_ch
        self.blocks = nn.ModuleList(blocks)
        self.fc = nn.Linear(512 * expansion, num_classes)
        self._init_weights(zero_init_residual)
        if self.channels_last:
            store_conv_weights_channels_last(self)

    def _init_weights(self, zero_init_residual: bool) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        if zero_init_residual:
            for blk in self.blocks:
                last_bn = [m for m in blk.residual.modules() if isinstance(m, nn.BatchNorm2d)][-1]
                nn.init.zeros_(last_bn.weight)

    def aap_modules(self):
        return [(blk, "aap_transition") for blk in self.blocks
                if isinstance(blk, SEWBlock) and blk.aap_transition is not None]

    def forward_streams(self, x: torch.Tensor, with_aap: bool):
        if x.dim() != 4:
            raise ValueError(f"{type(self).__name__} expects images [N, 3, H, W], got shape {tuple(x.shape)}")
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        # The stem sees the same analog image at every step: conv+BN run once, the neuron repeats it over T (and,
        # where it can, one fused kernel runs neuron and pool: the same as pool(neuron(...)), see spike_maxpool).
        o = spike_maxpool(self.stem_neuron, self.maxpool, self.stem_bn(self.stem_conv(x)), self.T, self.fused_stem)
        a = o if with_aap else None
        for blk in self.blocks:
            o, a = blk(o, a)
        return o, a


_DEPTHS = {18: ("basic", [2, 2, 2, 2]), 34: ("basic", [3, 4, 6, 3]), 50: ("bottleneck", [3, 4, 6, 3]),
           101: ("bottleneck", [3, 4, 23, 3]), 152: ("bottleneck", [3, 8, 36, 3])}


def _fsnn(depth: int, **kw) -> SpikingResNet:
    block, layers = _DEPTHS[depth]
    return SpikingResNet(block, layers, **kw)


def _sew(depth: int, **kw) -> SpikingResNet:
    kw.setdefault("connect", "ADD")
    kw.setdefault("aap", False)
    return _fsnn(depth, **kw)


def _spiking(depth: int, **kw) -> SpikingResNet:
    kw.setdefault("aap", False)
    return _fsnn(depth, style="spiking", **kw)


# Entry points (one per name, like timm): fsnn_resnetN is the DST model (AAP on by default: its DSNN is the same
# model read through z_A); sew_resnetN is the SEW ADD baseline; spiking_resnetN the Spiking ResNet baseline.
@register_model
def fsnn_resnet18(**kw): return _fsnn(18, **kw)
@register_model
def fsnn_resnet34(**kw): return _fsnn(34, **kw)
@register_model
def fsnn_resnet50(**kw): return _fsnn(50, **kw)
@register_model
def fsnn_resnet101(**kw): return _fsnn(101, **kw)
@register_model
def fsnn_resnet152(**kw): return _fsnn(152, **kw)
@register_model
def sew_resnet18(**kw): return _sew(18, **kw)
@register_model
def sew_resnet34(**kw): return _sew(34, **kw)
@register_model
def sew_resnet50(**kw): return _sew(50, **kw)
@register_model
def sew_resnet101(**kw): return _sew(101, **kw)
@register_model
def sew_resnet152(**kw): return _sew(152, **kw)
@register_model
def spiking_resnet18(**kw): return _spiking(18, **kw)
@register_model
def spiking_resnet34(**kw): return _spiking(34, **kw)
@register_model
def spiking_resnet50(**kw): return _spiking(50, **kw)
@register_model
def spiking_resnet101(**kw): return _spiking(101, **kw)
@register_model
def spiking_resnet152(**kw): return _spiking(152, **kw)
