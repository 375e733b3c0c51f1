"""SEW ResNet's DVS nets with the AAP: 7B-Net (DVS128 Gesture) and Wide-7B-Net (CIFAR10-DVS).

Input: event frames [N, T, 2, H, W]. SEWBlock(c) = [Conv3x3-BN-PLIF] x 2 giving s, then o = g(s, x), followed by a
MaxPool2x2. Our AAP for these nets (a choice, not published): a = P(a) + s, with P the same MaxPool as the spike stream,
and Conv1x1-BN-ReLU where the channel count changes.
"""
from __future__ import annotations

import torch
from torch import nn

from dst.layers import MultiStep, conv_bn
from dst.models.base import DualStreamNet, neuron_factory
from dst.models.registry import register_model
from dst.models.resnet import SEWBlock, aap_transition

# Network plans: ("conv", channels) is Conv1x1-BN-SN (the first one encodes the frames), "block" is a SEWBlock + pool.
PLAN_7B = [("conv", 32)] + [("block", None)] * 7
PLAN_WIDE_7B = [("conv", 64)] + [("block", None)] * 4 + [("conv", 128)] + [("block", None)] * 3


class DVSNet(DualStreamNet):
    def __init__(self, plan, *, num_classes: int, in_channels: int = 2, connect: str = "IAND", aap: bool = True,
                 neuron: str = "plif", neuron_kwargs: dict | None = None, T: int | None = None):
        # T is accepted for a uniform model interface only: the number of frames in the input defines T here
        # (training may use a random subset of the frames, so train and eval T can differ).
        super().__init__()
        self.aap, self.connect = bool(aap), connect.upper()
        make_neuron = neuron_factory(neuron, neuron_kwargs)
        # ceil_mode keeps a 1x1 map at 1x1, so inputs smaller than 128x128 (the demo data) also work;
        # at 128x128 (7 pools to 1x1) it is identical to SEW's MaxPool2d(2, 2).
        self.pool = MultiStep(nn.MaxPool2d(2, 2, ceil_mode=True))
        self.stages = nn.ModuleList()
        self.aap_transitions = nn.ModuleList()  # one entry per stage: a Conv1x1-BN-ReLU or Identity
        ch = in_channels
        for i, (kind, out_ch) in enumerate(plan):
            if kind == "conv":
                self.stages.append(nn.Sequential(conv_bn(ch, out_ch, 1), make_neuron()))
                needs_p = aap and i > 0 and out_ch != ch
                self.aap_transitions.append(aap_transition(ch, out_ch, 1) if needs_p else nn.Identity())
                ch = out_ch
            else:
                residual = nn.Sequential(conv_bn(ch, ch, 3), make_neuron(), conv_bn(ch, ch, 3), make_neuron())
                self.stages.append(SEWBlock(residual, None, connect, None))
                self.aap_transitions.append(nn.Identity())
        self.fc = nn.Linear(ch, num_classes)

    def aap_modules(self):
        return [(self, "aap_transitions")]

    def forward_streams(self, x: torch.Tensor, with_aap: bool):
        if x.dim() != 5:
            raise ValueError(f"{type(self).__name__} expects frames [N, T, 2, H, W], got shape {tuple(x.shape)}")
        o = x.transpose(0, 1)  # -> [T, N, 2, H, W]
        a = None
        for i, stage in enumerate(self.stages):
            if isinstance(stage, SEWBlock):
                o, a = stage(o, a)
                o = self.pool(o)
                a = None if a is None else self.pool(a)
            else:
                o = stage(o)
                if i == 0:
                    a = o if with_aap else None
                elif a is not None:
                    a = self.aap_transitions[i](a)
        return o, a


@register_model
def fsnn_7b_net(num_classes: int = 11, **kw):
    """SEW's 7B-Net for DVS128 Gesture (128x128x2, 11 classes), with the AAP by default."""
    return DVSNet(PLAN_7B, num_classes=num_classes, **kw)


@register_model
def fsnn_wide_7b_net(num_classes: int = 10, **kw):
    """SEW's Wide-7B-Net for CIFAR10-DVS (128x128x2, 10 classes), with the AAP by default."""
    return DVSNet(PLAN_WIDE_7B, num_classes=num_classes, **kw)
