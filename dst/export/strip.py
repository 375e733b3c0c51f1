"""From the training model to the two deployable networks: the FSNN (the AAP deleted) and the DSNN (the accumulation
stream of the full model).

The AAP is training-time scaffolding: the spike stream never reads it, so deleting it changes no FSNN logit. What is
shipped as the FSNN is therefore a copy without AAP parameters or buffers, not a flag on the training model.
"""
from __future__ import annotations

import copy

import torch
from torch import nn

from dst.models.base import STREAMS, DualStreamNet


def _dual_stream(model: nn.Module) -> DualStreamNet:
    if not isinstance(model, DualStreamNet):
        raise TypeError(f"expected a dst DualStreamNet, got {type(model).__name__}")
    return model


def strip_aap(model: nn.Module) -> DualStreamNet:
    """The FSNN alone: a deep copy of `model` with the Auxiliary Accumulation Pathway deleted (no AAP parameters or
    buffers). Its forward returns z_F, equal bit for bit to `model(x, stream="fsnn")`, because the spike stream never
    reads the AAP. The training model is left untouched; a model without AAP comes back as a plain copy."""
    fsnn = copy.deepcopy(_dual_stream(model))
    fsnn.remove_aap()
    if hasattr(fsnn, "model_kwargs"):
        fsnn.model_kwargs = {**fsnn.model_kwargs, "aap": False}
    return fsnn


class StreamView(nn.Module):
    """One stream of a dual-stream model as a plain module: forward(x) returns that stream's logits."""

    def __init__(self, model: DualStreamNet, stream: str):
        super().__init__()
        if stream not in STREAMS:
            raise ValueError(f"stream must be one of {STREAMS}, got {stream!r}")
        if stream == "dsnn" and not model.has_aap:
            raise ValueError("this model has no AAP, so it has no DSNN stream")
        self.model, self.stream = model, stream

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x, stream=self.stream)

    def extra_repr(self) -> str:
        return f"stream={self.stream!r}"


def dsnn_view(model: nn.Module) -> StreamView:
    """The DSNN: the model with its AAP kept, predicting from the accumulation stream (z_A). Shares `model`'s
    parameters (no copy). Raises ValueError for a model without AAP."""
    return StreamView(_dual_stream(model), "dsnn")


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
