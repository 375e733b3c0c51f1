"""Conv weights stored channels-last, as parameters that DeepSpeed can broadcast and ZeRO can flatten.

With channels-last activations, a conv whose weight is in NCHW order makes oneDNN reorder the weight on every call:
once in forward, once in backward, and once more for the gradient (benchmarks/results/design-measurements.md).
The obvious route does not work:
`model.to(memory_format=torch.channels_last)` gives a weight [O, I, kh, kw] with stride(-1) = I. DeepSpeed broadcasts
every parameter as a byte view, which needs stride(-1) = 1, so `deepspeed.initialize` fails. ZeRO's flattening would
also undo the layout.

So each such weight is stored as a contiguous [O, kh, kw, I] tensor, and the conv reads it through a permuted view
(torch.nn.utils.parametrize). The conv sees a channels-last [O, I, kh, kw] weight, and DeepSpeed sees a contiguous
parameter. `conv.weight` reads and assigns as usual. state_dict() keeps the standard form: key `weight`, shape
[O, I, kh, kw], contiguous. load_state_dict() takes it too. So checkpoints and exports are the same as an NCHW
model's. Parameter names gain the parametrization's path (`...conv.parametrizations.weight.original`), and the
gradient lives on that parameter (`weight_parameter(conv).grad`): `conv.weight` is computed, so its .grad is None.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils import parametrize

ORIGINAL = "parametrizations.weight.original"


class StoredOHWI(nn.Module):
    """The parametrization: stored [O, kh, kw, I] -> the conv's [O, I, kh, kw] view (channels-last strides)."""

    def forward(self, stored: torch.Tensor) -> torch.Tensor:
        return stored.permute(0, 3, 1, 2)

    def right_inverse(self, weight: torch.Tensor) -> torch.Tensor:
        return weight.permute(0, 2, 3, 1).contiguous()


def _standard_weight_on_save(module, state_dict, prefix, local_metadata) -> None:
    stored = state_dict.pop(prefix + ORIGINAL, None)
    if stored is not None:
        state_dict[prefix + "weight"] = stored.permute(0, 3, 1, 2).contiguous()


def _stored_weight_on_load(module, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                           error_msgs) -> None:
    weight = state_dict.get(prefix + "weight")
    if weight is not None and weight.dim() == 4:
        del state_dict[prefix + "weight"]
        state_dict[prefix + ORIGINAL] = weight.permute(0, 2, 3, 1)


def needs_reorder(conv: nn.Module) -> bool:
    """Whether the conv's NCHW weight differs from its channels-last form in memory (not for 1x1 kernels or one input
    channel per group, where both orders are the same)."""
    return (type(conv) is nn.Conv2d and conv.weight.dim() == 4 and conv.weight.shape[1] > 1
            and tuple(conv.weight.shape[2:]) != (1, 1))


def store_conv_weights_channels_last(model: nn.Module) -> nn.Module:
    """Store every 2-D conv weight of `model` that needs it as a contiguous [O, kh, kw, I] parameter (in place)."""
    for conv in list(model.modules()):
        if needs_reorder(conv) and not parametrize.is_parametrized(conv, "weight"):
            parametrize.register_parametrization(conv, "weight", StoredOHWI())
            conv.register_state_dict_post_hook(_standard_weight_on_save)
            conv.register_load_state_dict_pre_hook(_stored_weight_on_load)
    return model


def weight_parameter(conv: nn.Module) -> nn.Parameter:
    """The parameter that holds the conv's weight (its gradient is there): the stored [O, kh, kw, I] tensor, or
    `conv.weight` itself for a conv left as it was. `conv.weight` of a stored conv is computed, so its .grad is None."""
    if parametrize.is_parametrized(conv, "weight"):
        return conv.parametrizations.weight.original
    return conv.weight


def standard_state_dict(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A state_dict keyed by parameter names (as DeepSpeed's zero_to_fp32 rebuilds one) in the standard form: every
    `X.parametrizations.weight.original` [O, kh, kw, I] becomes `X.weight` [O, I, kh, kw]."""
    out = {}
    for key, value in state_dict.items():
        if key.endswith(ORIGINAL) and value.dim() == 4:
            out[key[: -len(ORIGINAL)] + "weight"] = value.permute(0, 3, 1, 2).contiguous()
        else:
            out[key] = value
    return out
