"""BatchNorm folding: every Conv -> BatchNorm pair of an eval-mode model becomes one Conv with bias.

Deployment targets (TorchScript, torch.export, neuromorphic toolchains) see one synaptic layer per conv instead of a
conv plus an affine map, and the folded weights are what a chip stores. Folding is exact in real arithmetic; in
float it moves logits by rounding, which can flip a spike whose membrane potential sits at the threshold, so callers
measure the difference (see `dst.verify.spike_agreement`) rather than assume none.
"""
from __future__ import annotations

import copy

from torch import nn
from torch.nn.utils import parametrize


def fold_conv_bn(conv: nn.modules.conv._ConvNd, bn: nn.modules.batchnorm._BatchNorm) -> nn.modules.conv._ConvNd:
    """conv followed by bn (eval statistics) as one conv with bias. Computed in float64, stored in conv's dtype."""
    if bn.running_mean is None or bn.running_var is None:
        raise ValueError("cannot fold a BatchNorm without running statistics (track_running_stats=False)")
    if bn.num_features != conv.out_channels:
        raise ValueError(f"BatchNorm over {bn.num_features} channels cannot follow a conv with {conv.out_channels}")
    dtype = conv.weight.dtype
    scale = (bn.running_var.double() + bn.eps).rsqrt()
    if bn.weight is not None:
        scale = scale * bn.weight.detach().double()
    shift = -bn.running_mean.double() * scale
    if bn.bias is not None:
        shift = shift + bn.bias.detach().double()
    if conv.bias is not None:
        shift = shift + conv.bias.detach().double() * scale
    if parametrize.is_parametrized(conv, "weight"):
        # a stored channels-last weight (dst/models/channels_last.py): the folded conv is a plain Conv2d. (Removing
        # the parametrization from a deep copy would remove it from `conv` too: the copies share their class.)
        fused = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, stride=conv.stride,
                          padding=conv.padding, dilation=conv.dilation, groups=conv.groups, bias=True,
                          padding_mode=conv.padding_mode, device=conv.weight.device, dtype=dtype).train(conv.training)
    else:
        fused = copy.deepcopy(conv)
    fused.weight = nn.Parameter((conv.weight.detach().double()
                                 * scale.reshape(-1, *([1] * (conv.weight.dim() - 1)))).to(dtype))
    fused.bias = nn.Parameter(shift.to(dtype))
    return fused


def _is_conv(m: nn.Module) -> bool:
    return isinstance(m, nn.modules.conv._ConvNd) and not m.transposed


def fold_bn(model: nn.Module) -> nn.Module:
    """An eval-mode copy of `model` with every Conv -> BatchNorm pair folded into one Conv with bias (the BN becomes
    Identity). Pairs are consecutive children of a Sequential (conv_bn's MultiStep, the AAP transitions) and the
    stem (`stem_conv` -> `stem_bn`, which the ResNets call in sequence). Outputs equal the unfolded model's within
    float rounding; a spike can flip where a membrane potential sits at the threshold to within that rounding."""
    folded = copy.deepcopy(model).eval()
    for module in list(folded.modules()):
        if isinstance(module, nn.Sequential):
            names = list(module._modules)
            for first, second in zip(names, names[1:]):
                conv, bn = module._modules[first], module._modules[second]
                if _is_conv(conv) and isinstance(bn, nn.modules.batchnorm._BatchNorm):
                    setattr(module, first, fold_conv_bn(conv, bn))
                    setattr(module, second, nn.Identity())
        conv, bn = getattr(module, "stem_conv", None), getattr(module, "stem_bn", None)
        if conv is not None and _is_conv(conv) and isinstance(bn, nn.modules.batchnorm._BatchNorm):
            module.stem_conv, module.stem_bn = fold_conv_bn(conv, bn), nn.Identity()
    return folded


def unfolded_batchnorms(model: nn.Module) -> list[str]:
    """Names of the BatchNorm modules still in `model` (empty once fold_bn has folded them all)."""
    return [n for n, m in model.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
