"""Multi-step spiking neurons on [T, N, ...] tensors.

One dynamics definition per neuron (`charge`), shared by every backend. Per time step t:
    H[t] = charge(V[t-1], X[t])                    membrane potential before firing
    S[t] = heaviside(H[t] - v_threshold)           spike (surrogate gradient in backward)
    V[t] = H[t] * (1 - S[t]) + v_reset * S[t]      hard reset   (v_reset is a float)
         = H[t] - v_threshold * S[t]               soft reset   (v_reset is None)
with S[t] detached in the reset when detach_reset=True (as SEW ResNet and the DST release).
Every forward starts from rest (V[-1] = v_reset or 0): no reset call is needed between batches.
The equations and defaults equal SpikingJelly's IFNode / LIFNode / ParametricLIFNode in step_mode='m'.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from dst.surrogate import Surrogate, create_surrogate


class MultiStepNeuron(nn.Module):
    """Base class: subclasses define `charge(v, x)`; the loop over T lives here."""

    def __init__(
        self,
        v_threshold: float = 1.0,
        v_reset: float | None = 0.0,
        surrogate: str | Surrogate | None = "atan",
        alpha: float | None = None,
        detach_reset: bool = True,
        backend: str = "torch",
    ):
        super().__init__()
        self.v_threshold = float(v_threshold)
        self.v_reset = None if v_reset is None else float(v_reset)
        self.surrogate = create_surrogate(surrogate, alpha)
        self.detach_reset = bool(detach_reset)
        self.backend = backend

    def charge(self, v: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, x_seq: torch.Tensor) -> torch.Tensor:
        if x_seq.dim() < 2:
            raise ValueError(f"{type(self).__name__} expects [T, N, ...], got shape {tuple(x_seq.shape)}")
        return self.multistep_reference(x_seq)

    def multistep_reference(self, x_seq: torch.Tensor) -> torch.Tensor:
        """The plain loop over T with autograd through every step: the oracle for fused backends."""
        v = torch.full_like(x_seq[0], self.v_reset if self.v_reset is not None else 0.0)
        spikes = []
        for x in x_seq:
            h = self.charge(v, x)
            spike = self.surrogate(h - self.v_threshold)
            s_reset = spike.detach() if self.detach_reset else spike
            if self.v_reset is None:
                v = h - self.v_threshold * s_reset
            else:
                v = h * (1.0 - s_reset) + self.v_reset * s_reset
            spikes.append(spike)
        return torch.stack(spikes)

    def extra_repr(self) -> str:
        return (f"v_threshold={self.v_threshold}, v_reset={self.v_reset}, "
                f"detach_reset={self.detach_reset}, backend={self.backend!r}")


class MultiStepIF(MultiStepNeuron):
    """Integrate-and-fire: H = V + X (no leak). The neuron of the DST release."""

    def charge(self, v, x):
        return v + x


class MultiStepLIF(MultiStepNeuron):
    """Leaky integrate-and-fire with a fixed time constant tau.

    decay_input=True:  H = V + (X - (V - v_reset)) / tau
    decay_input=False: H = V - (V - v_reset) / tau + X
    """

    def __init__(self, tau: float = 2.0, decay_input: bool = True, **kw):
        super().__init__(**kw)
        if tau <= 1.0:
            raise ValueError(f"tau must be > 1, got {tau}")
        self.tau = float(tau)
        self.decay_input = bool(decay_input)

    def decay(self, like: torch.Tensor):
        return 1.0 / self.tau

    def charge(self, v, x):
        k = self.decay(v)
        rest = self.v_reset if self.v_reset is not None else 0.0
        if self.decay_input:
            return v + (x - (v - rest)) * k
        return v - (v - rest) * k + x

    def extra_repr(self) -> str:
        return f"tau={self.tau}, decay_input={self.decay_input}, " + super().extra_repr()


class MultiStepPLIF(MultiStepLIF):
    """Parametric LIF (Fang et al. 2021): 1/tau = sigmoid(w) is learned; w starts at -log(init_tau - 1)."""

    def __init__(self, init_tau: float = 2.0, decay_input: bool = True, **kw):
        super().__init__(tau=init_tau, decay_input=decay_input, **kw)
        self.w = nn.Parameter(torch.tensor(-math.log(init_tau - 1.0)))

    def decay(self, like: torch.Tensor):
        return self.w.sigmoid().to(like.dtype)

    def extra_repr(self) -> str:
        return f"init_tau={self.tau}, decay_input={self.decay_input}, " + MultiStepNeuron.extra_repr(self)


NEURONS = {"if": MultiStepIF, "lif": MultiStepLIF, "plif": MultiStepPLIF}


def create_neuron(name: str = "if", **kw) -> MultiStepNeuron:
    """create_neuron('plif', init_tau=2.0, surrogate='sigmoid', alpha=4.0)."""
    key = name.lower()
    if key not in NEURONS:
        raise ValueError(f"unknown neuron {name!r}; choose one of {sorted(NEURONS)}")
    return NEURONS[key](**kw)
