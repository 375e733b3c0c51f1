"""The DST loss: L = w_F * CE(z_F, y) + w_A * CE(z_A, y) (the released recipe: w_F = w_A = 1, no TET)."""
from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import nn
from torch.nn import functional as F

from dst.models.base import StreamLogits


class DSTLossOutput(NamedTuple):
    total: torch.Tensor
    fsnn: torch.Tensor          # CE of the spike stream (unweighted, for logging)
    dsnn: torch.Tensor | None   # CE of the accumulation stream; None for a model without AAP


class DSTLoss(nn.Module):
    def __init__(self, fsnn_weight: float = 1.0, dsnn_weight: float = 1.0, label_smoothing: float = 0.0):
        super().__init__()
        for name, w in (("fsnn_weight", fsnn_weight), ("dsnn_weight", dsnn_weight)):
            if not (math.isfinite(w) and w >= 0):  # `w < 0` alone lets NaN through: every loss would be NaN
                raise ValueError(f"{name} must be a finite number >= 0, got {w}")
        if not 0.0 <= label_smoothing < 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing}")
        self.fsnn_weight, self.dsnn_weight, self.label_smoothing = fsnn_weight, dsnn_weight, label_smoothing

    def forward(self, logits: StreamLogits | torch.Tensor, target: torch.Tensor) -> DSTLossOutput:
        if not isinstance(logits, (StreamLogits, torch.Tensor)):
            raise TypeError(f"DSTLoss expects a model's output, StreamLogits(fsnn, dsnn) or a logits tensor, "
                            f"got {type(logits).__name__}")
        ce = lambda z: F.cross_entropy(z.float(), target, label_smoothing=self.label_smoothing)  # noqa: E731
        if isinstance(logits, StreamLogits):
            loss_f, loss_a = ce(logits.fsnn), ce(logits.dsnn)
            return DSTLossOutput(self.fsnn_weight * loss_f + self.dsnn_weight * loss_a, loss_f, loss_a)
        loss_f = ce(logits)
        return DSTLossOutput(self.fsnn_weight * loss_f, loss_f, None)

    def extra_repr(self) -> str:
        return f"fsnn_weight={self.fsnn_weight}, dsnn_weight={self.dsnn_weight}, label_smoothing={self.label_smoothing}"
