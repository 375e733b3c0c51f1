"""What FSNN/DSNN models share: the two output streams and removal of the Auxiliary Accumulation Pathway (AAP)."""
from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

from dst.neuron import create_neuron

STREAMS = ("fsnn", "dsnn")


class StreamLogits(NamedTuple):
    """Logits of both streams: z_F from the spike stream (the FSNN), z_A from the accumulation stream (the DSNN)."""

    fsnn: torch.Tensor
    dsnn: torch.Tensor


def neuron_factory(neuron: str, neuron_kwargs: dict | None):
    kwargs = dict(neuron_kwargs or {})
    return lambda: create_neuron(neuron, **kwargs)


class DualStreamNet(nn.Module):
    """Base of every model here. Subclasses implement `forward_streams(x, with_aap) -> (spike_stream, accumulation)`
    with tensors [T, N, C, H, W] (accumulation None without AAP) and own one classifier `fc` shared by both heads.

    forward(x) returns StreamLogits(fsnn, dsnn) when the model has an AAP and the FSNN logits otherwise;
    forward(x, stream="fsnn"|"dsnn") returns one stream (the FSNN stream never computes the AAP).
    """

    fc: nn.Linear

    def aap_modules(self) -> list[tuple[nn.Module, str]]:
        """(parent, attribute) of every AAP submodule; subclasses list theirs."""
        return []

    @property
    def has_aap(self) -> bool:
        return bool(getattr(self, "aap", False))

    def remove_aap(self) -> "DualStreamNet":
        """Delete the AAP in place. The spike stream never reads the AAP, so the FSNN logits do not change."""
        for parent, attr in self.aap_modules():
            setattr(parent, attr, None)
        self.aap = False
        return self

    def head(self, x_seq: torch.Tensor) -> torch.Tensor:
        # Global average pool, then mean over T: the FC sees firing rates (or mean accumulations).
        return self.fc(x_seq.mean(dim=(0, 3, 4)))

    def forward_streams(self, x: torch.Tensor, with_aap: bool):
        raise NotImplementedError

    def forward(self, x: torch.Tensor, stream: str | None = None):
        if stream is not None and stream not in STREAMS:
            raise ValueError(f"stream must be one of {STREAMS}, got {stream!r}")
        if stream == "dsnn" and not self.has_aap:
            raise ValueError("this model has no AAP, so it has no DSNN stream")
        spikes, accumulation = self.forward_streams(x, with_aap=self.has_aap and stream != "fsnn")
        if stream == "fsnn" or accumulation is None:
            return self.head(spikes)
        if stream == "dsnn":
            return self.head(accumulation)
        return StreamLogits(self.head(spikes), self.head(accumulation))
