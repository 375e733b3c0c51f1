"""Firing-rate monitoring: forward hooks on every spiking neuron record the mean of its output spikes."""
from __future__ import annotations

import torch
from torch import nn

from dst.hooks import ForwardHooks
from dst.neuron import MultiStepNeuron


class FiringRateMonitor(ForwardHooks):
    """with FiringRateMonitor(model) as mon: model(x); mon.rates -> {neuron name: mean firing rate}.

    Rates accumulate over forwards (weighted by element count) until `reset()`; `mean_rate` is the mean over all
    neuron outputs. Hooks are removed on exit, so the monitor costs nothing outside the `with` block.
    """

    def __init__(self, model: nn.Module):
        super().__init__(model)
        self._sums: dict[str, float] = {}
        self._counts: dict[str, int] = {}

    def select(self, module: nn.Module) -> bool:
        return isinstance(module, MultiStepNeuron)

    def _hook(self, name: str):
        def record(_module, _inputs, spikes: torch.Tensor):
            self._sums[name] = self._sums.get(name, 0.0) + float(spikes.detach().float().sum())
            self._counts[name] = self._counts.get(name, 0) + spikes.numel()
        return record

    def reset(self) -> None:
        self._sums.clear()
        self._counts.clear()

    @property
    def rates(self) -> dict[str, float]:
        return {k: self._sums[k] / self._counts[k] for k in self._sums}

    @property
    def mean_rate(self) -> float:
        total = sum(self._counts.values())
        return sum(self._sums.values()) / total if total else 0.0
